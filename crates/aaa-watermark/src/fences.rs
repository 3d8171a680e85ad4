//! Fences: a control record on every partition of the raw topic, stamped
//! with the time it was written. Once the consumer stored all of them,
//! everything produced before is in Postgres: the oldest of the newest
//! fences is the horizon up to which the watermark may judge.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use aaa_common::kafka::{control, headers};
use aaa_common::observe::InternalEvent;
use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::events::{FenceNotWritten, FenceProducerRebuilt, FenceWrites};
use crate::ports::Fencer;
use crate::{Error, WatermarkArgs};

pub struct Fences {
    config: rdkafka::ClientConfig,
    /// Replaced when it reports a fatal error (see `rebuild_if_fatal`).
    producer: RwLock<Arc<FutureProducer>>,
    topic: String,
    partitions: Vec<i32>,
    health: FenceHealth,
}

/// Fence writes that failed in a row, against the limit past which this
/// replica must not hold leases: a holder that cannot fence can reconcile
/// no replay job, and every job would wait until an operator noticed.
#[derive(Debug)]
pub struct FenceHealth {
    failures_in_a_row: AtomicU32,
    limit: u32,
}

impl FenceHealth {
    pub fn new(limit: u32) -> FenceHealth {
        FenceHealth {
            failures_in_a_row: AtomicU32::new(0),
            limit: limit.max(1),
        }
    }

    /// Counts one fence write (all partitions): a success resets the count.
    pub fn record(&self, written: bool) -> u32 {
        let failures = if written {
            self.failures_in_a_row.store(0, Ordering::SeqCst);
            0
        } else {
            self.failures_in_a_row.fetch_add(1, Ordering::SeqCst) + 1
        };
        FenceWrites {
            failures_in_a_row: failures,
        }
        .emit();
        failures
    }

    pub fn failures_in_a_row(&self) -> u32 {
        self.failures_in_a_row.load(Ordering::SeqCst)
    }

    /// Whether this replica may hold leases and run rounds.
    pub fn failing(&self) -> bool {
        self.failures_in_a_row() >= self.limit
    }

    /// For /healthz: Kubernetes restarts a replica that cannot fence.
    pub fn health(&self) -> Result<(), String> {
        if self.failing() {
            return Err(format!(
                "{} fence writes in a row failed (limit {}): leases released",
                self.failures_in_a_row(),
                self.limit
            ));
        }
        Ok(())
    }
}

impl Fences {
    /// An idempotent producer on the raw topic, and its partitions.
    pub async fn connect(args: &WatermarkArgs) -> Result<Fences, Error> {
        let mut config = args.kafka.client_config(&[])?;
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000");
        let producer: FutureProducer = config.create()?;
        let topic = args.kafka.raw_topic.clone();
        let partitions = {
            let producer = producer.clone();
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(10)))
                    .map(|m| {
                        m.topics()
                            .iter()
                            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                            .collect::<Vec<_>>()
                    })
            })
            .await
            .map_err(|e| Error::Scheduler(e.to_string()))??
        };
        if partitions.is_empty() {
            return Err(Error::NoPartitions(topic));
        }
        Ok(Fences {
            config,
            producer: RwLock::new(Arc::new(producer)),
            topic,
            partitions,
            health: FenceHealth::new(args.fence_failures),
        })
    }

    pub fn health(&self) -> &FenceHealth {
        &self.health
    }

    fn producer(&self) -> Arc<FutureProducer> {
        self.producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces `failed` if it reports a fatal error and is still current,
    /// as the receiver does with its producer.
    fn rebuild_if_fatal(&self, failed: &Arc<FutureProducer>) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                FenceProducerRebuilt {
                    code: format!("{code:?}"),
                    reason: &reason,
                }
                .emit();
                *current = Arc::new(fresh);
            }
            Err(error) => FenceNotWritten { error: &error }.emit(),
        }
    }
}

impl Fencer for Fences {
    /// A fence on every partition, stamped `now`; `true` when every
    /// partition acknowledged its fence. Counted in the fence health.
    async fn write(&self, now: DateTime<Utc>) -> bool {
        let payload = match serde_json::to_vec(&control::Fence { at: now }) {
            Ok(payload) => payload,
            Err(_) => return false,
        };
        let producer = self.producer();
        let sends = self.partitions.iter().map(|partition| {
            let record = FutureRecord::<(), _>::to(&self.topic)
                .partition(*partition)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: headers::RECORD_TYPE,
                    value: Some(control::FENCE),
                }));
            producer.send(record, Timeout::After(Duration::from_secs(5)))
        });
        let mut all = true;
        for result in futures::future::join_all(sends).await {
            if let Err((error, _)) = result {
                FenceNotWritten { error: &error }.emit();
                all = false;
            }
        }
        if !all {
            self.rebuild_if_fatal(&producer);
        }
        self.health.record(all);
        all
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn partitions(&self) -> usize {
        self.partitions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_failing_after_the_limit_of_fence_failures_in_a_row_until_one_is_written() {
        let health = FenceHealth::new(3);
        assert_eq!(health.record(false), 1);
        assert_eq!(health.record(false), 2);
        assert!(!health.failing() && health.health().is_ok());
        assert_eq!(health.record(false), 3);
        assert!(health.failing());
        assert_eq!(
            health.health(),
            Err("3 fence writes in a row failed (limit 3): leases released".to_owned())
        );
        assert_eq!(health.record(true), 0);
        assert!(!health.failing() && health.health().is_ok());
    }
}
