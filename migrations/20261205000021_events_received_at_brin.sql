-- no-transaction
-- The BRIN index on `received_at` (see migration 20; if this build fails:
-- `DROP INDEX CONCURRENTLY events_by_received_at`, then `aaa migrate`).
CREATE INDEX CONCURRENTLY events_by_received_at ON events USING brin (received_at) WITH (autosummarize = on);
