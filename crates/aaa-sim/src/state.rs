//! What the simulated X knows: its app, accounts, webhooks, subscriptions,
//! replay jobs, and the ground truth of everything it owed and sent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::faults::Faults;
use crate::generate::{Generator, account_id};

#[derive(Debug, Clone, Serialize)]
pub struct App {
    pub app_id: String,
    pub consumer_key: String,
    pub consumer_secret: String,
    pub bearer_token: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub user_id: String,
    pub screen_name: String,
    pub access_token: String,
    pub access_token_secret: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub valid: bool,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub last_crc_at: DateTime<Utc>,
}

/// Which product's envelope a delivery is in: decided when it is owed
/// (by the subscription that routed it), never guessed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// Account Activity: `{"for_user_id": ..., "<kind>_events": [...]}`.
    Aaa,
    /// X Activity API: `{"data": {"event_type": ..., "payload": ...}}`.
    Xaa,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    Live,
    Replay,
}

/// One attempt to deliver something owed.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    pub route: Route,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// `2xx` status, other status, or why nothing was answered.
    pub outcome: String,
    pub ok: bool,
}

impl Attempt {
    /// A live attempt (no job).
    pub fn live(at: DateTime<Utc>, outcome: &str, ok: bool) -> Attempt {
        Attempt {
            at,
            route: Route::Live,
            job_id: None,
            outcome: outcome.to_owned(),
            ok,
        }
    }
}

/// Ground truth: one delivery owed to one webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Owed {
    pub seq: u64,
    pub activity_id: u64,
    pub webhook_id: String,
    pub for_user_id: Option<String>,
    pub kind: &'static str,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub envelope: Envelope,
    #[serde(skip)]
    pub body: Arc<Vec<u8>>,
    pub attempts: Vec<Attempt>,
    pub delivered_live: bool,
    pub delivered_by_replay: bool,
    /// Queued or waiting for a retry.
    pub pending: bool,
}

impl Owed {
    pub fn delivered(&self) -> bool {
        self.delivered_live || self.delivered_by_replay
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub job_id: String,
    pub webhook_id: String,
    pub from: DateTime<Utc>,
    pub to_exclusive: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// running, Complete or Incomplete
    pub state: String,
    /// When the webhook was free again (the status message was sent).
    pub finished_at: Option<DateTime<Utc>>,
    pub endpoint: &'static str,
}

/// Counts for `/sim/truth/summary`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub activities: u64,
    pub owed: u64,
    pub delivered: u64,
    pub delivered_live: u64,
    pub delivered_by_replay_only: u64,
    /// Account activity owed and never delivered (live or by replay).
    pub missing: u64,
    /// Replay job completions X never got through. Not activity, and X
    /// never replays them: the watermark times the job out and resubmits.
    pub missing_job_status: u64,
    pub pending: u64,
    pub attempts: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
}

pub struct World {
    pub app: App,
    pub accounts: Vec<Account>,
    pub webhooks: BTreeMap<String, Webhook>,
    /// webhook id → subscribed user ids
    pub subscriptions: BTreeMap<String, BTreeSet<String>>,
    pub owed: Vec<Owed>,
    pub jobs: Vec<Job>,
    pub faults: Faults,
    pub generator: Generator,
    pub activities: u64,
    /// X Activity API subscriptions (per event type and filter), in creation order.
    pub activity_subscriptions: Vec<ActivitySubscription>,
    pub next_activity_subscription: u64,
    /// X's managed migration in progress: accounts whose Account Activity
    /// subscription X is replacing by X Activity API ones.
    pub cutovers: Vec<Cutover>,
    /// The app's OAuth 2.0 client and the grants users made to it.
    pub oauth2: crate::oauth2::OAuth2,
    next_webhook: u64,
    next_job: u64,
    nonces: HashSet<(String, String)>,
    rate_windows: HashMap<&'static str, VecDeque<DateTime<Utc>>>,
}

/// X's limit of X Activity API subscriptions for the self-serve tier.
pub const SUBSCRIPTION_LIMIT: usize = 1_500;

/// One X Activity API subscription: an event type and a filter, delivered
/// to a webhook, tagged.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ActivitySubscription {
    pub subscription_id: String,
    pub event_type: String,
    pub filter: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One account's move from AAA to XAA on one webhook, as X's managed
