//! Writes one planned batch in one transaction. Idempotent: every insert is
//! `ON CONFLICT DO NOTHING` on a natural key, so writing the same batch twice
//! (after a crash before the offset commit) changes nothing.

use std::collections::BTreeMap;

use aaa_events::ActivityKind;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::batch::{BatchPlan, DeadLetterRow, EventRow};
use crate::normalized::{self, NewEvent};

/// What a write did, per kind label.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub inserted: BTreeMap<&'static str, u64>,
    pub duplicates: BTreeMap<&'static str, u64>,
    pub dead_letters: u64,
}

pub async fn write(pool: &PgPool, plan: &BatchPlan) -> Result<WriteStats, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut stats = WriteStats::default();
    if !plan.events.is_empty() {
        let inserted = insert_events(&mut tx, &plan.events).await?;
        for row in &plan.events {
            *stats.duplicates.entry(row.kind_label).or_default() += 1;
        }
        // Normalize only what is new: a redelivered event's rows exist already.
        let ids: std::collections::HashMap<(Option<&str>, &str, &str), i64> = inserted
            .iter()
            .map(|(id, user, kind, key)| ((user.as_deref(), kind.as_str(), key.as_str()), *id))
            .collect();
        let mut seen = std::collections::HashSet::new();
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
                seen.insert(id).then_some(NewEvent { id, row })
            })
            .collect();
        normalized::write(&mut tx, &plan.events, &new).await?;
        for (_, _, kind, _) in inserted {
            let label = ActivityKind::from_envelope_key(&kind)
                .map(|k| k.as_str())
                .unwrap_or("unknown");
            *stats.inserted.entry(label).or_default() += 1;
            if let Some(dups) = stats.duplicates.get_mut(label) {
                *dups = dups.saturating_sub(1);
            }
        }
        stats.duplicates.retain(|_, n| *n > 0);
    }
    if !plan.dead_letters.is_empty() {
        stats.dead_letters = insert_dead_letters(&mut tx, &plan.dead_letters).await?;
    }
    tx.commit().await?;
    Ok(stats)
}

fn column<R, T>(rows: &[R], field: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}

/// (id, for_user_id, kind, natural key) of every row that was new.
async fn insert_events(
    tx: &mut sqlx::PgConnection,
    rows: &[EventRow],
) -> Result<Vec<(i64, Option<String>, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO events (webhook_id, for_user_id, kind, natural_key, event_time, payload,
                             context, activity_index, kafka_topic, kafka_partition,
                             kafka_offset, request_id, received_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                              $5::timestamptz[], $6::jsonb[], $7::jsonb[], $8::int4[],
                              $9::text[], $10::int4[], $11::int8[], $12::text[],
                              $13::timestamptz[])
         ON CONFLICT ON CONSTRAINT events_natural_key DO NOTHING
         RETURNING id, for_user_id, kind, natural_key",
    )
    .bind(column(rows, |r| r.webhook_id.clone()))
    .bind(column(rows, |r| r.for_user_id.clone()))
    .bind(column(rows, |r| r.kind.clone()))
    .bind(column(rows, |r| r.natural_key.clone()))
    .bind(column::<_, Option<DateTime<Utc>>>(rows, |r| r.event_time))
    .bind(column::<_, Value>(rows, |r| r.payload.clone()))
    .bind(column::<_, Value>(rows, |r| r.context.clone()))
    .bind(column(rows, |r| r.activity_index))
    .bind(column(rows, |r| r.topic.clone()))
    .bind(column(rows, |r| r.partition))
    .bind(column(rows, |r| r.offset))
    .bind(column(rows, |r| r.request_id.clone()))
    .bind(column(rows, |r| r.received_at))
    .fetch_all(tx)
    .await
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
