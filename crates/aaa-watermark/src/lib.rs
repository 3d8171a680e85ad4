//! `aaa watermark`: finds the minutes we cannot prove were delivered, replays
//! them through X one job per webhook at a time, and reconciles each job when
//! its completion message has been stored and everything before it consumed.
//!
//! The decisions are pure ([`coverage`], [`planner`], [`decisions`]); every
//! statement on the state in Postgres is in [`store`] (`replay_windows` and
//! friends, typed), so a restarted or second replica picks up where
//! the first stopped, and a per-webhook lease (`watermark_leases`) plus a unique index
//! keep at most one job in flight per webhook.

mod at_x;
mod cadence;
pub mod compliance;
pub mod coverage;
pub mod decisions;
mod events;
mod fences;
mod jobs;
mod judging;
mod liveness;
pub mod maintenance;
pub mod planner;
mod ports;
mod round;
#[cfg(test)]
mod round_tests;
mod service;
pub mod store;
mod submit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aaa_common::Clock;
use aaa_common::admin::{self, Readiness};
use aaa_common::kafka::KafkaArgs;
use aaa_common::observe::InternalEvent;
use aaa_db::DatabaseArgs;
use aaa_xapi::{Credentials, XApiArgs, XClient};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_cron_scheduler::JobScheduler;
use tokio_util::sync::CancellationToken;

pub use service::Watermark;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Database(#[from] aaa_db::Error),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    X(#[from] aaa_xapi::XError),
    #[error(transparent)]
    Common(#[from] aaa_common::Error),
    #[error("scheduler: {0}")]
    Scheduler(String),
    #[error("topic {0} has no partitions (does it exist?)")]
    NoPartitions(String),
    #[error("--audit-minutes-for: `{0}` is not WEBHOOK_ID=MINUTES with MINUTES from 0 to 120")]
    AuditOverride(String),
    #[error("webhook {0}: another replica took the lease over during this round")]
    LeaseLost(String),
    #[error(
        "--stall-secs (AAA_WATERMARK_STALL_SECS) {stall_secs} must be more than one tick ({tick_ms} ms): a round starts every tick"
    )]
    StallLimit { stall_secs: u64, tick_ms: u64 },
    #[error("AAA_X_PRICES: {0}")]
    Prices(#[from] aaa_events::billing::PriceError),
}

