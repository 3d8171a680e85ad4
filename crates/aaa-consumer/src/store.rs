//! Writes one planned batch in one transaction. Idempotent: every insert is
//! `ON CONFLICT DO NOTHING` on a natural key, so writing the same batch twice
//! (after a crash before the offset commit) changes nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::batch::{BatchPlan, DeadLetterRow, EventRow};
use crate::normalized;
use crate::reduce::NewEvent;
use crate::seen::Seen;

/// Whether retrying a failed write can succeed. A permanent error is the
/// data's (SQLSTATE classes 21 cardinality, 22 data exception: NUL in text,
/// timestamps or numbers out of range; 23 integrity, except a unique
/// violation, which a concurrent replica can cause; 54 program limit: a key
/// too long for its index): the same rows fail the same way forever.
/// Everything else (connection, resources, locks, permissions) is the
/// database's, and waiting on it loses nothing.
pub fn is_permanent(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            let class = code.get(..2).unwrap_or_default();
            matches!(class, "21" | "22" | "54") || (class == "23" && code != "23505")
        }),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// What a write did, per kind label.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub inserted: BTreeMap<&'static str, u64>,
    pub duplicates: BTreeMap<&'static str, u64>,
    pub dead_letters: u64,
    /// The webhooks and subscriptions the batch saw (duplicates included),
    /// for the consumer's periodic "last seen" write.
    pub seen: Seen,
}

pub async fn write(
    pool: &PgPool,
    plan: &BatchPlan,
    live_horizon: TimeDelta,
) -> Result<WriteStats, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut stats = WriteStats::default();
    write_control(&mut tx, plan).await?;
    if !plan.events.is_empty() {
        let windows = active_replay_windows(&mut tx).await?;
        let attributed: Vec<Option<i64>> = plan
            .events
            .iter()
            .map(|row| attribute(row, &windows, live_horizon))
            .collect();
        let inserted = insert_events(&mut tx, &plan.events, &attributed).await?;
        for row in &plan.events {
            *stats.duplicates.entry(row.kind_label).or_default() += 1;
        }
        // Normalize only what is new: a redelivered event's rows exist already.
        let ids: std::collections::HashMap<(Option<&str>, &str, &str), i64> = inserted
            .iter()
            .map(|(id, user, kind, key)| ((user.as_deref(), kind.as_str(), key.as_str()), *id))
            .collect();
        let mut taken = std::collections::HashSet::new();
        let new: Vec<NewEvent<'_>> = plan
            .events
            .iter()
            .filter_map(|row| {
                let key = (
                    row.for_user_id.as_deref(),
                    row.kind.as_str(),
                    row.natural_key.as_str(),
                );
                let id = *ids.get(&key)?;
                taken.insert(id).then_some(NewEvent {
                    id,
                    row,
                    latest: latest_possible(row, &windows),
                })
            })
            .collect();
        stats.seen.observe(&plan.events);
        count_deliveries(&mut tx, plan, &new, &mut stats.seen).await?;
        normalized::write(&mut tx, &stats.seen, &new).await?;
        count_replayed(&mut tx, plan, &attributed, &ids).await?;
        // Counted under the label the batch planned for each new row (an
        // XAA event's kind is stored as `xaa:<type>`, no AAA envelope key).
        for event in &new {
            let label = event.row.kind_label;
            *stats.inserted.entry(label).or_default() += 1;
            if let Some(dups) = stats.duplicates.get_mut(label) {
                *dups = dups.saturating_sub(1);
            }
        }
        stats.duplicates.retain(|_, n| *n > 0);
    }
    if !plan.dead_letters.is_empty() {
        stats.dead_letters = insert_dead_letters(&mut tx, &plan.dead_letters).await?;
        erase_again_for_dead_letters(&mut tx, &plan.dead_letters).await?;
    }
    tx.commit().await?;
    Ok(stats)
}

fn column<R, T>(rows: &[R], field: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}

