//! Faults the simulator injects on command (control API or CLI flags).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of live deliveries X loses outright (never sent, never retried).
    pub drop_share: f64,
    /// Extra delay before every delivery, in real milliseconds.
    pub delay_ms: u64,
    /// Share of deliveries sent twice.
    pub duplicate_share: f64,
    /// Random extra delay up to this many real milliseconds, so deliveries
    /// overtake each other.
    pub reorder_ms: u64,
    /// Share of API calls answered 503.
    pub api_error_share: f64,
    /// Extra real milliseconds before every API answer (a slow X).
    pub api_delay_ms: u64,
    /// A full delivery outage (simulated time): nothing is delivered or
    /// retried inside it; what falls in it is owed and can only be replayed.
    pub outage: Option<Outage>,
    /// Extra real milliseconds before each replayed delivery (a slow job).
    pub replay_delay_ms: u64,
    /// A replay job reports `Complete` even when some of its deliveries
    /// failed (X does not document that it reports them): only the
    /// receivers' own account can tell.
    pub complete_despite_failures: bool,
    /// What the next replay job does.
    pub next_replay: Option<ReplayFault>,
    /// A duplicate or replayed X Activity API delivery carries a new
    /// `event_uuid` (X does not document that it keeps it).
    pub fresh_xaa_uuid_on_resend: bool,
    /// Until then (simulated time), `GET /2/webhooks` and `PUT
    /// /2/webhooks/{id}` answer 429, as when an app's budget is spent.
    pub webhooks_rate_limited_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayFault {
    /// Stops halfway and reports `Incomplete`.
    Incomplete,
    /// Never finishes: the webhook stays busy (ReplayConflictError).
    NeverFinish,
    /// Waits until `POST /sim/jobs/release`, then runs normally: the webhook
    /// is busy for exactly as long as a test wants.
    Hold,
}

impl Faults {
    pub fn in_outage(&self, now: DateTime<Utc>) -> bool {
        self.outage.is_some_and(|o| o.from <= now && now < o.to)
    }
}
