//! Fences: a control record on every partition of the raw topic, stamped
//! with the time it was written. Once the consumer stored all of them,
//! everything produced before is in Postgres: the oldest of the newest
//! fences is the horizon up to which the watermark may judge.

use std::time::Duration;

use aaa_common::kafka::{control, headers};
use aaa_common::observe::InternalEvent;
use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::events::FenceNotWritten;
use crate::ports::Fencer;
use crate::{Error, WatermarkArgs};

pub struct Fences {
    producer: FutureProducer,
    topic: String,
    partitions: Vec<i32>,
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
            producer,
            topic,
            partitions,
        })
    }
}

impl Fencer for Fences {
    /// A fence on every partition, stamped `now`; `true` when every
    /// partition acknowledged its fence.
    async fn write(&self, now: DateTime<Utc>) -> bool {
        let payload = match serde_json::to_vec(&control::Fence { at: now }) {
            Ok(payload) => payload,
            Err(_) => return false,
        };
        let sends = self.partitions.iter().map(|partition| {
            let record = FutureRecord::<(), _>::to(&self.topic)
                .partition(*partition)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: headers::RECORD_TYPE,
                    value: Some(control::FENCE),
                }));
            self.producer
                .send(record, Timeout::After(Duration::from_secs(5)))
        });
        let mut all = true;
        for result in futures::future::join_all(sends).await {
            if let Err((error, _)) = result {
                FenceNotWritten { error: &error }.emit();
                all = false;
            }
        }
        all
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn partitions(&self) -> usize {
        self.partitions.len()
    }
}
