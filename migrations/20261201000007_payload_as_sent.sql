-- events.payload holds each activity exactly as X sent it. jsonb rewrites
-- numbers (1e2 -> 100, -0 -> 0) and cannot hold \u0000; json keeps the text
-- as it came (the consumer writes the item's original bytes) and answers the
-- same ->, ->> operators. Rows written before keep jsonb's rendering.
DROP VIEW v_xaa_events;
DROP VIEW v_activity;

ALTER TABLE events ALTER COLUMN payload TYPE json USING payload::json;

CREATE VIEW v_activity AS
SELECT e.id AS event_id, e.webhook_id, e.for_user_id, e.kind, e.event_time, e.received_at, e.payload
FROM events e;

CREATE VIEW v_xaa_events AS
SELECT id AS event_id, webhook_id, for_user_id, kind,
       context->'xaa'->>'event_type' AS event_type,
       context->'xaa'->>'event_uuid' AS event_uuid,
       context->'xaa'->>'tag'        AS subscription_tag,
       context->'xaa'->'filter'      AS subscription_filter,
       event_time, received_at, payload
FROM events
WHERE context ? 'xaa';

GRANT SELECT ON v_activity, v_xaa_events TO aaa_reader;