/// Counts every event of the batch for X's bill (`x_deliveries_daily`):
/// a new row is a first copy; a copy of a stored one is free when the first
/// was stored the same UTC day (X charges an event once a day) and charged
/// again otherwise. Only copies cost a lookup, and only of `received_at`.
async fn count_deliveries(
    tx: &mut sqlx::PgConnection,
    plan: &BatchPlan,
    new: &[NewEvent<'_>],
    seen: &mut Seen,
) -> Result<(), sqlx::Error> {
    use crate::seen::Delivered;
    let day = |t: DateTime<Utc>| t.date_naive();
    let billed = |row: &EventRow| {
        aaa_events::billing::billed_type(
            &row.kind,
            &row.context,
            &row.payload,
            row.for_user_id.as_deref(),
        )
    };
    // A record's position tells its rows apart, copies of one event included.
    let position = |row: &EventRow| (row.partition, row.offset, row.activity_index);
    let first: std::collections::HashSet<(i32, i64, i32)> =
        new.iter().map(|event| position(event.row)).collect();
    let copies: Vec<&EventRow> = plan
        .events
        .iter()
        .filter(|row| !first.contains(&position(row)))
        .collect();
    for event in new {
        let delivered = Delivered {
            stored: 1,
            ..Delivered::default()
        };
        seen.delivered(day(event.row.received_at), billed(event.row), delivered);
    }
    if copies.is_empty() {
        return Ok(());
    }
    let stored: Vec<(Option<String>, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT e.for_user_id, e.kind, e.natural_key, e.received_at
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS x(u, k, n)
         JOIN events e ON e.for_user_id = x.u AND e.kind = x.k AND e.natural_key = x.n
         UNION ALL
         SELECT e.for_user_id, e.kind, e.natural_key, e.received_at
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS x(u, k, n)
         JOIN events e ON e.for_user_id IS NULL AND x.u IS NULL AND e.kind = x.k AND e.natural_key = x.n",
    )
    .bind(column(&copies, |r| r.for_user_id.clone()))
    .bind(column(&copies, |r| r.kind.clone()))
    .bind(column(&copies, |r| r.natural_key.clone()))
    .fetch_all(&mut *tx)
    .await?;
    let first_stored: std::collections::HashMap<(Option<&str>, &str, &str), DateTime<Utc>> = stored
        .iter()
        .map(|(u, k, n, at)| ((u.as_deref(), k.as_str(), n.as_str()), *at))
        .collect();
    for row in copies {
        let key = (
            row.for_user_id.as_deref(),
            row.kind.as_str(),
            row.natural_key.as_str(),
        );
        let later_day = first_stored
            .get(&key)
            .is_some_and(|at| day(*at) < day(row.received_at));
        let delivered = if later_day {
            Delivered {
                again_later_day: 1,
                ..Delivered::default()
            }
        } else {
            Delivered {
                again_same_day: 1,
                ..Delivered::default()
            }
        };
        seen.delivered(day(row.received_at), billed(row), delivered);
    }
    Ok(())
}

/// A window being replayed right now (state `submitted`).
pub struct ActiveWindow {
    id: i64,
    webhook_id: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

async fn active_replay_windows(
    tx: &mut sqlx::PgConnection,
) -> Result<Vec<ActiveWindow>, sqlx::Error> {
    let rows: Vec<(i64, String, DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, webhook_id, window_from, window_to FROM replay_windows WHERE state = 'submitted'")
            .fetch_all(&mut *tx)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, webhook_id, from, to)| ActiveWindow {
            id,
            webhook_id,
            from,
            to,
        })
        .collect())
}

/// The replay window an arriving event belongs to: same webhook, event time
/// inside the window, and older than the live delivery horizon at arrival.
fn attribute(row: &EventRow, windows: &[ActiveWindow], live_horizon: TimeDelta) -> Option<i64> {
    let event_time = row.event_time?;
    if event_time > row.received_at - live_horizon {
        return None;
    }
    windows
        .iter()
        .find(|w| {
            Some(w.webhook_id.as_str()) == row.webhook_id.as_deref()
                && w.from <= event_time
                && event_time < w.to
        })
        .map(|w| w.id)
}

