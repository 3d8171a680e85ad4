//! `aaa receiver`: the only component X talks to.
//!
//! It answers CRC challenges, verifies every delivery's signature, writes the
//! raw bytes to Kafka and answers 200 only after the broker acknowledged.
//! There is no database on this path: a slow Postgres never makes X retry.

mod coverage;
mod events;
mod http;
#[cfg(test)]
mod http_tests;
mod producer;
mod serve;
mod stream;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aaa_common::Clock;
use aaa_common::admin::{self, Readiness};
use aaa_common::kafka::KafkaArgs;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

pub use events::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("webhook configuration: {0}")]
    Webhooks(String),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    Common(#[from] aaa_common::Error),
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("activity stream: {0}")]
    Stream(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// The smallest `AAA_MAX_BODY_BYTES` accepted. Far above the longest CRC
/// token (256 bytes), so a token-shaped body is always read whole and
/// refused as forged, never counted as an authentic oversized delivery
/// (which an outsider could then trigger as a replay).
pub const MIN_BODY_BYTES: usize = 4096;
const _: () = assert!(MIN_BODY_BYTES > 4 * aaa_signing::CRC_TOKEN_MAX_LEN);

/// Configuration of `aaa receiver`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReceiverArgs {
    /// Address X's deliveries and CRC challenges arrive on.
    #[arg(long, env = "AAA_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics (keep it off the public port).
    #[arg(long, env = "AAA_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// TOML file listing the webhooks to serve (id, path, where their consumer
    /// secrets are); see the aaa-receiver crate docs for the format.
    #[arg(long, env = "AAA_WEBHOOKS_FILE")]
    pub webhooks_file: PathBuf,
    /// Largest delivery body accepted; larger ones get 413. At least 4096.
    #[arg(long, env = "AAA_MAX_BODY_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(MIN_BODY_BYTES as u64..))]
    pub max_body_bytes: usize,
    /// Bodies over AAA_MAX_BODY_BYTES up to this size are still read whole:
    /// one X signed is kept whole as a dead letter (`too_large`), answered
    /// 200 and counted as received (every replay would re-send it and a
    /// refusal would replay its window until it expires). Larger ones get
    /// 413 unread. The ingress's body limit must be the same (checked by
    /// scripts/deploy-check.sh), and the raw topic's `max.message.bytes`
    /// at least this plus 64 KiB.
    #[arg(long, env = "AAA_MAX_VERIFIED_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_verified_bytes: u64,
    /// Oversized bodies held at once (each up to AAA_MAX_VERIFIED_BYTES);
    /// one more is answered 503 (X retries) and counted as refused.
    #[arg(long, env = "AAA_MAX_OVERSIZED_REQUESTS", default_value_t = 2,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_oversized_requests: usize,
    /// How long a delivery's body may take to arrive in full once its
    /// headers did; then 408. X sends whole bodies at once (and wants an
    /// answer within 3 s), so a body that trickles in (slowloris) is not
    /// X's and holds a slot no longer than this. Every request also has a
    /// backstop deadline of this plus AAA_PRODUCE_TIMEOUT_MS plus 1 s.
    #[arg(long, env = "AAA_BODY_TIMEOUT_MS", default_value_t = 2_000)]
    pub body_timeout_ms: u64,
    /// How long a client may take to send a request's headers, and how long
    /// an idle keep-alive connection stays open; then it is closed.
    #[arg(long, env = "AAA_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Requests handled at once, over every webhook and route; more are
    /// answered 503 at once (X retries). Times AAA_MAX_BODY_BYTES it must
    /// fit in AAA_BODY_BUFFER_BYTES.
    #[arg(long, env = "AAA_MAX_CONCURRENT_REQUESTS", default_value_t = 128,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_concurrent_requests: usize,
    /// Memory the receiver may spend on request bodies it holds at once:
    /// AAA_MAX_CONCURRENT_REQUESTS × AAA_MAX_BODY_BYTES, plus
    /// AAA_MAX_OVERSIZED_REQUESTS × what an oversized body holds beyond
    /// AAA_MAX_BODY_BYTES (the defaults: 128 MiB + 2 MiB). About half the
    /// pod's memory limit (deploy/base: 256 MiB) is a safe value. A
    /// configuration that could buffer more is refused at start.
    #[arg(long, env = "AAA_BODY_BUFFER_BYTES", default_value_t = 130 * 1024 * 1024)]
    pub body_buffer_bytes: u64,
    /// How long to wait for the broker's acknowledgement before answering 503.
    /// Keep it under X's 3 s delivery limit.
    #[arg(long, env = "AAA_PRODUCE_TIMEOUT_MS", default_value_t = 2500)]
    pub produce_timeout_ms: u64,
    /// Seconds (simulated) between heartbeats; the watermark proves coverage with them.
    #[arg(long, env = "AAA_HEARTBEAT_INTERVAL_SECS", default_value_t = 10)]
    pub heartbeat_interval_secs: u64,
    /// This replica's name in heartbeats (defaults to the host name).
    #[arg(long, env = "AAA_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Also read the X Activity API's persistent stream at this URL
    /// (https://api.x.com/2/activity/stream) and produce its events to the
    /// same topic, as webhook id `stream`. Authenticates with the app's
    /// bearer token from AAA_X_BEARER_TOKEN.
    #[arg(long, env = "AAA_STREAM_URL")]
    pub stream_url: Option<String>,
    /// Minutes of backfill asked for on every stream reconnect (X: 0 to 5):
    /// what X sent while the connection was down comes again.
    #[arg(long, env = "AAA_STREAM_BACKFILL_MINUTES", default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(0..=5))]
    pub stream_backfill_minutes: u8,
    /// Real seconds without data or keep-alive after which the stream is
    /// considered dead and reconnected.
    #[arg(long, env = "AAA_STREAM_STALL_SECS", default_value_t = 60)]
    pub stream_stall_secs: u64,
    /// Real seconds to stay away after X refuses the stream with 429
    /// (TooManyConnections: X allows 2 connections per app, and counts a
    /// connection that dropped abruptly for 15 to 20 minutes), unless X's
    /// answer names when to come back (`x-rate-limit-reset`). Reconnecting
    /// sooner only prolongs the lock-out.
    #[arg(long, env = "AAA_STREAM_LOCKOUT_SECS", default_value_t = 1200)]
    pub stream_lockout_secs: u64,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "AAA_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

impl ReceiverArgs {
    /// What one request may cost, refused when the slots times the body
    /// limit could buffer more than the memory set aside for bodies (an
    /// outsider filling every slot with a full body must not get the pod
    /// killed for memory).
    fn request_limits(&self) -> Result<http::RequestLimits, Error> {
        let max_verified = self.max_verified_bytes.max(self.max_body_bytes as u64);
        let slots =
            (self.max_concurrent_requests as u64).saturating_mul(self.max_body_bytes as u64);
        let beyond = max_verified - self.max_body_bytes as u64;
        let oversized = (self.max_oversized_requests as u64).saturating_mul(beyond);
        let buffered = slots.saturating_add(oversized);
        if buffered > self.body_buffer_bytes {
            return Err(Error::Config(format!(
                "AAA_MAX_CONCURRENT_REQUESTS ({}) × AAA_MAX_BODY_BYTES ({}) = {slots} bytes of bodies at once, plus AAA_MAX_OVERSIZED_REQUESTS ({}) × {beyond} bytes beyond the body limit (AAA_MAX_VERIFIED_BYTES {max_verified}): {buffered} bytes, over AAA_BODY_BUFFER_BYTES ({}); lower one of the others or raise the budget (with the pod's memory limit)",
                self.max_concurrent_requests,
                self.max_body_bytes,
                self.max_oversized_requests,
                self.body_buffer_bytes
            )));
        }
        Ok(http::RequestLimits {
            max_body_bytes: self.max_body_bytes,
            max_verified_bytes: max_verified,
            max_oversized: self.max_oversized_requests,
            body_timeout: Duration::from_millis(self.body_timeout_ms.max(1)),
            produce_timeout: Duration::from_millis(self.produce_timeout_ms),
            max_concurrent: self.max_concurrent_requests,
        })
    }
}

struct BrokerReadiness(Arc<producer::RawProducer>);

impl Readiness for BrokerReadiness {
    fn check(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(self.0.check_broker())
    }
}

/// Runs the receiver until `shutdown` is cancelled, then drains: stop
/// accepting, finish in-flight requests, flush the producer.
pub async fn run(
    args: ReceiverArgs,
    clock: Clock,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let limits = args.request_limits()?;
    let webhooks = webhooks::load(&args.webhooks_file, |var| std::env::var(var).ok())?;
    let produce_timeout = Duration::from_millis(args.produce_timeout_ms);
    let producer = Arc::new(producer::RawProducer::new(
        args.kafka.client_config(&[])?,
        produce_timeout,
        limits.max_verified_bytes as usize,
    )?);
    producer.warm_up(&args.kafka.raw_topic).await;
    for webhook in &webhooks {
        tracing::info!(message = "serving webhook", webhook = %webhook.id, path = %webhook.path);
    }
    events::register(&webhooks.iter().map(|w| w.id.clone()).collect::<Vec<_>>());
    let replica_id = args
        .replica_id
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| {
            format!(
                "receiver-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
    let coverage = Arc::new(coverage::Coverage::new(
        replica_id,
        webhooks.iter().map(|w| w.id.clone()),
    ));
    let state = Arc::new(http::AppState {
        producer: producer.clone(),
        topic: args.kafka.raw_topic.clone(),
        clock,
        coverage: coverage.clone(),
        oversized_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_oversized)),
        limits,
    });
    let mut life = coverage::Life::new(
        coverage,
        producer.clone(),
        args.kafka.raw_topic.clone(),
        clock,
        coverage::Pace {
            interval: Duration::from_secs(args.heartbeat_interval_secs.max(1)),
            // A send waits for the broker up to the produce timeout (and
            // half a second more for the delivery report).
            write_budget: produce_timeout + Duration::from_millis(500) + coverage::SCHEDULING_SLACK,
        },
    );
    // Nothing is served before this life is announced: a replica that dies
    // before its first interval must still leave its stretch unproven.
    if !life.open(&shutdown).await {
        return Ok(());
    }
    let heartbeats = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            life.beat_until(&shutdown).await;
            life
        })
    };
    let stream_task = match &args.stream_url {
        Some(url) => {
            let bearer = std::env::var("AAA_X_BEARER_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Error::Stream(
                        "AAA_STREAM_URL needs AAA_X_BEARER_TOKEN (the app's bearer token)".into(),
                    )
                })?;
            events::register_stream();
            tracing::info!(message = "reading the activity stream", url = %url);
            Some(tokio::spawn(stream::run(
                stream::StreamSource {
                    url: url.clone(),
                    bearer: bearer.into(),
                    backfill_minutes: args.stream_backfill_minutes,
                    stall: Duration::from_secs(args.stream_stall_secs.max(1)),
                    lockout: Duration::from_secs(args.stream_lockout_secs),
                    max_line_bytes: args.max_body_bytes,
                },
                producer.clone(),
                args.kafka.raw_topic.clone(),
                clock,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let app = http::router(state, webhooks);

    let public = admin::bind("public", args.listen).await?;
    let admin_listener = admin::bind("admin", args.admin_listen).await?;
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        metrics,
        BrokerReadiness(producer.clone()),
        shutdown.clone(),
    ));

    let drain = Duration::from_millis(args.drain_timeout_ms);
    serve::serve(
        public,
        app,
        Duration::from_millis(args.header_read_timeout_ms.max(1)),
        shutdown.clone(),
        drain,
    )
    .await;
    if let Some(task) = stream_task {
        // It stops on shutdown; what it produced is flushed below.
        let _ = tokio::time::timeout(drain, task).await;
    }
    // After the drain, so the closing heartbeat carries the drain's tally.
    match heartbeats.await {
        Ok(life) => {
            life.close().await;
        }
        Err(error) => {
            tracing::error!(message = "heartbeat task failed; this life stays unclosed", error = %error)
        }
    }
    if let Err(err) = producer.flush(drain).await {
        tracing::error!(message = "producer flush on shutdown failed", error = %err);
    }
    admin_task.abort();
    tracing::info!(message = "receiver stopped");
    Ok(())
}
