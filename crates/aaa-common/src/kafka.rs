//! Kafka settings shared by producer and consumer, and the header names that
//! form the contract between the receiver and the consumer.

use rdkafka::ClientConfig;

use crate::Error;

/// How the consumer fetches (`scripts/bench.sh` reads with the same
/// settings for its read-only baseline).
pub const CONSUMER_FETCH: [(&str, &str); 3] = [
    // librdkafka prefetches up to 64 MiB by default: the consumer's memory
    // under a backlog (measured by scripts/bench.sh). About three thousand
    // deliveries ahead keep every batch full; 8 MiB peaked at 65 MB, over
    // the 64 MB goal, for no measurable gain (docs/benchmarks.md, lever 16).
    ("queued.max.messages.kbytes", "4096"),
    ("fetch.max.bytes", "8388608"),
    // Once that queue is full, librdkafka postpones the next fetch by this
    // much (1 s by default): with a queue this small, batches then waited
    // 100-400 ms for records while the broker had them (docs/benchmarks.md).
    ("fetch.queue.backoff.ms", "10"),
];

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
    /// An authentic delivery over the body limit: its trace, not its bytes
    /// (written by receivers before oversized bodies were kept whole).
    pub const OVERSIZED: &str = "oversized";
    /// An authentic delivery over the body limit, its bytes whole: kept as
    /// a dead letter, not parsed.
    pub const OVERSIZED_BODY: &str = "oversized-body";

    /// A receiver replica served `webhook_id` from `from` to `to` (service
    /// clock), accepting and refusing this many deliveries.
    ///
    /// A replica's life (`replica_id`, `started_at`) opens with a heartbeat
    /// of `seq` 0 covering no time, written before it serves anything, and
    /// ends with one marked `closing`, written after it drained. A life
    /// whose heartbeats stop without a closing one leaves the time from its
    /// last heartbeat to `next_due` unproven, whatever other replicas say.
    /// Fields after `refused_by` are absent from heartbeats of receivers
    /// older than the life rule; they read as one unclosed life per replica.
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
        /// When this life of the replica began (service clock).
        #[serde(default)]
        pub started_at: Option<DateTime<Utc>>,
        /// 0 for the opening heartbeat, then one more per heartbeat.
        #[serde(default)]
        pub seq: u64,
        /// The replica drained and stops: nothing follows.
        #[serde(default)]
        pub closing: bool,
        /// By when the next heartbeat will have been written if the replica
        /// lives (its interval and the longest a write may take).
        #[serde(default)]
        pub next_due: Option<DateTime<Utc>>,
    }

    /// A validly signed body the receiver refused as too large (413). It
    /// cannot be stored, so its trace is, as a dead letter an operator sees.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Oversized {
        pub webhook_id: String,
        pub size: u64,
        /// Hex SHA-256 of the whole body: a retried copy is the same dead letter.
        pub sha256: String,
        pub limit: u64,
        pub headers: std::collections::BTreeMap<String, String>,
    }

    /// Written by the watermark to every partition.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Fence {
        pub at: DateTime<Utc>,
    }
}

#[derive(Clone, clap::Args)]
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
    /// Extra librdkafka properties, KEY=VALUE, for TLS/SASL and the like:
    /// repeat the option, or put one per line in the environment variable.
    /// Values are taken whole (commas included) and never printed.
    #[arg(
        long = "kafka-property",
        env = "AAA_KAFKA_PROPERTIES",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    pub properties: Vec<String>,
    /// A file of librdkafka properties, one KEY=VALUE per line (`#` starts a
    /// comment): the place for SASL passwords, e.g. a mounted Secret.
    /// `--kafka-property` values win over it.
    #[arg(long = "kafka-properties-file", env = "AAA_KAFKA_PROPERTIES_FILE")]
    pub properties_file: Option<std::path::PathBuf>,
}

/// Property values may be secrets: only their keys are shown.
impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self
            .properties
            .iter()
            .map(|p| p.split_once('=').map_or("?", |(k, _)| k.trim()))
            .collect();
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("raw_topic", &self.raw_topic)
            .field("property_keys", &keys)
            .field("properties_file", &self.properties_file)
            .finish()
    }
}

/// `KEY=VALUE`, or an error that names where it came from but never the text
/// (it may hold a secret).
fn parse_property<'a>(line: &'a str, origin: &str) -> Result<(&'a str, &'a str), Error> {
    line.split_once('=')
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Error::KafkaProperty(origin.to_owned()))
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
        if let Some(path) = &self.properties_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::KafkaProperty(format!("{}: cannot read: {e}", path.display()))
            })?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (key, value) =
                    parse_property(line, &format!("{} line {}", path.display(), number + 1))?;
                config.set(key, value);
            }
        }
        for (number, property) in self.properties.iter().enumerate() {
            if property.trim().is_empty() {
                continue;
            }
            let (key, value) = parse_property(property, &format!("entry {}", number + 1))?;
            config.set(key, value);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn a_value_with_commas_is_one_value_and_errors_never_echo_it() {
        let cli = Cli::parse_from([
            "aaa",
            "--kafka-property",
            "sasl.jaas.config=a,b=c",
            "--kafka-property",
            "security.protocol=SASL_SSL",
        ]);
        let config = cli.kafka.client_config(&[]).unwrap();
        assert_eq!(config.get("sasl.jaas.config"), Some("a,b=c"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));

        let cli = Cli::parse_from(["aaa", "--kafka-property", "hunter2-no-equals"]);
        let error = cli.kafka.client_config(&[]).unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("entry 1"), "{error}");
    }

    #[test]
    fn properties_come_from_a_file_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("aaa-kafka-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kafka.properties");
        std::fs::write(
            &file,
            "# SASL\nsasl.password=s3cr,et\n\nclient.id=from-file\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "aaa",
            "--kafka-properties-file",
            file.to_str().unwrap(),
            "--kafka-property",
            "client.id=from-flag",
        ]);
        let config = cli.kafka.client_config(&[]).unwrap();
        assert_eq!(config.get("sasl.password"), Some("s3cr,et"));
        assert_eq!(config.get("client.id"), Some("from-flag"));
        std::fs::write(&file, "sasl.password\n").unwrap();
        let error = cli.kafka.client_config(&[]).unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
