//! `aaa`: durable ingestion of X Account Activity into Postgres through Kafka.

use std::process::ExitCode;

use aaa_common::clock::ClockArgs;
use aaa_common::observe::{self, LogFormat};
use clap::{Parser, Subcommand};

mod activity_ops;
mod dashboards;
mod ops;
mod sim_cli;

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
struct Cli {
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
        ops: ops::OpsArgs,
        #[command(subcommand)]
        command: ops::WebhooksCommand,
    },
    /// Manage subscriptions (add/check sign as the user: AAA_X_CONSUMER_KEY,
    /// AAA_X_CONSUMER_SECRET, AAA_X_ACCESS_TOKEN, AAA_X_ACCESS_TOKEN_SECRET,
    /// each also as _FILE).
    Subscriptions {
        #[command(flatten)]
        ops: ops::OpsArgs,
        #[command(subcommand)]
        command: ops::SubscriptionsCommand,
    },
    /// Submit replays, and see the jobs' outcomes.
    Replay {
        #[command(flatten)]
        ops: ops::OpsArgs,
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
    Submit(ops::ReplayCommand),
    /// Replay jobs' outcomes as the pipeline stored them (AAA_DATABASE_URL).
    Status {
        #[arg(long)]
        webhook: Option<String>,
        #[command(flatten)]
        database: aaa_db::DatabaseArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    observe::init_logging(cli.log_format);
    // Operator commands: one clear line on failure, and an exit code that
    // says whose fault it was.
    let clock = match cli.clock.clock() {
        Ok(clock) => clock,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let x_result = match &cli.command {
        Command::Webhooks { ops, command } => Some(
            ops::with_client(ops, clock, async |x| {
                ops::webhooks(ops, x, command.clone()).await
            })
            .await
            .map_err(|e| (ops.json, e)),
        ),
        Command::Subscriptions { ops, command } => Some(
            ops::with_client(ops, clock, async |x| {
                ops::subscriptions(ops, x, command.clone()).await
            })
            .await
            .map_err(|e| (ops.json, e)),
        ),
        Command::Replay {
            ops,
            command: ReplayCli::Submit(command),
        } => Some(
            ops::with_client(ops, clock, async |x| {
                ops::replay(ops, x, command.clone(), clock).await
            })
            .await
            .map_err(|e| (ops.json, e)),
        ),
        _ => None,
    };
    if let Some(result) = x_result {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err((json, err)) => {
                if json {
                    let reason = err.reason().map(|r| r.name().to_owned());
                    eprintln!(
                        "{}",
                        serde_json::json!({"error": err.to_string(), "reason": reason, "body": err.body()})
                    );
                } else {
                    eprintln!("error: {err}");
                }
                ops::exit_code(&err)
            }
        };
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(message = "aaa failed", error = %format!("{err:#}"));
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let clock = cli.clock.clock()?;
    match cli.command {
        Command::Receiver(args) => {
            let metrics = observe::install_metrics()?;
            let shutdown = aaa_common::shutdown::on_signal();
            aaa_receiver::run(args, clock, metrics, shutdown).await?;
        }
        Command::Consumer(args) => {
            let metrics = observe::install_metrics()?;
            let shutdown = aaa_common::shutdown::on_signal();
            aaa_consumer::run(args, clock, metrics, shutdown).await?;
        }
        Command::Migrate(args) => {
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
        }
        Command::Sim(command) => sim_cli::run(command, clock).await?,
        Command::Watermark(args) => {
            let metrics = observe::install_metrics()?;
            let shutdown = aaa_common::shutdown::on_signal();
            aaa_watermark::run(*args, clock, metrics, shutdown).await?;
        }
        Command::Dashboards { out, deploy } => {
            for path in dashboards::write_all(&out)? {
                println!("wrote {}", path.display());
            }
            println!("wrote {}", dashboards::write_rule(&out, &deploy)?.display());
        }
        Command::Gaps(GapsCli::List {
            webhook,
            json,
            database,
        }) => ops::gaps_list(json, &database, webhook).await?,
        Command::Replay {
            ops,
            command: ReplayCli::Status { webhook, database },
        } => ops::replay_status(&ops, &database, webhook).await?,
        Command::Webhooks { .. } | Command::Subscriptions { .. } | Command::Replay { .. } => {
            unreachable!("operator commands are handled in main")
        }
    }
    Ok(())
}
