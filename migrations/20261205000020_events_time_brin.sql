-- Time-range indexes on `events` as BRIN instead of B-trees. Rows are
-- appended roughly in the order they are received (and X's event times
-- follow), so a block range summary (min/max per 128 pages) finds a time
-- range nearly as well as a B-tree, at a tiny fraction of the write cost:
-- the two B-trees were two of the five index inserts of every stored
-- event (docs/benchmarks.md, "Consumer levers"). Per-account reads keep
-- their B-tree (`events_by_account_time`).
--
-- `autosummarize` summarizes each filled block range in the background,
-- so recent rows are found without waiting for a vacuum; rows in a range
-- not summarized yet are always read, never missed.
DROP INDEX IF EXISTS events_by_kind_time;
DROP INDEX IF EXISTS events_by_received;
CREATE INDEX events_by_received ON events USING brin (received_at) WITH (autosummarize = on);
CREATE INDEX events_by_event_time ON events USING brin (event_time) WITH (autosummarize = on);
