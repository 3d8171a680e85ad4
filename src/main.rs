//! `aaa`: durable ingestion of X Account Activity into Postgres through Kafka.

use std::process::ExitCode;

use aaa_common::clock::ClockArgs;
use aaa_common::observe::{self, LogFormat};
use clap::{Parser, Subcommand};

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
    /// Apply database migrations (run before starting a new version).
    Migrate(aaa_db::DatabaseArgs),
    /// The X simulator: generate and deliver signed activity.
    #[command(subcommand)]
    Sim(sim_cli::SimCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    observe::init_logging(cli.log_format);
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
            let pool = args.pool()?;
            let before = aaa_db::applied_version(&pool).await?;
            let after = aaa_db::migrate(&pool).await?;
            tracing::info!(
                message = "migrations applied",
                from_version = before,
                to_version = after
            );
            println!("schema at version {after} (was {before})");
        }
        Command::Sim(command) => sim_cli::run(command, clock).await?,
    }
    Ok(())
}
