//! One round of the watermark, per webhook, under a lease (`watermark_leases`):
//! record validity, write fences, follow the job in flight, record new gaps,
//! submit the next window. Every decision is logged with its reason.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aaa_common::Clock;
use aaa_common::kafka::{control, headers};
use aaa_replay_window::Window;
use aaa_xapi::{XClient, XError};
use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::{PgConnection, PgPool};

use crate::coverage::{Interval, ceil_minute, uncovered};
use crate::decisions::{
    Edge, Hold, JobSeen, JobStep, Submission, after_refusal, at_the_edge, backoff, follow_job,
    gap_hold, invalid_periods, judging_floor, replay_budget, unknown_periods,
};
use crate::events::{LeaseLostMidRound, TickSkipped};
use crate::planner::{Step, WindowKind, earliest_from, plan, plan_audits};
use crate::store::{self, WindowState};
use crate::{Error, WatermarkArgs};
use aaa_common::observe::InternalEvent;

/// Endpoint names in `x_api_requests` (and aaa-xapi's metrics).
const WEBHOOKS_LIST: &str = "webhooks_list";
const WEBHOOKS_VALIDATE: &str = "webhooks_validate";
const REPLAY_SUBMIT: &str = "replay_submit";

pub struct Watermark {
    pool: PgPool,
    x: XClient,
    producer: FutureProducer,
    topic: String,
    partitions: Vec<i32>,
    clock: Clock,
    webhooks: Vec<String>,
    replica: String,
    lease: Duration,
    job_timeout: TimeDelta,
    backoff: TimeDelta,
    replay_limit: i64,
    audit_span: TimeDelta,
    /// Kept inside X's 24 h replay edge when submitting.
    edge_margin: TimeDelta,
    /// Per webhook, where it differs from `audit_span`.
    audit_spans: HashMap<String, TimeDelta>,
    /// Per webhook: no re-validation (PUT) before this time.
    revalidate_after: Mutex<HashMap<String, DateTime<Utc>>>,
    /// X's webhook list, fetched at most every `validity_every` for all
    /// webhooks together (X allows 15 reads per 15 minutes).
    listed: tokio::sync::Mutex<Listed>,
    /// How far X's clock is ahead of ours (its `Date` headers).
    x_skew: Mutex<TimeDelta>,
    validity_every: TimeDelta,
    validity_unknown_after: TimeDelta,
    list_limit: i64,
    /// Held while a round runs: the scheduler starts a tick whether or not
    /// the previous one finished, and a replica must never run two rounds
    /// at once (its lease renews for itself).
    round_running: tokio::sync::Mutex<()>,
}

/// The last answer of `GET /2/webhooks`.
#[derive(Default)]
struct Listed {
    /// When it was last asked for (answered or not).
    asked_at: Option<DateTime<Utc>>,
    /// When it last answered, and what.
    answer: Option<(DateTime<Utc>, Vec<aaa_xapi::Webhook>)>,
}

