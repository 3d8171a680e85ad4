-- Normalized activity: what analysts query. Every row points back to the raw
-- event it came from (event_id); reprocessing a raw event is a no-op because
-- only newly inserted events are normalized.

CREATE TABLE webhooks (
    webhook_id    text PRIMARY KEY,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL
);

-- Latest profile snapshot per user, by event time (a late replay never
-- overwrites a newer snapshot).
CREATE TABLE users (
    user_id     text PRIMARY KEY,
    screen_name text,
    name        text,
    profile     jsonb NOT NULL,
    observed_at timestamptz NOT NULL,
    event_id    bigint NOT NULL REFERENCES events (id)
);
CREATE INDEX users_by_screen_name ON users (lower(screen_name));

CREATE TABLE tweets (
    tweet_id              text PRIMARY KEY,
    author_id             text,
    created_at            timestamptz,
    -- Full text: extended_tweet.full_text for longform posts.
    text                  text NOT NULL,
    is_longform           boolean NOT NULL,
    entities              jsonb NOT NULL,
    display_text_range    jsonb,
    in_reply_to_status_id text,
    in_reply_to_user_id   text,
    quoted_status_id      text,
    retweeted_status_id   text,
    deleted_at            timestamptz,
    event_id              bigint NOT NULL REFERENCES events (id)
);
CREATE INDEX tweets_by_author_time ON tweets (author_id, created_at);
CREATE INDEX tweets_by_reply ON tweets (in_reply_to_status_id) WHERE in_reply_to_status_id IS NOT NULL;
CREATE INDEX tweets_by_quote ON tweets (quoted_status_id) WHERE quoted_status_id IS NOT NULL;
CREATE INDEX tweets_by_retweet ON tweets (retweeted_status_id) WHERE retweeted_status_id IS NOT NULL;

-- A subscribed account's copy of a tweet that mentions it.
CREATE TABLE mentions (
    tweet_id text NOT NULL,
    user_id  text NOT NULL,
    blocked  boolean,
    event_id bigint NOT NULL REFERENCES events (id),
    PRIMARY KEY (user_id, tweet_id)
);

CREATE TABLE favorites (
    favorite_id text PRIMARY KEY,
    user_id     text,
    tweet_id    text,
    created_at  timestamptz,
    event_id    bigint NOT NULL REFERENCES events (id)
);
CREATE INDEX favorites_by_tweet ON favorites (tweet_id);
CREATE INDEX favorites_by_user_time ON favorites (user_id, created_at);

CREATE TABLE apps (
    app_id text PRIMARY KEY,
    name   text,
    url    text
);

CREATE TABLE direct_messages (
    dm_id         text PRIMARY KEY,
    sender_id     text NOT NULL,
    recipient_id  text NOT NULL,
    source_app_id text,
    text          text,
    entities      jsonb NOT NULL,
    attachment    jsonb,
    created_at    timestamptz,
    event_id      bigint NOT NULL REFERENCES events (id)
);
-- One conversation = the unordered pair of participants.
CREATE INDEX direct_messages_by_conversation
    ON direct_messages (LEAST(sender_id, recipient_id), GREATEST(sender_id, recipient_id), created_at);

CREATE TABLE dm_read_receipts (
    sender_id          text NOT NULL,
    recipient_id       text NOT NULL,
    last_read_event_id text NOT NULL,
    created_at         timestamptz NOT NULL,
    event_id           bigint NOT NULL REFERENCES events (id),
    PRIMARY KEY (recipient_id, sender_id, created_at, last_read_event_id)
);

-- Every follow/unfollow, block/unblock, mute/unmute, in event-time order.
CREATE TABLE relationship_events (
    relationship text NOT NULL CHECK (relationship IN ('follow', 'block', 'mute')),
    source_id    text NOT NULL,
    target_id    text NOT NULL,
    active       boolean NOT NULL,
    event_time   timestamptz NOT NULL,
    event_id     bigint NOT NULL REFERENCES events (id),
    PRIMARY KEY (relationship, source_id, target_id, event_time, active)
);

-- Current state: the change with the latest event time wins; at equal times
-- the removal wins. A late replayed "follow" never overrides a newer "unfollow".
CREATE TABLE relationships (
    relationship text NOT NULL CHECK (relationship IN ('follow', 'block', 'mute')),
    source_id    text NOT NULL,
    target_id    text NOT NULL,
    active       boolean NOT NULL,
    event_time   timestamptz NOT NULL,
    event_id     bigint NOT NULL REFERENCES events (id),
    PRIMARY KEY (relationship, source_id, target_id)
);
CREATE INDEX relationships_by_target ON relationships (relationship, target_id) WHERE active;

CREATE TABLE tweet_deletions (
    tweet_id   text NOT NULL,
    user_id    text,
    deleted_at timestamptz NOT NULL,
    event_id   bigint NOT NULL REFERENCES events (id),
    PRIMARY KEY (tweet_id, deleted_at)
);

CREATE TABLE subscriptions (
    webhook_id    text NOT NULL,
    user_id       text NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoked_app_id text,
    PRIMARY KEY (webhook_id, user_id)
);

CREATE TABLE replay_jobs (
    job_id      text PRIMARY KEY,
    webhook_id  text,
    job_state   text NOT NULL,
    description text,
    reported_at timestamptz NOT NULL,
    event_id    bigint NOT NULL REFERENCES events (id)
);

-- Analyst views: stable names, documented in docs/sql.md.
CREATE VIEW v_activity AS
SELECT e.id AS event_id, e.webhook_id, e.for_user_id, e.kind, e.event_time, e.received_at, e.payload
FROM events e;

CREATE VIEW v_timeline AS
SELECT t.tweet_id, t.author_id, u.screen_name AS author_screen_name, t.created_at, t.text, t.is_longform,
       CASE WHEN t.retweeted_status_id IS NOT NULL THEN 'retweet'
            WHEN t.quoted_status_id IS NOT NULL THEN 'quote'
            WHEN t.in_reply_to_status_id IS NOT NULL THEN 'reply'
            ELSE 'post' END AS shape,
       t.in_reply_to_status_id, t.quoted_status_id, t.retweeted_status_id,
       t.deleted_at IS NOT NULL AS deleted, t.deleted_at
FROM tweets t LEFT JOIN users u ON u.user_id = t.author_id;

CREATE VIEW v_dm_conversations AS
SELECT LEAST(sender_id, recipient_id) AS participant_a, GREATEST(sender_id, recipient_id) AS participant_b,
       count(*) AS messages, min(created_at) AS first_message_at, max(created_at) AS last_message_at
FROM direct_messages
GROUP BY 1, 2;

CREATE VIEW v_relationships AS
SELECT r.relationship, r.source_id, s.screen_name AS source_screen_name, r.target_id,
       t.screen_name AS target_screen_name, r.event_time AS since
FROM relationships r
LEFT JOIN users s ON s.user_id = r.source_id
LEFT JOIN users t ON t.user_id = r.target_id
WHERE r.active;

-- Read-only analysts: every table and view, nothing writable.
GRANT SELECT ON webhooks, users, tweets, mentions, favorites, apps, direct_messages, dm_read_receipts,
    relationship_events, relationships, tweet_deletions, subscriptions, replay_jobs,
    v_activity, v_timeline, v_dm_conversations, v_relationships TO aaa_reader;
GRANT SELECT, INSERT, UPDATE ON webhooks, users, tweets, mentions, favorites, apps, direct_messages,
    dm_read_receipts, relationship_events, relationships, tweet_deletions, subscriptions, replay_jobs TO aaa_writer;
