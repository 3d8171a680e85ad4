-- Least privilege per service. aaa_writer was shared by every service, so
-- the consumer could rewrite stored payloads and delete dead letters (the
-- watermark's maintenance needs that; the consumer never does), and the
-- watermark could insert events. Now each service logs in with its own
-- role and only what it needs:
--
--   aaa_consumer   stores events, dead letters, the normalized rows,
--                  heartbeats and fences; counts what a replay recovered.
--   aaa_watermark  plans and follows replay windows, leases, X's budget,
--                  and maintenance: pruning, payload retention, erasing
--                  deleted posts (those columns only).
--   aaa_operator   aaa_reader, plus recording requests to X in the
--                  watermark's budget (`AAA_X_BUDGET_DATABASE_URL`).
--   aaa_reader     reads (unchanged).
--
-- Migrations run as the schema's owner, a login of its own that no service
-- uses (docs/deploy.md). aaa_writer stays, as the union of the two service
-- roles, only so running deployments keep working until their logins are
-- split; it has no privilege of its own any more.
DO $$ BEGIN CREATE ROLE aaa_consumer NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE aaa_watermark NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE aaa_operator NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;

-- Services check the schema version before they start.
GRANT SELECT ON _sqlx_migrations TO aaa_consumer, aaa_watermark;

-- The consumer.
GRANT SELECT, INSERT ON events, dead_letters TO aaa_consumer;
GRANT USAGE ON SEQUENCE events_id_seq, dead_letters_id_seq TO aaa_consumer;
GRANT SELECT, INSERT, UPDATE ON webhooks, users, tweets, mentions, favorites, apps, direct_messages,
    dm_read_receipts, relationship_events, relationships, tweet_deletions, subscriptions, replay_jobs
    TO aaa_consumer;
GRANT SELECT, INSERT, UPDATE ON coverage_heartbeats, consumer_fences TO aaa_consumer;
GRANT SELECT ON replay_windows TO aaa_consumer;
GRANT UPDATE (recovered, duplicates) ON replay_windows TO aaa_consumer;

-- The watermark: its own state.
GRANT SELECT, INSERT, UPDATE, DELETE ON replay_windows TO aaa_watermark;
GRANT USAGE ON SEQUENCE replay_windows_id_seq, x_api_requests_id_seq TO aaa_watermark;
GRANT SELECT, INSERT, UPDATE ON watermark_leases, watermark_progress, x_api_budgets, retention_progress
    TO aaa_watermark;
GRANT SELECT, INSERT, DELETE ON webhook_validity, x_api_requests TO aaa_watermark;
GRANT UPDATE (outcome) ON x_api_requests TO aaa_watermark;
-- What it judges from.
GRANT SELECT, DELETE ON coverage_heartbeats TO aaa_watermark;
GRANT SELECT ON consumer_fences, replay_jobs, mentions, favorites TO aaa_watermark;
-- Maintenance: dead-letter retention, payload retention, compliance erase.
GRANT SELECT, DELETE ON dead_letters TO aaa_watermark;
GRANT SELECT ON events, tweets, tweet_deletions TO aaa_watermark;
GRANT UPDATE (payload, context) ON events TO aaa_watermark;
GRANT UPDATE (text, entities, display_text_range) ON tweets TO aaa_watermark;
GRANT UPDATE (erased_at) ON tweet_deletions TO aaa_watermark;

-- Operators.
GRANT aaa_reader TO aaa_operator;
GRANT INSERT ON x_api_requests TO aaa_operator;
GRANT USAGE ON SEQUENCE x_api_requests_id_seq TO aaa_operator;

-- aaa_writer: nothing of its own, the union of the services' roles.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM aaa_writer;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM aaa_writer;
GRANT aaa_consumer, aaa_watermark TO aaa_writer;

-- A deletion takes its post's row, with a placeholder removed again in the
-- same transaction when the post is not there yet (so a post and its
-- deletion in two batches at once serialize on the key).
GRANT DELETE ON tweets TO aaa_consumer;
