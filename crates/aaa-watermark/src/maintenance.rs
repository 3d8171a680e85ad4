//! Keeps the watermark's own tables at the size of their working set, so a
//! deployment a year old costs what it cost in its first week. What only
//! the watermark needs (heartbeats, validity samples, settled windows, the
//! record of requests to X) is deleted past a horizon, in small batches
//! that never hold a lock for long; dead letters only when configured.
//! Nothing a round can still read is deleted: a webhook's history is kept
//! back to 26 h before where it was last judged, however old that is.

use std::collections::BTreeMap;
use std::time::Instant;

use aaa_common::observe::InternalEvent;
use aaa_events::erase::posts_in;
use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use sqlx::PgPool;

use crate::events::{PayloadsDropped, PruningEnded, RepeatedChangesDropped, RowsPruned, TableSize};

/// How long things are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Heartbeats, validity samples and settled windows older than this go.
    pub horizon: TimeDelta,
    /// Dead letters older than this go; `None` keeps them.
    pub dead_letters: Option<TimeDelta>,
    /// Rows per DELETE statement.
    pub batch: i64,
}

/// What a round judges reaches back 25 h before where it last judged, plus
/// margins; kept whatever the horizon.
const JUDGED_MARGIN: &str = "26 hours";

/// One table's rule: which rows may go, with `$1` the cutoff.
struct Rule {
    table: &'static str,
    /// A `SELECT ctid ... LIMIT $2` of rows that may go.
    victims: String,
    cutoff: DateTime<Utc>,
}

/// `now - age`, or the beginning of time for an age past it.
fn before(now: DateTime<Utc>, age: TimeDelta) -> DateTime<Utc> {
    now.checked_sub_signed(age)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn rules(now: DateTime<Utc>, retention: &Retention) -> Vec<Rule> {
    let horizon = before(now, retention.horizon);
    // A webhook's rows go only before both the horizon and 26 h before
    // where it was judged to: a watermark stopped for days resumes judging
    // where it stopped and must still find that time's heartbeats.
    let judged = |alias: &str, column: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM watermark_progress p WHERE p.webhook_id = {alias}.webhook_id \
             AND {alias}.{column} >= p.judged_to - interval '{JUDGED_MARGIN}')"
        )
    };
    let mut rules = vec![
        Rule {
            table: "coverage_heartbeats",
            victims: format!(
                "SELECT h.ctid FROM coverage_heartbeats h WHERE h.covered_to < $1 AND {} LIMIT $2",
                judged("h", "covered_to")
            ),
            cutoff: horizon,
        },
        Rule {
            table: "webhook_validity",
            victims: format!(
                "SELECT v.ctid FROM webhook_validity v WHERE v.checked_at < $1 AND {} LIMIT $2",
                judged("v", "checked_at")
            ),
            cutoff: horizon,
        },
        Rule {
            table: "replay_windows",
            victims: format!(
                "SELECT w.ctid FROM replay_windows w WHERE w.state IN ('reconciled', 'expired') \
                 AND w.window_to < $1 AND {} LIMIT $2",
                judged("w", "window_to")
            ),
            cutoff: horizon,
        },
        // The request budget looks back 15 minutes.
        Rule {
            table: "x_api_requests",
            victims: "SELECT ctid FROM x_api_requests WHERE requested_at < $1 LIMIT $2".into(),
            cutoff: before(now, TimeDelta::days(1)),
        },
    ];
    if let Some(age) = retention.dead_letters {
        rules.push(Rule {
            table: "dead_letters",
            victims: "SELECT ctid FROM dead_letters WHERE received_at < $1 LIMIT $2".into(),
            cutoff: before(now, age),
        });
    }
    rules
}