/// The latest time an event can have happened, when that is earlier than
/// its own time: an event X sent no time for is dated on arrival, but one
/// arriving while a window of its webhook is being replayed may be a
/// replayed copy, which happened inside the window. Dated no later than the
/// window's end, it never overrides a change made after the window
/// (docs/xaa.md, "Ordering").
fn latest_possible(row: &EventRow, windows: &[ActiveWindow]) -> Option<DateTime<Utc>> {
    if !row.dated_on_arrival {
        return None;
    }
    windows
        .iter()
        .filter(|w| Some(w.webhook_id.as_str()) == row.webhook_id.as_deref())
        .map(|w| w.to - TimeDelta::milliseconds(1))
        .filter(|cap| *cap < row.received_at)
        .min()
}

/// Adds this batch's replayed events to their windows: new rows are
/// recovered, rows we already had are duplicates.
async fn count_replayed(
    tx: &mut sqlx::PgConnection,
    plan: &BatchPlan,
    attributed: &[Option<i64>],
    new_ids: &std::collections::HashMap<(Option<&str>, &str, &str), i64>,
) -> Result<(), sqlx::Error> {
    let mut counts: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for (row, window) in plan.events.iter().zip(attributed) {
        let Some(window) = window else { continue };
        let key = (
            row.for_user_id.as_deref(),
            row.kind.as_str(),
            row.natural_key.as_str(),
        );
        let entry = counts.entry(*window).or_default();
        match new_ids.get(&key) {
            Some(id) if seen.insert(*id) => entry.0 += 1,
            _ => entry.1 += 1,
        }
    }
    for (window, (recovered, duplicates)) in counts {
        sqlx::query("UPDATE replay_windows SET recovered = recovered + $2, duplicates = duplicates + $3 WHERE id = $1")
            .bind(window)
            .bind(recovered)
            .bind(duplicates)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

async fn write_control(tx: &mut sqlx::PgConnection, plan: &BatchPlan) -> Result<(), sqlx::Error> {
    let beats = &plan.heartbeats;
    if !beats.is_empty() {
        sqlx::query(
            "INSERT INTO coverage_heartbeats (replica_id, webhook_id, covered_from, covered_to, accepted, refused, refused_by,
                                              replica_started_at, seq, closing, next_due)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::int8[], $6::int8[], $7::jsonb[],
                                  $8::timestamptz[], $9::int8[], $10::bool[], $11::timestamptz[])
             ON CONFLICT DO NOTHING",
        )
        .bind(column(beats, |h| h.replica_id.clone()))
        .bind(column(beats, |h| h.webhook_id.clone()))
        .bind(column(beats, |h| h.from))
        .bind(column(beats, |h| h.to))
        .bind(column(beats, |h| h.accepted as i64))
        .bind(column(beats, |h| h.refused as i64))
        .bind(column::<_, Value>(beats, |h| serde_json::json!(h.refused_by)))
        .bind(column(beats, |h| h.started_at))
        // Heartbeats of receivers older than the life rule carry no life.
        .bind(column(beats, |h| h.started_at.map(|_| h.seq as i64)))
        .bind(column(beats, |h| h.closing))
        .bind(column(beats, |h| h.next_due))
        .execute(&mut *tx)
        .await?;
    }
    if !plan.fences.is_empty() {
        let fences: Vec<_> = plan.fences.iter().collect();
        sqlx::query(
            "INSERT INTO consumer_fences (topic, partition, fence_time)
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::timestamptz[])
             ON CONFLICT (topic, partition) DO UPDATE SET fence_time = GREATEST(consumer_fences.fence_time, EXCLUDED.fence_time)",
        )
        .bind(column(&fences, |((t, _), _)| t.clone()))
        .bind(column(&fences, |((_, p), _)| *p))
        .bind(column(&fences, |(_, at)| **at))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// (id, for_user_id, kind, natural key) of every row that was new.
async fn insert_events(
    tx: &mut sqlx::PgConnection,
    rows: &[EventRow],
    attributed: &[Option<i64>],
) -> Result<Vec<(i64, Option<String>, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO events (webhook_id, for_user_id, kind, natural_key, event_time, payload,
                             context, activity_index, kafka_topic, kafka_partition,
                             kafka_offset, request_id, received_at, via_replay)
         SELECT w, u, k, n, t, p::json, c, i, kt, kp, ko, r, ra, v
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                     $5::timestamptz[], $6::text[], $7::jsonb[], $8::int4[],
                     $9::text[], $10::int4[], $11::int8[], $12::text[],
                     $13::timestamptz[], $14::bool[])
              AS x(w, u, k, n, t, p, c, i, kt, kp, ko, r, ra, v)
         ON CONFLICT ON CONSTRAINT events_natural_key DO NOTHING
         RETURNING id, for_user_id, kind, natural_key",
    )
    .bind(column(rows, |r| r.webhook_id.clone()))
    .bind(column(rows, |r| r.for_user_id.clone()))
    .bind(column(rows, |r| r.kind.clone()))
    .bind(column(rows, |r| r.natural_key.clone()))
    .bind(column::<_, Option<DateTime<Utc>>>(rows, |r| r.event_time))
    .bind(column(rows, |r| r.payload_text.clone()))
    .bind(column::<_, Value>(rows, |r| r.context.clone()))
    .bind(column(rows, |r| r.activity_index))
    .bind(column(rows, |r| r.topic.clone()))
    .bind(column(rows, |r| r.partition))
    .bind(column(rows, |r| r.offset))
    .bind(column(rows, |r| r.request_id.clone()))
    .bind(column(rows, |r| r.received_at))
    .bind(
        attributed
            .iter()
            .map(Option::is_some)
            .collect::<Vec<bool>>(),
    )
    .fetch_all(tx)
    .await
}

