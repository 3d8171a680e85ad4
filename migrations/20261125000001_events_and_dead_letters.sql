-- Raw activities and dead letters: the ground floor of the pipeline.

-- One row per activity. The unique key makes every write idempotent:
-- X's retries, replays and consumer restarts all map to the same row.
CREATE TABLE events (
    id              bigserial   PRIMARY KEY,
    webhook_id      text,
    -- Absent on user_event and replay_job_status deliveries.
    for_user_id     text,
    -- X's envelope key ("favorite_events"), or "unknown:<key>" for kinds this
    -- build does not know.
    kind            text        NOT NULL,
    natural_key     text        NOT NULL,
    event_time      timestamptz,
    -- The activity item exactly as X sent it.
    payload         jsonb       NOT NULL,
    -- The rest of the envelope (for_user_id, users/apps side maps, block flags).
    context         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    activity_index  integer     NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    request_id      text,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_natural_key UNIQUE NULLS NOT DISTINCT (for_user_id, kind, natural_key)
);

CREATE INDEX events_by_account_time ON events (for_user_id, event_time);
CREATE INDEX events_by_kind_time ON events (kind, event_time);
CREATE INDEX events_by_received ON events (received_at);

-- Authentic deliveries (their signature was valid) that could not be read.
-- Nothing is dropped: the raw bytes stay here for an operator.
CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    webhook_id      text,
    -- -1 when the whole body was unreadable, else the activity's position.
    activity_index  integer     NOT NULL,
    error_kind      text        NOT NULL,
    reason          text        NOT NULL,
    raw             bytea       NOT NULL,
    raw_sha256      text        NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    request_id      text,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    -- A retried copy of the same bytes is the same dead letter.
    CONSTRAINT dead_letters_once UNIQUE (raw_sha256, activity_index)
);

CREATE INDEX dead_letters_by_received ON dead_letters (received_at);

-- Least-privilege group roles. Deployments create LOGIN users and grant one
-- of these: the consumer needs aaa_writer, analysts aaa_reader. Roles are
-- cluster-wide, so creating them tolerates a concurrent migration elsewhere.
DO $$
BEGIN
    CREATE ROLE aaa_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE aaa_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

GRANT SELECT ON events, dead_letters TO aaa_reader;
GRANT SELECT, INSERT ON events, dead_letters TO aaa_writer;
GRANT USAGE ON SEQUENCE events_id_seq, dead_letters_id_seq TO aaa_writer;
-- Services check the schema version before they start.
GRANT SELECT ON _sqlx_migrations TO aaa_writer;
