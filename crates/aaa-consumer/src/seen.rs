//! When webhooks and subscriptions were last seen. A batch transaction only
//! creates their rows (`ON CONFLICT DO NOTHING`, which takes no lock on an
//! existing row); bumping `last_seen_at` on the one `webhooks` row inside
//! every batch made all consumer replicas wait on each other. Instead each
//! replica accumulates what its stored batches saw, and its committer
//! writes it in a short statement of its own, keys in order so replicas
//! never deadlock, before it commits those batches' offsets: a crash
//! before the write re-reads the records, so nothing of it is lost.

use std::collections::BTreeMap;

use aaa_events::Record;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};

use crate::batch::EventRow;

/// First and last time seen (receive time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

impl Span {
    fn at(t: DateTime<Utc>) -> Span {
        Span { first: t, last: t }
    }

    fn widen(&mut self, other: Span) {
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

/// A subscription's span, and the newest activity time (X's clock) of an
/// event other than a revocation: activity after a revocation means the
/// account authorized the app again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionSeen {
    pub span: Span,
    pub last_event_at: Option<DateTime<Utc>>,
}

/// Deliveries of one billed event type on one UTC day (`x_deliveries_daily`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// First copies: X bills them.
    pub stored: i64,
    /// Copies of an event first stored the same UTC day: X charges once a day.
    pub again_same_day: i64,
    /// Copies of an event first stored on an earlier day: charged again.
    pub again_later_day: i64,
}

impl Delivered {
    fn add(&mut self, other: Delivered) {
        self.stored += other.stored;
        self.again_same_day += other.again_same_day;
        self.again_later_day += other.again_later_day;
    }
}

/// What committed batches saw, not yet written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    pub webhooks: BTreeMap<String, Span>,
    pub subscriptions: BTreeMap<(String, String), SubscriptionSeen>,
    /// Per (UTC day of receipt, billed event type).
    pub deliveries: BTreeMap<(NaiveDate, String), Delivered>,
}

/// The time of a row's activity as X dated it, unless it is a revocation.
/// An event X sent without a time is dated on arrival, so a replayed or
/// retried copy of an old one would pass for activity after a revocation:
/// only X's own time may show that an account authorized the app again.
pub fn activity_time(row: &EventRow) -> Option<DateTime<Utc>> {
    let revocation = row.records.iter().any(|r| matches!(r, Record::Revoke(_)));
    row.event_time
        .filter(|_| !revocation && !row.dated_on_arrival)
}

