-- X Activity API deliveries carry no for_user_id and no subscription id:
-- the matched subscription is known only by its tag and filter, kept in
-- events.context.xaa. This view names them for analysts.
CREATE VIEW v_xaa_events AS
SELECT id AS event_id, webhook_id, for_user_id, kind,
       context->'xaa'->>'event_type' AS event_type,
       context->'xaa'->>'event_uuid' AS event_uuid,
       context->'xaa'->>'tag'        AS subscription_tag,
       context->'xaa'->'filter'      AS subscription_filter,
       event_time, received_at, payload
FROM events
WHERE context ? 'xaa';

GRANT SELECT ON v_xaa_events TO aaa_reader;