/// Deletes what the retention lets go, batch by batch; returns the rows
/// deleted per table.
pub async fn prune(
    pool: &PgPool,
    now: DateTime<Utc>,
    retention: &Retention,
) -> Result<BTreeMap<&'static str, u64>, sqlx::Error> {
    let started = Instant::now();
    let mut deleted = BTreeMap::new();
    for rule in rules(now, retention) {
        // The statement is built from constants above, never from input.
        let statement = format!(
            "DELETE FROM {} WHERE ctid IN ({})",
            rule.table, rule.victims
        );
        let mut total = 0;
        loop {
            let done = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                .bind(rule.cutoff)
                .bind(retention.batch.max(1))
                .execute(pool)
                .await?
                .rows_affected();
            total += done;
            RowsPruned {
                table: rule.table,
                rows: done,
            }
            .emit();
            if done < retention.batch.max(1) as u64 {
                break;
            }
        }
        deleted.insert(rule.table, total);
    }
    PruningEnded {
        elapsed: started.elapsed(),
    }
    .emit();
    Ok(deleted)
}

/// Drops the payload and context of events stored before `cutoff`, and
/// their posts' rows in `event_posts`, `batch` events per transaction;
/// returns how many payloads. Rows are taken in id order from
/// where the last run stopped (`retention_progress`), and only as long as
/// they are old enough, so a run reads what is new since the last, never
/// the whole table. (Ids follow `stored_at`; a row stored out of order by a
/// concurrent transaction is handled when the marker reaches it.) No batch
/// starts once `budget` is spent: a retention first set on a large table
/// catches up over several runs, and each run still reaches its later
/// steps (the compliance erase) instead of holding every run after it off.
pub async fn drop_old_payloads(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    batch: i64,
    budget: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let batch = batch.max(1);
    let started = Instant::now();
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let done_to: i64 = sqlx::query_scalar(
            "SELECT coalesce((SELECT done_to FROM retention_progress WHERE table_name = 'events' FOR UPDATE), 0)",
        )
        .fetch_one(&mut *tx)
        .await?;
        let next: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT id, stored_at < $2 FROM events WHERE id > $1 ORDER BY id LIMIT $3",
        )
        .bind(done_to)
        .bind(cutoff)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let old = next.iter().take_while(|(_, old)| *old).count();
        let Some(&(upto, _)) = next[..old].last() else {
            break;
        };
        forget_held_posts(&mut tx, done_to, upto).await?;
        let dropped = sqlx::query(
            "UPDATE events SET payload = NULL, context = '{}'::jsonb
             WHERE id > $1 AND id <= $2 AND payload IS NOT NULL",
        )
        .bind(done_to)
        .bind(upto)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "INSERT INTO retention_progress (table_name, done_to) VALUES ('events', $1)
             ON CONFLICT (table_name) DO UPDATE SET done_to = excluded.done_to",
        )
        .bind(upto)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        total += dropped;
        PayloadsDropped { rows: dropped }.emit();
        if old < next.len() || next.len() < batch as usize || started.elapsed() >= budget {
            break;
        }
    }
    Ok(total)
}

