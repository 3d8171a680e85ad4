//! The command line: every subcommand, and the one place that runs them.

use aaa_common::clock::ClockArgs;
use aaa_common::observe::{self, LogFormat};
use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::PrometheusHandle;
use std::path::Path;
use tokio_util::sync::CancellationToken;

use crate::error::CliError;
use crate::ops::base::{OpsArgs, with_client};
use crate::ops::replay::ReplayCommand;
use crate::ops::subscriptions::SubscriptionsCommand;
use crate::ops::webhooks::WebhooksCommand;
use crate::{dashboards, ops, sim_cli};

#[derive(Parser)]
#[command(
    name = "aaa",
    version,
    about = "Durable ingestion of X Account Activity into Postgres through Kafka",
    long_about = "Durable ingestion of X Account Activity into Postgres through Kafka.\n\n\
        X ──signed POST──▶ receiver ──▶ Kafka (aaa.raw) ──▶ consumer ──▶ Postgres\n\n\
        Every option can also be set through the environment variable shown next to it \
        (12-factor); secrets are read only from the environment or from files.",
    after_help = "Typical start:\n  aaa migrate\n  aaa receiver --webhooks-file webhooks.toml\n  aaa consumer"
)]
pub struct Cli {
    /// Log format on stdout.
    #[arg(
        long,
        env = "AAA_LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    log_format: LogFormat,
    #[command(flatten)]
    clock: ClockArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer X's CRC challenges and accept signed deliveries into Kafka.
    Receiver(aaa_receiver::ReceiverArgs),
    /// Store raw deliveries from Kafka into Postgres, exactly once.
    Consumer(aaa_consumer::ConsumerArgs),
    /// Find delivery gaps and replay them through X, one job per webhook.
    Watermark(Box<aaa_watermark::WatermarkArgs>),
    /// Gaps found and their replay windows (AAA_DATABASE_URL).
    #[command(subcommand)]
    Gaps(GapsCli),
    /// Write the Grafana dashboards (generated from one typed description)
    /// and the PrometheusRule rendering of the alert rules.
    Dashboards {
        #[arg(long, default_value = "dashboards")]
        out: std::path::PathBuf,
        /// Where prometheus-rule.yaml goes (the Kustomize base).
        #[arg(long, default_value = "deploy/base")]
        deploy: std::path::PathBuf,
    },
    /// Apply database migrations (run before starting a new version), as
    /// the schema's owner (docs/deploy.md).
    Migrate(MigrateArgs),
    /// The X simulator: generate and deliver signed activity.
    #[command(subcommand)]
    Sim(sim_cli::SimCommand),
    /// Manage webhooks at X (credentials: AAA_X_BEARER_TOKEN or _FILE).
    Webhooks {
        #[command(flatten)]
        ops: OpsArgs,
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Manage subscriptions (add/check sign as the user: AAA_X_CONSUMER_KEY,
    /// AAA_X_CONSUMER_SECRET, AAA_X_ACCESS_TOKEN, AAA_X_ACCESS_TOKEN_SECRET,
    /// each also as _FILE).
    Subscriptions {
        #[command(flatten)]
        ops: OpsArgs,
        #[command(subcommand)]
        command: SubscriptionsCommand,
    },
    /// Submit replays, and see the jobs' outcomes.
    Replay {
        #[command(flatten)]
        ops: OpsArgs,
        #[command(subcommand)]
        command: ReplayCli,
    },
}

#[derive(clap::Args)]
struct MigrateArgs {
    #[command(flatten)]
    database: aaa_db::DatabaseArgs,
    /// Longest wait for any lock (the migrator's advisory lock, which any
    /// session can hold, or a table behind a long transaction); then the
    /// migration stops and names who holds advisory locks.
    #[arg(long, env = "AAA_MIGRATE_LOCK_WAIT_SECS", default_value_t = 60)]
    lock_wait_secs: u64,
}

#[derive(Subcommand)]
enum GapsCli {
    /// Every replay window: pending, submitted, reconciled (recovered and
    /// duplicate counts) or expired.
    List {
        #[arg(long)]
        webhook: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: aaa_db::DatabaseArgs,
    },
}

#[derive(Subcommand)]
enum ReplayCli {
    #[command(flatten)]
    Submit(ReplayCommand),
    /// Replay jobs' outcomes as the pipeline stored them (AAA_DATABASE_URL).
    Status {
        #[arg(long)]
        webhook: Option<String>,
        #[command(flatten)]
        database: aaa_db::DatabaseArgs,
    },
}

impl Cli {
    /// Whether failures are reported as JSON (`--json`).
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Webhooks { ops, .. }
            | Command::Subscriptions { ops, .. }
            | Command::Replay { ops, .. } => ops.json,
            Command::Gaps(GapsCli::List { json, .. }) => *json,
            _ => false,
        }
    }

