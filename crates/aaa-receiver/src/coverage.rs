//! Heartbeats: this replica's proof of which time it served, per webhook.
//! Every interval it reports what it accepted and refused, through Kafka, so
//! the watermark can tell a covered minute from a gap. A heartbeat that
//! cannot be written leaves a hole, which is exactly right: the broker was
//! down then.
//!
//! Each run of the process is one life of the replica: it opens with a
//! heartbeat written before anything is served and ends with a closing one
//! written after the drain, carrying the drain's tally. The watermark holds
//! every life it has seen to account until it closed or its absence is
//! certain (`next_due`), so a replica that dies takes its refusals with it
//! no more: its last stretch is unproven whatever the others report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use aaa_common::Clock;
use aaa_common::kafka::{control, headers};
use aaa_common::observe::InternalEvent;
use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use tokio_util::sync::CancellationToken;

use crate::events::{Coverage as Counts, HeartbeatNotWritten, LifeClosed, LifeOpened, Outcome};
use crate::producer::RecordSink;

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
                    started_at: None,
                    seq: 0,
                    closing: false,
                    next_due: None,
                }
            })
            .collect()
    }
}

/// How this replica's heartbeats are paced.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Between two heartbeats (simulated time).
    pub interval: Duration,
    /// The longest one write may take (real time: the producer's timeout),
    /// plus slack for a busy scheduler.
    pub write_budget: Duration,
}

/// Slack on top of the producer's timeout before a missing heartbeat means
/// the replica is gone: a loaded machine may start the next beat late.
pub const SCHEDULING_SLACK: Duration = Duration::from_secs(2);

/// One life of this replica, written through `sink`.
pub struct Life<S> {
    coverage: Arc<Coverage>,
    sink: Arc<S>,
    topic: String,
    clock: Clock,
    pace: Pace,
    started_at: DateTime<Utc>,
    seq: u64,
    /// Where the next heartbeat's stretch begins.
    from: DateTime<Utc>,
}

impl<S: RecordSink> Life<S> {
    pub fn new(
        coverage: Arc<Coverage>,
        sink: Arc<S>,
        topic: String,
        clock: Clock,
        pace: Pace,
    ) -> Life<S> {
        let started_at = clock.now();
        Life {
            coverage,
            sink,
            topic,
            clock,
            pace,
            started_at,
            seq: 0,
            from: started_at,
        }
    }

    /// By when the heartbeat after one ending at `to` is written, if this
    /// replica lives.
    fn next_due(&self, to: DateTime<Utc>) -> DateTime<Utc> {
        let real = self.clock.real_duration(self.pace.interval) + self.pace.write_budget;
        let simulated = match self.clock {
            Clock::Wall => real,
            Clock::Scaled { speed, .. } => real.mul_f64(speed),
        };
        to + TimeDelta::from_std(simulated).unwrap_or(TimeDelta::MAX)
    }

    /// Writes `beats` (one per webhook) concurrently; `true` when all were taken.
    async fn write(&self, beats: Vec<control::Heartbeat>) -> bool {
        let sends = beats.iter().map(|beat| async move {
            let payload = match serde_json::to_vec(beat) {
                Ok(payload) => payload,
                Err(error) => return Err(error.to_string()),
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
            self.sink
                .send(&self.topic, &beat.webhook_id, &payload, record_headers)
                .await
                .map_err(|e| e.to_string())
        });
        let results = futures::future::join_all(sends).await;
        let mut all = true;
        for (beat, result) in beats.iter().zip(results) {
            if let Err(error) = result {
                HeartbeatNotWritten {
                    webhook: &beat.webhook_id,
                    error: &error,
                }
                .emit();
                all = false;
            }
        }
        all
    }

    /// The heartbeats for `[self.from, to)`, numbered and stamped.
    fn stamped(&mut self, to: DateTime<Utc>, closing: bool) -> Vec<control::Heartbeat> {
        let seq = self.seq;
        self.seq += 1;
        let next_due = self.next_due(to);
        let mut beats = self.coverage.take(self.from, to);
        for beat in &mut beats {
            beat.started_at = Some(self.started_at);
            beat.seq = seq;
            beat.closing = closing;
            beat.next_due = (!closing).then_some(next_due);
        }
        self.from = to;
        beats
    }

    /// The opening heartbeat (no time covered), before anything is served:
    /// a replica that dies before its first interval still leaves its first
    /// stretch unproven. Retried until written, or until `shutdown`.
    pub async fn open(&mut self, shutdown: &CancellationToken) -> bool {
        let beats = self.stamped(self.started_at, false);
        loop {
            if self.write(beats.clone()).await {
                LifeOpened {
                    started_at: self.started_at,
                }
                .emit();
                return true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes a heartbeat every interval until `shutdown`.
    pub async fn beat_until(&mut self, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.clock.real_duration(self.pace.interval)) => {}
            }
            let beats = self.stamped(self.clock.now(), false);
            self.write(beats).await;
        }
    }

    /// The closing heartbeat, after the drain: the drain's tally, and the
    /// word that nothing follows. Awaited (the producer's own timeout
    /// bounds it); unwritten, this life's last stretch stays unproven.
    pub async fn close(mut self) -> bool {
        let beats = self.stamped(self.clock.now(), true);
        let written = self.write(beats).await;
        LifeClosed {
            started_at: self.started_at,
            written,
        }
        .emit();
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::ProduceError;

    /// Keeps every heartbeat it is sent, or refuses them all.
    #[derive(Default)]
    struct Beats {
        refuse: std::sync::atomic::AtomicBool,
        sent: Mutex<Vec<control::Heartbeat>>,
    }

    impl RecordSink for Beats {
        async fn send(
            &self,
            _: &str,
            _: &str,
            payload: &[u8],
            _: OwnedHeaders,
        ) -> Result<(), ProduceError> {
            if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ProduceError::Timeout(Duration::from_millis(1)));
            }
            let beat = serde_json::from_slice(payload).expect("a heartbeat");
            self.sent.lock().expect("not poisoned").push(beat);
            Ok(())
        }
    }

