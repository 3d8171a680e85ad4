-- A subscription is active unless it was revoked and no activity came after
-- the revocation. An account that authorized the app again produces
-- activity newer than its revocation (X's clock on both sides), so it is
-- active again; a replayed or retried event from before the revocation is
-- older and changes nothing.
ALTER TABLE subscriptions ADD COLUMN last_event_at timestamptz;

CREATE VIEW v_subscriptions AS
SELECT webhook_id, user_id, first_seen_at, last_seen_at, last_event_at, revoked_at, revoked_app_id,
       (revoked_at IS NULL OR last_event_at > revoked_at) AS active
FROM subscriptions;
GRANT SELECT ON v_subscriptions TO aaa_reader;
