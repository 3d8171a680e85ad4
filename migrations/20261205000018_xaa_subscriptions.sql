-- The app's X Activity API subscriptions as X last listed them to an
-- operator (`aaa subscriptions activity list` / `create` / `update` /
-- `delete` with AAA_X_BUDGET_DATABASE_URL). X puts a subscription's `tag` on
-- every event it delivers for it (and no subscription id), so stored events
-- are routed back to their subscription by tag: `v_xaa_events`.
CREATE TABLE xaa_subscriptions (
    subscription_id text        PRIMARY KEY,
    event_type      text        NOT NULL,
    filter          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    tag             text,
    webhook_id      text,
    created_at      timestamptz,
    listed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX xaa_subscriptions_by_tag ON xaa_subscriptions (tag);

-- New columns at the end: the view's columns only ever grow. A tag shared
-- by several subscriptions (X allows it) routes to the one of the same
-- event type, else the first by id.
CREATE OR REPLACE VIEW v_xaa_events AS
SELECT e.id AS event_id, e.webhook_id, e.for_user_id, e.kind,
       e.context->'xaa'->>'event_type' AS event_type,
       e.context->'xaa'->>'event_uuid' AS event_uuid,
       e.context->'xaa'->>'tag'        AS subscription_tag,
       e.context->'xaa'->'filter'      AS subscription_filter,
       e.event_time, e.received_at, e.payload,
       s.subscription_id
FROM events e
LEFT JOIN LATERAL (
    SELECT x.subscription_id FROM xaa_subscriptions x
    WHERE x.tag = e.context->'xaa'->>'tag'
    ORDER BY (x.event_type = e.context->'xaa'->>'event_type') DESC, x.subscription_id
    LIMIT 1
) s ON true
WHERE e.context ? 'xaa';

GRANT SELECT, INSERT, UPDATE, DELETE ON xaa_subscriptions TO aaa_operator;
GRANT SELECT ON xaa_subscriptions TO aaa_reader;
