-- `event_posts` indexes the posts an event's payload holds, for the
-- compliance erase. Once retention drops a payload there is nothing left to
-- erase, so maintenance now removes those rows with the payload (the
-- watermark needs DELETE for it). Rows of payloads dropped before this
-- migration go now.
DELETE FROM event_posts ep USING events e WHERE e.id = ep.event_id AND e.payload IS NULL;

GRANT DELETE ON event_posts TO aaa_watermark;
