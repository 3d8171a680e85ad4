//! Heartbeats: this replica's proof of which time it served, per webhook.
//! Every interval it reports what it accepted and refused, through Kafka, so
//! the watermark can tell a covered minute from a gap. A heartbeat that
//! cannot be written leaves a hole, which is exactly right: the broker was
//! down then.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;

use aaa_common::Clock;
use aaa_common::kafka::{control, headers};
use aaa_common::observe::InternalEvent;
use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use tokio_util::sync::CancellationToken;

use crate::events::{Coverage as Counts, Outcome};
use crate::producer::{RawProducer, RecordSink};

#[derive(Default)]
struct Tally {
    accepted: u64,
    refused: u64,
    refused_by: BTreeMap<String, u64>,
}

pub struct Coverage {
    replica_id: String,
    tallies: Mutex<HashMap<String, Tally>>,
}

impl Coverage {
    pub fn new(replica_id: String, webhooks: impl IntoIterator<Item = String>) -> Coverage {
        let tallies = webhooks
            .into_iter()
            .map(|w| (w, Tally::default()))
            .collect();
        Coverage {
            replica_id,
            tallies: Mutex::new(tallies),
        }
    }

    /// Counts a delivery outcome into this interval's heartbeat. Refusals
    /// of requests that were not shown to come from X are left out: they
    /// must not turn into gaps, and so into replays.
    pub fn record(&self, webhook: &str, outcome: Outcome) {
        let counts = outcome.coverage();
        if counts == Counts::NotFromX {
            return;
        }
        let mut tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        let tally = tallies.entry(webhook.to_owned()).or_default();
        if counts == Counts::Accepted {
            tally.accepted += 1;
        } else {
            tally.refused += 1;
            *tally
                .refused_by
                .entry(outcome.as_label().to_owned())
                .or_default() += 1;
        }
    }

    /// Takes every webhook's tally for the interval `[from, to)`.
    pub(crate) fn take(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<control::Heartbeat> {
        let mut tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        tallies
            .iter_mut()
            .map(|(webhook, tally)| {
                let tally = std::mem::take(tally);
                control::Heartbeat {
                    replica_id: self.replica_id.clone(),
                    webhook_id: webhook.clone(),
                    from,
                    to,
                    accepted: tally.accepted,
                    refused: tally.refused,
                    refused_by: tally.refused_by,
                }
            })
            .collect()
    }
}

/// Writes a heartbeat per webhook every `interval` (simulated time).
pub async fn heartbeat_loop(
    coverage: Arc<Coverage>,
    producer: Arc<RawProducer>,
    topic: String,
    clock: Clock,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut from = clock.now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(clock.real_duration(interval)) => {}
        }
        let to = clock.now();
        for beat in coverage.take(from, to) {
            let Ok(payload) = serde_json::to_vec(&beat) else {
                continue;
            };
            let record_headers = OwnedHeaders::new()
                .insert(Header {
                    key: headers::RECORD_TYPE,
                    value: Some(control::HEARTBEAT),
                })
                .insert(Header {
                    key: headers::WEBHOOK_ID,
                    value: Some(beat.webhook_id.as_str()),
                });
            if let Err(error) = producer
                .send(&topic, &beat.webhook_id, &payload, record_headers)
                .await
            {
                crate::events::HeartbeatNotWritten {
                    webhook: &beat.webhook_id,
                    error: &error,
                }
                .emit();
            }
        }
        from = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deliveries_from_x_that_were_not_kept_count_as_refused() {
        let coverage = Coverage::new("r1".into(), ["w".to_owned()]);
        for outcome in Outcome::ALL {
            coverage.record("w", outcome);
        }
        let at = chrono::DateTime::UNIX_EPOCH;
        let beats = coverage.take(at, at);
        assert_eq!(beats.len(), 1);
        assert_eq!(beats[0].accepted, 1);
        assert_eq!(beats[0].refused, 3);
        let by: Vec<_> = beats[0].refused_by.keys().cloned().collect();
        assert_eq!(by, ["broker_unavailable", "shed", "too_large_authentic"]);
    }
}