    /// Runs the command.
    pub async fn run(self) -> Result<(), CliError> {
        observe::init_logging(self.log_format);
        let clock = self
            .clock
            .clock()
            .map_err(|e| CliError::Usage(e.to_string()))?;
        match self.command {
            Command::Webhooks { ops, command } => {
                with_client(&ops, clock, async |x| {
                    ops::webhooks::webhooks(&ops, x, command).await
                })
                .await?
            }
            Command::Subscriptions { ops, command } => {
                with_client(&ops, clock, async |x| {
                    ops::subscriptions::subscriptions(&ops, x, command).await
                })
                .await?
            }
            Command::Replay {
                ops,
                command: ReplayCli::Submit(command),
            } => {
                with_client(&ops, clock, async |x| {
                    ops::replay::replay(&ops, x, command, clock).await
                })
                .await?
            }
            Command::Replay {
                ops,
                command: ReplayCli::Status { webhook, database },
            } => ops::replay::replay_status(&ops, &database, webhook).await?,
            Command::Gaps(GapsCli::List {
                webhook,
                json,
                database,
            }) => ops::gaps::gaps_list(json, &database, webhook).await?,
            Command::Receiver(args) => {
                service(async |metrics, stop| aaa_receiver::run(args, clock, metrics, stop).await)
                    .await?
            }
            Command::Consumer(args) => {
                service(async |metrics, stop| aaa_consumer::run(args, clock, metrics, stop).await)
                    .await?
            }
            Command::Watermark(args) => {
                service(async |metrics, stop| aaa_watermark::run(*args, clock, metrics, stop).await)
                    .await?
            }
            Command::Migrate(args) => migrate(args).await?,
            Command::Sim(command) => sim_cli::run(command, clock).await?,
            Command::Dashboards { out, deploy } => write_dashboards(&out, &deploy)?,
        }
        Ok(())
    }
}

/// A long-running service: metrics installed, stopped by SIGTERM or Ctrl-C.
async fn service<E: Into<anyhow::Error>>(
    run: impl AsyncFnOnce(PrometheusHandle, CancellationToken) -> Result<(), E>,
) -> anyhow::Result<()> {
    let metrics = observe::install_metrics()?;
    run(metrics, aaa_common::shutdown::on_signal())
        .await
        .map_err(Into::into)
}

fn write_dashboards(out: &Path, deploy: &Path) -> anyhow::Result<()> {
    for path in dashboards::write_all(out)? {
        println!("wrote {}", path.display());
    }
    println!("wrote {}", dashboards::write_rule(out, deploy)?.display());
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let pool = args.database.pool()?;
    let before = aaa_db::applied_version(&pool).await?;
    let after = aaa_db::migrate(
        &pool,
        std::time::Duration::from_secs(args.lock_wait_secs.max(1)),
    )
    .await?;
    tracing::info!(
        message = "migrations applied",
        from_version = before,
        to_version = after
    );
    println!("schema at version {after} (was {before})");
    Ok(())
}
