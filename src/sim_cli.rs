//! `aaa sim ...`

use aaa_common::Clock;
use aaa_sim::generate::Generator;
use aaa_sim::send::Sender;
use secrecy::SecretString;

#[derive(clap::Subcommand)]
pub enum SimCommand {
    /// Run the simulated X: API, deliveries, CRC, replay, faults, ground truth.
    ///
    /// X API v2 (bearer / OAuth 1.0a as X requires): /2/webhooks,
    /// /2/account_activity/..., /2/webhooks/replay. Control API: GET
    /// /sim/accounts, POST /sim/generate {"count":N}, GET|PUT /sim/faults,
    /// POST /sim/webhooks/ID/invalidate, GET /sim/jobs, GET /sim/truth/summary,
    /// GET /sim/truth.jsonl, /metrics.
    Serve(Box<aaa_sim::SimArgs>),
    /// Generate COUNT deliveries of every activity kind and POST them, signed,
    /// to a receiver (stand-in for X until the full simulator runs).
    Send(SendArgs),
}

#[derive(clap::Args)]
pub struct SendArgs {
    /// Webhook URL to deliver to, e.g. http://127.0.0.1:8080/webhooks/x
    #[arg(long, env = "AAA_SIM_TARGET")]
    target: String,
    /// Consumer secret to sign with: AAA_SIM_CONSUMER_SECRET, from the
    /// environment only (never the command line, where process lists show it).
    #[arg(skip = std::env::var("AAA_SIM_CONSUMER_SECRET").ok().map(SecretString::from))]
    secret: Option<SecretString>,
    /// Number of deliveries.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Subscribed accounts the activity is spread over.
    #[arg(long, default_value_t = 25)]
    accounts: usize,
    /// Seed: the same seed sends the same activity.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

pub async fn run(command: SimCommand, clock: Clock) -> anyhow::Result<()> {
    match command {
        SimCommand::Serve(args) => {
            let metrics = aaa_common::observe::install_metrics()?;
            let shutdown = aaa_common::shutdown::on_signal();
            let sim = aaa_sim::build(*args, clock)?;
            aaa_sim::run(sim, metrics, shutdown).await?;
            Ok(())
        }
        SimCommand::Send(args) => {
            let deliveries = Generator::new(args.seed, args.accounts, clock.now()).take(args.count);
            let bodies: Vec<Vec<u8>> = deliveries.iter().map(|d| d.to_bytes()).collect();
            let secret = args
                .secret
                .ok_or_else(|| anyhow::anyhow!("AAA_SIM_CONSUMER_SECRET must be set"))?;
            let sender = Sender::new(args.target.clone(), secret)?;
            sender.deliver_all(&bodies, args.concurrency).await?;
            println!(
                "delivered {} signed deliveries to {}",
                bodies.len(),
                args.target
            );
            Ok(())
        }
    }
}
