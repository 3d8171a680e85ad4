//! `aaa consumer`: Kafka consumer group → Postgres.
//!
//! Per batch: plan rows (pure), write them in one transaction, and only then
//! commit the offsets. A crash anywhere re-reads uncommitted records, and the
//! natural-key constraints turn the second write into a no-op.

mod batch;
mod events;
mod normalized;
pub mod seen;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aaa_common::Clock;
use aaa_common::admin::{self, Readiness};
use aaa_common::kafka::{KafkaArgs, headers};
use aaa_common::observe::InternalEvent;
use aaa_db::DatabaseArgs;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use batch::{BatchPlan, RawRecord, plan};
use events::{BatchStored, CommitFailed, KafkaReadFailed, RecordRejected, WriteFailed};
use seen::Seen;
pub use store::{WriteStats, write as write_batch};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Database(#[from] aaa_db::Error),
    #[error("Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Common(#[from] aaa_common::Error),
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
    /// Milliseconds between two writes of when webhooks and subscriptions
    /// were last seen (kept out of the batch transactions, where the one
    /// `webhooks` row made replicas wait on each other).
    #[arg(long, env = "AAA_SEEN_INTERVAL_MS", default_value_t = 5000)]
    pub seen_interval_ms: u64,
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

/// Logs group membership changes: operators (and tests) see when this
/// replica starts and stops owning partitions.
struct GroupContext;

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
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

struct ConsumerReadiness {
    pool: PgPool,
    consumer: Arc<GroupConsumer>,
    progress: Arc<Progress>,
}

/// Per writer: since when the batch in hand has waited to be stored
/// (`None`: no batch is failing). Read by /healthz and the stall gauge: the
/// longest wait of any writer, so one stuck writer is not hidden by the
/// others moving.
struct Progress {
    waiting_since: std::sync::Mutex<Vec<Option<Instant>>>,
    stall_after: Duration,
}

impl Progress {
    fn new(writers: usize, stall_after: Duration) -> Progress {
        Progress {
            waiting_since: std::sync::Mutex::new(vec![None; writers]),
            stall_after,
        }
    }

    fn stalled_for(&self) -> Duration {
        self.waiting_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .map(Instant::elapsed)
            .max()
            .unwrap_or_default()
    }

    fn set(&self, writer: usize, since: Option<Instant>) {
        if let Some(slot) = self
            .waiting_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(writer)
        {
            // A failing writer keeps the time it started failing.
            *slot = since.map(|now| slot.unwrap_or(now));
        }
        metrics::gauge!(events::STALLED_SECONDS).set(self.stalled_for().as_secs_f64());
    }

    fn failing(&self, writer: usize) {
        self.set(writer, Some(Instant::now()));
    }

    fn moved(&self, writer: usize) {
        self.set(writer, None);
    }
}

impl Readiness for ConsumerReadiness {
    fn health(&self) -> Result<(), String> {
        let stalled = self.progress.stalled_for();
        if stalled >= self.progress.stall_after {
            return Err(format!(
                "no batch stored for {} s while records wait",
                stalled.as_secs()
            ));
        }
        Ok(())
    }

    fn check(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(|e| format!("database unreachable: {e}"))?;
            let consumer = self.consumer.clone();
            tokio::task::spawn_blocking(move || {
                consumer
                    .fetch_metadata(None, Timeout::After(Duration::from_secs(2)))
                    .map(|_| ())
                    .map_err(|e| format!("broker unreachable: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

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

    let mut config = args.kafka.client_config(&[
        ("auto.offset.reset", "earliest"),
        // A first group join in seconds rather than tens of seconds.
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "1000"),
        // librdkafka prefetches up to 64 MiB by default: the consumer's
        // memory under a backlog (measured by scripts/bench.sh). A few
        // thousand deliveries ahead keep every batch full.
        ("queued.max.messages.kbytes", "8192"),
        ("fetch.max.bytes", "8388608"),
    ])?;
    // Not overridable: offsets are committed only after Postgres committed.
    config
        .set("group.id", &args.group_id)
        .set("enable.auto.commit", "false");
    let consumer: Arc<GroupConsumer> = Arc::new(config.create_with_context(GroupContext)?);
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

    let lag_task = tokio::spawn(report_lag(consumer.clone(), shutdown.clone()));
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    // Stopped after the last batch, so its last-seen times are written too.
    let seen_stop = CancellationToken::new();
    let seen_task = tokio::spawn(write_seen(
        pool.clone(),
        seen.clone(),
        Duration::from_millis(args.seen_interval_ms.max(100)),
        seen_stop.clone(),
    ));
    let batch_wait = Duration::from_millis(args.batch_max_wait_ms);
    let writer = Arc::new(Writer {
        pool: pool.clone(),
        seen: seen.clone(),
        live_horizon: chrono::TimeDelta::seconds(args.live_horizon_secs as i64),
        backoff_max: Duration::from_millis(args.write_backoff_max_ms),
        shutdown: shutdown.clone(),
        progress: progress.clone(),
    });
    let (commits, commit_queue) = tokio::sync::mpsc::unbounded_channel();
    let committer = tokio::spawn(run_committer(consumer.clone(), commit_queue));
    let mut in_flight = InFlight::new(writers, commits);
    loop {
        // A free writer first: reading on would only hold more in memory.
        while in_flight.is_full() {
            in_flight.collect_one().await;
        }
        let Some(records) = next_batch(
            &consumer,
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
        // A fence says every record before it in its partition is stored
        // (the watermark reconciles replays on it): it is written only
        // after every batch read before it.
        if records.iter().any(RawRecord::is_fence) {
            while !in_flight.is_empty() {
                in_flight.collect_one().await;
            }
        }
        in_flight.start(writer.clone(), records, clock);
    }
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
    seen_stop.cancel();
    let _ = seen_task.await;
    tracing::info!(message = "consumer stopped");
    Ok(())
}

/// Every `interval`, and once more on shutdown: writes when webhooks and
/// subscriptions were last seen. A failed write keeps what it held for the
/// next attempt.
async fn write_seen(
    pool: PgPool,
    seen: Arc<std::sync::Mutex<Seen>>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(interval) => false,
        };
        let batch = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        if !batch.is_empty()
            && let Err(error) = batch.write(&pool).await
        {
            tracing::warn!(message = "last-seen times not written; retrying", error = %error);
            seen.lock().unwrap_or_else(|p| p.into_inner()).merge(batch);
        }
        if stopping {
            return;
        }
    }
}

/// Records of a partition the group has not consumed: from its committed
/// offset (or, with none yet, the oldest record the broker keeps) to the
/// high watermark.
pub fn partition_lag(committed: Offset, low: i64, high: i64) -> i64 {
    let from = match committed {
        Offset::Offset(next) => next.max(low),
        _ => low,
    };
    (high - from).max(0)
}

/// Every 5 s: the lag of each partition assigned to this replica now, from
/// the group's committed offsets (whoever committed them) and the broker's
/// high watermark. A partition stuck since start-up shows its whole
/// backlog; one revoked in a rebalance is reported as 0 here (its new owner
/// reports it), so `sum` and `max` over replicas stay true.
async fn report_lag(consumer: Arc<GroupConsumer>, shutdown: CancellationToken) {
    let mut reported: std::collections::BTreeSet<i32> = Default::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let consumer = consumer.clone();
        let lags = tokio::task::spawn_blocking(move || {
            let timeout = Timeout::After(Duration::from_secs(2));
            let assignment = consumer.assignment().ok()?;
            let committed = consumer.committed_offsets(assignment, timeout).ok()?;
            committed
                .elements()
                .iter()
                .map(|e| {
                    let (low, high) = consumer
                        .fetch_watermarks(e.topic(), e.partition(), timeout)
                        .ok()?;
                    Some((e.partition(), partition_lag(e.offset(), low, high)))
                })
                .collect::<Option<Vec<_>>>()
        })
        .await
        .ok()
        .flatten();
        // Unknown this time (broker unreachable): keep the last values.
        let Some(lags) = lags else { continue };
        let assigned: std::collections::BTreeSet<i32> = lags.iter().map(|(p, _)| *p).collect();
        for revoked in reported.difference(&assigned) {
            metrics::gauge!(events::LAG_RECORDS, "partition" => revoked.to_string()).set(0.0);
        }
        for (partition, lag) in lags {
            metrics::gauge!(events::LAG_RECORDS, "partition" => partition.to_string())
                .set(lag as f64);
        }
        reported = assigned;
    }
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

type Offsets = std::collections::BTreeMap<(String, i32), i64>;

/// Which stored batches' offsets may be committed: the pure bookkeeping of
/// `InFlight`. Offsets are committed in the order the batches were read: a
/// batch's offsets only once it and every batch read before it are stored,
/// so a crash never skips a record of a batch still being written.
#[derive(Default)]
struct CommitOrder {
    next_seq: u64,
    /// By reading order: the writer slot (for stall accounting), and `None`
    /// while being written, then `Some(Some(offsets))` once stored or
    /// `Some(None)` if given up (shutdown mid-retry, a failed task).
    batches: std::collections::BTreeMap<u64, (usize, Option<Option<Offsets>>)>,
    /// A batch was given up: nothing read after it may be committed.
    stopped: bool,
}

impl CommitOrder {
    /// A new batch: its sequence number and a slot no batch being written
    /// holds.
    fn begin(&mut self, slots: usize) -> (u64, usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = (0..slots.max(1))
            .find(|slot| self.batches.values().all(|(taken, _)| taken != slot))
            .unwrap_or(0);
        self.batches.insert(seq, (slot, None));
        (seq, slot)
    }

    /// Records how batch `seq` ended; returns the offsets that may now be
    /// committed (empty while an earlier batch is still being written).
    fn finished(&mut self, seq: u64, outcome: Option<Offsets>) -> Offsets {
        if let Some((_, state)) = self.batches.get_mut(&seq) {
            *state = Some(outcome);
        }
        let mut ready = Offsets::new();
        while let Some(entry) = self.batches.first_entry() {
            match &entry.get().1 {
                None => break,
                Some(Some(offsets)) if !self.stopped => ready.extend(offsets.clone()),
                Some(_) => self.stopped = true,
            }
            entry.remove();
        }
        ready
    }
}

/// Batches being written, each in its own task and transaction, at most
/// `capacity` at once: while one waits on Postgres (statements, the
/// commit's fsync), the next is read, planned and written. Batches of one
/// partition may be written at the same time; every write is idempotent
/// and state rows keep the newest change by event time, so the order in
/// which they commit does not matter. Fences are the exception (`run`
/// writes a batch holding one only after all before it). Offsets follow
/// `CommitOrder`.
struct InFlight {
    capacity: usize,
    order: CommitOrder,
    done_tx: tokio::sync::mpsc::UnboundedSender<(u64, Option<Offsets>)>,
    done_rx: tokio::sync::mpsc::UnboundedReceiver<(u64, Option<Offsets>)>,
    /// To `run_committer`.
    commits: tokio::sync::mpsc::UnboundedSender<Offsets>,
}

impl InFlight {
    fn new(capacity: usize, commits: tokio::sync::mpsc::UnboundedSender<Offsets>) -> InFlight {
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        InFlight {
            capacity: capacity.max(1),
            order: CommitOrder::default(),
            done_tx,
            done_rx,
            commits,
        }
    }

    fn is_full(&self) -> bool {
        self.order.batches.len() >= self.capacity
    }

    fn is_empty(&self) -> bool {
        self.order.batches.is_empty()
    }

    fn start(&mut self, writer: Arc<Writer>, records: Vec<RawRecord>, clock: Clock) {
        let (seq, slot) = self.order.begin(self.capacity);
        let write = tokio::spawn(async move {
            let plan = batch::plan(&records);
            let offsets = plan.commit.clone();
            let newest = plan.events.iter().filter_map(|e| e.event_time).max();
            if !writer.store(slot, &records, plan).await {
                return None; // shutting down mid-retry: records are re-read
            }
            writer.progress.moved(slot);
            if let Some(newest) = newest {
                let lag = (clock.now() - newest).as_seconds_f64().max(0.0);
                metrics::gauge!(events::EVENT_TIME_LAG_SECONDS).set(lag);
            }
            Some(offsets)
        });
        // Reports even a writer that panicked (as not stored), so that its
        // place never blocks the batches behind it.
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let outcome = write.await.unwrap_or_else(|error| {
                tracing::error!(message = "a batch writer failed; its records will be re-read", error = %error);
                None
            });
            let _ = done.send((seq, outcome));
        });
    }

    /// Waits for one batch to finish, and commits what is now stored in
    /// reading order.
    async fn collect_one(&mut self) {
        if let Some(done) = self.done_rx.recv().await {
            self.finished(done);
        }
    }

    fn finished(&mut self, (seq, outcome): (u64, Option<Offsets>)) {
        let ready = self.order.finished(seq, outcome);
        if !ready.is_empty() {
            // The committer outlives every batch: it ends after `run` drops
            // this sender.
            let _ = self.commits.send(ready);
        }
    }
}

/// The next batch: waits for a first record, then up to `wait` for more,
/// meanwhile committing what the writers have stored. `None` once
/// shutdown is requested.
async fn next_batch(
    consumer: &GroupConsumer,
    max: usize,
    wait: Duration,
    clock: Clock,
    shutdown: &CancellationToken,
    in_flight: &mut InFlight,
) -> Option<Vec<RawRecord>> {
    let mut records = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    while records.len() < max.max(1) {
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            Some(done) = in_flight.done_rx.recv() => in_flight.finished(done),
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
    Some(records)
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

/// Stores batches: transient errors are retried with capped exponential
/// backoff (nothing is lost by waiting), permanent ones are isolated.
struct Writer {
    pool: PgPool,
    /// What stored batches saw, written by `write_seen` every few seconds.
    seen: Arc<std::sync::Mutex<Seen>>,
    live_horizon: chrono::TimeDelta,
    backoff_max: Duration,
    shutdown: CancellationToken,
    progress: Arc<Progress>,
}

/// How one write ended.
enum Written {
    Stored,
    /// Postgres refuses these rows for good: retrying cannot help.
    Refused(String),
    ShuttingDown,
}

impl Writer {
    /// Stores `records` (planned as `plan`). A record Postgres refuses for
    /// good is found by bisection and kept as a dead letter with its raw
    /// bytes, so one poison record never holds up a partition; every other
    /// record is stored as usual. `false` if shutdown interrupted.
    async fn store(&self, slot: usize, records: &[RawRecord], plan: BatchPlan) -> bool {
        // Ranges still to write, the next one last: a batch, then halves.
        let mut pending: Vec<(std::ops::Range<usize>, Option<BatchPlan>)> =
            vec![(0..records.len(), Some(plan))];
        while let Some((range, plan)) = pending.pop() {
            let part = &records[range.clone()];
            let plan = plan.unwrap_or_else(|| batch::plan(part));
            match self.write(slot, &plan, part.len()).await {
                Written::Stored => {}
                Written::ShuttingDown => return false,
                Written::Refused(reason) if part.len() == 1 => {
                    let record = &part[0];
                    RecordRejected {
                        partition: record.partition,
                        offset: record.offset,
                        reason: &reason,
                    }
                    .emit();
                    let rejected = BatchPlan {
                        dead_letters: vec![batch::rejected_dead_letter(record, &reason)],
                        ..BatchPlan::default()
                    };
                    // A dead letter holds only bytes and cleaned text; if
                    // even that is refused, the database is at fault: wait
                    // for it rather than drop the record.
                    if !self.write_until_stored(slot, &rejected).await {
                        return false;
                    }
                }
                Written::Refused(_) => {
                    let middle = range.start + range.len() / 2;
                    pending.push((middle..range.end, None));
                    pending.push((range.start..middle, None));
                }
            }
        }
        true
    }

    /// One write, retried while its errors are transient.
    async fn write(&self, slot: usize, plan: &BatchPlan, records: usize) -> Written {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            match store::write(&self.pool, plan, self.live_horizon).await {
                Ok(mut stats) => {
                    self.seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .merge(std::mem::take(&mut stats.seen));
                    BatchStored {
                        records,
                        stats: &stats,
                        dead_letter_kinds: plan.dead_letters.iter().map(|d| d.error_kind).collect(),
                        elapsed: started.elapsed(),
                    }
                    .emit();
                    return Written::Stored;
                }
                Err(error) if store::is_permanent(&error) => {
                    WriteFailed {
                        error: &error,
                        records,
                        attempt,
                        retry_in: None,
                    }
                    .emit();
                    return Written::Refused(describe(&error));
                }
                Err(error) => {
                    self.progress.failing(slot);
                    WriteFailed {
                        error: &error,
                        records,
                        attempt,
                        retry_in: Some(delay),
                    }
                    .emit();
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Written::ShuttingDown,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.backoff_max);
                    attempt += 1;
                }
            }
        }
    }

    /// Retries even "permanent" errors: for a write that must not be dropped.
    async fn write_until_stored(&self, slot: usize, plan: &BatchPlan) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.write(slot, plan, 1).await {
                Written::Stored => return true,
                Written::ShuttingDown => return false,
                Written::Refused(_) => {
                    self.progress.failing(slot);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.backoff_max);
                }
            }
        }
    }
}

