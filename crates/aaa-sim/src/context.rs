//! What every part of the simulator shares: the world behind one lock, the
//! configuration, the clock, the HTTP client X delivers with, randomness for
//! faults, and the open stream connections.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aaa_common::Clock;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::connections::StreamHub;
use crate::generate::{Generator, Mix};
use crate::state::{App, World};
use crate::{Error, SimArgs};

pub struct Shared {
    world: Mutex<World>,
    consumer_secret: SecretString,
    pub args: SimArgs,
    pub clock: Clock,
    pub(crate) http: reqwest::Client,
    /// Randomness for faults, nonces and tokens; not part of the seeded stream.
    chaos: Mutex<ChaCha8Rng>,
    pub(crate) deliveries: tokio::sync::Semaphore,
    /// Wakes replay jobs held by the `hold` fault.
    pub(crate) release_jobs: tokio::sync::Notify,
    /// Open `GET /2/activity/stream` connections.
    pub(crate) stream: StreamHub,
}

pub type Sim = Arc<Shared>;

impl Shared {
    /// The world, briefly: never held across an await.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What X's clock says now: the simulated one, skewed if asked.
    pub fn x_now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now() + chrono::TimeDelta::seconds(self.args.clock_skew_secs)
    }

    pub(crate) fn chance(&self, share: f64) -> bool {
        use rand::Rng;
        share > 0.0
            && self
                .chaos
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random_bool(share.min(1.0))
    }

    pub(crate) fn random_below(&self, n: u64) -> u64 {
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

    pub(crate) fn random_token(&self) -> String {
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
        stream: StreamHub::default(),
        deliveries: tokio::sync::Semaphore::new(args.delivery_concurrency.max(1)),
        chaos: Mutex::new(ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed)),
        args,
        clock,
        http,
    }))
}
