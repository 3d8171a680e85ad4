-- Where a webhook's tracking began: nothing before it is ever judged. A
-- webhook registered long before the watermark was installed has no
-- heartbeats from then, which is not an expired gap. NULL for rows written
-- before this column existed (no lower bound, as before).
ALTER TABLE watermark_progress ADD COLUMN tracked_from timestamptz;

-- Every per-round query reads the recent end of a webhook's history: these
-- serve it without scanning the whole history, so a round costs the same
-- in the first week and after a year.
CREATE INDEX coverage_heartbeats_by_end ON coverage_heartbeats (webhook_id, covered_to);
CREATE INDEX replay_windows_by_end ON replay_windows (webhook_id, window_to);

-- Every request to X, shared by all watermark replicas, so X's per-endpoint
-- limits are respected whatever the answer was (accepted, conflict, 429,
-- 5xx).
CREATE TABLE x_api_requests (
    endpoint     text        NOT NULL,
    requested_at timestamptz NOT NULL,
    outcome      text        NOT NULL
);
CREATE INDEX x_api_requests_by_time ON x_api_requests (endpoint, requested_at);

GRANT SELECT ON x_api_requests TO aaa_reader;
GRANT SELECT, INSERT ON x_api_requests TO aaa_writer;
-- The watermark's maintenance prunes what only it needs, in small batches
-- (dead letters only when a retention is configured).
GRANT DELETE ON coverage_heartbeats, webhook_validity, replay_windows, x_api_requests TO aaa_writer;
GRANT DELETE ON dead_letters TO aaa_writer;