impl Seen {
    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty() && self.subscriptions.is_empty() && self.deliveries.is_empty()
    }

    /// Counts one delivery of `event_type` received on `day`.
    pub fn delivered(&mut self, day: NaiveDate, event_type: String, delivered: Delivered) {
        self.deliveries
            .entry((day, event_type))
            .or_default()
            .add(delivered);
    }

    /// Every row of a committed batch, duplicates included: they prove a
    /// subscription is alive.
    pub fn observe(&mut self, rows: &[EventRow]) {
        for row in rows {
            let Some(webhook) = row.webhook_id.as_deref() else {
                continue;
            };
            self.webhook(webhook, Span::at(row.received_at));
            if let Some(user) = row.for_user_id.as_deref() {
                self.subscription(
                    (webhook.to_owned(), user.to_owned()),
                    SubscriptionSeen {
                        span: Span::at(row.received_at),
                        last_event_at: activity_time(row),
                    },
                );
            }
        }
    }

    fn webhook(&mut self, webhook: &str, span: Span) {
        match self.webhooks.get_mut(webhook) {
            Some(seen) => seen.widen(span),
            None => {
                self.webhooks.insert(webhook.to_owned(), span);
            }
        }
    }

    fn subscription(&mut self, key: (String, String), seen: SubscriptionSeen) {
        let entry = self.subscriptions.entry(key).or_insert(seen);
        entry.span.widen(seen.span);
        entry.last_event_at = entry.last_event_at.max(seen.last_event_at);
    }

    /// Takes back what a failed write did not store.
    pub fn merge(&mut self, other: Seen) {
        for (webhook, span) in other.webhooks {
            self.webhook(&webhook, span);
        }
        for (key, seen) in other.subscriptions {
            self.subscription(key, seen);
        }
        for ((day, event_type), delivered) in other.deliveries {
            self.delivered(day, event_type, delivered);
        }
    }

    /// Writes everything seen (widening, never narrowing, what is stored),
    /// in a transaction of its own.
    pub async fn write(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        self.write_to(&mut tx, Existing::Widen).await?;
        self.write_deliveries(&mut tx).await?;
        tx.commit().await
    }

    /// Adds the deliveries counted to `x_deliveries_daily`, keys in order.
    async fn write_deliveries(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.deliveries.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = self.deliveries.iter().collect();
        sqlx::query(
            "INSERT INTO x_deliveries_daily (day, event_type, stored, again_same_day, again_later_day)
             SELECT * FROM UNNEST($1::date[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
             ON CONFLICT (day, event_type) DO UPDATE SET
                 stored = x_deliveries_daily.stored + EXCLUDED.stored,
                 again_same_day = x_deliveries_daily.again_same_day + EXCLUDED.again_same_day,
                 again_later_day = x_deliveries_daily.again_later_day + EXCLUDED.again_later_day",
        )
        .bind(rows.iter().map(|((d, _), _)| *d).collect::<Vec<_>>())
        .bind(rows.iter().map(|((_, t), _)| t.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, n)| n.stored).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, n)| n.again_same_day).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, n)| n.again_later_day).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Writes the webhooks and subscriptions seen; `existing` says what
    /// happens to rows that are there already. Keys go in order, so
    /// concurrent writers lock rows in the same order.
    pub async fn write_to(
        &self,
        conn: &mut PgConnection,
        existing: Existing,
    ) -> Result<(), sqlx::Error> {
        if !self.webhooks.is_empty() {
            let statement = match existing {
                Existing::Keep => WEBHOOKS_KEEP,
                Existing::Widen => WEBHOOKS_WIDEN,
            };
            let rows: Vec<_> = self.webhooks.iter().collect();
            sqlx::query(statement)
                .bind(rows.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|(_, s)| s.first).collect::<Vec<_>>())
                .bind(rows.iter().map(|(_, s)| s.last).collect::<Vec<_>>())
                .execute(&mut *conn)
                .await?;
        }
        if !self.subscriptions.is_empty() {
            let statement = match existing {
                Existing::Keep => SUBSCRIPTIONS_KEEP,
                Existing::Widen => SUBSCRIPTIONS_WIDEN,
            };
            let rows: Vec<_> = self.subscriptions.iter().collect();
            sqlx::query(statement)
                .bind(
                    rows.iter()
                        .map(|((w, _), _)| w.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|((_, u), _)| u.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(rows.iter().map(|(_, s)| s.span.first).collect::<Vec<_>>())
                .bind(rows.iter().map(|(_, s)| s.span.last).collect::<Vec<_>>())
                .bind(
                    rows.iter()
                        .map(|(_, s)| s.last_event_at)
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// What a write of [`Seen`] does to a row that exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Leaves it alone, without locking it (inside a batch transaction:
    /// only rows seen for the first time are created).
    Keep,
    /// Widens its first and last seen times (outside the batches).
    Widen,
}

// The `NOT EXISTS` skips rows that are there (almost always) without
// trying to insert them: an insert that conflicts with a row another
// transaction is updating (the committer widening its last-seen time)
// waits for that transaction, which made every batch queue behind it.
const WEBHOOKS_KEEP: &str = "INSERT INTO webhooks (webhook_id, first_seen_at, last_seen_at)
     SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS x(webhook_id, f, l)
     WHERE NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.webhook_id = x.webhook_id)
     ON CONFLICT (webhook_id) DO NOTHING";
const WEBHOOKS_WIDEN: &str = "INSERT INTO webhooks (webhook_id, first_seen_at, last_seen_at)
     SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[])
     ON CONFLICT (webhook_id) DO UPDATE SET
         first_seen_at = LEAST(webhooks.first_seen_at, EXCLUDED.first_seen_at),
         last_seen_at = GREATEST(webhooks.last_seen_at, EXCLUDED.last_seen_at)";
const SUBSCRIPTIONS_KEEP: &str = "INSERT INTO subscriptions (webhook_id, user_id, first_seen_at, last_seen_at, last_event_at)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[])
         AS x(webhook_id, user_id, f, l, e)
     WHERE NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.webhook_id = x.webhook_id AND s.user_id = x.user_id)
     ON CONFLICT (webhook_id, user_id) DO NOTHING";
const SUBSCRIPTIONS_WIDEN: &str = "INSERT INTO subscriptions (webhook_id, user_id, first_seen_at, last_seen_at, last_event_at)
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[])
     ON CONFLICT (webhook_id, user_id) DO UPDATE SET
         first_seen_at = LEAST(subscriptions.first_seen_at, EXCLUDED.first_seen_at),
         last_seen_at = GREATEST(subscriptions.last_seen_at, EXCLUDED.last_seen_at),
         last_event_at = GREATEST(subscriptions.last_event_at, EXCLUDED.last_event_at)";

#[cfg(test)]
mod tests {
    use super::*;

    fn t(second: i64) -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
            + chrono::TimeDelta::seconds(second)
    }

    fn seen(first: i64, last: i64) -> Seen {
        let mut seen = Seen::default();
        seen.webhook(
            "w",
            Span {
                first: t(first),
                last: t(last),
            },
        );
        seen.subscription(
            ("w".into(), "u".into()),
            SubscriptionSeen {
                span: Span {
                    first: t(first),
                    last: t(last),
                },
                last_event_at: Some(t(last)),
            },
        );
        seen
    }

    #[test]
    fn merging_only_widens() {
        let mut a = seen(10, 20);
        a.merge(seen(5, 15));
        a.merge(seen(12, 30));
        assert_eq!(
            a.webhooks["w"],
            Span {
                first: t(5),
                last: t(30)
            }
        );
        let sub = a.subscriptions[&("w".to_owned(), "u".to_owned())];
        assert_eq!(
            sub.span,
            Span {
                first: t(5),
                last: t(30)
            }
        );
        assert_eq!(sub.last_event_at, Some(t(30)));
        let mut empty = Seen::default();
        assert!(empty.is_empty());
        empty.merge(a.clone());
        assert_eq!(empty, a);
    }
}
