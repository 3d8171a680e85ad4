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

pub mod activity;
mod api;
mod control;
mod crc;
mod delivery;
mod events;
pub mod faults;
pub mod generate;
mod replay;
pub mod send;
pub mod state;
pub mod stream;
pub mod xaa;

use aaa_common::observe::InternalEvent;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aaa_common::Clock;
use chrono::TimeDelta;
use metrics_exporter_prometheus::PrometheusHandle;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::faults::Faults;
use crate::generate::{Generator, Mix};
use crate::state::{App, World};

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

/// Everything the simulator's tasks share.
pub struct Shared {
    world: Mutex<World>,
    consumer_secret: SecretString,
    pub args: SimArgs,
    pub clock: Clock,
    http: reqwest::Client,
    /// Randomness for faults, nonces and tokens; not part of the seeded stream.
    chaos: Mutex<ChaCha8Rng>,
    deliveries: tokio::sync::Semaphore,
    /// Wakes replay jobs held by the `hold` fault.
    pub(crate) release_jobs: tokio::sync::Notify,
    /// Open `GET /2/activity/stream` connections.
    pub(crate) stream: stream::StreamHub,
}

pub type Sim = Arc<Shared>;

impl Shared {
    /// The world, briefly: never held across an await.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chance(&self, share: f64) -> bool {
        use rand::Rng;
        share > 0.0
            && self
                .chaos
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random_bool(share.min(1.0))
    }

    fn random_below(&self, n: u64) -> u64 {
        use rand::Rng;
        if n == 0 {
            0
        } else {
            self.chaos
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random_range(0..n)
        }
    }

    fn random_token(&self) -> String {
        use rand::Rng;
        format!(
            "{:032x}",
            self.chaos
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random::<u128>()
        )
    }

    pub fn consumer_secret(&self) -> &[u8] {
        self.consumer_secret.expose_secret().as_bytes()
    }
}

/// Builds a simulator; `run` serves it.
pub fn build(args: SimArgs, clock: Clock) -> Result<Sim, Error> {
    let consumer_secret = args.consumer_secret.clone().ok_or_else(|| {
        Error::Config("AAA_SIM_CONSUMER_SECRET must be set (the app's consumer secret)".into())
    })?;
    let bearer_token = args
        .bearer_token
        .clone()
        .unwrap_or_else(|| SecretString::from("sim-bearer-token"));
    let mix = Mix {
        unknown_share: args.unknown_share,
        interaction_share: args.interaction_share,
        revoke_share: args.revoke_share,
    };
    let generator = Generator::with_mix(args.seed, args.accounts as usize, clock.now(), mix);
    let app = App {
        app_id: "13090192".into(),
        consumer_key: args.consumer_key.clone(),
        consumer_secret: consumer_secret.expose_secret().to_owned(),
        bearer_token: bearer_token.expose_secret().to_owned(),
    };
    let mut world = World::new(app, args.accounts as usize, args.seed, generator);
    world.faults = args.faults();
    let http = reqwest::Client::builder()
        // X's limit for any answer from a webhook, in real time.
        .timeout(Duration::from_secs(3))
        .build()?;
    Ok(Arc::new(Shared {
        world: Mutex::new(world),
        consumer_secret,
        release_jobs: tokio::sync::Notify::new(),
        stream: stream::StreamHub::default(),
        deliveries: tokio::sync::Semaphore::new(args.delivery_concurrency.max(1)),
        chaos: Mutex::new(ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed)),
        args,
        clock,
        http,
    }))
}

/// Serves the simulated X until `shutdown`.
pub async fn run(
    sim: Sim,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = aaa_common::admin::bind("sim", sim.args.listen).await?;
    let app = api::router(sim.clone()).merge(control::router(sim.clone(), metrics));
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
    tokio::spawn(generate_loop(sim.clone(), shutdown.clone()));
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
        Product::Xaa => activity::subscribe_accounts(&mut world, &webhook.id, &users, now),
    }
    tracing::info!(message = "webhook registered and accounts subscribed", webhook = %webhook.id, url = %webhook.url, subscribed = count, product = ?sim.args.subscribe_product);
    Ok(())
}