/// Configuration of `aaa watermark`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatermarkArgs {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "AAA_ADMIN_LISTEN", default_value = "0.0.0.0:9092")]
    pub admin_listen: SocketAddr,
    /// X's ids of the webhooks to watch (comma separated); the receiver must
    /// serve them under the same ids.
    #[arg(
        long = "webhook",
        env = "AAA_WATERMARK_WEBHOOKS",
        value_delimiter = ',',
        required = true
    )]
    pub webhooks: Vec<String>,
    /// Real milliseconds between two rounds of checks (at least 1000: the
    /// scheduler's repeated jobs stop firing below one second).
    #[arg(long, env = "AAA_WATERMARK_TICK_MS", default_value_t = 15_000)]
    pub tick_ms: u64,
    /// /healthz fails once this replica has started no round for this many
    /// real seconds (a round that never ends, or a scheduler that stopped),
    /// so Kubernetes restarts it; `aaa_watermark_stalled_seconds` reports
    /// the time since the last start. More than one tick.
    #[arg(long, env = "AAA_WATERMARK_STALL_SECS", default_value_t = 300)]
    pub stall_secs: u64,
    /// A submitted job with no completion message after this many simulated
    /// seconds is treated as lost and its window submitted again.
    #[arg(long, env = "AAA_WATERMARK_JOB_TIMEOUT_SECS", default_value_t = 3_600)]
    pub job_timeout_secs: i64,
    /// First wait after ReplayConflictError or a transport failure, in
    /// simulated seconds; doubles each time up to 15 minutes.
    #[arg(long, env = "AAA_WATERMARK_BACKOFF_SECS", default_value_t = 60)]
    pub backoff_secs: i64,
    /// Replay requests allowed per 15 minutes, shared by every replica and
    /// operator (X allows 100 on `POST /2/webhooks/replay`).
    #[arg(long, env = "AAA_WATERMARK_REPLAY_LIMIT", default_value_t = 100)]
    pub replay_limit: u32,
    /// Replay every closed slot of this many minutes once, even when
    /// heartbeats say it was covered: the only way to recover what X dropped
    /// after its retries (or never sent) while the receiver was up. At most
    /// 120 (X's recommended window); 0 turns audits off. Audits use the
    /// replay budget only after gaps, and leave one request per 15 minutes
    /// to gaps: with 120, a webhook costs 12 replay jobs a day.
    #[arg(long, env = "AAA_WATERMARK_AUDIT_MINUTES", default_value_t = 120,
          value_parser = clap::value_parser!(u32).range(0..=120))]
    pub audit_minutes: u32,
    /// Audit slot per webhook where it differs from --audit-minutes
    /// (WEBHOOK_ID=MINUTES, comma separated; 0 turns audits off for that
    /// webhook). Each audit re-delivers its slot's whole traffic, so a busy
    /// webhook may want fewer.
    #[arg(
        long = "audit-minutes-for",
        env = "AAA_WATERMARK_AUDIT_MINUTES_BY_WEBHOOK",
        value_delimiter = ','
    )]
    pub audit_minutes_for: Vec<String>,
    /// Seconds (service clock) kept inside X's 24 h replay limit when a
    /// window is submitted: the request reaches X a little later, and X's
    /// clock may differ. Minutes past it are recorded as expired.
    #[arg(long, env = "AAA_WATERMARK_EDGE_MARGIN_SECS", default_value_t = 120)]
    pub edge_margin_secs: i64,
    /// Seconds (service clock) between two reads of X's webhook list, which
    /// tell every watched webhook's validity at once.
    #[arg(long, env = "AAA_WATERMARK_VALIDITY_SECS", default_value_t = 60)]
    pub validity_secs: i64,
    /// Validity nobody could read for longer than this (seconds, service
    /// clock: X unreachable or rate limited) is suspect: its minutes are
    /// replayed, not assumed delivered.
    #[arg(
        long,
        env = "AAA_WATERMARK_VALIDITY_UNKNOWN_SECS",
        default_value_t = 600
    )]
    pub validity_unknown_secs: i64,
    /// Reads of X's webhook list (and re-validations) allowed per 15 minutes
    /// across all replicas (X: 15).
    #[arg(long, env = "AAA_X_WEBHOOKS_LIMIT", default_value_t = 15)]
    pub webhooks_list_limit: u32,
    /// Real seconds between two maintenance runs (pruning, table sizes).
    #[arg(long, env = "AAA_WATERMARK_MAINTENANCE_SECS", default_value_t = 300)]
    pub maintenance_secs: u64,
    /// Real milliseconds a receiver's report may come late: clock skew
    /// between receivers and watermark, and a replayed delivery answered
    /// after X's completion message overtook it (body and produce
    /// deadlines). A replica whose next heartbeat is this much overdue is
    /// gone; refusals this long after a replay job's fence still count
    /// against the job.
    #[arg(
        long,
        env = "AAA_WATERMARK_RECEIVER_MARGIN_MS",
        default_value_t = 10_000
    )]
    pub receiver_margin_ms: u64,
    /// Hours (service clock) heartbeats, validity samples and settled replay
    /// windows are kept; at least 26, as judging reads back 25 h. Default:
    /// two days past X's 24 h replay horizon.
    #[arg(long, env = "AAA_WATERMARK_RETENTION_HOURS", default_value_t = 72,
          value_parser = clap::value_parser!(u32).range(26..))]
    pub retention_hours: u32,
    /// Days dead letters are kept; unset keeps them forever (the default:
    /// they hold authentic deliveries nobody has looked at yet).
    #[arg(long, env = "AAA_DEAD_LETTER_RETENTION_DAYS")]
    pub dead_letter_retention_days: Option<u32>,
    /// Days (real time) an event keeps its payload and context; after that
    /// only its identity (ids, kind, natural key, times) stays, which
    /// idempotence and the normalized tables need. Unset keeps everything
    /// (the default).
    #[arg(long, env = "AAA_EVENT_RETENTION_DAYS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub event_retention_days: Option<u32>,
    /// What X charges per delivered event, in US dollars, over the built-in
    /// defaults (X's pay-per-use prices of 2026): `post.create=0.004,news.new=0.02`.
    /// Written to `x_prices` at start; `v_x_charges_daily` and the
    /// "estimated X charges today" panel price with them.
    #[arg(long, env = "AAA_X_PRICES", default_value = "")]
    pub x_prices: String,
    /// Compliance mode: erase a deleted post's text and media from `tweets`,
    /// `events.payload` and every embedded copy within one maintenance
    /// interval (X's developer terms). Ids and times stay.
    #[arg(long, env = "AAA_ERASE_DELETED_POSTS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub erase_deleted_posts: bool,
    /// Identity of this replica in logs and in `watermark_leases`; must
    /// differ between replicas (defaults to the host name, in Kubernetes the
    /// pod name).
    #[arg(long, env = "AAA_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Fence writes in a row that may fail before this replica releases
    /// its leases, starts no more rounds (until a fence is written again)
    /// and fails /healthz: a lease holder that cannot fence reconciles no
    /// replay job, so another replica must take its webhooks over.
    #[arg(long, env = "AAA_WATERMARK_FENCE_FAILURES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fence_failures: u32,
    /// Real seconds a replica's lease on a webhook lasts without renewal
    /// (every round renews it). A replica that dies or freezes is replaced
    /// after at most this long.
    #[arg(long, env = "AAA_WATERMARK_LEASE_SECS", default_value_t = 60)]
    pub lease_secs: u64,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub x: XApiArgs,
}