/// Removes the `event_posts` rows of the events in `(after, upto]` that
/// still hold a payload: they index the payload's posts for the compliance
/// erase, and without the payload there is nothing left to erase. Found as
/// the consumer wrote them (`posts_in` of the payload), through the primary
/// key; a payload that does not parse keeps its rows (it cannot have any
/// the consumer wrote, which parsed it).
async fn forget_held_posts(
    tx: &mut sqlx::PgConnection,
    after: i64,
    upto: i64,
) -> Result<(), sqlx::Error> {
    // Streamed: one payload in memory at a time, however large the batch's.
    let mut payloads = sqlx::query_as::<_, (i64, String)>(
        "SELECT id, payload::text FROM events WHERE id > $1 AND id <= $2 AND payload IS NOT NULL",
    )
    .bind(after)
    .bind(upto)
    .fetch(&mut *tx);
    let (mut posts, mut events) = (Vec::new(), Vec::new());
    while let Some((id, payload)) = payloads.try_next().await? {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&payload) else {
            continue;
        };
        for post in posts_in(&value) {
            posts.push(post);
            events.push(id);
        }
    }
    drop(payloads);
    if !posts.is_empty() {
        sqlx::query(
            "DELETE FROM event_posts
             WHERE (post_id, event_id) IN (SELECT * FROM UNNEST($1::text[], $2::int8[]))",
        )
        .bind(&posts)
        .bind(&events)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Rows per table as Postgres estimates them (no scan): what grows and
/// what stays flat, for the dashboards.
pub async fn report_sizes(pool: &PgPool) -> Result<(), sqlx::Error> {
    let sizes: Vec<(String, f32, i64)> = sqlx::query_as(
        "SELECT c.relname::text, c.reltuples, pg_total_relation_size(c.oid)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind = 'r'
           AND c.relname IN ('events', 'dead_letters', 'coverage_heartbeats', 'webhook_validity',
                             'replay_windows', 'x_api_requests')",
    )
    .fetch_all(pool)
    .await?;
    for (table, rows, bytes) in sizes {
        TableSize { table, rows, bytes }.emit();
    }
    Ok(())
}

/// Drops the relationship changes X sent no time for that repeat the
/// pair's state before them: the other envelope's copy of a change (during
/// a migration X delivers a follow as AAA, with its time, and as XAA,
/// without), or a resend. Only pairs with such a change since `since` are
/// read. The current state (`relationships`) does not change: the same
/// state again is no change. Returns how many were dropped.
pub async fn drop_repeated_relationship_changes(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let dropped = sqlx::query(
        "WITH pairs AS (
             SELECT DISTINCT relationship, source_id, target_id
             FROM relationship_events WHERE undated AND event_time >= $1
         ), ordered AS (
             SELECT e.relationship, e.source_id, e.target_id, e.event_time, e.active, e.undated,
                    lag(e.active) OVER (PARTITION BY e.relationship, e.source_id, e.target_id
                                        ORDER BY e.event_time, e.active DESC) AS before
             FROM relationship_events e JOIN pairs USING (relationship, source_id, target_id)
         )
         DELETE FROM relationship_events r USING ordered o
         WHERE o.undated AND o.before = o.active
           AND r.relationship = o.relationship AND r.source_id = o.source_id
           AND r.target_id = o.target_id AND r.event_time = o.event_time AND r.active = o.active",
    )
    .bind(since)
    .execute(pool)
    .await?
    .rows_affected();
    RepeatedChangesDropped { rows: dropped }.emit();
    Ok(dropped)
}

/// Makes `x_prices` the configured prices. Every replica writes them when
/// it starts, often at the same moment: an upsert and a delete of what is
/// not configured, never a delete-all-then-insert (two of those at once
/// collide on the key).
pub async fn write_prices(pool: &PgPool, prices: &[(String, f64)]) -> Result<(), sqlx::Error> {
    let types: Vec<&str> = prices.iter().map(|(t, _)| t.as_str()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO x_prices (event_type, usd)
         SELECT t, u::numeric FROM UNNEST($1::text[], $2::float8[]) AS x(t, u)
         ON CONFLICT (event_type) DO UPDATE SET usd = EXCLUDED.usd, updated_at = now()
             WHERE x_prices.usd IS DISTINCT FROM EXCLUDED.usd",
    )
    .bind(&types)
    .bind(prices.iter().map(|(_, u)| *u).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM x_prices WHERE NOT event_type = ANY($1)")
        .bind(&types)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// One UTC day of `v_x_charges_daily`, summed over event types.
pub async fn charges_on(
    pool: &PgPool,
    day: chrono::NaiveDate,
) -> Result<crate::events::ChargesToday, sqlx::Error> {
    let (billable, estimated_usd, absorbed, billed_again): (i64, f64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(billable), 0)::int8, coalesce(sum(estimated_usd), 0)::float8,
                coalesce(sum(duplicates_absorbed), 0)::int8, coalesce(sum(duplicates_billed), 0)::int8
         FROM v_x_charges_daily WHERE day = $1",
    )
    .bind(day)
    .fetch_one(pool)
    .await?;
    Ok(crate::events::ChargesToday {
        billable,
        estimated_usd,
        duplicates_absorbed: absorbed,
        duplicates_billed: billed_again,
    })
}
