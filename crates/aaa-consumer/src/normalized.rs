//! Writes the normalized rows of the events that were new in this batch,
//! in the same transaction: [`crate::reduce`] makes them one per key, and
//! each table gets one `INSERT … SELECT FROM UNNEST(…)` of column arrays.

use std::collections::BTreeMap;

use aaa_events::normalize::{DeletionRow, RelationshipRow, TweetRow, current_relationships};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::postgres::{PgArguments, Postgres};

use crate::reduce::{NewEvent, Rows, reduce};
use crate::seen::{Existing, Seen};

fn col<T, R>(rows: &[R], f: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

type Insert<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Runs one statement for `rows`, its columns bound by `bind`; nothing
/// when there are no rows.
async fn insert<'q, R>(
    tx: &mut PgConnection,
    rows: &'q [R],
    sql: &'static str,
    bind: impl FnOnce(Insert<'q>, &'q [R]) -> Insert<'q>,
) -> Result<(), sqlx::Error> {
    if !rows.is_empty() {
        bind(sqlx::query(sql), rows).execute(&mut *tx).await?;
    }
    Ok(())
}

/// `seen`: what the whole batch (duplicates included) saw.
pub async fn write(
    tx: &mut PgConnection,
    seen: &Seen,
    new: &[NewEvent<'_>],
) -> Result<(), sqlx::Error> {
    let rows = reduce(new);
    // Rows of webhooks and subscriptions the batch saw first (an existing
    // row is left alone and not locked: `crate::seen` widens "last seen"
    // outside the batch transaction).
    seen.write_to(tx, Existing::Keep).await?;
    write_revocations(tx, &rows).await?;
    insert(
        tx,
        &rows.tweets,
        "INSERT INTO tweets (tweet_id, author_id, created_at, text, is_longform, entities, display_text_range,
                             in_reply_to_status_id, in_reply_to_user_id, quoted_status_id, retweeted_status_id, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bool[], $6::jsonb[],
                              $7::jsonb[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[])
         ON CONFLICT (tweet_id) DO UPDATE SET
             author_id = EXCLUDED.author_id, created_at = EXCLUDED.created_at, text = EXCLUDED.text,
             is_longform = EXCLUDED.is_longform, entities = EXCLUDED.entities,
             display_text_range = EXCLUDED.display_text_range,
             in_reply_to_status_id = EXCLUDED.in_reply_to_status_id,
             in_reply_to_user_id = EXCLUDED.in_reply_to_user_id,
             quoted_status_id = EXCLUDED.quoted_status_id,
             retweeted_status_id = EXCLUDED.retweeted_status_id, event_id = EXCLUDED.event_id
         -- Only a repost's stub gives way, and only to the real post; a
         -- deleted post stays erased.
         WHERE tweets.author_id IS NULL AND tweets.created_at IS NULL AND tweets.text = ''
           AND tweets.deleted_at IS NULL
           AND NOT (EXCLUDED.author_id IS NULL AND EXCLUDED.created_at IS NULL AND EXCLUDED.text = '')",
        |q, tweets| {
            q.bind(col(tweets, |(t, _)| t.tweet_id.clone()))
                .bind(col(tweets, |(t, _)| t.author_id.clone()))
                .bind(col::<Option<DateTime<Utc>>, _>(tweets, |(t, _)| t.created_at))
                .bind(col(tweets, |(t, _)| t.text.clone()))
                .bind(col(tweets, |(t, _)| t.is_longform))
                .bind(col::<Value, _>(tweets, |(t, _)| t.entities.clone()))
                .bind(col::<Option<Value>, _>(tweets, |(t, _)| t.display_text_range.clone()))
                .bind(col(tweets, |(t, _)| t.in_reply_to_status_id.clone()))
                .bind(col(tweets, |(t, _)| t.in_reply_to_user_id.clone()))
                .bind(col(tweets, |(t, _)| t.quoted_status_id.clone()))
                .bind(col(tweets, |(t, _)| t.retweeted_status_id.clone()))
                .bind(col(tweets, |(_, id)| *id))
        },
    )
    .await?;
    insert(
        tx,
        &rows.mentions,
        "INSERT INTO mentions (tweet_id, user_id, blocked, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::int8[]) ON CONFLICT DO NOTHING",
        |q, mentions| {
            q.bind(col(mentions, |(m, _)| m.tweet_id.clone()))
                .bind(col(mentions, |(m, _)| m.user_id.clone()))
                .bind(col(mentions, |(m, _)| m.blocked))
                .bind(col(mentions, |(_, id)| *id))
        },
    )
    .await?;
    insert(
        tx,
        &rows.favorites,
        "INSERT INTO favorites (favorite_id, user_id, tweet_id, created_at, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[]) ON CONFLICT DO NOTHING",
        |q, favorites| {
            q.bind(col(favorites, |(f, _)| f.favorite_id.clone()))
                .bind(col(favorites, |(f, _)| f.user_id.clone()))
                .bind(col(favorites, |(f, _)| f.tweet_id.clone()))
                .bind(col::<Option<DateTime<Utc>>, _>(favorites, |(f, _)| f.created_at))
                .bind(col(favorites, |(_, id)| *id))
        },
    )
    .await?;
    insert(
        tx,
        &rows.apps,
        // An app whose stored observation is as new as this one (or the
        // same) is skipped before the upsert: the upsert locks a
        // conflicting row until commit even when its WHERE then changes
        // nothing, and concurrent batches carrying the same apps waited on
        // each other for it. The newest observation wins, whichever batch
        // commits last; one of unknown time never replaces one of known time.
        "INSERT INTO apps (app_id, name, url, observed_at)
         SELECT x.* FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS x(app_id, name, url, observed_at)
         WHERE NOT EXISTS (SELECT 1 FROM apps a WHERE a.app_id = x.app_id
                           AND ((a.name IS NOT DISTINCT FROM x.name AND a.url IS NOT DISTINCT FROM x.url
                                 AND a.observed_at IS NOT DISTINCT FROM x.observed_at)
                                OR x.observed_at IS NULL AND a.observed_at IS NOT NULL
                                OR a.observed_at >= x.observed_at))
         ON CONFLICT (app_id) DO UPDATE SET name = EXCLUDED.name, url = EXCLUDED.url, observed_at = EXCLUDED.observed_at
         WHERE apps.observed_at IS NULL
            OR (EXCLUDED.observed_at IS NOT NULL AND EXCLUDED.observed_at > apps.observed_at)",
        |q, apps| {
            q.bind(col(apps, |a| a.app_id.clone()))
                .bind(col(apps, |a| a.name.clone()))
                .bind(col(apps, |a| a.url.clone()))
                .bind(col::<Option<DateTime<Utc>>, _>(apps, |a| a.observed_at))
        },
    )
    .await?;
    insert(
        tx,
        &rows.direct_messages,
        "INSERT INTO direct_messages (dm_id, sender_id, recipient_id, source_app_id, text, entities, attachment, created_at, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[],
                              $8::timestamptz[], $9::int8[])
         ON CONFLICT DO NOTHING",
        |q, dms| {
            q.bind(col(dms, |(d, _)| d.dm_id.clone()))
                .bind(col(dms, |(d, _)| d.sender_id.clone()))
                .bind(col(dms, |(d, _)| d.recipient_id.clone()))
                .bind(col(dms, |(d, _)| d.source_app_id.clone()))
                .bind(col(dms, |(d, _)| d.text.clone()))
                .bind(col::<Value, _>(dms, |(d, _)| d.entities.clone()))
                .bind(col::<Option<Value>, _>(dms, |(d, _)| d.attachment.clone()))
                .bind(col::<Option<DateTime<Utc>>, _>(dms, |(d, _)| d.created_at))
                .bind(col(dms, |(_, id)| *id))
        },
    )
    .await?;
    insert(
        tx,
        &rows.read_receipts,
        "INSERT INTO dm_read_receipts (sender_id, recipient_id, last_read_event_id, created_at, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[]) ON CONFLICT DO NOTHING",
        |q, receipts| {
            q.bind(col(receipts, |(r, _)| r.sender_id.clone()))
                .bind(col(receipts, |(r, _)| r.recipient_id.clone()))
                .bind(col(receipts, |(r, _)| r.last_read_event_id.clone()))
                .bind(col(receipts, |(r, _)| r.created_at))
                .bind(col(receipts, |(_, id)| *id))
        },
    )
    .await?;
    write_relationships(tx, &rows.relationships).await?;
    // Every post each new event holds, at any depth: the compliance erase
    // finds every copy of a deleted post through it.
    insert(
        tx,
        &rows.held_posts,
        "INSERT INTO event_posts (post_id, event_id)
         SELECT * FROM UNNEST($1::text[], $2::int8[]) ON CONFLICT DO NOTHING",
        |q, held| {
            q.bind(col(held, |(post, _)| *post))
                .bind(col(held, |(_, id)| *id))
        },
    )
    .await?;
    if !rows.deletions.is_empty() {
        insert(
            tx,
            &rows.deletions,
            "INSERT INTO tweet_deletions (tweet_id, user_id, deleted_at, event_id)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::int8[]) ON CONFLICT DO NOTHING",
            |q, deletions| {
                q.bind(col(deletions, |(d, _)| d.tweet_id.clone()))
                    .bind(col(deletions, |(d, _)| d.user_id.clone()))
                    .bind(col(deletions, |(d, _)| d.deleted_at))
                    .bind(col(deletions, |(_, id)| *id))
            },
        )
        .await?;
        take_deleted_posts(tx, &rows.deletions).await?;
    }
    if !rows.deletions.is_empty() || !rows.tweets.is_empty() || !rows.held_posts.is_empty() {
        apply_deletions(tx, &rows.tweets, &rows.held_posts, &rows.deletions).await?;
    }
    insert(
        tx,
        &rows.replay_jobs,
        "INSERT INTO replay_jobs (job_id, webhook_id, job_state, description, reported_at, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int8[])
         ON CONFLICT DO NOTHING",
        |q, jobs| {
            q.bind(col(jobs, |(j, _, _)| j.job_id.clone()))
                .bind(col(jobs, |(j, _, _)| j.webhook_id.clone()))
                .bind(col(jobs, |(j, _, _)| j.job_state.clone()))
                .bind(col(jobs, |(j, _, _)| j.description.clone()))
                .bind(col(jobs, |(_, _, at)| *at))
                .bind(col(jobs, |(_, id, _)| *id))
        },
    )
    .await?;
    // Last: every batch of every replica touches the same accounts' rows,
    // and an upserted row stays locked until commit; written last, they are
    // held for the commit only. (On this 2-core machine replicas did not
    // scale either way: docs/benchmarks.md, "Consumer replicas".)
    insert(
        tx,
        &rows.users,
        "INSERT INTO users (user_id, screen_name, name, profile, observed_at, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::timestamptz[], $6::int8[])
         ON CONFLICT (user_id) DO UPDATE SET
             -- The newer snapshot's fields win; a field one lacks keeps
             -- the other's (a stub has only the id): nothing known is erased.
             screen_name = CASE WHEN EXCLUDED.observed_at > users.observed_at
                 THEN COALESCE(EXCLUDED.screen_name, users.screen_name)
                 ELSE COALESCE(users.screen_name, EXCLUDED.screen_name) END,
             name = CASE WHEN EXCLUDED.observed_at > users.observed_at
                 THEN COALESCE(EXCLUDED.name, users.name)
                 ELSE COALESCE(users.name, EXCLUDED.name) END,
             profile = CASE WHEN EXCLUDED.observed_at > users.observed_at
                 THEN users.profile || jsonb_strip_nulls(EXCLUDED.profile)
                 ELSE EXCLUDED.profile || jsonb_strip_nulls(users.profile) END,
             observed_at = GREATEST(users.observed_at, EXCLUDED.observed_at),
             event_id = CASE WHEN EXCLUDED.observed_at > users.observed_at
                 THEN EXCLUDED.event_id ELSE users.event_id END
         WHERE EXCLUDED.observed_at > users.observed_at
            OR (users.screen_name IS NULL AND EXCLUDED.screen_name IS NOT NULL)
            OR (users.name IS NULL AND EXCLUDED.name IS NOT NULL)",
        |q, users| {
            q.bind(col(users, |(u, _)| u.user_id.clone()))
                .bind(col(users, |(u, _)| u.screen_name.clone()))
                .bind(col(users, |(u, _)| u.name.clone()))
                .bind(col::<Value, _>(users, |(u, _)| u.profile.clone()))
                .bind(col(users, |(u, _)| u.observed_at))
                .bind(col(users, |(_, id)| *id))
        },
    )
    .await
}