impl WatermarkArgs {
    /// The audit slot of each webhook named in --audit-minutes-for.
    pub fn audit_overrides(&self) -> Result<std::collections::HashMap<String, u32>, Error> {
        self.audit_minutes_for
            .iter()
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| {
                entry
                    .split_once('=')
                    .and_then(|(id, minutes)| {
                        let minutes: u32 = minutes.trim().parse().ok()?;
                        (minutes <= 120 && !id.trim().is_empty())
                            .then(|| (id.trim().to_owned(), minutes))
                    })
                    .ok_or_else(|| Error::AuditOverride(entry.clone()))
            })
            .collect()
    }

    /// This replica's name: configured, else the host name, else a random one.
    pub fn replica_id(&self) -> String {
        static RANDOM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        self.replica_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| {
                RANDOM
                    .get_or_init(|| format!("watermark-{:08x}", rand::random::<u32>()))
                    .clone()
            })
    }
}

/// The interval between rounds (at least 1 s); the stall limit must be
/// longer, or /healthz would fail between any two rounds.
fn tick_within_stall_limit(tick_ms: u64, stall_secs: u64) -> Result<Duration, Error> {
    let tick = Duration::from_millis(tick_ms.max(1000));
    if Duration::from_secs(stall_secs) <= tick {
        return Err(Error::StallLimit {
            stall_secs,
            tick_ms,
        });
    }
    Ok(tick)
}

/// /readyz: the database answers. /healthz: rounds still start, and
/// fences can be written.
struct WatermarkReadiness {
    pool: sqlx::PgPool,
    watermark: Arc<service::Watermark>,
}

impl Readiness for WatermarkReadiness {
    fn health(&self) -> Result<(), String> {
        self.watermark
            .liveness()
            .health(std::time::Instant::now())?;
        self.watermark.fence_health().health()
    }

    fn check(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| format!("database unreachable: {e}"))
        })
    }
}

