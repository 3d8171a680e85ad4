-- Compliance: a deleted post's text and media are erased wherever they are
-- stored (tweets, events.payload, embedded copies). `erased_at` is when that
-- was last done; the consumer clears it when more of the post's content
-- arrives (a late retweet, a replay), so the erasure runs again.
ALTER TABLE tweet_deletions ADD COLUMN erased_at timestamptz;
CREATE INDEX tweet_deletions_to_erase ON tweet_deletions (tweet_id) WHERE erased_at IS NULL;

-- The erasure rewrites payloads, and nothing else of an event.
GRANT UPDATE (payload) ON events TO aaa_writer;