/// A deletion takes its post's row in `tweets` (marking it deleted), and a
/// placeholder row when the post is not there, removed again before commit.
/// So a post and its deletion written by two batches at once wait on each
/// other on that key instead of each missing the other's uncommitted row
/// (the post's batch found no deletion, the deletion's update found no
/// post, and `deleted_at` stayed NULL for good): whichever commits second
/// sees the first, in either order. Row locks, not advisory locks, which
/// any role could take and hold.
async fn take_deleted_posts(
    tx: &mut PgConnection,
    deletions: &[(&DeletionRow, i64)],
) -> Result<(), sqlx::Error> {
    let mut earliest: std::collections::BTreeMap<&str, (DateTime<Utc>, i64)> =
        std::collections::BTreeMap::new();
    for (d, id) in deletions {
        let entry = earliest
            .entry(d.tweet_id.as_str())
            .or_insert((d.deleted_at, *id));
        if d.deleted_at < entry.0 {
            *entry = (d.deleted_at, *id);
        }
    }
    let rows: Vec<(&str, DateTime<Utc>, i64)> = earliest
        .into_iter()
        .map(|(post, (at, id))| (post, at, id))
        .collect();
    let placed: Vec<(String, bool)> = sqlx::query_as(
        "INSERT INTO tweets (tweet_id, text, is_longform, entities, deleted_at, event_id)
         SELECT d.tweet_id, '', false, '{}'::jsonb, d.deleted_at, d.event_id
         FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[]) AS d(tweet_id, deleted_at, event_id)
         ON CONFLICT (tweet_id) DO UPDATE SET deleted_at = LEAST(tweets.deleted_at, EXCLUDED.deleted_at)
         RETURNING tweet_id, (xmax = 0)",
    )
    .bind(col(&rows, |(post, _, _)| (*post).to_owned()))
    .bind(col(&rows, |(_, at, _)| *at))
    .bind(col(&rows, |(_, _, id)| *id))
    .fetch_all(&mut *tx)
    .await?;
    let placeholders: Vec<String> = placed
        .into_iter()
        .filter_map(|(post, inserted)| inserted.then_some(post))
        .collect();
    if !placeholders.is_empty() {
        sqlx::query("DELETE FROM tweets WHERE tweet_id = ANY($1)")
            .bind(&placeholders)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Deletions apply whichever arrived first, the post or its deletion; and
/// content of a deleted post that arrived again (late, replayed, embedded in
/// a repost, quote or like, at any depth, for any account) must be erased
/// again. The posts concerned are found first through `tweet_deletions`'
/// key, and the updates touch only those by their keys: a join planned on
/// stale statistics of a young `tweets` table scanned it whole in every
/// batch (docs/benchmarks.md).
///
/// The deletions found are locked (`FOR SHARE`) until this batch commits:
/// an erasure running now (which holds them `FOR UPDATE`) is waited for, and
/// then seen to have marked the post erased, which this batch undoes; one
/// starting after waits for this batch, and then sees its copies.
async fn apply_deletions(
    tx: &mut PgConnection,
    tweets: &[(&TweetRow, i64)],
    held: &[(&str, i64)],
    deletions: &[(&DeletionRow, i64)],
) -> Result<(), sqlx::Error> {
    let arrived: std::collections::BTreeSet<&str> = tweets
        .iter()
        .map(|(t, _)| t.tweet_id.as_str())
        .chain(held.iter().map(|(post, _)| *post))
        .collect();
    let touched: std::collections::BTreeSet<&str> = arrived
        .iter()
        .copied()
        .chain(deletions.iter().map(|(d, _)| d.tweet_id.as_str()))
        .collect();
    let touched: Vec<&str> = touched.into_iter().collect();
    // One index lookup per post, whatever the planner believes about the
    // table: `tweet_id = ANY($1)` was planned as a scan of all of
    // `tweet_deletions`, comparing each row with each of the batch's posts
    // (9 ms a batch after 100 000 deliveries, growing with the table).
    let rows: Vec<(String, DateTime<Utc>, bool)> = sqlx::query_as(
        "SELECT d.tweet_id, d.deleted_at, d.erased_at IS NOT NULL
         FROM UNNEST($1::text[]) AS p(tweet_id)
         CROSS JOIN LATERAL (
             SELECT tweet_id, deleted_at, erased_at FROM tweet_deletions
             WHERE tweet_id = p.tweet_id ORDER BY deleted_at FOR SHARE) d",
    )
    .bind(&touched)
    .fetch_all(&mut *tx)
    .await?;
    // Per post: the earliest deletion, and whether it was erased.
    let mut deleted: BTreeMap<String, (DateTime<Utc>, bool)> = BTreeMap::new();
    for (post, at, erased) in rows {
        let entry = deleted.entry(post).or_insert((at, erased));
        entry.0 = entry.0.min(at);
        entry.1 |= erased;
    }
    if deleted.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE tweets t SET deleted_at = d.deleted_at
         FROM UNNEST($1::text[], $2::timestamptz[]) AS d(tweet_id, deleted_at)
         WHERE t.tweet_id = d.tweet_id AND (t.deleted_at IS NULL OR t.deleted_at > d.deleted_at)",
    )
    .bind(deleted.keys().cloned().collect::<Vec<_>>())
    .bind(deleted.values().map(|(at, _)| *at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let erased_again: Vec<&str> = deleted
        .iter()
        .filter(|(id, (_, erased))| *erased && arrived.contains(id.as_str()))
        .map(|(id, _)| id.as_str())
        .collect();
    erase_again(tx, &erased_again).await
}

/// Sends deleted posts whose content arrived again (in an event or a dead
/// letter) back to the compliance erase.
pub async fn erase_again(tx: &mut PgConnection, posts: &[&str]) -> Result<(), sqlx::Error> {
    if !posts.is_empty() {
        sqlx::query("UPDATE tweet_deletions SET erased_at = NULL WHERE tweet_id = ANY($1) AND erased_at IS NOT NULL")
            .bind(posts)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Every change as it came (`undated`: X sent no time for it; the
/// watermark's maintenance drops such a change when it repeats the pair's
/// state before it, the other envelope's copy of the same change), then
/// each pair's current state.
async fn write_relationships(
    tx: &mut PgConnection,
    changes: &[(RelationshipRow, i64, bool)],
) -> Result<(), sqlx::Error> {
    insert(
        tx,
        changes,
        "INSERT INTO relationship_events (relationship, source_id, target_id, active, event_time, event_id, undated)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bool[], $5::timestamptz[], $6::int8[], $7::bool[])
         ON CONFLICT DO NOTHING",
        |q, changes| {
            q.bind(col(changes, |(r, _, _)| r.relationship.as_str().to_owned()))
                .bind(col(changes, |(r, _, _)| r.source_id.clone()))
                .bind(col(changes, |(r, _, _)| r.target_id.clone()))
                .bind(col(changes, |(r, _, _)| r.active))
                .bind(col(changes, |(r, _, _)| r.event_time))
                .bind(col(changes, |(_, id, _)| *id))
                .bind(col(changes, |(_, _, undated)| *undated))
        },
    )
    .await?;
    let current: Vec<(&RelationshipRow, i64)> =
        current_relationships(changes.iter().map(|(r, id, _)| (r, *id)), |(r, _)| r);
    // The stored state changes only for a change of higher precedence: later
    // event time, or the removal at the same time.
    insert(
        tx,
        &current,
        "INSERT INTO relationships (relationship, source_id, target_id, active, event_time, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bool[], $5::timestamptz[], $6::int8[])
         ON CONFLICT (relationship, source_id, target_id) DO UPDATE
             SET active = EXCLUDED.active, event_time = EXCLUDED.event_time, event_id = EXCLUDED.event_id
             WHERE (EXCLUDED.event_time, NOT EXCLUDED.active) > (relationships.event_time, NOT relationships.active)",
        |q, current| {
            q.bind(col(current, |(r, _)| r.relationship.as_str().to_owned()))
                .bind(col(current, |(r, _)| r.source_id.clone()))
                .bind(col(current, |(r, _)| r.target_id.clone()))
                .bind(col(current, |(r, _)| r.active))
                .bind(col(current, |(r, _)| r.event_time))
                .bind(col(current, |(_, id)| *id))
        },
    )
    .await
}

/// Records revocations, which are state and belong to the events that
/// carry them. A revocation for an account no event of this webhook named
/// yet still creates its row. An older revocation never replaces a newer one.
async fn write_revocations(tx: &mut PgConnection, rows: &Rows<'_>) -> Result<(), sqlx::Error> {
    insert(
        tx,
        &rows.revocations,
        "INSERT INTO subscriptions AS s (webhook_id, user_id, first_seen_at, last_seen_at, revoked_at, revoked_app_id)
         SELECT w, u, at, at, revoked, app FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::timestamptz[]) AS r(w, u, revoked, app, at)
         ON CONFLICT (webhook_id, user_id) DO UPDATE SET
             revoked_at = EXCLUDED.revoked_at, revoked_app_id = EXCLUDED.revoked_app_id
         WHERE s.revoked_at IS NULL OR s.revoked_at < EXCLUDED.revoked_at",
        |q, revocations| {
            q.bind(col(revocations, |((w, _), _)| w.to_string()))
                .bind(col(revocations, |((_, u), _)| u.to_string()))
                .bind(col(revocations, |(_, (at, _, _))| *at))
                .bind(col(revocations, |(_, (_, app, _))| app.map(str::to_owned)))
                .bind(col(revocations, |(_, (_, _, received))| *received))
        },
    )
    .await
}
