//! Compliance mode: a deleted post's text and media are erased from
//! `tweets`, from `events.payload` and from every embedded copy (retweets,
//! quotes, likes, mention copies), within one maintenance interval of the
//! deletion being stored. Ids, authors and times stay: state (deletions,
//! relationships, favorites) is still derived from them. An erased payload
//! is no longer byte-for-byte what X sent; that is the point.

use aaa_events::erase::erase_post;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Erases every deleted post not erased since its content last arrived, up
/// to `batch` posts a call; returns how many posts and payloads it erased.
pub async fn erase_deleted(
    pool: &PgPool,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<(u64, u64), sqlx::Error> {
    let posts: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tweet_id FROM tweet_deletions WHERE erased_at IS NULL LIMIT $1",
    )
    .bind(batch.max(1))
    .fetch_all(pool)
    .await?;
    let mut payloads = 0;
    for post in &posts {
        payloads += erase_one(pool, post, now).await?;
    }
    metrics::counter!("aaa_watermark_erased_posts_total").increment(posts.len() as u64);
    metrics::counter!("aaa_watermark_erased_payloads_total").increment(payloads);
    Ok((posts.len() as u64, payloads))
}

/// One post, in one transaction: its row, every event that holds it.
async fn erase_one(pool: &PgPool, post: &str, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        // The post, and retweets of it (whose text is the post's).
        "UPDATE tweets SET text = '', entities = '{}'::jsonb, display_text_range = NULL
         WHERE tweet_id = $1 OR retweeted_status_id = $1",
    )
    .bind(post)
    .execute(&mut *tx)
    .await?;
    // Every event that can hold the post, found through the normalized
    // rows (all indexed): the post's own event and its copies for the
    // author and mentioned accounts, retweets and quotes of it, likes of it.
    let holders: Vec<(i64, String)> = sqlx::query_as(
        "SELECT e.id, e.payload::text FROM events e WHERE e.id IN (
             SELECT event_id FROM tweets WHERE tweet_id = $1 OR retweeted_status_id = $1 OR quoted_status_id = $1
             UNION SELECT event_id FROM mentions WHERE tweet_id = $1
             UNION SELECT event_id FROM favorites WHERE tweet_id = $1
             UNION SELECT id FROM events
                   WHERE kind = 'tweet_create_events' AND natural_key = $1
                     AND for_user_id IN (SELECT user_id FROM mentions WHERE tweet_id = $1
                                         UNION SELECT author_id FROM tweets WHERE tweet_id = $1))
           AND e.payload IS NOT NULL
         FOR UPDATE",
    )
    .bind(post)
    .fetch_all(&mut *tx)
    .await?;
    let mut erased = 0;
    for (id, payload) in holders {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&payload) else {
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
    sqlx::query("UPDATE tweet_deletions SET erased_at = $2 WHERE tweet_id = $1")
        .bind(post)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(erased)
}