    /// A life opens before serving, numbers its heartbeats, says when the
    /// next is due, and closes after the drain with the drain's tally.
    #[tokio::test]
    async fn a_life_opens_numbers_its_heartbeats_and_closes_with_the_drains_tally() {
        let coverage = Arc::new(Coverage::new("r1".into(), ["w".to_owned()]));
        let sink = Arc::new(Beats::default());
        let clock = Clock::Scaled {
            real_epoch: Utc::now(),
            sim_epoch: Utc::now(),
            speed: 100.0,
        };
        let pace = Pace {
            interval: Duration::from_secs(10),
            write_budget: Duration::from_secs(3),
        };
        let mut life = Life::new(coverage.clone(), sink.clone(), "t".into(), clock, pace);
        let shutdown = CancellationToken::new();
        assert!(life.open(&shutdown).await);
        coverage.record("w", Outcome::Ok);
        let beat = life.stamped(clock.now(), false);
        assert!(life.write(beat).await);
        // Shutdown: the loop stops, the drain refuses one delivery.
        coverage.record("w", Outcome::BrokerUnavailable);
        assert!(life.close().await);
        let sent = sink.sent.lock().expect("not poisoned").clone();
        assert_eq!(sent.len(), 3, "{sent:?}");
        let started = sent[0].started_at.expect("a life");
        assert_eq!(
            (sent[0].from, sent[0].to),
            (started, started),
            "opening covers no time"
        );
        assert!(sent.iter().all(|b| b.started_at == Some(started)));
        assert_eq!(sent.iter().map(|b| b.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(sent[1].from, sent[0].to, "stretches follow each other");
        assert_eq!(sent[2].from, sent[1].to);
        assert_eq!((sent[1].accepted, sent[1].refused), (1, 0));
        assert_eq!(
            (sent[2].accepted, sent[2].refused),
            (0, 1),
            "the drain's tally"
        );
        assert_eq!(
            sent.iter().map(|b| b.closing).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert_eq!(
            sent[2].next_due, None,
            "nothing follows a closing heartbeat"
        );
        // Due after one interval plus the write budget, in simulated time
        // (3 real seconds at 100x: 300 s).
        assert_eq!(
            sent[1].next_due,
            Some(sent[1].to + TimeDelta::seconds(10 + 300))
        );
    }

    /// An opening heartbeat the broker refuses is retried: nothing is
    /// served before the life is announced.
    #[tokio::test]
    async fn the_opening_heartbeat_is_retried_until_the_broker_takes_it() {
        let coverage = Arc::new(Coverage::new("r1".into(), ["w".to_owned()]));
        let sink = Arc::new(Beats::default());
        sink.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        let pace = Pace {
            interval: Duration::from_secs(10),
            write_budget: Duration::from_secs(3),
        };
        let mut life = Life::new(coverage, sink.clone(), "t".into(), Clock::Wall, pace);
        let shutdown = CancellationToken::new();
        let opened = {
            let sink = sink.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                sink.refuse
                    .store(false, std::sync::atomic::Ordering::SeqCst);
            });
            life.open(&shutdown).await
        };
        assert!(opened);
        assert_eq!(sink.sent.lock().expect("not poisoned").len(), 1);
    }

    #[test]
    fn only_deliveries_from_x_that_were_not_kept_count_as_refused() {
        let coverage = Coverage::new("r1".into(), ["w".to_owned()]);
        for outcome in Outcome::ALL {
            coverage.record("w", outcome);
        }
        let at = chrono::DateTime::UNIX_EPOCH;
        let beats = coverage.take(at, at);
        assert_eq!(beats.len(), 1);
        // Ok, and X's oversized body kept whole as a dead letter.
        assert_eq!(beats[0].accepted, 2);
        assert_eq!(beats[0].refused, 2);
        let by: Vec<_> = beats[0].refused_by.keys().cloned().collect();
        assert_eq!(by, ["broker_unavailable", "shed"]);
    }
}