pub async fn run(
    args: WatermarkArgs,
    clock: Clock,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let tick = tick_within_stall_limit(args.tick_ms, args.stall_secs)?;
    let prices = aaa_events::billing::prices(&args.x_prices)?;
    let pool = args.database.pool()?;
    aaa_db::ensure_schema_current(&pool).await?;
    // Prices only price a report: a failure is retried by every maintenance
    // run (which writes them again, a no-op when they are there).
    if let Err(error) = maintenance::write_prices(&pool, &prices).await {
        tracing::warn!(message = "X prices not written yet; maintenance retries", error = %error);
    }
    // One HTTP request per call: each is reserved against X's budget first,
    // and the next round is the retry.
    let x = XClient::new(&args.x, Credentials::from_env()?)?.one_attempt_per_call();
    events::register(&args.webhooks);
    let watermark = Arc::new(Watermark::new(&args, pool.clone(), x, clock).await?);
    let pool_for_maintenance = pool.clone();

    let admin_listener = admin::bind("admin", args.admin_listen).await?;
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        metrics,
        WatermarkReadiness {
            pool,
            watermark: watermark.clone(),
        },
        shutdown.clone(),
    ));
    let stall_task = tokio::spawn(
        watermark
            .liveness()
            .report(Duration::from_secs(1), shutdown.clone()),
    );

    let scheduler = JobScheduler::new()
        .await
        .map_err(|e| Error::Scheduler(e.to_string()))?;
    let ticking = watermark.clone();
    let job = cadence::every(tick, move || {
        let watermark = ticking.clone();
        async move { watermark.tick().await }
    })
    .map_err(|e| Error::Scheduler(e.to_string()))?;
    scheduler
        .add(job)
        .await
        .map_err(|e| Error::Scheduler(e.to_string()))?;
    scheduler
        .start()
        .await
        .map_err(|e| Error::Scheduler(e.to_string()))?;
    let run = Arc::new(MaintenanceRun {
        pool: pool_for_maintenance,
        clock,
        retention: maintenance::Retention {
            horizon: chrono::TimeDelta::hours(i64::from(args.retention_hours)),
            dead_letters: args
                .dead_letter_retention_days
                .map(|days| chrono::TimeDelta::days(i64::from(days))),
            batch: 5_000,
        },
        event_retention_days: args.event_retention_days,
        prices,
        erase: args.erase_deleted_posts.then(|| EraseLease {
            replica: args.replica_id(),
            lease: Duration::from_secs(args.lease_secs.max(1)),
        }),
        running: tokio::sync::Mutex::new(()),
    });
    let maintenance_job = cadence::every(
        Duration::from_secs(args.maintenance_secs.max(1)),
        move || {
            let run = run.clone();
            async move { run.run().await }
        },
    )
    .map_err(|e| Error::Scheduler(e.to_string()))?;
    scheduler
        .add(maintenance_job)
        .await
        .map_err(|e| Error::Scheduler(e.to_string()))?;
    tracing::info!(message = "watching webhooks", webhooks = ?args.webhooks, tick_ms = args.tick_ms);
    // A first round at once rather than one tick from now.
    watermark.tick().await;

    shutdown.cancelled().await;
    let mut scheduler = scheduler;
    let _ = scheduler.shutdown().await;
    watermark.release_leases().await;
    admin_task.abort();
    stall_task.abort();
    tracing::info!(message = "watermark stopped");
    Ok(())
}

/// Time a maintenance run gives payload retention before its later steps
/// (a fifth of the default interval); what is left waits for the next run.
const RETENTION_BUDGET: Duration = Duration::from_secs(60);

/// Who erases deleted posts, and for how long a run holds that job.
struct EraseLease {
    replica: String,
    lease: Duration,
}

/// One maintenance run: pruning, payload retention, erasing deleted posts,
/// table sizes. The scheduler starts one every `--maintenance-secs` whether
/// or not the last has ended; a run that finds the last still going is
/// skipped, so a slow database never gathers runs that hold every pooled
/// connection and starve the rounds.
struct MaintenanceRun {
    pool: sqlx::PgPool,
    clock: Clock,
    retention: maintenance::Retention,
    event_retention_days: Option<u32>,
    /// The configured prices, written again by every run: the write at
    /// start may have failed, and a row changed by hand is set right.
    prices: Vec<(String, f64)>,
    erase: Option<EraseLease>,
    running: tokio::sync::Mutex<()>,
}

