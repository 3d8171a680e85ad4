-- A minute is proven only when every receiver replica that was live in it
-- proves it (docs/architecture.md, "Coverage"). Each heartbeat now names
-- the replica's life: when that run of the process started, its place in
-- the life's sequence (0 opens the life, covering no time), whether it
-- closes the life (written after the drain), and by when the next one is
-- due if the replica lives. Heartbeats written before this migration have
-- none of it and read as one unclosed life per replica.
ALTER TABLE coverage_heartbeats
    ADD COLUMN replica_started_at timestamptz,
    ADD COLUMN seq bigint,
    ADD COLUMN closing boolean NOT NULL DEFAULT false,
    ADD COLUMN next_due timestamptz;

-- The opening heartbeat [start, start) and the first one [start, t) share
-- their start: the key names the end too. A redelivered heartbeat is still
-- the same row.
ALTER TABLE coverage_heartbeats DROP CONSTRAINT coverage_heartbeats_pkey;
ALTER TABLE coverage_heartbeats ADD PRIMARY KEY (webhook_id, replica_id, covered_from, covered_to);

-- A round reads the heartbeats ending since where it judges, and those whose
-- next heartbeat was due since then (a life that stopped just before).
CREATE INDEX coverage_heartbeats_by_next_due ON coverage_heartbeats (webhook_id, next_due);
