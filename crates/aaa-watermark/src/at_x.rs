//! The watermark's view of X: its webhook list (one read serves every
//! webhook), its clock, re-validation of invalid webhooks, and the budget
//! every request is reserved against first (shared by every replica and
//! operator, in `x_api_requests`).

use std::collections::HashMap;
use std::sync::Mutex;

use aaa_common::Clock;
use aaa_common::observe::InternalEvent;
use aaa_replay_window::Window;
use aaa_xapi::{ReplayJob, Webhook, XClient, XError};
use chrono::{DateTime, TimeDelta, Utc};

use crate::decisions::{
    XRequestOutcome, registered_at, revalidation_due, validity_samples, x_clock_skew,
};
use crate::events::{
    Revalidated, WebhookInvalidAtX, WebhookListUnread, WebhookUnknownAtX, WebhookValidity,
    XBudgetUsedUp, XClockSkew, XOutcomeNotRecorded,
};
use crate::ports::{RoundStore, XApi};
use crate::store::{Lease, Reservation};
use crate::{Error, WatermarkArgs};

/// Endpoint names in `x_api_requests` (and aaa-xapi's metrics).
const WEBHOOKS_LIST: &str = "webhooks_list";
const WEBHOOKS_VALIDATE: &str = "webhooks_validate";
pub const REPLAY_SUBMIT: &str = "replay_submit";

pub struct AtX<X = XClient> {
    x: X,
    clock: Clock,
    /// X's webhook list, fetched at most every `validity_every` for all
    /// webhooks together (X allows 15 reads per 15 minutes).
    listed: tokio::sync::Mutex<Listed>,
    validity_every: TimeDelta,
    /// Reads of the list (and re-validations) per 15 minutes.
    list_limit: i64,
    /// How far X's clock is ahead of ours (its `Date` headers).
    skew: Mutex<TimeDelta>,
    /// Per webhook: no re-validation (PUT) before this time.
    revalidate_after: Mutex<HashMap<String, DateTime<Utc>>>,
    backoff: TimeDelta,
}

/// The last answer of `GET /2/webhooks`.
#[derive(Default)]
struct Listed {
    /// When it was last asked for (answered or not).
    asked_at: Option<DateTime<Utc>>,
    /// When it last answered, and what.
    answer: Option<(DateTime<Utc>, Vec<Webhook>)>,
}

/// A request counted against X's budget before it was sent.
pub struct Reserved {
    endpoint: &'static str,
    id: i64,
}

impl<X: XApi> AtX<X> {
    pub fn new(args: &WatermarkArgs, x: X, clock: Clock) -> AtX<X> {
        AtX::with(
            x,
            clock,
            TimeDelta::seconds(args.validity_secs.max(1)),
            i64::from(args.webhooks_list_limit.max(1)),
            TimeDelta::seconds(args.backoff_secs),
        )
    }

    /// `validity_every`: how often X's webhook list is read; `list_limit`:
    /// reads (and re-validations) per 15 minutes; `backoff`: after a failed
    /// re-validation.
    pub fn with(
        x: X,
        clock: Clock,
        validity_every: TimeDelta,
        list_limit: i64,
        backoff: TimeDelta,
    ) -> AtX<X> {
        AtX {
            x,
            clock,
            listed: tokio::sync::Mutex::new(Listed::default()),
            validity_every,
            list_limit,
            skew: Mutex::new(TimeDelta::zero()),
            revalidate_after: Mutex::new(HashMap::new()),
            backoff,
        }
    }

    #[cfg(test)]
    pub fn fake(&self) -> &X {
        &self.x
    }

