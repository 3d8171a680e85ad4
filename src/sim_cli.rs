//! `aaa sim ...`

use aaa_common::Clock;
use aaa_sim::generate::Generator;
use aaa_sim::send::Sender;
use secrecy::SecretString;

#[derive(clap::Subcommand)]
pub enum SimCommand {
    /// Generate COUNT deliveries of every activity kind and POST them, signed,
    /// to a receiver (stand-in for X until the full simulator runs).
    Send(SendArgs),
}

#[derive(clap::Args)]
pub struct SendArgs {
    /// Webhook URL to deliver to, e.g. http://127.0.0.1:8080/webhooks/x
    #[arg(long, env = "AAA_SIM_TARGET")]
    target: String,
    /// Consumer secret to sign with (environment only: never on the command line).
    #[arg(
        long = "consumer-secret",
        env = "AAA_SIM_CONSUMER_SECRET",
        hide_env_values = true,
        hide = true
    )]
    secret: SecretString,
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
        SimCommand::Send(args) => {
            let deliveries = Generator::new(args.seed, args.accounts, clock.now()).take(args.count);
            let bodies: Vec<Vec<u8>> = deliveries.iter().map(|d| d.to_bytes()).collect();
            let sender = Sender::new(args.target.clone(), args.secret)?;
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
