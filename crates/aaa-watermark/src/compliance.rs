//! Compliance mode: a deleted post's text and media are erased from
//! `tweets`, from `events.payload` and from every embedded copy (retweets,
//! quotes, likes, mention copies, at any depth, for every account), and
//! from dead letters, within one maintenance interval of the deletion being
//! stored. Ids, authors and times stay: state (deletions, relationships,
//! favorites) is still derived from them. An erased payload is no longer
//! byte-for-byte what X sent; that is the point.
//!
//! Copies are found through `event_posts`, which the consumer fills for
//! every event with every post it holds. A copy committed while an erasure
//! runs is caught either way: a batch that saw the deletion holds it
//! `FOR SHARE`, so the erasure waits for it (or it waits for the erasure,
//! and undoes the mark); a batch that did not see it yet was already
//! running, so the erasure looks once more after every transaction running
//! when it marked the post has ended (`erase_check_xmax`).

use std::collections::BTreeMap;

use aaa_events::erase::erase_post;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// What one call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Erased {
    /// Deleted posts erased for the first time (or again, after new copies
    /// arrived).
    pub posts: u64,
    /// Posts looked at once more, after the transactions running at their
    /// erasure ended.
    pub checked: u64,
    /// Event payloads rewritten.
    pub payloads: u64,
    /// Dead letters rewritten, or dropped when not JSON.
    pub dead_letters: u64,
}

impl Erased {
    pub fn is_empty(&self) -> bool {
        self.posts == 0 && self.checked == 0
    }

    pub fn add(&mut self, other: Erased) {
        self.posts += other.posts;
        self.checked += other.checked;
        self.payloads += other.payloads;
        self.dead_letters += other.dead_letters;
    }
}

/// Erases up to `batch` deleted posts not erased since their content last
/// arrived, and checks again up to `batch` erased ones whose concurrent
/// transactions have ended; each post in its own transaction.
pub async fn erase_deleted(
    pool: &PgPool,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<Erased, sqlx::Error> {
    // true: to erase; false: to check once more.
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "(SELECT DISTINCT tweet_id, true FROM tweet_deletions WHERE erased_at IS NULL LIMIT $1)
         UNION ALL
         (SELECT DISTINCT tweet_id, false FROM tweet_deletions
          WHERE erase_check_xmax IS NOT NULL AND erased_at IS NOT NULL
            AND erase_check_xmax <= pg_snapshot_xmin(pg_current_snapshot())
          LIMIT $1)",
    )
    .bind(batch.max(1))
    .fetch_all(pool)
    .await?;
    let mut posts: BTreeMap<String, bool> = BTreeMap::new();
    for (post, first) in rows {
        *posts.entry(post).or_default() |= first;
    }
    let mut done = Erased::default();
    for (post, first) in &posts {
        let mut tx = pool.begin().await?;
        done.payloads += erase_one(&mut tx, post, *first, now).await?;
        tx.commit().await?;
        if *first {
            done.posts += 1;
        } else {
            done.checked += 1;
        }
    }
    let first: Vec<&str> = posts
        .iter()
        .filter(|(_, first)| **first)
        .map(|(post, _)| post.as_str())
        .collect();
    if !first.is_empty() {
        done.dead_letters = erase_dead_letters(pool, &first).await?;
    }
    Ok(done)
}

/// Deleted posts waiting to be erased or checked (the backlog gauge).
pub async fn backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(DISTINCT tweet_id) FROM tweet_deletions
         WHERE erased_at IS NULL OR erase_check_xmax IS NOT NULL",
    )
    .fetch_one(pool)
    .await
}

/// One post: its rows in `tweets`, every event copy not erased yet. `first`:
/// records which transactions to wait for before checking once more.
async fn erase_one(
    tx: &mut PgConnection,
    post: &str,
    first: bool,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    // The post, and retweets of it (whose text is the post's); rows already
    // empty are not rewritten. `tweets` first, as the consumer locks them
    // before the deletions.
    sqlx::query(
        "UPDATE tweets SET text = '', entities = '{}'::jsonb, display_text_range = NULL
         WHERE (tweet_id = $1 OR retweeted_status_id = $1)
           AND (text <> '' OR entities <> '{}'::jsonb OR display_text_range IS NOT NULL)",
    )
    .bind(post)
    .execute(&mut *tx)
    .await?;
    // Waits for any batch that saw the deletion and holds it: its copies
    // are visible to the lookup below.
    sqlx::query("SELECT 1 FROM tweet_deletions WHERE tweet_id = $1 ORDER BY deleted_at FOR UPDATE")
        .bind(post)
        .execute(&mut *tx)
        .await?;
    let holders: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT ep.event_id, e.payload::text FROM event_posts ep
         LEFT JOIN events e ON e.id = ep.event_id
         WHERE ep.post_id = $1 AND NOT ep.erased
         ORDER BY ep.event_id
         FOR UPDATE OF ep",
    )
    .bind(post)
    .fetch_all(&mut *tx)
    .await?;
    let mut erased = 0;
    for (id, payload) in &holders {
        let Some(payload) = payload else { continue };
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(payload) else {
            continue;
        };
        if erase_post(&mut value, post) {
            sqlx::query("UPDATE events SET payload = $2::json WHERE id = $1")
                .bind(id)
                .bind(value.to_string())
                .execute(&mut *tx)
                .await?;
            erased += 1;
        }
    }
    // Only the copies looked at: one committed since is someone's to find.
    let ids: Vec<i64> = holders.iter().map(|(id, _)| *id).collect();
    sqlx::query("UPDATE event_posts SET erased = true WHERE post_id = $1 AND event_id = ANY($2)")
        .bind(post)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE tweet_deletions SET erased_at = $2,
             erase_check_xmax = CASE WHEN $3 THEN pg_snapshot_xmax(pg_current_snapshot()) END
         WHERE tweet_id = $1",
    )
    .bind(post)
    .bind(now)
    .bind(first)
    .execute(&mut *tx)
    .await?;
    Ok(erased)
}

/// Dead letters holding any of `posts` (their id, quoted, in the raw
/// bytes): erased in place when they are JSON, dropped when not (the
/// deleted content cannot be told apart from the rest).
async fn erase_dead_letters(pool: &PgPool, posts: &[&str]) -> Result<u64, sqlx::Error> {
    let patterns: Vec<Vec<u8>> = posts
        .iter()
        .map(|post| format!("\"{post}\"").into_bytes())
        .collect();
    let mut tx = pool.begin().await?;
    let holders: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT id, raw FROM dead_letters d
         WHERE EXISTS (SELECT 1 FROM unnest($1::bytea[]) p WHERE position(p IN d.raw) > 0)
         ORDER BY id FOR UPDATE",
    )
    .bind(&patterns)
    .fetch_all(&mut *tx)
    .await?;
    let mut changed = 0;
    for (id, raw) in holders {
        match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(mut value) => {
                let mut erased = false;
                for post in posts {
                    erased |= erase_post(&mut value, post);
                }
                if erased {
                    sqlx::query("UPDATE dead_letters SET raw = $2 WHERE id = $1")
                        .bind(id)
                        .bind(value.to_string().into_bytes())
                        .execute(&mut *tx)
                        .await?;
                    changed += 1;
                }
            }
            Err(_) => {
                sqlx::query("DELETE FROM dead_letters WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                changed += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(changed)
}
