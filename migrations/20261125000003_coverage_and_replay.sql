-- Coverage and replay: what the watermark service knows.

-- Receiver replicas report, per webhook, each stretch of time they served and
-- whether they refused anything in it. They travel through Kafka, so a
-- consumer outage delays them instead of looking like a delivery gap.
CREATE TABLE coverage_heartbeats (
    replica_id   text        NOT NULL,
    webhook_id   text        NOT NULL,
    covered_from timestamptz NOT NULL,
    covered_to   timestamptz NOT NULL,
    accepted     bigint      NOT NULL,
    refused      bigint      NOT NULL,
    refused_by   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (webhook_id, covered_from, replica_id)
);

-- Fence records the watermark writes to every partition: once the consumer
-- stored a fence, everything produced before it on that partition is stored.
CREATE TABLE consumer_fences (
    topic      text        NOT NULL,
    partition  integer     NOT NULL,
    fence_time timestamptz NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- What X said about the webhook's validity (CRC), as polled.
CREATE TABLE webhook_validity (
    webhook_id text        NOT NULL,
    checked_at timestamptz NOT NULL,
    valid      boolean     NOT NULL,
    PRIMARY KEY (webhook_id, checked_at)
);

-- The unit of recovery: a window of a webhook's timeline to replay.
CREATE TABLE replay_windows (
    id              bigserial   PRIMARY KEY,
    webhook_id      text        NOT NULL,
    window_from     timestamptz NOT NULL,
    window_to       timestamptz NOT NULL,
    state           text        NOT NULL CHECK (state IN ('pending', 'submitted', 'reconciled', 'expired')),
    job_id          text,
    attempts        integer     NOT NULL DEFAULT 0,
    conflicts       integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    submitted_at    timestamptz,
    fence_at        timestamptz,
    reconciled_at   timestamptz,
    recovered       bigint      NOT NULL DEFAULT 0,
    duplicates      bigint      NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL
);
-- At most one job in flight per webhook, whatever the number of watermark replicas.
CREATE UNIQUE INDEX replay_windows_one_in_flight ON replay_windows (webhook_id) WHERE state = 'submitted';
CREATE INDEX replay_windows_by_webhook ON replay_windows (webhook_id, state, window_from);

-- Set when an event arrived during a replay of a window containing its
-- event time and is older than the live delivery horizon (see docs/architecture.md).
ALTER TABLE events ADD COLUMN via_replay boolean NOT NULL DEFAULT false;

CREATE VIEW v_gaps AS
SELECT webhook_id, window_from, window_to, state, job_id, attempts, conflicts, recovered, duplicates,
       submitted_at, reconciled_at, last_error
FROM replay_windows;

GRANT SELECT ON coverage_heartbeats, consumer_fences, webhook_validity, replay_windows, v_gaps TO aaa_reader;
GRANT SELECT, INSERT, UPDATE ON coverage_heartbeats, consumer_fences, webhook_validity TO aaa_writer;
GRANT SELECT, UPDATE ON replay_windows TO aaa_writer;
