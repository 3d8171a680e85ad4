//! The X simulator: a fake X for the demo and every end-to-end test.
//!
//! It generates seeded activity for subscribed accounts, signs and delivers
//! it with X's retry policy, runs CRC, serves the webhooks, subscriptions and
//! replay APIs with X's validation and error reasons, injects faults on
//! command, and keeps a ground truth of everything it owed and sent.
//!
//! Time is the shared [`Clock`]: X's 10 min / 31 min / 24 h rules, the CRC
//! interval and the retry schedule are simulated time. HTTP timeouts (X's 3 s
//! answer limit) are real time: networks do not run faster in a simulation.

mod connections;
mod context;
mod crc;
mod delivery;
mod events;
pub mod faults;
pub mod generate;
mod http;
pub mod oauth2;
mod replay;
pub mod send;
pub mod state;
pub mod stream;
mod traffic;
pub mod xaa;

use std::net::SocketAddr;

use chrono::TimeDelta;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub use crate::context::{Shared, Sim, build};
use crate::faults::Faults;
pub use crate::traffic::generate;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{failed} of {total} deliveries were not acknowledged with 2xx (last: {last})")]
    Undelivered {
        failed: usize,
        total: usize,
        last: String,
    },
    #[error(transparent)]
    Common(#[from] aaa_common::Error),
    #[error("simulator server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

/// Configuration of `aaa sim serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address of the simulated X API and the control API.
    #[arg(long, env = "AAA_SIM_LISTEN", default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Simulated accounts that can be subscribed (1 to 100000).
    #[arg(long, env = "AAA_SIM_ACCOUNTS", default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub accounts: u32,
    /// Seed: the same seed generates the same activity.
    #[arg(long, env = "AAA_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Activities generated per real second (0: only on POST /sim/generate).
    #[arg(long, env = "AAA_SIM_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// Chance per 100 ms tick of a burst of ten times the rate.
    #[arg(long, env = "AAA_SIM_BURST_SHARE", default_value_t = 0.0)]
    pub burst_share: f64,
    /// Share of activities of kinds the pipeline does not know.
    #[arg(long, default_value_t = 0.02)]
    pub unknown_share: f64,
    /// Chance that the other party of an interaction is subscribed too.
    #[arg(long, default_value_t = 0.3)]
    pub interaction_share: f64,
    /// Which product's envelope deliveries use. `subscribed` (as X does):
    /// AAA for accounts subscribed on the Account Activity API, XAA for
    /// matching X Activity API subscriptions, both when both exist. `aaa`,
    /// `xaa` or `both` force the envelope for every AAA-subscribed account.
    #[arg(long, env = "AAA_SIM_FORMAT", value_enum, default_value = "subscribed")]
    pub format: xaa::Format,
    /// Deliver XAA events on the persistent stream (GET /2/activity/stream)
    /// instead of webhook POSTs (with --format xaa or both).
    #[arg(long, env = "AAA_SIM_STREAM")]
    pub stream: bool,
    /// Stream connections the app may hold at once (X: 2); past it X
    /// answers 429 TooManyConnections.
    #[arg(long, default_value_t = 2)]
    pub stream_connection_limit: usize,
    /// Simulated seconds a stream connection keeps counting against the
    /// limit after it dropped (X: 15 to 20 minutes after an abrupt
    /// disconnect); 0 frees it at once.
    #[arg(long, default_value_t = 0)]
    pub stream_lockout_secs: u64,
    /// Most X Activity API subscriptions one list page returns, whatever
    /// max_results asks for (X may return fewer; clients follow next_token).
    #[arg(long, default_value_t = 1000)]
    pub activity_page_limit: usize,
    /// Share of activities that are subscription revokes.
    #[arg(long, default_value_t = 0.005)]
    pub revoke_share: f64,
    /// X's retry delays after a failed delivery, in simulated seconds. X's
    /// FAQ says "several times over about four hours", its enterprise guide
    /// "3 retries over about 5 minutes": the default is the shorter one.
    #[arg(
        long,
        env = "AAA_SIM_RETRY_SCHEDULE",
        value_delimiter = ',',
        default_value = "60,120,120"
    )]
    pub retry_schedule_secs: Vec<u64>,
    /// CRC every this many simulated seconds (X: about 24 h).
    #[arg(long, env = "AAA_SIM_CRC_INTERVAL_SECS", default_value_t = 86_400)]
    pub crc_interval_secs: u64,
    /// Consumer key of the simulated app.
    #[arg(long, env = "AAA_SIM_CONSUMER_KEY", default_value = "sim-consumer-key")]
    pub consumer_key: String,
    /// Consumer secret: signs deliveries and checks CRC answers. Secrets are
    /// read from the environment only (AAA_SIM_CONSUMER_SECRET), never from
    /// the command line, where process lists would show them.
    #[arg(skip = secret_from_env("AAA_SIM_CONSUMER_SECRET"))]
    pub consumer_secret: Option<SecretString>,
    /// App bearer token the API accepts (AAA_SIM_BEARER_TOKEN; default
    /// `sim-bearer-token`).
    #[arg(skip = secret_from_env("AAA_SIM_BEARER_TOKEN"))]
    pub bearer_token: Option<SecretString>,
    /// Subscriptions the app may hold across all webhooks.
    #[arg(long, env = "AAA_SIM_PROVISIONED_COUNT", default_value_t = 5_000)]
    pub provisioned_count: usize,
    /// Serve POST /2/webhooks/replay, X's current replay endpoint.
    #[arg(long, env = "AAA_SIM_WEBHOOKS_REPLAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhooks_replay: bool,
    /// Treat to_date of /2/webhooks/replay as inclusive (its spec says so; the
    /// default is the stricter exclusive reading, which delivers less).
    #[arg(long, env = "AAA_SIM_WEBHOOKS_REPLAY_TO_INCLUSIVE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhooks_replay_to_inclusive: bool,
    /// Replay requests per 15 minutes on /2/webhooks/replay.
    #[arg(long, default_value_t = 100)]
    pub webhooks_replay_limit: u32,
    /// How far X's clock is ahead of the shared one (seconds, negative:
    /// behind): its `Date` headers and its replay-window checks use it.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub clock_skew_secs: i64,
    /// Reads of GET /2/webhooks, and re-validations (PUT), per 15 minutes
    /// (X's enterprise table: 15).
    #[arg(long, default_value_t = 15)]
    pub webhooks_read_limit: u32,
    /// Deliveries in flight at once.
    #[arg(long, default_value_t = 16)]
    pub delivery_concurrency: usize,
    /// On start, register this webhook URL (CRC first) ...
    #[arg(long, env = "AAA_SIM_REGISTER_WEBHOOK")]
    pub register_webhook: Option<String>,
    /// ... under this webhook id (default: one X would assign) ...
    #[arg(long, env = "AAA_SIM_REGISTER_WEBHOOK_ID")]
    pub register_webhook_id: Option<String>,
    /// ... and subscribe this many accounts to it (default: all) ...
    #[arg(long, env = "AAA_SIM_SUBSCRIBE")]
    pub subscribe: Option<usize>,
    /// ... on this product: `xaa` (X Activity API subscriptions per event
    /// type, tagged `aaa:<user>:<event_type>`, delivered in XAA envelopes
    /// with `--format subscribed`) or `aaa` (Account Activity, which X ends
    /// on 2027-01-01).
    #[arg(
        long,
        env = "AAA_SIM_SUBSCRIBE_PRODUCT",
        value_enum,
        default_value = "aaa"
    )]
    pub subscribe_product: Product,
    /// Fault: share of live deliveries lost outright.
    #[arg(long, default_value_t = 0.0)]
    pub drop_share: f64,
    /// Fault: extra real milliseconds before each delivery.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Fault: share of deliveries sent twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_share: f64,
    /// Fault: random extra delay up to this many real ms (reorders deliveries).
    #[arg(long, default_value_t = 0)]
    pub reorder_ms: u64,
    /// Fault: share of API calls answered 503.
    #[arg(long, default_value_t = 0.0)]
    pub api_error_share: f64,
}

