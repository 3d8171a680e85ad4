//! `aaa-bench`: every stage measured against a baseline in the same run,
//! because machines here are shared and noisy: ratios are the result,
//! absolute numbers only context. Run through `scripts/bench.sh`, which
//! starts Postgres, provides the broker and builds in release mode.

mod consumer;
mod e2e;
mod pgprofile;
mod procfs;
mod receiver;
mod recovery;
mod report;
mod soak;
mod stats;
mod wrk;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
enum Scenario {
    Receiver,
    Consumer,
    E2e,
    Scale,
    Recovery,
    Soak,
    Replicas,
}

/// Benchmarks of the receiver, the consumer, the whole pipeline and its
/// scale curve, each with a baseline measured in the same run. Needs
/// AAA_TEST_DATABASE_URL (a Postgres superuser URL) and AAA_NISSHI_BIN;
/// scripts/bench.sh provides both.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The `aaa` binary to measure (build it with --release).
    #[arg(long, env = "AAA_BENCH_AAA_BIN", default_value = "target/release/aaa")]
    aaa_bin: PathBuf,
    /// Where `<date>.json` and `<date>.md` go.
    #[arg(long, env = "AAA_BENCH_OUT", default_value = "bench/results")]
    out: PathBuf,
    /// Scenarios to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Seconds of each load phase.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Connections of the closed-loop load on the receiver.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Deliveries pre-loaded for the consumer scenario.
    #[arg(long, default_value_t = 100_000)]
    consumer_deliveries: usize,
    /// AAA_BATCH_MAX_RECORDS of the consumer in the consumer and scale
    /// scenarios (the service's default: 500).
    #[arg(long, default_value_t = 500)]
    consumer_batch: usize,
    /// Partitions of the raw topic in the end-to-end scenario. The
    /// receiver's idempotent producer keeps one produce request in flight
    /// per partition; deploy/kafka/kafka-topic.yaml has 12, but the local
    /// broker (nisshi on SQLite) acknowledges more slowly with more
    /// (docs/benchmarks.md), so 3, as in every earlier run.
    #[arg(long, default_value_t = 3)]
    e2e_partitions: i32,
    /// Offered rates of the end-to-end scenario, deliveries per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000")]
    rates: Vec<u64>,
    /// Activities generated per real second during the gap-recovery outage.
    #[arg(long, default_value_t = 1000)]
    recovery_rate: u64,
    /// Subscribed accounts of the scale curve.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    scale_accounts: Vec<usize>,
    /// Concurrent batch writers per consumer (AAA_CONSUMER_WRITERS): the
    /// consumer scenario runs once per value; the others use the first.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    writers: Vec<usize>,
    /// Consumer processes of the replicas scenario (one group, 6 partitions).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    replicas: Vec<usize>,
    /// Deliveries of the scale curve (1000000 for the full curve: about 10 minutes more).
    #[arg(long, value_delimiter = ',', default_value = "50000,200000")]
    scale_deliveries: Vec<usize>,
}

pub struct Settings {
    pub aaa_bin: PathBuf,
    pub duration: Duration,
    pub connections: u32,
    pub consumer_batch: usize,
    pub e2e_partitions: i32,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    if !args.aaa_bin.is_file() {
        return Err(Error::Setup(format!(
            "{} does not exist: cargo build --release --bin aaa",
            args.aaa_bin.display()
        )));
    }
    let settings = Settings {
        aaa_bin: std::fs::canonicalize(&args.aaa_bin)?,
        duration: Duration::from_secs(args.duration_secs.max(2)),
        connections: args.connections,
        consumer_batch: args.consumer_batch.max(1),
        e2e_partitions: args.e2e_partitions.max(1),
    };
    let writers = args.writers.first().copied().unwrap_or(2).max(1);
    let wanted = |s: Scenario| args.only.is_empty() || args.only.contains(&s);
    let scratch = tempfile::tempdir()?;
    let mut results = report::Results::new();

    if wanted(Scenario::Receiver) {
        eprintln!(
            "receiver vs bare axum ({} connections)",
            settings.connections
        );
        results.receiver = Some(receiver::run(&settings, scratch.path()).await?);
    }
    if wanted(Scenario::Consumer) {
        for &writers in &args.writers {
            eprintln!(
                "consumer vs COPY ({} deliveries, {writers} writers)",
                args.consumer_deliveries
            );
            let report =
                consumer::run(&settings, 1000, args.consumer_deliveries, 3, 1, writers).await?;
            if results.consumer.is_none() {
                results.consumer = Some(report);
            } else {
                results.writers.push(report);
            }
        }
    }
    if wanted(Scenario::E2e) {
        eprintln!("end to end at fixed offered rates");
        results.e2e = Some(e2e::run(&settings, &args.rates).await?);
    }
    if wanted(Scenario::Scale) {
        for &accounts in &args.scale_accounts {
            for &n in &args.scale_deliveries {
                eprintln!("scale: {accounts} accounts, {n} deliveries");
                results
                    .scale
                    .push(consumer::run(&settings, accounts, n, 5, 1, writers).await?);
            }
        }
    }
    if wanted(Scenario::Replicas) {
        for &replicas in &args.replicas {
            eprintln!(
                "consumer replicas: {replicas} ({} deliveries)",
                args.consumer_deliveries
            );
            results.replicas.push(
                consumer::run(
                    &settings,
                    1000,
                    args.consumer_deliveries,
                    3,
                    replicas,
                    writers,
                )
                .await?,
            );
        }
    }
    if wanted(Scenario::Recovery) {
        eprintln!("gap recovery");
        results.recovery = Some(recovery::run(&settings, args.recovery_rate).await?);
    }
    if wanted(Scenario::Soak) {
        eprintln!("a week of operation (7 simulated days)");
        results.soak = Some(soak::run(&settings).await?);
    }
    let (json, markdown) = results.write(&args.out)?;
    eprintln!("wrote {} and {}", json.display(), markdown.display());
    print!("{}", std::fs::read_to_string(markdown)?);
    Ok(())
}