/// migration does it: AAA deliveries until `aaa_until`, XAA from `xaa_from`.
/// An overlap (`xaa_from < aaa_until`) delivers both envelopes meanwhile; a
/// gap (`aaa_until < xaa_from`) delivers neither: what happens in it is owed
/// to the webhook but not attempted, and only a replay brings it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cutover {
    pub webhook_id: String,
    pub user_id: String,
    pub aaa_until: DateTime<Utc>,
    pub xaa_from: DateTime<Utc>,
}

impl World {
    /// Ends the AAA subscriptions whose cutover time has come.
    pub fn apply_cutovers(&mut self, now: DateTime<Utc>) {
        for cutover in &self.cutovers {
            if cutover.aaa_until <= now
                && let Some(users) = self.subscriptions.get_mut(&cutover.webhook_id)
            {
                users.remove(&cutover.user_id);
            }
        }
    }

    /// Is an XAA delivery for `user` to `webhook` inside a cutover's gap?
    pub fn in_cutover_gap(&self, webhook: &str, user: &str, now: DateTime<Utc>) -> bool {
        self.cutovers
            .iter()
            .any(|c| c.webhook_id == webhook && c.user_id == user && now < c.xaa_from)
    }

    pub fn new(app: App, accounts: usize, seed: u64, generator: Generator) -> World {
        let accounts = (0..accounts.max(1))
            .map(|i| {
                let user_id = account_id(i);
                Account {
                    screen_name: format!("user{}", &user_id[user_id.len() - 4..]),
                    access_token: format!("{user_id}-tok{seed:x}{i:x}"),
                    access_token_secret: format!("secret-{seed:x}-{i:x}"),
                    user_id,
                }
            })
            .collect();
        World {
            app,
            accounts,
            webhooks: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            owed: Vec::new(),
            jobs: Vec::new(),
            faults: Faults::default(),
            cutovers: Vec::new(),
            oauth2: crate::oauth2::OAuth2::new(
                format!("sim-oauth2-client-{seed:x}"),
                Some(format!("sim-oauth2-secret-{seed:x}")),
            ),
            generator,
            activities: 0,
            activity_subscriptions: Vec::new(),
            next_activity_subscription: 1_950_000_000_000_000_001,
            next_webhook: 1_900_000_000_000_000_001,
            next_job: 1_600_000_000,
            nonces: HashSet::new(),
            rate_windows: HashMap::new(),
        }
    }

    pub fn add_webhook(&mut self, url: String, now: DateTime<Utc>) -> Webhook {
        let id = self.next_webhook.to_string();
        self.next_webhook += 1;
        let webhook = Webhook {
            id: id.clone(),
            url,
            valid: true,
            created_at: now,
            last_crc_at: now,
        };
        self.webhooks.insert(id.clone(), webhook.clone());
        self.subscriptions.entry(id).or_default();
        webhook
    }