/// Where one delivery goes, in which envelope: AAA to every webhook the
/// account is subscribed on (revokes: where the actor is), XAA to the
/// webhook of every X Activity API subscription matching its event type and
/// filter, or, when `format` forces one, everything AAA-routed in that
/// envelope.
/// A route's third field: `false` when X owes the delivery but does not
/// attempt it (inside a cutover's gap).
fn routes(
    world: &state::World,
    format: xaa::Format,
    delivery: &generate::Delivery,
    actor: &String,
    activity_id: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, Vec<u8>, bool)> {
    let owner = delivery.for_user_id.as_ref().unwrap_or(actor);
    let aaa_webhooks: Vec<String> = world
        .subscriptions
        .iter()
        .filter(|(_, users)| users.contains(owner))
        .map(|(id, _)| id.clone())
        .collect();
    // Opaque, stable per delivery, sometimes negative (as in X's examples).
    let uuid = (activity_id as i64).wrapping_mul(0x5851_F42D_4C95_7F2D);
    let xaa_body = || xaa::envelope(delivery, uuid);
    let to_all = |body: Vec<u8>| -> Vec<(String, Vec<u8>, bool)> {
        aaa_webhooks
            .iter()
            .map(|w| (w.clone(), body.clone(), true))
            .collect()
    };
    match format {
        xaa::Format::Aaa => to_all(delivery.to_bytes()),
        xaa::Format::Xaa => to_all(xaa_body().to_string().into_bytes()),
        xaa::Format::Both => {
            let mut routes = to_all(delivery.to_bytes());
            routes.extend(to_all(xaa_body().to_string().into_bytes()));
            routes
        }
        xaa::Format::Subscribed => {
            let mut routes = to_all(delivery.to_bytes());
            let body = xaa_body();
            let data = &body["data"];
            // One delivery per webhook, carrying the tag of the first
            // matching subscription (by id) there, as X puts the matched
            // subscription's tag on the event (none when it has none).
            let mut matched: Vec<(&String, &String, Option<&String>, bool)> = world
                .activity_subscriptions
                .iter()
                .filter(|s| {
                    s.event_type == data["event_type"]
                        && s.filter["user_id"] == data["filter"]["user_id"]
                        && (s.filter["direction"].is_null()
                            || s.filter["direction"] == data["filter"]["direction"])
                })
                .filter_map(|s| {
                    let webhook = s.webhook_id.as_ref()?;
                    let user = s.filter["user_id"].as_str().unwrap_or(owner);
                    let attempted = !world.in_cutover_gap(webhook, user, now);
                    world.webhooks.contains_key(webhook).then_some((
                        webhook,
                        &s.subscription_id,
                        s.tag.as_ref(),
                        attempted,
                    ))
                })
                .collect();
            matched.sort();
            matched.dedup_by(|a, b| a.0 == b.0);
            routes.extend(matched.into_iter().map(|(webhook, _, tag, attempted)| {
                let mut body = body.clone();
                match tag {
                    Some(tag) => body["data"]["tag"] = serde_json::json!(tag),
                    None => {
                        if let Some(data) = body["data"].as_object_mut() {
                            data.remove("tag");
                        }
                    }
                }
                (webhook.clone(), body.to_string().into_bytes(), attempted)
            }));
            routes
        }
    }
}

/// Generates `n` activities now and queues their deliveries; returns how
/// many deliveries were owed.
pub fn generate(sim: &Sim, n: usize) -> usize {
    let mut queued = Vec::new();
    let mut unattempted = Vec::new();
    {
        let now = sim.clock.now();
        let mut world = sim.world();
        world.apply_cutovers(now);
        // Computed once per call (100,000 accounts make it costly); revokes
        // below keep it current.
        let mut subscribed = world.subscribed_accounts();
        for _ in 0..n {
            let Some(activity) = world.generator.next_activity(&subscribed, now) else {
                break;
            };
            world.activities += 1;
            let activity_id = world.activities;
            events::ActivityGenerated {
                kind: activity.kind,
            }
            .emit();
            for delivery in &activity.deliveries {
                for (webhook_id, body, attempted) in routes(
                    &world,
                    sim.args.format,
                    delivery,
                    &activity.actor,
                    activity_id,
                    now,
                ) {
                    let seq = world.owe(
                        activity_id,
                        &webhook_id,
                        delivery.for_user_id.clone(),
                        delivery.kind,
                        activity.at,
                        body,
                    );
                    if attempted {
                        queued.push(seq);
                    } else {
                        unattempted.push(seq);
                    }
                }
            }
            if activity.kind == "user_event" {
                for users in world.subscriptions.values_mut() {
                    users.remove(&activity.actor);
                }
                // The app lost the account: its XAA subscriptions end too.
                world
                    .activity_subscriptions
                    .retain(|s| s.filter["user_id"].as_str() != Some(activity.actor.as_str()));
                subscribed.retain(|id| *id != activity.actor);
            }
        }
    }
    let owed = queued.len() + unattempted.len();
    for seq in unattempted {
        delivery::not_attempted(sim, seq, "migration_gap");
    }
    for seq in queued {
        delivery::spawn_live(sim.clone(), seq, 0);
    }
    owed
}

async fn generate_loop(sim: Sim, shutdown: CancellationToken) {
    if sim.args.rate <= 0.0 {
        return;
    }
    let tick = Duration::from_millis(100);
    let mut carry = 0.0;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let burst = if sim.chance(sim.args.burst_share) {
            10.0
        } else {
            1.0
        };
        carry += sim.args.rate * burst * tick.as_secs_f64();
        let n = carry.floor();
        carry -= n;
        if n >= 1.0 {
            generate(&sim, n as usize);
        }
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;

    #[test]
    fn an_xaa_subscribed_revoke_goes_to_the_apps_subscription() {
        let now = chrono::Utc::now();
        let generator = Generator::new(1, 3, now);
        let app = App {
            app_id: "1".into(),
            consumer_key: "k".into(),
            consumer_secret: "s".into(),
            bearer_token: "b".into(),
        };
        let mut world = state::World::new(app, 3, 1, generator);
        world.add_webhook("http://x".into(), now);
        let webhook = world.webhooks.keys().next().cloned().unwrap();
        let users: Vec<String> = world.accounts.iter().map(|a| a.user_id.clone()).collect();
        activity::subscribe_accounts(&mut world, &webhook, &users, now);
        let actor = users[0].clone();
        let delivery = generate::Delivery {
            for_user_id: None,
            kind: "user_event",
            body: serde_json::json!({"user_event": {"revoke": {"date_time": now.to_rfc3339(),
                "target": {"app_id": "1"}, "source": {"user_id": actor}}}}),
        };
        let routed = routes(&world, xaa::Format::Subscribed, &delivery, &actor, 1, now);
        assert_eq!(
            routed.len(),
            1,
            "{:?}",
            world
                .activity_subscriptions
                .iter()
                .filter(|s| s.event_type == "oauth.revoke")
                .collect::<Vec<_>>()
        );
    }
}
