//! What every step of a webhook's round works on: one connection, the
//! lease the round took (every state change is conditional on it), the
//! round's time, and the watermark's settings, view of X and fences.

use std::collections::HashMap;

use aaa_common::Clock;
use chrono::{DateTime, TimeDelta, Utc};

use crate::at_x::AtX;
use crate::coverage::Interval;
use crate::planner::WindowKind;
use crate::ports::RoundStore;
use crate::store::{self, Lease, WindowState};
use crate::{Error, WatermarkArgs};

/// The watermark's configuration, as the rounds use it.
pub struct Settings {
    pub webhooks: Vec<String>,
    pub job_timeout: TimeDelta,
    pub backoff: TimeDelta,
    pub replay_limit: i64,
    pub audit_span: TimeDelta,
    /// Per webhook, where it differs from `audit_span`.
    pub audit_spans: HashMap<String, TimeDelta>,
    /// Kept inside X's 24 h replay edge when submitting.
    pub edge_margin: TimeDelta,
    pub validity_unknown_after: TimeDelta,
    /// Simulated time that covers a receiver's late report: clock skew
    /// between receivers and watermark, and a delivery answered after X's
    /// completion message overtook it (`AAA_WATERMARK_RECEIVER_MARGIN_MS`).
    pub receiver_margin: TimeDelta,
}

impl Settings {
    pub fn new(args: &WatermarkArgs, clock: Clock) -> Result<Settings, Error> {
        let margin = std::time::Duration::from_millis(args.receiver_margin_ms);
        let margin = match clock {
            Clock::Wall => margin,
            Clock::Scaled { speed, .. } => margin.mul_f64(speed),
        };
        Ok(Settings {
            webhooks: args.webhooks.clone(),
            job_timeout: TimeDelta::seconds(args.job_timeout_secs),
            backoff: TimeDelta::seconds(args.backoff_secs),
            replay_limit: i64::from(args.replay_limit),
            audit_span: TimeDelta::minutes(i64::from(args.audit_minutes)),
            audit_spans: args
                .audit_overrides()?
                .into_iter()
                .map(|(id, minutes)| (id, TimeDelta::minutes(i64::from(minutes))))
                .collect(),
            edge_margin: TimeDelta::seconds(args.edge_margin_secs.max(0)),
            validity_unknown_after: TimeDelta::seconds(args.validity_unknown_secs.max(1)),
            receiver_margin: TimeDelta::from_std(margin).unwrap_or(TimeDelta::hours(1)),
        })
    }

    /// How long a webhook's audit slots are (0: no audits).
    pub fn audit_span(&self, webhook: &str) -> TimeDelta {
        self.audit_spans
            .get(webhook)
            .copied()
            .unwrap_or(self.audit_span)
    }
}

pub struct Round<'a, S, X, F> {
    pub store: &'a mut S,
    pub lease: &'a Lease,
    pub webhook: &'a str,
    pub now: DateTime<Utc>,
    pub settings: &'a Settings,
    pub x: &'a AtX<X>,
    pub fences: &'a F,
    pub clock: Clock,
}

impl<S: RoundStore, X, F> Round<'_, S, X, F> {
    /// Another replica took the lease over during this round.
    pub fn lease_lost(&self) -> Error {
        Error::LeaseLost(self.webhook.to_owned())
    }

    /// A conditional state change that did not apply means the lease
    /// changed hands (or the row moved on): the round stops.
    pub fn applied(&self, applied: bool) -> Result<(), Error> {
        if applied {
            Ok(())
        } else {
            Err(self.lease_lost())
        }
    }

    /// Plans a window under the round's lease; `true` when it was new. A
    /// window planned before is left as it is; a lost lease ends the round.
    pub async fn plan(
        &mut self,
        window: Interval,
        kind: WindowKind,
        state: WindowState,
    ) -> Result<bool, Error> {
        match self
            .store
            .insert_window(self.lease, window, kind, state, self.now)
            .await?
        {
            store::Planned::Inserted => Ok(true),
            store::Planned::AlreadyPlanned => Ok(false),
            store::Planned::LeaseLost => Err(self.lease_lost()),
        }
    }
}
