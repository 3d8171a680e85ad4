//! The Kafka producer behind every acknowledgement.
//!
//! Idempotent, `acks=all`: a 200 to X means every in-sync replica has the
//! bytes. A fatal producer error (e.g. idempotence state lost after
//! timeouts) would wedge a plain producer forever, so this one is rebuilt.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aaa_common::observe::InternalEvent;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::Error;

pub struct RawProducer {
    config: ClientConfig,
    current: RwLock<Arc<FutureProducer>>,
    produce_timeout: Duration,
}

/// Where deliveries go: a record is acknowledged (the broker has it) or
/// refused. The receiver answers X only after this says.
pub trait RecordSink: Send + Sync + 'static {
    fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> impl std::future::Future<Output = Result<(), ProduceError>> + Send;
}

/// Why a record was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("broker refused or failed: {0}")]
    Kafka(#[from] KafkaError),
}

/// Room for the key, headers and batch framing around a body.
const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

impl RawProducer {
    /// `max_body_bytes`: the largest body the receiver accepts. Every such
    /// body must also fit through the producer, whose own default limit
    /// (librdkafka's `message.max.bytes`, 1 000 000) is below the receiver's
    /// default of 1 MiB: a body in between would get 503 forever.
    pub fn new(
        mut config: ClientConfig,
        produce_timeout: Duration,
        max_body_bytes: usize,
    ) -> Result<Self, Error> {
        let timeout_ms = produce_timeout.as_millis().max(1).to_string();
        let max_record = (max_body_bytes + RECORD_OVERHEAD_BYTES).to_string();
        config
            .set("message.max.bytes", &max_record)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // librdkafka gives up on a record after this; we answer 503 then.
            .set("message.timeout.ms", &timeout_ms)
            // Low latency: X waits on every request for our answer.
            .set("linger.ms", "2");
        let producer = config.create().map_err(Error::Producer)?;
        Ok(RawProducer {
            config,
            current: RwLock::new(Arc::new(producer)),
            produce_timeout,
        })
    }

    fn producer(&self) -> Arc<FutureProducer> {
        // A poisoned lock only means another request panicked while swapping;
        // the Arc inside is still a valid producer.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces `failed` if it reports a fatal error and is still current.
    fn rebuild_if_fatal(&self, failed: &Arc<FutureProducer>) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !Arc::ptr_eq(&current, failed) {
            return; // another request already rebuilt it
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                crate::events::ProducerRebuilt {
                    code: format!("{code:?}"),
                    reason: &reason,
                }
                .emit();
                *current = Arc::new(fresh);
            }
            Err(err) => tracing::error!(message = "producer rebuild failed", error = %err),
        }
    }

    /// Fetches `topic`'s metadata and so connects to its partitions'
    /// leaders before the first delivery: otherwise the first deliveries
    /// after a start wait for it, hold the receiver's slots for half a
    /// second or more, and the ones behind them are shed. Best effort: a
    /// broker that is down now is waited for by the deliveries themselves.
    pub async fn warm_up(self: &Arc<Self>, topic: &str) {
        let producer = self.producer();
        let topic = topic.to_owned();
        let warmed = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(5)))
                .map(|_| ())
        })
        .await;
        match warmed {
            Ok(Ok(())) => {
                tracing::debug!(message = "producer connected to the raw topic's leaders")
            }
            Ok(Err(error)) => {
                tracing::warn!(message = "raw topic's metadata not fetched at start; deliveries will wait for it", error = %error)
            }
            Err(error) => tracing::warn!(message = "producer warm-up failed", error = %error),
        }
    }

    /// Broker reachability, for `/readyz`.
    pub async fn check_broker(self: &Arc<Self>) -> Result<(), String> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(Duration::from_secs(2)))
                .map(|_| ())
                .map_err(|e| format!("broker unreachable: {e}"))
        })
        .await
        .map_err(|e| format!("readiness check failed: {e}"))?
    }

    /// Waits for every queued record to be acknowledged (graceful shutdown).
    pub async fn flush(self: &Arc<Self>, timeout: Duration) -> Result<(), String> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

impl RecordSink for RawProducer {
    /// Produces one record and waits for the broker's acknowledgement, at most
    /// the produce timeout.
    async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), ProduceError> {
        let producer = self.producer();
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        // Queue wait is part of the same budget: never block longer than X allows.
        let delivery = producer.send(record, Timeout::After(self.produce_timeout));
        let outcome =
            match tokio::time::timeout(self.produce_timeout + Duration::from_millis(500), delivery)
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((err, _record))) => Err(ProduceError::Kafka(err)),
                Err(_) => Err(ProduceError::Timeout(self.produce_timeout)),
            };
        if outcome.is_err() {
            self.rebuild_if_fatal(&producer);
        }
        outcome
    }
}