    pub fn account_by_token(&self, token: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.access_token == token)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.values().map(BTreeSet::len).sum()
    }

    /// Every account subscribed on some webhook.
    /// Accounts with a subscription of either product.
    pub fn subscribed_accounts(&self) -> Vec<String> {
        let all: BTreeSet<&str> = self
            .subscriptions
            .values()
            .flatten()
            .map(String::as_str)
            .chain(
                self.activity_subscriptions
                    .iter()
                    .filter_map(|s| s.filter["user_id"].as_str()),
            )
            .collect();
        all.into_iter().map(str::to_owned).collect()
    }

    pub fn remember_nonce(&mut self, consumer_key: &str, nonce: &str) -> bool {
        self.nonces
            .insert((consumer_key.to_owned(), nonce.to_owned()))
    }

    /// Sliding-window rate limit: `Ok` and counted, or `Err(reset)`.
    pub fn take_rate(
        &mut self,
        endpoint: &'static str,
        limit: u32,
        window: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<(), DateTime<Utc>> {
        let calls = self.rate_windows.entry(endpoint).or_default();
        while calls.front().is_some_and(|t| *t <= now - window) {
            calls.pop_front();
        }
        if calls.len() as u32 >= limit {
            return Err(calls.front().copied().unwrap_or(now) + window);
        }
        calls.push_back(now);
        Ok(())
    }

    pub fn new_job_id(&mut self) -> String {
        self.next_job += 1;
        self.next_job.to_string()
    }

    pub fn running_job(&self, webhook_id: &str) -> Option<&Job> {
        self.jobs
            .iter()
            .find(|j| j.webhook_id == webhook_id && j.state == "running")
    }

    /// Records one owed delivery; returns its sequence number.
    #[allow(clippy::too_many_arguments)]
    pub fn owe(
        &mut self,
        activity_id: u64,
        webhook_id: &str,
        for_user_id: Option<String>,
        kind: &'static str,
        created_at: DateTime<Utc>,
        envelope: Envelope,
        body: Vec<u8>,
    ) -> u64 {
        let seq = self.owed.len() as u64;
        self.owed.push(Owed {
            seq,
            activity_id,
            webhook_id: webhook_id.to_owned(),
            for_user_id,
            kind,
            created_at,
            envelope,
            body: Arc::new(body),
            attempts: Vec::new(),
            delivered_live: false,
            delivered_by_replay: false,
            pending: true,
        });
        seq
    }

    /// One attempt at an owed delivery, in the ground truth.
    pub fn record_attempt(&mut self, seq: u64, attempt: Attempt) {
        if let Some(owed) = self.owed.get_mut(seq as usize) {
            match attempt.route {
                Route::Live => owed.delivered_live |= attempt.ok,
                Route::Replay => owed.delivered_by_replay |= attempt.ok,
            }
            owed.attempts.push(attempt);
        }
    }

    /// X is done with an owed delivery: delivered, or given up on.
    pub fn settle(&mut self, seq: u64) {
        if let Some(owed) = self.owed.get_mut(seq as usize) {
            owed.pending = false;
        }
    }

    /// Subscribes `users` on the X Activity API for everything their
    /// Account Activity subscription delivered, to `webhook_id`, tagged
    /// `aaa:<user>:<event_type>` (as `aaa subscriptions migrate` plans), plus
    /// the app's `oauth.revoke`: what an operator's migration or X's managed
    /// one leaves behind. What exists already is kept.
    pub fn subscribe_on_xaa(&mut self, webhook_id: &str, users: &[String], now: DateTime<Utc>) {
        let wanted = users
            .iter()
            .flat_map(|user| {
                aaa_events::xaa::account_event_types()
                    .into_iter()
                    .map(move |t| {
                        (
                            t,
                            serde_json::json!({"user_id": user}),
                            format!("aaa:{user}:{t}"),
                        )
                    })
            })
            .chain(std::iter::once((
                "oauth.revoke",
                serde_json::json!({}),
                "aaa:revoke".to_owned(),
            )));
        for (event_type, filter, tag) in wanted {
            if self
                .activity_subscriptions
                .iter()
                .any(|s| s.event_type == event_type && s.filter == filter)
            {
                continue;
            }
            let id = self.next_activity_subscription.to_string();
            self.next_activity_subscription += 1;
            self.activity_subscriptions.push(ActivitySubscription {
                subscription_id: id,
                event_type: event_type.to_owned(),
                filter,
                tag: Some(tag),
                webhook_id: Some(webhook_id.to_owned()),
                created_at: now.to_rfc3339(),
                updated_at: now.to_rfc3339(),
            });
        }
    }

    pub fn summary(&self) -> Summary {
        let mut summary = Summary {
            activities: self.activities,
            ..Summary::default()
        };
        for owed in &self.owed {
            summary.owed += 1;
            summary.attempts += owed.attempts.len() as u64;
            *summary.by_kind.entry(owed.kind).or_default() += 1;
            if owed.delivered() {
                summary.delivered += 1;
            }
            if owed.delivered_live {
                summary.delivered_live += 1;
            } else if owed.delivered_by_replay {
                summary.delivered_by_replay_only += 1;
            }
            if owed.pending {
                summary.pending += 1;
            } else if !owed.delivered() && owed.kind == "replay_job_status" {
                summary.missing_job_status += 1;
            } else if !owed.delivered() {
                summary.missing += 1;
            }
        }
        summary
    }
}
