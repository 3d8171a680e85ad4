-- Event retention (AAA_EVENT_RETENTION_DAYS; default: keep). Past it an
-- event keeps its identity (ids, kind, natural key, times, Kafka position),
-- which idempotence and the normalized rows' event_id need, and loses its
-- payload (NULL) and context ('{}'), the bulk of its bytes. Normalized state
-- stays. Progress is an id marker, so each run reads only what is new.
ALTER TABLE events ALTER COLUMN payload DROP NOT NULL;
GRANT UPDATE (context) ON events TO aaa_writer;

CREATE TABLE retention_progress (
    table_name text   PRIMARY KEY,
    -- Every row with an id up to this one is done.
    done_to    bigint NOT NULL
);
GRANT SELECT ON retention_progress TO aaa_reader;
GRANT SELECT, INSERT, UPDATE ON retention_progress TO aaa_writer;

-- Tables the watermark writes every round and maintenance prunes all the
-- time: vacuumed after a fixed number of dead rows rather than a fraction of
-- the table, so the space of what was pruned is reused and their bytes stay
-- flat instead of waiting for 20 % of the table to be dead.
ALTER TABLE coverage_heartbeats SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);
ALTER TABLE webhook_validity SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);
ALTER TABLE replay_windows SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500);
ALTER TABLE x_api_requests SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);
ALTER TABLE watermark_progress SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500);
ALTER TABLE watermark_leases SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500);