fn secret_from_env(var: &str) -> Option<SecretString> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

impl SimArgs {
    pub fn faults(&self) -> Faults {
        Faults {
            drop_share: self.drop_share,
            delay_ms: self.delay_ms,
            duplicate_share: self.duplicate_share,
            reorder_ms: self.reorder_ms,
            api_error_share: self.api_error_share,
            ..Faults::default()
        }
    }

    pub fn retry_schedule(&self) -> Vec<TimeDelta> {
        self.retry_schedule_secs
            .iter()
            .map(|s| TimeDelta::seconds(*s as i64))
            .collect()
    }
}

/// Serves the simulated X until `shutdown`.
pub async fn run(
    sim: Sim,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = aaa_common::admin::bind("sim", sim.args.listen).await?;
    let app = http::router(sim.clone(), metrics);
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    });
    if let Some(url) = sim.args.register_webhook.clone() {
        bootstrap(&sim, url).await?;
    }
    tokio::spawn(traffic::generate_loop(sim.clone(), shutdown.clone()));
    tokio::spawn(crc::schedule_loop(sim.clone(), shutdown.clone()));
    server
        .await
        .map_err(|e| Error::Serve(std::io::Error::other(e)))?
        .map_err(Error::Serve)?;
    tracing::info!(message = "simulator stopped");
    Ok(())
}

/// Which of X's products an account is subscribed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Product {
    /// The X Activity API (per event type and filter).
    Xaa,
    /// The Account Activity API (per account), ending 2027-01-01.
    Aaa,
}

/// Registers a webhook (CRC first) and subscribes accounts, as an operator would.
async fn bootstrap(sim: &Sim, url: String) -> Result<(), Error> {
    crc::challenge(sim, &url)
        .await
        .map_err(|e| Error::Bootstrap(format!("CRC of {url} failed: {e}")))?;
    let now = sim.clock.now();
    let mut world = sim.world();
    let mut webhook = world.add_webhook(url, now);
    if let Some(id) = sim.args.register_webhook_id.clone() {
        // Re-key it: the operator configured the receiver with this id.
        world.webhooks.remove(&webhook.id);
        world.subscriptions.remove(&webhook.id);
        webhook.id = id.clone();
        world.webhooks.insert(id.clone(), webhook.clone());
        world.subscriptions.entry(id).or_default();
    }
    let count = sim
        .args
        .subscribe
        .unwrap_or(world.accounts.len())
        .min(sim.args.provisioned_count);
    let users: Vec<String> = world
        .accounts
        .iter()
        .take(count)
        .map(|a| a.user_id.clone())
        .collect();
    match sim.args.subscribe_product {
        Product::Aaa => world
            .subscriptions
            .entry(webhook.id.clone())
            .or_default()
            .extend(users),
        Product::Xaa => world.subscribe_on_xaa(&webhook.id, &users, now),
    }
    tracing::info!(message = "webhook registered and accounts subscribed", webhook = %webhook.id, url = %webhook.url, subscribed = count, product = ?sim.args.subscribe_product);
    Ok(())
}