impl Watermark {
    pub async fn new(
        args: &WatermarkArgs,
        pool: PgPool,
        x: XClient,
        clock: Clock,
    ) -> Result<Watermark, Error> {
        let mut config = args.kafka.client_config(&[])?;
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000");
        let producer: FutureProducer = config.create()?;
        let topic = args.kafka.raw_topic.clone();
        let partitions = {
            let producer = producer.clone();
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(10)))
                    .map(|m| {
                        m.topics()
                            .iter()
                            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                            .collect::<Vec<_>>()
                    })
            })
            .await
            .map_err(|e| Error::Scheduler(e.to_string()))??
        };
        if partitions.is_empty() {
            return Err(Error::NoPartitions(topic));
        }
        let replay_limit = i64::from(args.replay_limit);
        for webhook in &args.webhooks {
            let w = || webhook.clone();
            for outcome in Submission::ALL {
                metrics::counter!("aaa_watermark_replay_submissions_total", "webhook" => w(), "outcome" => outcome.as_str()).increment(0);
            }
            for outcome in ["reconciled", "incomplete", "lost", "receivers_missed"] {
                metrics::counter!("aaa_watermark_replay_jobs_total", "webhook" => w(), "outcome" => outcome).increment(0);
            }
            for counter in [
                "aaa_watermark_recovered_events_total",
                "aaa_watermark_duplicate_events_total",
                "aaa_watermark_expired_minutes_total",
                "aaa_watermark_audit_recovered_events_total",
                "aaa_watermark_round_failures_total",
            ] {
                metrics::counter!(counter, "webhook" => w()).increment(0);
            }
            metrics::gauge!("aaa_watermark_lease_held", "webhook" => w()).set(0.0);
            metrics::gauge!("aaa_watermark_round_rows_read", "webhook" => w()).set(0.0);
        }
        metrics::gauge!("aaa_watermark_x_clock_skew_seconds").set(0.0);
        crate::events::register(&args.webhooks);
        Ok(Watermark {
            pool,
            x,
            producer,
            topic,
            partitions,
            clock,
            webhooks: args.webhooks.clone(),
            replica: args.replica_id(),
            lease: Duration::from_secs(args.lease_secs.max(1)),
            job_timeout: TimeDelta::seconds(args.job_timeout_secs),
            backoff: TimeDelta::seconds(args.backoff_secs),
            replay_limit,
            audit_span: TimeDelta::minutes(i64::from(args.audit_minutes)),
            edge_margin: TimeDelta::seconds(args.edge_margin_secs.max(0)),
            audit_spans: args
                .audit_overrides()?
                .into_iter()
                .map(|(id, minutes)| (id, TimeDelta::minutes(i64::from(minutes))))
                .collect(),
            revalidate_after: Mutex::new(HashMap::new()),
            listed: tokio::sync::Mutex::new(Listed::default()),
            x_skew: Mutex::new(TimeDelta::zero()),
            validity_every: TimeDelta::seconds(args.validity_secs.max(1)),
            validity_unknown_after: TimeDelta::seconds(args.validity_unknown_secs.max(1)),
            list_limit: i64::from(args.webhooks_list_limit.max(1)),
            round_running: tokio::sync::Mutex::new(()),
        })
    }

    /// One round over every webhook, unless the previous one still runs
    /// (then this tick is skipped and counted). Failures are logged and
    /// retried next round.
    pub async fn tick(&self) {
        let Ok(_running) = self.round_running.try_lock() else {
            TickSkipped.emit();
            return;
        };
        let now = self.clock.now();
        let _ = self.write_fences(now).await;
        for webhook in &self.webhooks {
            match self.tick_webhook(webhook, now).await {
                Ok(()) => {}
                Err(Error::LeaseLost(_)) => LeaseLostMidRound { webhook }.emit(),
                Err(error) => {
                    tracing::error!(message = "watermark round failed; retrying next round", webhook = %webhook, error = %error);
                    metrics::counter!("aaa_watermark_round_failures_total", "webhook" => webhook.clone()).increment(1);
                }
            }
        }
    }

    async fn tick_webhook(&self, webhook: &str, now: DateTime<Utc>) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        // Every replica reports how far judging got, holder or not: a holder
        // that is frozen or failing cannot report its own stall.
        let progress = store::progress(&mut conn, webhook).await?;
        if let Some(judged_to) = progress.judged_to {
            metrics::gauge!("aaa_watermark_judged_age_seconds", "webhook" => webhook.to_owned())
                .set((now - judged_to).as_seconds_f64().max(0.0));
        }
        // A round longer than the lease may overlap the next holder's; X
        // still gets one job per webhook (a unique index).
        let lease = store::take_lease(&mut conn, webhook, &self.replica, self.lease).await?;
        metrics::gauge!("aaa_watermark_lease_held", "webhook" => webhook.to_owned())
            .set(if lease.is_some() { 1.0 } else { 0.0 });
        let Some(lease) = lease else {
            tracing::debug!(message = "another watermark replica holds this webhook's lease", webhook, replica = %self.replica);
            return Ok(());
        };
        let started = std::time::Instant::now();
        let result = self.round(&mut conn, &lease, now, progress).await;
        metrics::histogram!("aaa_watermark_round_seconds", "webhook" => webhook.to_owned())
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Gives up this replica's leases (on shutdown), so another takes over
    /// at once instead of after the lease ran out.
    pub async fn release_leases(&self) {
        if let Err(error) = store::release_leases(&self.pool, &self.replica).await {
            tracing::warn!(message = "leases not released; they expire on their own", error = %error);
        }
    }

    /// `progress`: as read at the start of this tick (only the lease holder
    /// changes it).
    async fn round(
        &self,
        conn: &mut PgConnection,
        lease: &store::Lease,
        now: DateTime<Utc>,
        progress: store::Progress,
    ) -> Result<(), Error> {
        let webhook = lease.webhook.as_str();
        let progress = self.begin_tracking(conn, webhook, now, progress).await?;
        let registered_at = self.check_validity(conn, webhook, now).await?;
        // Read once: the job in flight and the judging both wait for it.
        let horizon = self.horizon(conn).await?;
        let busy = self.follow_in_flight(conn, lease, now, horizon).await?;
        if let Some((start, horizon)) = self
            .tracked(conn, webhook, now, registered_at, horizon, progress)
            .await?
        {
            let windows = self.record_gaps(conn, lease, now, start, horizon).await?;
            store::advance_judged(conn, webhook, horizon).await?;
            self.record_audits(conn, lease, now, start, horizon, &windows)
                .await?;
        }
        if !busy {
            self.submit_next(conn, lease, now).await?;
        }
        self.report(conn, webhook, now).await
    }

    /// The very first round of any replica marks where tracking began: what
    /// X can still replay then. No round ever judges before it (a webhook
    /// registered long before the watermark was installed has no
    /// heartbeats from then, which is no gap), and every round judges from
    /// it on, even when the first rounds could judge nothing yet (no fences
    /// stored) and the next comes only after a long stop: an outage seen in
    /// the heartbeats since then is expired and counted, not skipped.
    /// Nothing is judged yet, so it is also how far judging got. Returns
    /// the progress the round goes on with.
    async fn begin_tracking(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
        progress: store::Progress,
    ) -> Result<store::Progress, Error> {
        if progress.judged_to.is_some() {
            return Ok(progress);
        }
        let from = earliest_from(now);
        if !store::begin_tracking(conn, webhook, from).await? {
            // Another replica's first round came first.
            return Ok(store::progress(conn, webhook).await?);
        }
        tracing::info!(message = "tracking began: the first round judges what X can still replay, no later round judges before it", webhook, tracked_from = %from);
        Ok(store::Progress {
            judged_to: Some(from),
            tracked_from: Some(from),
        })
    }

    /// A fence on every partition, stamped `now`: once the consumer stored all
    /// of them, everything produced before is in Postgres.
    /// `true` when every partition acknowledged its fence.
    async fn write_fences(&self, now: DateTime<Utc>) -> bool {
        let payload = match serde_json::to_vec(&control::Fence { at: now }) {
            Ok(payload) => payload,
            Err(_) => return false,
        };
        let sends = self.partitions.iter().map(|partition| {
            let record = FutureRecord::<(), _>::to(&self.topic)
                .partition(*partition)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: headers::RECORD_TYPE,
                    value: Some(control::FENCE),
                }));
            self.producer
                .send(record, Timeout::After(Duration::from_secs(5)))
        });
        let mut all = true;
        for result in futures::future::join_all(sends).await {
            if let Err((error, _)) = result {
                tracing::warn!(message = "fence not written; the processed horizon waits", error = %error);
                all = false;
            }
        }
        all
    }

    /// The time up to which the consumer has stored everything: the oldest of
    /// the newest fences on every partition.
    async fn horizon(&self, conn: &mut PgConnection) -> Result<Option<DateTime<Utc>>, Error> {
        let (oldest, partitions) = store::fences(conn, &self.topic).await?;
        Ok(oldest.filter(|_| partitions as usize >= self.partitions.len()))
    }

    /// Records X's view of the webhook; returns when X registered it.
    /// X's webhook list as of its last answer, asked again only when it is
    /// older than `validity_every` and X's read budget allows: one request
    /// serves every webhook. `None` until X first answered.
    async fn webhooks_at_x(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
    ) -> Result<Option<(DateTime<Utc>, Vec<aaa_xapi::Webhook>)>, Error> {
        let mut listed = self.listed.lock().await;
        let due = listed
            .asked_at
            .is_none_or(|at| now - at >= self.validity_every);
        if due
            && let Some(reserved) = self
                .reserve_x_request(conn, WEBHOOKS_LIST, self.list_limit, now)
                .await?
        {
            listed.asked_at = Some(now);
            let answer = self.x.list_webhooks().await;
            self.measure_x_skew();
            self.record_x_outcome(conn, WEBHOOKS_LIST, reserved, &answer)
                .await;
            match answer {
                Ok(webhooks) => listed.answer = Some((now, webhooks)),
                Err(error) => {
                    tracing::warn!(message = "cannot read webhook validity from X", error = %error)
                }
            }
        }
        Ok(listed.answer.clone())
    }

    /// X's time now, as far as its clock differs from ours.
    fn x_now(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + *self.x_skew.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compares the `Date` of X's last answer with our clock. `Date` has
    /// whole seconds, so differences under 2 s are noise and ignored.
    fn measure_x_skew(&self) {
        let Some(x_date) = self.x.last_x_date() else {
            return;
        };
        let skew = x_date - self.clock.now();
        let skew = if skew.abs() < TimeDelta::seconds(2) {
            TimeDelta::zero()
        } else {
            skew
        };
        metrics::gauge!("aaa_watermark_x_clock_skew_seconds").set(skew.as_seconds_f64());
        if skew.abs() > TimeDelta::seconds(60) {
            tracing::warn!(
                message = "X's clock differs from ours; replay windows are planned by X's",
                skew_seconds = skew.num_seconds()
            );
        }
        *self.x_skew.lock().unwrap_or_else(|p| p.into_inner()) = skew;
    }

    /// Reserves (and records) one request to `endpoint` if it stays within
    /// `limit` per 15 minutes, counting every request any replica or
    /// operator made, whatever X answered. The watermark's client makes
    /// one attempt per call (its rounds are the retries), so a reservation
    /// is exactly one HTTP request.
    async fn reserve_x_request(
        &self,
        conn: &mut PgConnection,
        endpoint: &str,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, Error> {
        let reserved = store::reserve_x_request(conn, endpoint, limit, now).await?;
        if reserved.is_none() {
            tracing::info!(
                message = "X's request budget for this endpoint is used up for this 15-minute window; waiting",
                endpoint,
                limit
            );
        }
        Ok(reserved)
    }

    /// Records X's answer to a reserved request. The request itself is
    /// already counted, so failing to record the answer loses nothing that
    /// matters to the budget: it is logged, never fatal.
    async fn record_x_outcome<T>(
        &self,
        conn: &mut PgConnection,
        endpoint: &str,
        reserved: i64,
        answer: &Result<T, XError>,
    ) {
        let outcome = match answer {
            Ok(_) => "ok",
            Err(XError::RateLimited { .. }) => "rate_limited",
            Err(XError::Refused { .. }) => "refused",
            Err(_) => "failed",
        };
        if let Err(error) = store::record_x_outcome(conn, reserved, outcome).await {
            tracing::warn!(message = "X's answer not recorded (the request is counted)", endpoint, error = %error);
        }
    }

    async fn check_validity(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, Error> {
        let Some((checked_at, listed)) = self.webhooks_at_x(conn, now).await? else {
            return Ok(None);
        };
        let Some(found) = listed.iter().find(|w| w.id == webhook) else {
            tracing::error!(
                message =
                    "X does not know this webhook (WebhookIdInvalid): nothing can be replayed",
                webhook
            );
            return Ok(None);
        };
        let registered_at = found
            .created_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let mut valid = found.valid;
        if !valid {
            let due = self
                .revalidate_after
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(webhook)
                .is_none_or(|t| *t <= now);
            tracing::error!(
                message = "webhook is invalid at X (failed CRC): nothing is delivered until it is re-validated",
                webhook,
                revalidating = due
            );
            if due
                && let Some(reserved) = self
                    .reserve_x_request(conn, WEBHOOKS_VALIDATE, self.list_limit, now)
                    .await?
            {
                let answer = self.x.validate_webhook(webhook).await;
                self.record_x_outcome(conn, WEBHOOKS_VALIDATE, reserved, &answer)
                    .await;
                match answer {
                    Ok(true) => {
                        tracing::info!(
                            message = "webhook re-validated; its invalid period will be replayed",
                            webhook
                        );
                        valid = true;
                    }
                    result => {
                        tracing::warn!(message = "re-validation failed; backing off", webhook, result = ?result.map_err(|e| e.to_string()));
                        self.revalidate_after
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(webhook.to_owned(), now + self.backoff);
                    }
                }
            }
        }
        metrics::gauge!("aaa_watermark_webhook_valid", "webhook" => webhook.to_owned())
            .set(if valid { 1.0 } else { 0.0 });
        // An invalid observation also marks the time since the previous check.
        // Stamped with the time X answered: one sample per answer.
        store::record_validity(conn, webhook, checked_at, found.valid).await?;
        if valid && !found.valid {
            store::record_validity(conn, webhook, now + TimeDelta::milliseconds(1), true).await?;
        }
        Ok(registered_at)
    }

    /// Follows the job in flight; `true` while one is still running.
    async fn follow_in_flight(
        &self,
        conn: &mut PgConnection,
        lease: &store::Lease,
        now: DateTime<Utc>,
        horizon: Option<DateTime<Utc>>,
    ) -> Result<bool, Error> {
        let webhook = lease.webhook.as_str();
        let Some(job) = store::in_flight(conn, webhook).await? else {
            return Ok(false);
        };
        let job_state = store::job_state(conn, job.job_id.as_deref()).await?;
        let job_id = job.job_id.as_deref().unwrap_or_default();
        let counted = |outcome: &'static str| {
            metrics::counter!("aaa_watermark_replay_jobs_total", "webhook" => webhook.to_owned(), "outcome" => outcome).increment(1);
        };
        let heartbeats = match (job.fence_at, job.submitted_at) {
            (Some(_), Some(submitted_at)) => {
                store::heartbeats_since(conn, webhook, submitted_at).await?
            }
            _ => Vec::new(),
        };
        let seen = JobSeen {
            job_state: job_state.as_deref(),
            fence_at: job.fence_at,
            submitted_at: job.submitted_at,
            horizon,
            heartbeats: &heartbeats,
        };
        let lost_lease = || Error::LeaseLost(webhook.to_owned());
        match follow_job(seen, now, self.job_timeout) {
            JobStep::Running | JobStep::AwaitConsumer => Ok(true),
            JobStep::FenceNow => {
                // The round's own fences were written before the completion
                // was read; a delivery still in flight then would be missed.
                let fenced_at = self.clock.now();
                if self.write_fences(fenced_at).await {
                    if !store::set_fence(conn, lease, &job, fenced_at).await? {
                        return Err(lost_lease());
                    }
                    tracing::info!(
                        message =
                            "replay job complete; waiting for the consumer to pass the fences",
                        webhook,
                        job_id
                    );
                }
                Ok(true)
            }
            JobStep::Reconcile => {
                let Some((recovered, duplicates)) =
                    store::reconcile(conn, lease, &job, now).await?
                else {
                    return Err(lost_lease());
                };
                metrics::counter!("aaa_watermark_recovered_events_total", "webhook" => webhook.to_owned()).increment(recovered as u64);
                metrics::counter!("aaa_watermark_duplicate_events_total", "webhook" => webhook.to_owned()).increment(duplicates as u64);
                counted("reconciled");
                match job.kind {
                    WindowKind::Audit => {
                        metrics::counter!("aaa_watermark_audit_recovered_events_total", "webhook" => webhook.to_owned()).increment(recovered as u64);
                        if recovered > 0 {
                            tracing::error!(
                                message = "audit replay recovered activities X never delivered live while the receiver was up (X dropped them after its retries)",
                                webhook,
                                job_id,
                                recovered,
                                duplicates
                            );
                        } else {
                            tracing::info!(
                                message = "audit replay reconciled: nothing was missing",
                                webhook,
                                job_id,
                                duplicates
                            );
                        }
                    }
                    WindowKind::Gap => {
                        metrics::histogram!("aaa_watermark_gap_recovery_seconds", "webhook" => webhook.to_owned())
                            .record((now - job.created_at).as_seconds_f64());
                        tracing::info!(
                            message = "replay reconciled: gap recovered",
                            webhook,
                            job_id,
                            recovered,
                            duplicates
                        );
                    }
                }
                Ok(false)
            }
            JobStep::ReceiversMissedIt => {
                let why = "X reported Complete, but the receivers refused deliveries (or did not report) while the job ran";
                // Backed off: whatever made the receivers refuse (an
                // outsider holding their slots) may still be there, and
                // each submission spends X's budget.
                let again = now + backoff(self.backoff, job.attempts);
                if !store::requeue(conn, lease, &job, again, why).await? {
                    return Err(lost_lease());
                }
                counted("receivers_missed");
                tracing::warn!(
                    message = "replay job complete at X, but the receivers refused deliveries while it ran (shed or broker down); the same window will be submitted again",
                    webhook,
                    job_id
                );
                Ok(false)
            }
            JobStep::Incomplete(state) => {
                // X does not retry replayed events.
                if !store::requeue(conn, lease, &job, now, &format!("X reported {state}")).await? {
                    return Err(lost_lease());
                }
                counted("incomplete");
                tracing::warn!(
                    message = "replay job not complete; the same window will be submitted again",
                    webhook,
                    job_id,
                    state
                );
                Ok(false)
            }
            JobStep::Lost => {
                if !store::requeue(conn, lease, &job, now, "no completion message in time").await? {
                    return Err(lost_lease());
                }
                counted("lost");
                tracing::warn!(
                    message = "no completion for the replay job; treating it as lost and resubmitting (a conflict will tell if it still runs)",
                    webhook,
                    job_id
                );
                Ok(false)
            }
        }
    }

    /// The stretch of the webhook's timeline the watermark judges: from its
    /// registration at X (or, when X did not say, the first heartbeat: a
    /// receiver that died before its first heartbeat still leaves a gap) to
    /// the time up to which the consumer has stored everything.
    async fn tracked(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
        registered_at: Option<DateTime<Utc>>,
        horizon: Option<DateTime<Utc>>,
        progress: store::Progress,
    ) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, Error> {
        let Some(horizon) = horizon else {
            tracing::debug!(
                message = "consumer has not stored fences on every partition yet: nothing judged",
                webhook
            );
            return Ok(None);
        };
        let first_heartbeat = store::first_heartbeat(conn, webhook).await?;
        let Some(origin) = [first_heartbeat, registered_at].into_iter().flatten().min() else {
            return Ok(None);
        };
        let floor = judging_floor(now, progress.judged_to, progress.tracked_from);
        Ok(Some((origin.max(floor), horizon.min(now))))
    }

    /// Finds uncovered minutes not yet planned, and records them as pending
    /// (or expired) windows. Returns every window since `start`, those just
    /// recorded included.
    async fn record_gaps(
        &self,
        conn: &mut PgConnection,
        lease: &store::Lease,
        now: DateTime<Utc>,
        start: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> Result<Vec<Interval>, Error> {
        let webhook = lease.webhook.as_str();
        let heartbeats = store::heartbeats_since(conn, webhook, start).await?;
        let checks = store::validity_since(conn, webhook, start - TimeDelta::hours(1)).await?;
        metrics::gauge!("aaa_watermark_round_rows_read", "webhook" => webhook.to_owned())
            .set((heartbeats.len() + checks.len()) as f64);
        let mut invalid = invalid_periods(&checks, now);
        // Validity nobody could check (X unreachable, rate limited) is
        // suspect: X may have stopped delivering then.
        invalid.extend(unknown_periods(&checks, now, self.validity_unknown_after));
        let mut settled = store::windows_since(conn, webhook, start).await?;
        let gaps = uncovered(start, horizon, &heartbeats, &invalid, &settled);
        let minutes: i64 = gaps.iter().map(Interval::minutes).sum();
        metrics::gauge!("aaa_watermark_uncovered_minutes", "webhook" => webhook.to_owned())
            .set(minutes as f64);
        // X judges windows by its own clock.
        for step in plan(self.x_now(now), &gaps) {
            match step {
                Step::Submit(window) => {
                    tracing::info!(message = "gap found: window planned for replay", webhook, from = %window.from, to = %window.to);
                    plan_window(
                        conn,
                        lease,
                        window,
                        WindowKind::Gap,
                        WindowState::Pending,
                        now,
                    )
                    .await?;
                    settled.push(window);
                }
                Step::Expired(window) => {
                    tracing::error!(message = "gap older than X's 24 h replay limit: these minutes cannot be recovered", webhook, from = %window.from, to = %window.to);
                    if plan_window(
                        conn,
                        lease,
                        window,
                        WindowKind::Gap,
                        WindowState::Expired,
                        now,
                    )
                    .await?
                    {
                        metrics::counter!("aaa_watermark_expired_minutes_total", "webhook" => webhook.to_owned()).increment(window.minutes() as u64);
                    }
                    settled.push(window);
                }
                Step::Wait { window, until } => {
                    tracing::debug!(message = "gap not replayable yet (X replays windows at least 31 min old)", webhook, from = %window.from, to = %window.to, until = %until);
                }
            }
        }
        Ok(settled)
    }

    /// Opens an audit window for every closed slot no window (of `windows`,
    /// all since `start`) replayed yet.
    async fn record_audits(
        &self,
        conn: &mut PgConnection,
        lease: &store::Lease,
        now: DateTime<Utc>,
        start: DateTime<Utc>,
        horizon: DateTime<Utc>,
        windows: &[Interval],
    ) -> Result<(), Error> {
        let webhook = lease.webhook.as_str();
        let span = self
            .audit_spans
            .get(webhook)
            .copied()
            .unwrap_or(self.audit_span);
        if span <= TimeDelta::zero() {
            return Ok(());
        }
        for window in plan_audits(now, start, horizon, span, windows) {
            tracing::info!(message = "closed slot planned for an audit replay", webhook, from = %window.from, to = %window.to);
            plan_window(
                conn,
                lease,
                window,
                WindowKind::Audit,
                WindowState::Pending,
                now,
            )
            .await?;
        }
        Ok(())
    }

    async fn submit_next(
        &self,
        conn: &mut PgConnection,
        lease: &store::Lease,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let webhook = lease.webhook.as_str();
        let Some(next) = store::next_pending(conn, webhook, now).await? else {
            return Ok(());
        };
        let (from, to) = (next.from, next.to);
        let gaps_waiting = store::gaps_waiting(conn).await?;
        if let Some(hold) = gap_hold(next.kind, &gaps_waiting, &self.webhooks) {
            tracing::info!(message = "replay not submitted now", webhook, from = %from, to = %to, reason = %hold);
            return Ok(());
        }
        let lost_lease = || Error::LeaseLost(webhook.to_owned());
        // A margin inside X's 24 h: the request reaches X a little later.
        let earliest = ceil_minute(earliest_from(self.x_now(now)) + self.edge_margin);
        let window = match (at_the_edge(next.interval(), earliest), next.kind) {
            (Edge::Fits, _) => next.interval(),
            (Edge::Expired, kind) => {
                if !store::expire(
                    conn,
                    lease,
                    next.id,
                    "aged past 24 h before it could be replayed",
                )
                .await?
                {
                    return Err(lost_lease());
                }
                if kind == WindowKind::Audit {
                    // Coverage judged these minutes already; only the extra check is lost.
                    tracing::warn!(message = "audit window aged past 24 h before it could be replayed (replay budget too small for the audit rate?)", webhook, from = %from, to = %to);
                } else {
                    metrics::counter!("aaa_watermark_expired_minutes_total", "webhook" => webhook.to_owned()).increment((to - from).num_minutes() as u64);
                    tracing::error!(message = "window aged past 24 h before it could be replayed", webhook, from = %from, to = %to);
                }
                return Ok(());
            }
            (Edge::Trimmed { aged, rest }, kind) => {
                // The oldest minutes aged out while the window waited:
                // recorded (and, for a gap, counted) as expired, never
                // dropped silently. An audit's lose nothing coverage did
                // not judge.
                if !store::trim_start(conn, lease, &next, rest.from).await? {
                    return Err(lost_lease());
                }
                if kind == WindowKind::Gap
                    && plan_window(
                        conn,
                        lease,
                        aged,
                        WindowKind::Gap,
                        WindowState::Expired,
                        now,
                    )
                    .await?
                {
                    metrics::counter!("aaa_watermark_expired_minutes_total", "webhook" => webhook.to_owned()).increment(aged.minutes() as u64);
                    tracing::error!(message = "the oldest minutes of a window aged past 24 h before it could be replayed", webhook, from = %aged.from, to = %aged.to);
                }
                rest
            }
        };
        // Every replay request counts, whatever X answered: a conflict or a
        // 5xx spends X's budget as much as an accepted job. Reserved before
        // it is sent, atomically across replicas.
        let limit = replay_budget(next.kind, self.replay_limit);
        let Some(reserved) = self
            .reserve_x_request(conn, REPLAY_SUBMIT, limit, now)
            .await?
        else {
            let hold = Hold::Budget { limit };
            tracing::info!(message = "replay not submitted now", webhook, from = %from, to = %to, reason = %hold);
            return Ok(());
        };
        let answer = self
            .x
            .submit_replay(
                webhook,
                Window {
                    from: window.from,
                    to_exclusive: window.to,
                },
                self.x_now(now),
            )
            .await;
        let submitted = |outcome: Submission| {
            metrics::counter!("aaa_watermark_replay_submissions_total", "webhook" => webhook.to_owned(), "outcome" => outcome.as_str()).increment(1);
        };
        match &answer {
            Ok(job) => {
                // First, before anything else can fail: X runs this job
                // now, and a window not marked would be submitted again.
                if !store::mark_submitted(conn, next.id, &job.job_id, now).await? {
                    tracing::error!(message = "X accepted a replay job for a window that is no longer pending (another replica acted on it)", webhook, job_id = %job.job_id);
                }
                submitted(Submission::Accepted);
                tracing::info!(message = "replay submitted", webhook, job_id = %job.job_id, from_date = %job.from_date, to_date = %job.to_date, attempt = next.attempts + 1);
            }
            Err(error) => {
                let retry = after_refusal(error, next.attempts, next.conflicts, self.backoff, now);
                if retry.revalidate {
                    tracing::error!(message = "X refuses replays for this webhook; holding it and re-validating", webhook, error = %error);
                    self.revalidate_after
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(webhook);
                }
                submitted(retry.outcome);
                tracing::warn!(message = "replay not accepted; will retry", webhook, outcome = retry.outcome.as_str(), retry_in_secs = retry.delay.num_seconds(), error = %error);
                if !store::retry_later(
                    conn,
                    lease,
                    next.id,
                    now + retry.delay,
                    &error.to_string(),
                    retry.conflict,
                )
                .await?
                {
                    return Err(lost_lease());
                }
            }
        }
        self.record_x_outcome(conn, REPLAY_SUBMIT, reserved, &answer)
            .await;
        Ok(())
    }

    async fn report(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let counts = store::window_counts(conn, webhook).await?;
        for kind in WindowKind::ALL {
            for state in WindowState::ALL {
                let n = counts
                    .iter()
                    .find(|(k, s, _)| *k == kind && *s == state)
                    .map_or(0, |(_, _, n)| *n);
                metrics::gauge!("aaa_watermark_windows", "webhook" => webhook.to_owned(), "kind" => kind.as_str(), "state" => state.as_str()).set(n as f64);
            }
        }
        // Only gaps: an audit that ages out loses nothing coverage did not judge.
        let oldest = store::oldest_open_gap(conn, webhook).await?;
        let seconds_left = oldest.map_or(f64::INFINITY, |from| {
            (from + aaa_replay_window::MAX_AGE - now).as_seconds_f64()
        });
        metrics::gauge!("aaa_watermark_oldest_gap_expires_in_seconds", "webhook" => webhook.to_owned()).set(seconds_left);
        Ok(())
    }
}

/// Plans a window under the round's lease; `true` when it was new. A window
/// planned before is left as it is; a lost lease ends the round.
async fn plan_window(
    conn: &mut PgConnection,
    lease: &store::Lease,
    window: Interval,
    kind: WindowKind,
    state: WindowState,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    match store::insert_window(conn, lease, window, kind, state, now).await? {
        store::Planned::Inserted => Ok(true),
        store::Planned::AlreadyPlanned => Ok(false),
        store::Planned::LeaseLost => Err(Error::LeaseLost(lease.webhook.clone())),
    }
}
