//! Kafka settings shared by producer and consumer, and the header names that
//! form the contract between the receiver and the consumer.

use rdkafka::ClientConfig;

use crate::Error;

/// Headers the receiver attaches to every raw record.
pub mod headers {
    pub const WEBHOOK_ID: &str = "aaa-webhook-id";
    /// Milliseconds since the epoch on the service clock.
    pub const RECEIVED_AT_MS: &str = "aaa-received-at-ms";
    pub const REQUEST_ID: &str = "aaa-request-id";
    /// Always "ok": unsigned bodies never reach Kafka; kept so downstream
    /// tools need not trust the topic blindly.
    pub const SIGNATURE: &str = "aaa-signature";
    /// Absent on deliveries; `heartbeat` or `fence` on control records.
    pub const RECORD_TYPE: &str = "aaa-record-type";
}

/// Control records that share the raw topic with deliveries, so they are
/// ordered with them and reach Postgres through the same consumer.
pub mod control {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};

    pub const HEARTBEAT: &str = "heartbeat";
    pub const FENCE: &str = "fence";

    /// A receiver replica served `webhook_id` from `from` to `to` (service
    /// clock), accepting and refusing this many deliveries.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Heartbeat {
        pub replica_id: String,
        pub webhook_id: String,
        pub from: DateTime<Utc>,
        pub to: DateTime<Utc>,
        pub accepted: u64,
        pub refused: u64,
        #[serde(default)]
        pub refused_by: std::collections::BTreeMap<String, u64>,
    }

    /// Written by the watermark to every partition.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Fence {
        pub at: DateTime<Utc>,
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma separated (host:port).
    #[arg(
        long = "kafka-brokers",
        env = "AAA_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Topic that carries raw deliveries.
    #[arg(long = "raw-topic", env = "AAA_RAW_TOPIC", default_value = "aaa.raw")]
    pub raw_topic: String,
    /// Extra librdkafka properties (KEY=VALUE, comma separated), e.g. for
    /// TLS/SASL. Prefer the environment variable for anything secret.
    #[arg(
        long = "kafka-property",
        env = "AAA_KAFKA_PROPERTIES",
        value_delimiter = ','
    )]
    pub properties: Vec<String>,
}

impl KafkaArgs {
    /// Client configuration: brokers, then the caller's `defaults`, then the
    /// operator's `--kafka-property` values, which win over both.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig, Error> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.keepalive.enable", "true");
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for property in &self.properties {
            let (key, value) = property
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| Error::KafkaProperty(property.clone()))?;
            config.set(key.trim(), value.trim());
        }
        Ok(config)
    }
}