/// The error with its SQLSTATE, for the dead letter's reason.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("SQLSTATE {code}: {}", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// Commits offsets one commit at a time, in the order they are handed
/// over, off the runtime's threads: a synchronous commit waits a broker
/// round trip, which held up reading and writing when done inline. Offsets
/// queued meanwhile are merged into the next commit. Ends when every
/// sender is gone and the last offsets are committed.
async fn run_committer(
    consumer: Arc<GroupConsumer>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Offsets>,
) {
    while let Some(mut offsets) = queue.recv().await {
        while let Ok(more) = queue.try_recv() {
            offsets.extend(more);
        }
        let consumer = consumer.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || commit(&consumer, &offsets)).await {
            tracing::error!(message = "offset commit task failed", error = %error);
        }
    }
}

fn commit(consumer: &GroupConsumer, next_offsets: &Offsets) {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in next_offsets {
        if let Err(error) = offsets.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            CommitFailed { error: &error }.emit();
            return;
        }
    }
    match consumer.commit(&offsets, CommitMode::Sync) {
        Ok(()) => {
            for ((_, partition), next) in next_offsets {
                metrics::gauge!(events::COMMITTED_OFFSET, "partition" => partition.to_string())
                    .set(*next as f64);
            }
        }
        Err(error) => CommitFailed { error: &error }.emit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(partition_next: &[(i32, i64)]) -> Offsets {
        partition_next
            .iter()
            .map(|(p, next)| (("aaa.raw".to_owned(), *p), *next))
            .collect()
    }

    #[test]
    fn offsets_are_committed_only_once_every_batch_read_before_is_stored() {
        let mut order = CommitOrder::default();
        let (first, _) = order.begin(2);
        let (second, _) = order.begin(2);
        // The second batch (later records of partition 0) is stored first:
        // committing it would skip the first batch's records after a crash.
        assert!(
            order
                .finished(second, Some(offsets(&[(0, 20), (1, 7)])))
                .is_empty()
        );
        let (third, _) = order.begin(2);
        // Now the first: both are committed, the later offsets winning.
        assert_eq!(
            order.finished(first, Some(offsets(&[(0, 10), (2, 3)]))),
            offsets(&[(0, 20), (1, 7), (2, 3)])
        );
        assert_eq!(
            order.finished(third, Some(offsets(&[(0, 30)]))),
            offsets(&[(0, 30)])
        );
        assert!(order.batches.is_empty());
    }

    #[test]
    fn nothing_read_after_a_batch_given_up_is_committed() {
        let mut order = CommitOrder::default();
        let (first, _) = order.begin(2);
        let (second, _) = order.begin(2);
        assert!(order.finished(second, Some(offsets(&[(0, 20)]))).is_empty());
        // Shutdown interrupted the first batch: its records must be read
        // again, so the second's offsets (past them) are not committed.
        assert!(order.finished(first, None).is_empty());
        let (third, _) = order.begin(2);
        assert!(order.finished(third, Some(offsets(&[(0, 30)]))).is_empty());
    }

    #[test]
    fn batches_being_written_hold_distinct_stall_slots() {
        let mut order = CommitOrder::default();
        let (first, a) = order.begin(2);
        let (_, b) = order.begin(2);
        assert_ne!(a, b);
        order.finished(first, Some(offsets(&[(0, 1)])));
        // The first slot is free again; the second is still taken.
        let (_, c) = order.begin(2);
        assert_eq!(c, a);
    }

    #[test]
    fn lag_counts_from_the_group_commit_or_the_oldest_kept_record() {
        assert_eq!(partition_lag(Offset::Offset(90), 0, 100), 10);
        assert_eq!(partition_lag(Offset::Offset(100), 0, 100), 0);
        // Nothing committed yet: everything the broker keeps is behind.
        assert_eq!(partition_lag(Offset::Invalid, 40, 100), 60);
        // A commit older than what retention kept counts from what is left.
        assert_eq!(partition_lag(Offset::Offset(10), 40, 100), 60);
        assert_eq!(partition_lag(Offset::Offset(120), 0, 100), 0);
    }
}