/// A dead letter that holds a deleted post already erased (JSON we could
/// not store otherwise) sends the post back to the erasure, which erases
/// dead letters too.
async fn erase_again_for_dead_letters(
    tx: &mut sqlx::PgConnection,
    rows: &[DeadLetterRow],
) -> Result<(), sqlx::Error> {
    let posts: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|row| serde_json::from_slice::<Value>(&row.raw).ok())
        .flat_map(|value| aaa_events::erase::posts_in(&value))
        .collect();
    let posts: Vec<&str> = posts.iter().map(String::as_str).collect();
    normalized::erase_again(tx, &posts).await
}

/// Returns how many dead letters were new.
async fn insert_dead_letters(
    tx: &mut sqlx::PgConnection,
    rows: &[DeadLetterRow],
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO dead_letters (webhook_id, activity_index, error_kind, reason, raw,
                                   raw_sha256, kafka_topic, kafka_partition, kafka_offset,
                                   request_id, received_at)
         SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::bytea[],
                              $6::text[], $7::text[], $8::int4[], $9::int8[], $10::text[],
                              $11::timestamptz[])
         ON CONFLICT ON CONSTRAINT dead_letters_once DO NOTHING",
    )
    .bind(column(rows, |r| r.webhook_id.clone()))
    .bind(column(rows, |r| r.activity_index))
    .bind(column(rows, |r| r.error_kind.to_owned()))
    .bind(column(rows, |r| r.reason.clone()))
    .bind(column(rows, |r| r.raw.clone()))
    .bind(column(rows, |r| r.raw_sha256.clone()))
    .bind(column(rows, |r| r.topic.clone()))
    .bind(column(rows, |r| r.partition))
    .bind(column(rows, |r| r.offset))
    .bind(column(rows, |r| r.request_id.clone()))
    .bind(column(rows, |r| r.received_at))
    .execute(tx)
    .await?;
    Ok(result.rows_affected())
}