impl MaintenanceRun {
    async fn run(&self) {
        let Ok(_running) = self.running.try_lock() else {
            events::MaintenanceSkipped.emit();
            return;
        };
        let pool = &self.pool;
        if let Err(error) = maintenance::write_prices(pool, &self.prices).await {
            events::MaintenanceFailed {
                message: "writing X prices failed; retrying next run",
                error: &error,
            }
            .emit();
        }
        match maintenance::prune(pool, self.clock.now(), &self.retention).await {
            Ok(deleted) => tracing::info!(message = "maintenance: pruned", deleted = ?deleted),
            Err(error) => events::MaintenanceFailed {
                message: "maintenance failed; retrying next run",
                error: &error,
            }
            .emit(),
        }
        // Copies reach back as far as a replay: 24 h, and a margin.
        let since = self.clock.now() - chrono::TimeDelta::hours(48);
        match maintenance::drop_repeated_relationship_changes(pool, since).await {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(
                message = "relationship changes that repeated the state before them dropped",
                dropped
            ),
            Err(error) => events::MaintenanceFailed {
                message: "dropping repeated relationship changes failed; retrying next run",
                error: &error,
            }
            .emit(),
        }
        if let Some(days) = self.event_retention_days {
            // Real time: `stored_at` is Postgres's clock.
            let cutoff = chrono::Utc::now() - chrono::TimeDelta::days(i64::from(days));
            match maintenance::drop_old_payloads(pool, cutoff, 5_000, RETENTION_BUDGET).await {
                Ok(0) => {}
                Ok(dropped) => {
                    tracing::info!(message = "event payloads past retention dropped", dropped)
                }
                Err(error) => events::MaintenanceFailed {
                    message: "event retention failed; retrying next run",
                    error: &error,
                }
                .emit(),
            }
        }
        if let Some(erase) = &self.erase {
            erase_deleted_posts(
                pool,
                &erase.replica,
                erase.lease,
                self.clock,
                EraseLimits::default(),
            )
            .await;
        }
        if let Err(error) = maintenance::report_sizes(pool).await {
            tracing::warn!(message = "table sizes not read", error = %error);
        }
        match maintenance::charges_on(pool, self.clock.now().date_naive()).await {
            Ok(today) => today.emit(),
            Err(error) => tracing::warn!(message = "X charges not read", error = %error),
        }
    }
}

/// The erase lease's key in `watermark_leases` (no webhook has this id).
const ERASE_LEASE: &str = "maintenance:erase";

/// How much one maintenance run erases.
#[derive(Debug, Clone, Copy)]
pub struct EraseLimits {
    /// Posts erased (or checked) per call, each in its own transaction.
    pub batch: i64,
    /// Calls per run: a backlog (the first run after an upgrade) is
    /// worked off over several runs, not in one loop that holds a replica.
    pub batches_per_run: usize,
}

impl Default for EraseLimits {
    fn default() -> Self {
        EraseLimits {
            batch: 500,
            batches_per_run: 10,
        }
    }
}

/// Erases deleted posts, on one replica at a time (the holder of the
/// erase lease), a bounded amount per run; the rest waits for the next run
/// (`aaa_watermark_erase_backlog`). `None` when another replica holds the
/// lease (or it could not be read); failures are logged and counted.
pub async fn erase_deleted_posts(
    pool: &sqlx::PgPool,
    replica: &str,
    lease: Duration,
    clock: aaa_common::Clock,
    limits: EraseLimits,
) -> Option<compliance::Erased> {
    let held = match pool.acquire().await {
        Ok(mut conn) => store::take_lease(&mut conn, ERASE_LEASE, replica, lease).await,
        Err(error) => Err(error),
    };
    match held {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::debug!(message = "another replica erases deleted posts");
            return None;
        }
        Err(error) => {
            events::MaintenanceFailed {
                message: "erasing deleted posts failed; retrying next run",
                error: &error,
            }
            .emit();
            return None;
        }
    }
    let mut total = compliance::Erased::default();
    for _ in 0..limits.batches_per_run.max(1) {
        match compliance::erase_deleted(pool, clock.now(), limits.batch).await {
            Ok(done) if done.is_empty() => break,
            Ok(done) => {
                events::PostsErased(done).emit();
                total.add(done);
            }
            Err(error) => {
                events::MaintenanceFailed {
                    message: "erasing deleted posts failed; retrying next run",
                    error: &error,
                }
                .emit();
                break;
            }
        }
    }
    events::EraseBacklog {
        posts: compliance::backlog(pool).await.as_ref().copied(),
    }
    .emit();
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_limit_must_be_longer_than_a_tick() {
        assert_eq!(
            tick_within_stall_limit(15_000, 300).ok(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            tick_within_stall_limit(1, 2).ok(),
            Some(Duration::from_secs(1))
        );
        let error = tick_within_stall_limit(15_000, 15).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--stall-secs (AAA_WATERMARK_STALL_SECS) 15 must be more than one tick (15000 ms): a round starts every tick"
        );
    }
}
