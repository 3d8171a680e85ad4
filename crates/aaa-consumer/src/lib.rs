//! `aaa consumer`: Kafka consumer group → Postgres.
//!
//! Per batch: plan rows (pure), write them in one transaction, and only then
//! commit the offsets. A crash anywhere re-reads uncommitted records, and the
//! natural-key constraints turn the second write into a no-op.

mod batch;
mod events;
mod health;
mod lag;
mod normalized;
mod pipeline;
mod reduce;
pub mod seen;
mod store;
mod writer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aaa_common::Clock;
use aaa_common::admin;
use aaa_common::kafka::{KafkaArgs, headers};
use aaa_common::observe::InternalEvent;
use aaa_db::DatabaseArgs;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use batch::{BatchPlan, RawRecord, plan};
use events::{BatchGivenUp, KafkaReadFailed};
use health::{ConsumerReadiness, Progress};
pub use lag::partition_lag;
use pipeline::{Committer, GroupOffsets, InFlight, Ownership};
use seen::Seen;
pub use store::{WriteStats, write as write_batch};
use writer::Writer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Database(#[from] aaa_db::Error),
    #[error("Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Common(#[from] aaa_common::Error),
    #[error(
        "a batch was given up while later ones went on: nothing read after it can be committed, so this replica stops (it is restarted and reads the records again)"
    )]
    BatchGivenUp,
}

/// Configuration of `aaa consumer`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "AAA_ADMIN_LISTEN", default_value = "0.0.0.0:9091")]
    pub admin_listen: SocketAddr,
    /// Consumer group; replicas in one group share the partitions.
    #[arg(long, env = "AAA_CONSUMER_GROUP", default_value = "aaa-consumer")]
    pub group_id: String,
    /// Most records written in one transaction.
    #[arg(long, env = "AAA_BATCH_MAX_RECORDS", default_value_t = 500)]
    pub batch_max_records: usize,
    /// Longest wait for a batch to fill after its first record.
    #[arg(long, env = "AAA_BATCH_MAX_WAIT_MS", default_value_t = 200)]
    pub batch_max_wait_ms: u64,
    /// Batches written at once, each in its own transaction: while one
    /// waits for Postgres (statements, the commit's fsync), the next is read
    /// and written. Offsets are committed in reading order, each batch's
    /// only once every batch read before it is stored.
    #[arg(long, env = "AAA_CONSUMER_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub writers: u16,
    /// An event that arrives during a replay of a window holding its event
    /// time is attributed to the replay (`via_replay`) when it is at least
    /// this many seconds older than its arrival: X replays only events older
    /// than 10 minutes, while live deliveries arrive within seconds.
    #[arg(long, env = "AAA_LIVE_HORIZON_SECS", default_value_t = 600)]
    pub live_horizon_secs: u64,
    /// Ceiling of the backoff between failed writes to Postgres.
    #[arg(long, env = "AAA_WRITE_BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub write_backoff_max_ms: u64,
    /// /healthz fails once a batch has waited this long to be stored:
    /// records wait and nothing moves (Postgres unreachable, permissions).
    #[arg(long, env = "AAA_STALL_SECS", default_value_t = 300)]
    pub stall_secs: u64,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Follows group membership: logs it (operators and tests see when this
/// replica starts and stops owning partitions), and before partitions are
/// revoked, stops committing what was read of them and clears their
/// gauges (their new owner reports them).
struct GroupContext {
    ownership: Arc<Ownership>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<(String, i32)> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            let numbers: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
            // Waits for a commit in progress, so none lands after this.
            self.ownership.revoke(partitions);
            for partition in numbers {
                events::PartitionRevoked { partition }.emit();
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(message = "partitions assigned", partitions = tpl.count())
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(message = "partitions revoked", partitions = tpl.count())
            }
            Rebalance::Error(err) => tracing::warn!(message = "rebalance failed", error = %err),
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

pub async fn run(
    args: ConsumerArgs,
    clock: Clock,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    events::register();
    let pool = args.database.pool()?;
    if !wait_for_schema(&pool, &shutdown).await? {
        return Ok(());
    }

    let mut config = args.kafka.client_config(
        &[
            ("auto.offset.reset", "earliest"),
            // A first group join in seconds rather than tens of seconds.
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "1000"),
        ]
        .into_iter()
        .chain(aaa_common::kafka::CONSUMER_FETCH)
        .collect::<Vec<_>>(),
    )?;
    // Not overridable: offsets are committed only after Postgres committed.
    config
        .set("group.id", &args.group_id)
        .set("enable.auto.commit", "false");
    let ownership = Arc::new(Ownership::default());
    let consumer: Arc<GroupConsumer> = Arc::new(config.create_with_context(GroupContext {
        ownership: ownership.clone(),
    })?);
    consumer.subscribe(&[args.kafka.raw_topic.as_str()])?;
    tracing::info!(message = "consuming", topic = %args.kafka.raw_topic, group = %args.group_id);

    let writers = usize::from(args.writers.max(1));
    let progress = Arc::new(Progress::new(
        writers,
        Duration::from_secs(args.stall_secs.max(1)),
    ));
    let admin_listener = admin::bind("admin", args.admin_listen).await?;
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        metrics,
        ConsumerReadiness {
            pool: pool.clone(),
            consumer: consumer.clone(),
            progress: progress.clone(),
        },
        shutdown.clone(),
    ));

    let lag_task = tokio::spawn(lag::report_lag(consumer.clone(), shutdown.clone()));
    let stall_task = tokio::spawn(
        progress
            .clone()
            .report(Duration::from_secs(1), shutdown.clone()),
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let backoff_max = Duration::from_millis(args.write_backoff_max_ms);
    let writer = Arc::new(Writer {
        pool: pool.clone(),
        seen: seen.clone(),
        live_horizon: chrono::TimeDelta::seconds(args.live_horizon_secs as i64),
        backoff_max,
        shutdown: shutdown.clone(),
        progress: progress.clone(),
    });
    let (commits, commit_queue) = tokio::sync::mpsc::unbounded_channel();
    let committer = tokio::spawn(pipeline::run_committer(
        Committer {
            offsets: Arc::new(GroupOffsets {
                consumer: consumer.clone(),
                ownership: ownership.clone(),
            }),
            pool: pool.clone(),
            seen,
            backoff_max: backoff_max.min(Duration::from_secs(5)),
        },
        commit_queue,
        3,
    ));
    let batch_wait = Duration::from_millis(args.batch_max_wait_ms);
    let mut in_flight = InFlight::new(writers, commits);
    loop {
        if in_flight.given_up() {
            break;
        }
        // The next batch is read and planned while the writers work (one
        // batch ahead, so memory stays bounded): a writer that finishes
        // starts on it at once instead of waiting for a read and a plan.
        let Some((records, epoch)) = next_batch(
            &consumer,
            &ownership,
            args.batch_max_records,
            batch_wait,
            clock,
            &shutdown,
            &mut in_flight,
        )
        .await
        else {
            break;
        };
        let plan = batch::plan(&records);
        // A fence says every record before it in its partition is stored
        // (the watermark reconciles replays on it): it is written only
        // after every batch read before it.
        let wait_for_all = records.iter().any(RawRecord::is_fence);
        while in_flight.is_full() || (wait_for_all && !in_flight.is_empty()) {
            in_flight.collect_one().await;
        }
        if in_flight
            .start(writer.clone(), records, plan, epoch, clock)
            .is_err()
        {
            break;
        }
    }
    // A batch given up while not shutting down (its writer task failed):
    // nothing read after it can be committed, so the replica stops. (At
    // shutdown, a batch given up mid-retry is expected.)
    let outcome = if in_flight.given_up() && !shutdown.is_cancelled() {
        Err(Error::BatchGivenUp)
    } else {
        Ok(())
    };
    // Shutting down: batches being written finish (or give up mid-retry,
    // uncommitted, to be re-read), and what they stored is committed before
    // the consumer leaves the group.
    while !in_flight.is_empty() {
        in_flight.collect_one().await;
    }
    drop(in_flight);
    if let Err(error) = committer.await {
        tracing::error!(message = "offset committer failed", error = %error);
    }
    admin_task.abort();
    lag_task.abort();
    stall_task.abort();
    match &outcome {
        Ok(()) => tracing::info!(message = "consumer stopped"),
        Err(_) => BatchGivenUp.emit(),
    }
    outcome
}

