-- no-transaction
-- The B-tree the BRIN index on `event_time` replaces (migration 20).
-- Dropped CONCURRENTLY: a plain drop queues for an exclusive lock behind
-- any open transaction on `events`, and every consumer write waits in that
-- queue behind it.
DROP INDEX CONCURRENTLY IF EXISTS events_by_kind_time;
