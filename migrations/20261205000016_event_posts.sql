-- Compliance erase finds every copy of a deleted post. Copies used to be
-- found through the one `event_id` a normalized row keeps, but `events` is
-- unique per account: a like or retweet of the post delivered to a second
-- subscribed account, and a post nested two levels down (a retweet of a
-- quote of it), were never found. Now every post an event's payload holds,
-- at any depth, is indexed here by the consumer (aaa_events::erase::posts_in),
-- and `erased` says whether that copy was erased already, so erasing again
-- touches only the new copies.
CREATE TABLE event_posts (
    post_id  text    NOT NULL,
    event_id bigint  NOT NULL,
    erased   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (post_id, event_id)
);

-- What is stored already: every object with a `text` and an `id_str` or
-- `id` (a post), at any depth; the same answer as posts_in (a test holds
-- the two to it).
INSERT INTO event_posts (post_id, event_id, erased)
SELECT p.post_id, e.id, bool_and(p.erased)
FROM events e
CROSS JOIN LATERAL (
    SELECT o ->> k AS post_id, coalesce(o -> 'aaa_erased' = 'true'::jsonb, false) AS erased
    FROM jsonb_path_query(e.payload::jsonb, 'strict $.**') AS o,
         unnest(ARRAY['id_str', 'id']) AS k
    WHERE jsonb_typeof(o) = 'object' AND o ? 'text'
      AND jsonb_typeof(o -> k) IN ('string', 'number')
) p
WHERE e.payload IS NOT NULL
GROUP BY p.post_id, e.id;

-- Copies the old lookup missed are erased on the next maintenance run.
UPDATE tweet_deletions d SET erased_at = NULL
WHERE erased_at IS NOT NULL
  AND EXISTS (SELECT 1 FROM event_posts ep WHERE ep.post_id = d.tweet_id AND NOT ep.erased);

-- An erasure looks for copies once more after every transaction that was
-- running when it marked the post erased has ended (a copy committed by one
-- of them was invisible to it): this is the newest transaction id it had to
-- wait for; NULL once checked.
ALTER TABLE tweet_deletions ADD COLUMN erase_check_xmax xid8;
CREATE INDEX tweet_deletions_to_check ON tweet_deletions (tweet_id) WHERE erase_check_xmax IS NOT NULL;

GRANT SELECT ON event_posts TO aaa_reader;
GRANT SELECT, INSERT ON event_posts TO aaa_consumer;
GRANT SELECT ON event_posts TO aaa_watermark;
GRANT UPDATE (erased) ON event_posts TO aaa_watermark;
GRANT UPDATE (erase_check_xmax) ON tweet_deletions TO aaa_watermark;
-- Dead letters that hold a deleted post are erased in place (or dropped
-- when they are not JSON).
GRANT UPDATE (raw) ON dead_letters TO aaa_watermark;
