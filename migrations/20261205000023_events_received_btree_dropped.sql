-- no-transaction
-- The B-tree the BRIN index on `received_at` replaces (migration 21),
-- dropped as in migration 22.
DROP INDEX CONCURRENTLY IF EXISTS events_by_received;