    /// X's time now, as far as its clock differs from ours.
    pub fn now(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + *self.skew.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compares the `Date` of X's last answer with our clock.
    fn measure_skew(&self) {
        let Some(x_date) = self.x.last_x_date() else {
            return;
        };
        let skew = x_clock_skew(x_date, self.clock.now());
        XClockSkew { skew }.emit();
        *self.skew.lock().unwrap_or_else(|p| p.into_inner()) = skew;
    }

    /// Reserves (and records) one request to `endpoint` if it stays within
    /// `limit` per 15 minutes, counting every request any replica or
    /// operator made, whatever X answered. The watermark's client makes
    /// one attempt per call (its rounds are the retries), so a reservation
    /// is exactly one HTTP request.
    pub async fn reserve(
        &self,
        store: &mut impl RoundStore,
        lease: &Lease,
        endpoint: &'static str,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<Reserved>, Error> {
        match store.reserve_x_request(lease, endpoint, limit, now).await? {
            Reservation::Reserved(id) => Ok(Some(Reserved { endpoint, id })),
            Reservation::BudgetUsed => {
                XBudgetUsedUp { endpoint, limit }.emit();
                Ok(None)
            }
            Reservation::LeaseLost => Err(Error::LeaseLost(lease.webhook.clone())),
        }
    }

    /// Records X's answer to a reserved request. The request itself is
    /// already counted, so failing to record the answer loses nothing that
    /// matters to the budget: it is logged, never fatal.
    pub async fn record<T>(
        &self,
        store: &mut impl RoundStore,
        reserved: Reserved,
        answer: &Result<T, XError>,
    ) {
        let outcome = XRequestOutcome::of(answer);
        if let Err(error) = store.record_x_outcome(reserved.id, outcome.as_str()).await {
            XOutcomeNotRecorded {
                endpoint: reserved.endpoint,
                error: &error,
            }
            .emit();
        }
    }

    /// X's webhook list as of its last answer, asked again only when it is
    /// older than `validity_every` and X's read budget allows: one request
    /// serves every webhook. `None` until X first answered.
    async fn webhooks(
        &self,
        store: &mut impl RoundStore,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> Result<Option<(DateTime<Utc>, Vec<Webhook>)>, Error> {
        let mut listed = self.listed.lock().await;
        let due = listed
            .asked_at
            .is_none_or(|at| now - at >= self.validity_every);
        if due
            && let Some(reserved) = self
                .reserve(store, lease, WEBHOOKS_LIST, self.list_limit, now)
                .await?
        {
            listed.asked_at = Some(now);
            let answer = self.x.list_webhooks().await;
            self.measure_skew();
            self.record(store, reserved, &answer).await;
            match answer {
                Ok(webhooks) => listed.answer = Some((now, webhooks)),
                Err(error) => WebhookListUnread { error: &error }.emit(),
            }
        }
        Ok(listed.answer.clone())
    }

    /// Records X's view of `webhook` (re-validating it when X
    /// lists it invalid); returns when X registered it.
    pub async fn check_validity(
        &self,
        store: &mut impl RoundStore,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, Error> {
        let webhook = lease.webhook.as_str();
        let Some((checked_at, listed)) = self.webhooks(store, lease, now).await? else {
            return Ok(None);
        };
        let Some(found) = listed.iter().find(|w| w.id == webhook) else {
            WebhookUnknownAtX { webhook }.emit();
            return Ok(None);
        };
        let revalidated = !found.valid && self.revalidate(store, lease, now).await?;
        let (valid, samples) = validity_samples(found.valid, revalidated, checked_at, now);
        WebhookValidity { webhook, valid }.emit();
        for (at, valid) in samples {
            store.record_validity(webhook, at, valid).await?;
        }
        Ok(registered_at(found.created_at.as_deref()))
    }

    /// Asks X to re-validate an invalid webhook, unless a failed attempt
    /// backed it off or the budget is used up; `true` when X re-validated it.
    async fn revalidate(
        &self,
        store: &mut impl RoundStore,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let webhook = lease.webhook.as_str();
        let not_before = self
            .revalidate_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(webhook)
            .copied();
        let due = revalidation_due(not_before, now);
        WebhookInvalidAtX {
            webhook,
            revalidating: due,
        }
        .emit();
        if !due {
            return Ok(false);
        }
        let Some(reserved) = self
            .reserve(store, lease, WEBHOOKS_VALIDATE, self.list_limit, now)
            .await?
        else {
            return Ok(false);
        };
        let answer = self.x.validate_webhook(webhook).await;
        self.record(store, reserved, &answer).await;
        let failure = match answer {
            Ok(true) => None,
            result => Some(format!("{:?}", result.map_err(|e| e.to_string()))),
        };
        let revalidated = failure.is_none();
        if !revalidated {
            self.revalidate_after
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(webhook.to_owned(), now + self.backoff);
        }
        Revalidated { webhook, failure }.emit();
        Ok(revalidated)
    }

    /// X refuses replays for the webhook: re-validate it at the next round.
    pub fn revalidate_next_round(&self, webhook: &str) {
        self.revalidate_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(webhook);
    }

    /// Submits a replay of `window` (already reserved), planned by X's clock.
    pub async fn submit_replay(
        &self,
        webhook: &str,
        window: Window,
        now: DateTime<Utc>,
    ) -> Result<ReplayJob, XError> {
        self.x.submit_replay(webhook, window, self.now(now)).await
    }
}