/// Waits until the database is reachable and its schema is current. `false`
/// when shutdown came first. A schema that is behind is fatal at once.
async fn wait_for_schema(pool: &PgPool, shutdown: &CancellationToken) -> Result<bool, Error> {
    let mut delay = Duration::from_millis(200);
    loop {
        match aaa_db::ensure_schema_current(pool).await {
            Ok(()) => return Ok(true),
            Err(err @ aaa_db::Error::SchemaBehind { .. }) => return Err(err.into()),
            Err(err) => {
                tracing::warn!(message = "database not ready; retrying", error = %err);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// The next batch: waits for a first record, then up to `wait` for more,
/// meanwhile committing what the writers have stored; with the ownership
/// epoch before its first record was read. `None` once shutdown is
/// requested, or a batch was given up meanwhile.
async fn next_batch(
    consumer: &GroupConsumer,
    ownership: &Ownership,
    max: usize,
    wait: Duration,
    clock: Clock,
    shutdown: &CancellationToken,
    in_flight: &mut InFlight,
) -> Option<(Vec<RawRecord>, u64)> {
    let mut records = Vec::new();
    let mut epoch = ownership.epoch();
    let mut deadline: Option<tokio::time::Instant> = None;
    while records.len() < max.max(1) {
        if records.is_empty() {
            // Before the read: a revocation during it makes the batch older
            // than the revocation, so its offsets of revoked partitions are
            // never committed (erring on reading again).
            epoch = ownership.epoch();
        }
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            Some(done) = in_flight.done_rx.recv() => {
                in_flight.finished(done);
                if in_flight.given_up() {
                    return None;
                }
            }
            _ = until_deadline => break,
            message = consumer.recv() => match message {
                Ok(message) => {
                    records.push(raw_record(&message, clock));
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + wait);
                }
                Err(error) => {
                    KafkaReadFailed { error: &error }.emit();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    Some((records, epoch))
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

fn raw_record(message: &BorrowedMessage<'_>, clock: Clock) -> RawRecord {
    let text = |name| {
        header(message, name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    };
    let received_at = text(headers::RECEIVED_AT_MS)
        .and_then(|ms| ms.parse::<i64>().ok())
        .or_else(|| message.timestamp().to_millis())
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or_else(|| clock.now());
    RawRecord {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        payload: message.payload().map(<[u8]>::to_vec),
        webhook_id: text(headers::WEBHOOK_ID),
        request_id: text(headers::REQUEST_ID),
        received_at,
        record_type: text(headers::RECORD_TYPE),
    }
}
