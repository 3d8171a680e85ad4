//! One round of the watermark, per webhook, under a lease (`watermark_leases`):
//! record validity, write fences, follow the job in flight, record new gaps,
//! submit the next window. Every decision is logged with its reason.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aaa_common::Clock;
use aaa_common::kafka::{control, headers};
use aaa_replay_window::Window;
use aaa_xapi::{Reason, ReplayEndpoint, XClient, XError};
use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sqlx::{PgConnection, PgPool};

use crate::coverage::{Heartbeat, Interval, ceil_minute, uncovered};
use crate::planner::{Step, WindowKind, earliest_from, plan, plan_audits, replay_hold};
use crate::{Error, WatermarkArgs};

/// Window kinds: a gap coverage found, or an audit of a closed slot.
const GAP: &str = "gap";
const AUDIT: &str = "audit";
const RATE_WINDOW: TimeDelta = TimeDelta::minutes(15);
/// Endpoint names in `x_api_requests` (and aaa-xapi's metrics).
const WEBHOOKS_LIST: &str = "webhooks_list";
const WEBHOOKS_VALIDATE: &str = "webhooks_validate";
const REPLAY_SUBMIT: &str = "replay_submit";
const MAX_BACKOFF: TimeDelta = TimeDelta::minutes(15);

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
}

/// The last answer of `GET /2/webhooks`.
#[derive(Default)]
struct Listed {
    /// When it was last asked for (answered or not).
    asked_at: Option<DateTime<Utc>>,
    /// When it last answered, and what.
    answer: Option<(DateTime<Utc>, Vec<aaa_xapi::Webhook>)>,
}

fn backoff(base: TimeDelta, attempt: i32) -> TimeDelta {
    (base * 2i32.saturating_pow(attempt.clamp(0, 10) as u32)).min(MAX_BACKOFF)
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
        let replay_limit = args.replay_limit.unwrap_or(match x.replay_endpoint() {
            ReplayEndpoint::AccountActivity => 5,
            ReplayEndpoint::Webhooks => 100,
        }) as i64;
        for webhook in &args.webhooks {
            let w = || webhook.clone();
            for outcome in [
                "accepted",
                "conflict",
                "rate_limited",
                "webhook_refused",
                "window_refused",
                "failed",
            ] {
                metrics::counter!("aaa_watermark_replay_submissions_total", "webhook" => w(), "outcome" => outcome).increment(0);
            }
            for outcome in ["reconciled", "incomplete", "lost"] {
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
        })
    }

    /// One round over every webhook. Failures are logged and retried next round.
    pub async fn tick(&self) {
        let now = self.clock.now();
        let _ = self.write_fences(now).await;
        for webhook in &self.webhooks {
            if let Err(error) = self.tick_webhook(webhook, now).await {
                tracing::error!(message = "watermark round failed; retrying next round", webhook = %webhook, error = %error);
                metrics::counter!("aaa_watermark_round_failures_total", "webhook" => webhook.clone()).increment(1);
            }
        }
    }

    async fn tick_webhook(&self, webhook: &str, now: DateTime<Utc>) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        // Every replica reports how far judging got, holder or not: a holder
        // that is frozen or failing cannot report its own stall.
        let (judged_to, _) = progress(&mut conn, webhook).await?;
        if let Some(judged_to) = judged_to {
            metrics::gauge!("aaa_watermark_judged_age_seconds", "webhook" => webhook.to_owned())
                .set((now - judged_to).as_seconds_f64().max(0.0));
        }
        let held = self.take_lease(&mut conn, webhook).await?;
        metrics::gauge!("aaa_watermark_lease_held", "webhook" => webhook.to_owned()).set(if held {
            1.0
        } else {
            0.0
        });
        if !held {
            tracing::debug!(message = "another watermark replica holds this webhook's lease", webhook, replica = %self.replica);
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = self.round(&mut conn, webhook, now).await;
        metrics::histogram!("aaa_watermark_round_seconds", "webhook" => webhook.to_owned())
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Takes or renews this replica's lease on `webhook`: granted when free,
    /// expired, or already ours. Postgres's clock decides, so replicas with
    /// skewed clocks agree. A round longer than the lease may overlap the
    /// next holder's; X still gets one job per webhook (a unique index).
    async fn take_lease(&self, conn: &mut PgConnection, webhook: &str) -> Result<bool, Error> {
        let holder: Option<String> = sqlx::query_scalar(
            "INSERT INTO watermark_leases AS l (webhook_id, holder, acquired_at, renewed_at, expires_at)
             VALUES ($1, $2, now(), now(), now() + make_interval(secs => $3))
             ON CONFLICT (webhook_id) DO UPDATE
                SET holder = excluded.holder,
                    acquired_at = CASE WHEN l.holder = excluded.holder THEN l.acquired_at ELSE now() END,
                    renewed_at = now(),
                    expires_at = excluded.expires_at
                WHERE l.holder = excluded.holder OR l.expires_at < now()
             RETURNING holder",
        )
        .bind(webhook)
        .bind(&self.replica)
        .bind(self.lease.as_secs_f64())
        .fetch_optional(&mut *conn)
        .await?;
        Ok(holder.is_some())
    }

    /// Gives up this replica's leases (on shutdown), so another takes over
    /// at once instead of after the lease ran out.
    pub async fn release_leases(&self) {
        let released = sqlx::query("DELETE FROM watermark_leases WHERE holder = $1")
            .bind(&self.replica)
            .execute(&self.pool)
            .await;
        if let Err(error) = released {
            tracing::warn!(message = "leases not released; they expire on their own", error = %error);
        }
    }

    async fn round(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        self.begin_tracking(conn, webhook, now).await?;
        let registered_at = self.check_validity(conn, webhook, now).await?;
        let busy = self.follow_in_flight(conn, webhook, now).await?;
        if let Some((start, horizon)) = self.tracked(conn, webhook, now, registered_at).await? {
            let windows = self.record_gaps(conn, webhook, now, start, horizon).await?;
            sqlx::query(
                "UPDATE watermark_progress SET judged_to = greatest(judged_to, $2) WHERE webhook_id = $1",
            )
            .bind(webhook)
            .bind(horizon)
            .execute(&mut *conn)
            .await?;
            self.record_audits(conn, webhook, now, start, horizon, &windows)
                .await?;
        }
        if !busy {
            self.submit_next(conn, webhook, now).await?;
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
    /// Nothing is judged yet, so it is also how far judging got.
    async fn begin_tracking(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let began = sqlx::query(
            "INSERT INTO watermark_progress (webhook_id, judged_to, tracked_from) VALUES ($1, $2, $2)
             ON CONFLICT (webhook_id) DO NOTHING",
        )
        .bind(webhook)
        .bind(earliest_from(now))
        .execute(&mut *conn)
        .await?;
        if began.rows_affected() == 1 {
            tracing::info!(message = "tracking began: the first round judges what X can still replay, no later round judges before it", webhook, tracked_from = %earliest_from(now));
        }
        Ok(())
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
        let (oldest, partitions): (Option<DateTime<Utc>>, i64) = sqlx::query_as(
            "SELECT min(fence_time), count(*) FROM consumer_fences WHERE topic = $1",
        )
        .bind(&self.topic)
        .fetch_one(&mut *conn)
        .await?;
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
            && self
                .x_budget_left(conn, WEBHOOKS_LIST, self.list_limit, now)
                .await?
        {
            listed.asked_at = Some(now);
            let answer = self.x.list_webhooks().await;
            self.measure_x_skew();
            self.count_x_request(conn, WEBHOOKS_LIST, &answer, now)
                .await?;
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

    /// Whether another request to `endpoint` stays within `limit` per 15
    /// minutes, counting every request any replica made (whatever X answered).
    async fn x_budget_left(
        &self,
        conn: &mut PgConnection,
        endpoint: &str,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let recent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM x_api_requests WHERE endpoint = $1 AND requested_at > $2",
        )
        .bind(endpoint)
        .bind(now - RATE_WINDOW)
        .fetch_one(&mut *conn)
        .await?;
        if recent >= limit {
            tracing::info!(
                message = "X's request budget for this endpoint is used up for this 15-minute window; waiting",
                endpoint,
                recent,
                limit
            );
        }
        Ok(recent < limit)
    }

    async fn count_x_request<T>(
        &self,
        conn: &mut PgConnection,
        endpoint: &str,
        answer: &Result<T, XError>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let outcome = match answer {
            Ok(_) => "ok",
            Err(XError::RateLimited { .. }) => "rate_limited",
            Err(XError::Refused { .. }) => "refused",
            Err(_) => "failed",
        };
        sqlx::query(
            "INSERT INTO x_api_requests (endpoint, requested_at, outcome) VALUES ($1, $2, $3)",
        )
        .bind(endpoint)
        .bind(now)
        .bind(outcome)
        .execute(&mut *conn)
        .await?;
        Ok(())
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
                && self
                    .x_budget_left(conn, WEBHOOKS_VALIDATE, self.list_limit, now)
                    .await?
            {
                let answer = self.x.validate_webhook(webhook).await;
                self.count_x_request(conn, WEBHOOKS_VALIDATE, &answer, now)
                    .await?;
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
        sqlx::query("INSERT INTO webhook_validity (webhook_id, checked_at, valid) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(webhook)
            .bind(checked_at)
            .bind(found.valid)
            .execute(&mut *conn)
            .await?;
        if valid && !found.valid {
            sqlx::query("INSERT INTO webhook_validity (webhook_id, checked_at, valid) VALUES ($1, $2, true) ON CONFLICT DO NOTHING")
                .bind(webhook)
                .bind(now + TimeDelta::milliseconds(1))
                .execute(&mut *conn)
                .await?;
        }
        Ok(registered_at)
    }

    /// Follows the job in flight; `true` while one is still running.
    async fn follow_in_flight(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, Error> {
        type InFlight = (
            i64,
            Option<String>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            DateTime<Utc>,
            String,
        );
        let row: Option<InFlight> = sqlx::query_as(
            "SELECT id, job_id, submitted_at, fence_at, created_at, kind FROM replay_windows WHERE webhook_id = $1 AND state = 'submitted'",
        )
        .bind(webhook)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((id, job_id, submitted_at, fence_at, created_at, kind)) = row else {
            return Ok(false);
        };
        let state: Option<String> =
            sqlx::query_scalar("SELECT job_state FROM replay_jobs WHERE job_id = $1")
                .bind(&job_id)
                .fetch_optional(&mut *conn)
                .await?;
        match state.as_deref() {
            Some("Complete") => match fence_at {
                None => {
                    // Fences written only now, after the completion was seen:
                    // every replayed delivery X sent before its completion
                    // reached Kafka before them. (The round's own fences were
                    // written before the completion was read, and a delivery
                    // still in flight then would be missed.)
                    let fenced_at = self.clock.now();
                    if !self.write_fences(fenced_at).await {
                        return Ok(true);
                    }
                    sqlx::query("UPDATE replay_windows SET fence_at = $2 WHERE id = $1")
                        .bind(id)
                        .bind(fenced_at)
                        .execute(&mut *conn)
                        .await?;
                    tracing::info!(message = "replay job complete; waiting for the consumer to pass the fences", webhook, job_id = ?job_id);
                    Ok(true)
                }
                Some(fence_at) => {
                    if self.horizon(conn).await?.is_none_or(|h| h < fence_at) {
                        return Ok(true);
                    }
                    let (recovered, duplicates): (i64, i64) = sqlx::query_as(
                        "UPDATE replay_windows SET state = 'reconciled', reconciled_at = $2 WHERE id = $1 RETURNING recovered, duplicates",
                    )
                    .bind(id)
                    .bind(now)
                    .fetch_one(&mut *conn)
                    .await?;
                    metrics::counter!("aaa_watermark_recovered_events_total", "webhook" => webhook.to_owned()).increment(recovered as u64);
                    metrics::counter!("aaa_watermark_duplicate_events_total", "webhook" => webhook.to_owned()).increment(duplicates as u64);
                    metrics::counter!("aaa_watermark_replay_jobs_total", "webhook" => webhook.to_owned(), "outcome" => "reconciled").increment(1);
                    if kind == AUDIT {
                        metrics::counter!("aaa_watermark_audit_recovered_events_total", "webhook" => webhook.to_owned()).increment(recovered as u64);
                        if recovered > 0 {
                            tracing::error!(message = "audit replay recovered activities X never delivered live while the receiver was up (X dropped them after its retries)", webhook, job_id = ?job_id, recovered, duplicates);
                        } else {
                            tracing::info!(message = "audit replay reconciled: nothing was missing", webhook, job_id = ?job_id, duplicates);
                        }
                    } else {
                        metrics::histogram!("aaa_watermark_gap_recovery_seconds", "webhook" => webhook.to_owned())
                            .record((now - created_at).as_seconds_f64());
                        tracing::info!(message = "replay reconciled: gap recovered", webhook, job_id = ?job_id, recovered, duplicates);
                    }
                    Ok(false)
                }
            },
            Some(other) => {
                // Incomplete (or anything but Complete): X does not retry replayed events.
                sqlx::query(
                    "UPDATE replay_windows SET state = 'pending', job_id = NULL, next_attempt_at = $2, last_error = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(now)
                .bind(format!("X reported {other}"))
                .execute(&mut *conn)
                .await?;
                metrics::counter!("aaa_watermark_replay_jobs_total", "webhook" => webhook.to_owned(), "outcome" => "incomplete").increment(1);
                tracing::warn!(message = "replay job not complete; the same window will be submitted again", webhook, job_id = ?job_id, state = other);
                Ok(false)
            }
            None if submitted_at.is_some_and(|at| at < now - self.job_timeout) => {
                sqlx::query(
                    "UPDATE replay_windows SET state = 'pending', job_id = NULL, next_attempt_at = $2, last_error = 'no completion message in time' WHERE id = $1",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                metrics::counter!("aaa_watermark_replay_jobs_total", "webhook" => webhook.to_owned(), "outcome" => "lost").increment(1);
                tracing::warn!(message = "no completion for the replay job; treating it as lost and resubmitting (a conflict will tell if it still runs)", webhook, job_id = ?job_id);
                Ok(false)
            }
            None => Ok(true),
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
    ) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, Error> {
        let Some(horizon) = self.horizon(conn).await? else {
            tracing::debug!(
                message = "consumer has not stored fences on every partition yet: nothing judged",
                webhook
            );
            return Ok(None);
        };
        let start: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(covered_from) FROM coverage_heartbeats WHERE webhook_id = $1",
        )
        .bind(webhook)
        .fetch_one(&mut *conn)
        .await?;
        let Some(origin) = [start, registered_at].into_iter().flatten().min() else {
            return Ok(None);
        };
        let (judged_to, tracked_from) = progress(conn, webhook).await?;
        let floor = judging_floor(now, judged_to, tracked_from);
        Ok(Some((origin.max(floor), horizon.min(now))))
    }

    /// Windows (of either kind) that end after `start`: time already replayed
    /// or being replayed.
    async fn windows_since(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        start: DateTime<Utc>,
    ) -> Result<Vec<Interval>, Error> {
        Ok(sqlx::query_as::<_, (DateTime<Utc>, DateTime<Utc>)>(
            "SELECT window_from, window_to FROM replay_windows WHERE webhook_id = $1 AND window_to >= $2",
        )
        .bind(webhook)
        .bind(start)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(from, to)| Interval::new(from, to))
        .collect())
    }

    /// Finds uncovered minutes not yet planned, and records them as pending
    /// (or expired) windows. Returns every window since `start`, those just
    /// recorded included.
    async fn record_gaps(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
        start: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> Result<Vec<Interval>, Error> {
        let beats: Vec<(DateTime<Utc>, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT covered_from, covered_to, refused FROM coverage_heartbeats WHERE webhook_id = $1 AND covered_to >= $2",
        )
        .bind(webhook)
        .bind(start)
        .fetch_all(&mut *conn)
        .await?;
        let heartbeats: Vec<Heartbeat> = beats
            .into_iter()
            .map(|(from, to, refused)| Heartbeat {
                covered: Interval::new(from, to),
                healthy: refused == 0,
            })
            .collect();
        let checks: Vec<(DateTime<Utc>, bool)> =
            sqlx::query_as("SELECT checked_at, valid FROM webhook_validity WHERE webhook_id = $1 AND checked_at >= $2 ORDER BY checked_at")
                .bind(webhook)
                .bind(start - TimeDelta::hours(1))
                .fetch_all(&mut *conn)
                .await?;
        metrics::gauge!("aaa_watermark_round_rows_read", "webhook" => webhook.to_owned())
            .set((heartbeats.len() + checks.len()) as f64);
        let mut invalid = invalid_periods(&checks, now);
        // Validity nobody could check (X unreachable, rate limited) is
        // suspect: X may have stopped delivering then.
        invalid.extend(unknown_periods(&checks, now, self.validity_unknown_after));
        let mut settled = self.windows_since(conn, webhook, start).await?;
        let gaps = uncovered(start, horizon, &heartbeats, &invalid, &settled);
        let minutes: i64 = gaps.iter().map(Interval::minutes).sum();
        metrics::gauge!("aaa_watermark_uncovered_minutes", "webhook" => webhook.to_owned())
            .set(minutes as f64);
        // X judges windows by its own clock.
        for step in plan(self.x_now(now), &gaps) {
            match step {
                Step::Submit(window) => {
                    tracing::info!(message = "gap found: window planned for replay", webhook, from = %window.from, to = %window.to);
                    self.insert_window(conn, webhook, window, GAP, "pending", now)
                        .await?;
                    settled.push(window);
                }
                Step::Expired(window) => {
                    tracing::error!(message = "gap older than X's 24 h replay limit: these minutes cannot be recovered", webhook, from = %window.from, to = %window.to);
                    metrics::counter!("aaa_watermark_expired_minutes_total", "webhook" => webhook.to_owned()).increment(window.minutes() as u64);
                    self.insert_window(conn, webhook, window, GAP, "expired", now)
                        .await?;
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
        webhook: &str,
        now: DateTime<Utc>,
        start: DateTime<Utc>,
        horizon: DateTime<Utc>,
        windows: &[Interval],
    ) -> Result<(), Error> {
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
            self.insert_window(conn, webhook, window, AUDIT, "pending", now)
                .await?;
        }
        Ok(())
    }

    async fn insert_window(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        window: Interval,
        kind: &str,
        state: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO replay_windows (webhook_id, window_from, window_to, kind, state, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(webhook)
        .bind(window.from)
        .bind(window.to)
        .bind(kind)
        .bind(state)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn submit_next(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        type Pending = (i64, DateTime<Utc>, DateTime<Utc>, i32, i32, String);
        // Gaps before audits: a gap is known to have lost something.
        let next: Option<Pending> = sqlx::query_as(
            "SELECT id, window_from, window_to, attempts, conflicts, kind FROM replay_windows
             WHERE webhook_id = $1 AND state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
             ORDER BY kind = 'audit', window_from LIMIT 1",
        )
        .bind(webhook)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((id, from, to, attempts, conflicts, kind)) = next else {
            return Ok(());
        };
        // Every replay request counts, whatever X answered: a conflict or a
        // 5xx spends X's budget as much as an accepted job.
        let recent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM x_api_requests WHERE endpoint = $1 AND requested_at > $2",
        )
        .bind(REPLAY_SUBMIT)
        .bind(now - RATE_WINDOW)
        .fetch_one(&mut *conn)
        .await?;
        let gap_waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM replay_windows WHERE kind = 'gap' AND state = 'pending')",
        )
        .fetch_one(&mut *conn)
        .await?;
        let kind_typed = if kind == AUDIT {
            WindowKind::Audit
        } else {
            WindowKind::Gap
        };
        if let Some(hold) = replay_hold(kind_typed, recent, self.replay_limit, gap_waiting) {
            tracing::info!(message = "replay not submitted now", webhook, from = %from, to = %to, reason = %hold);
            return Ok(());
        }
        // A margin inside X's 24 h: the request reaches X a little later.
        let earliest = ceil_minute(earliest_from(self.x_now(now)) + self.edge_margin);
        if to <= earliest {
            sqlx::query("UPDATE replay_windows SET state = 'expired', last_error = 'aged past 24 h before it could be replayed' WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            if kind == AUDIT {
                // Coverage judged these minutes already; only the extra check is lost.
                tracing::warn!(message = "audit window aged past 24 h before it could be replayed (replay budget too small for the audit rate?)", webhook, from = %from, to = %to);
                return Ok(());
            }
            metrics::counter!("aaa_watermark_expired_minutes_total", "webhook" => webhook.to_owned()).increment((to - from).num_minutes() as u64);
            tracing::error!(message = "window aged past 24 h before it could be replayed", webhook, from = %from, to = %to);
            return Ok(());
        }
        let from = if from < earliest {
            // The oldest minutes aged out while the window waited: recorded
            // (and, for a gap, counted) as expired, never dropped silently.
            let aged = Interval::new(from, earliest);
            sqlx::query("UPDATE replay_windows SET window_from = $2 WHERE id = $1")
                .bind(id)
                .bind(earliest)
                .execute(&mut *conn)
                .await?;
            // An audit's aged minutes lose nothing coverage did not judge.
            if kind == GAP {
                self.insert_window(conn, webhook, aged, GAP, "expired", now)
                    .await?;
                metrics::counter!("aaa_watermark_expired_minutes_total", "webhook" => webhook.to_owned()).increment(aged.minutes() as u64);
                tracing::error!(message = "the oldest minutes of a window aged past 24 h before it could be replayed", webhook, from = %aged.from, to = %aged.to);
            }
            earliest
        } else {
            from
        };
        let set_retry = |delay: TimeDelta, error: String, conflict: bool| {
            sqlx::query(
                "UPDATE replay_windows SET attempts = attempts + 1, conflicts = conflicts + $4, next_attempt_at = $2, last_error = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(now + delay)
            .bind(error)
            .bind(i32::from(conflict))
        };
        let answer = self
            .x
            .submit_replay(
                webhook,
                Window {
                    from,
                    to_exclusive: to,
                },
                self.x_now(now),
            )
            .await;
        self.count_x_request(conn, REPLAY_SUBMIT, &answer, now)
            .await?;
        match answer {
            Ok(job) => {
                sqlx::query(
                    "UPDATE replay_windows SET state = 'submitted', window_from = $2, job_id = $3, submitted_at = $4, attempts = attempts + 1, last_error = NULL WHERE id = $1",
                )
                .bind(id)
                .bind(from)
                .bind(&job.job_id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                metrics::counter!("aaa_watermark_replay_submissions_total", "webhook" => webhook.to_owned(), "outcome" => "accepted").increment(1);
                tracing::info!(message = "replay submitted", webhook, job_id = %job.job_id, from_date = %job.from_date, to_date = %job.to_date, attempt = attempts + 1);
            }
            Err(error) => {
                let (delay, conflict, outcome) = match &error {
                    XError::Refused {
                        reason: Reason::ReplayConflict,
                        ..
                    } => (backoff(self.backoff, conflicts), true, "conflict"),
                    XError::RateLimited { reset, .. } => (
                        reset
                            .map(|r| r - now)
                            .unwrap_or(self.backoff)
                            .max(TimeDelta::seconds(1)),
                        false,
                        "rate_limited",
                    ),
                    XError::Refused {
                        reason: Reason::CrcValidationFailed | Reason::WebhookIdInvalid,
                        ..
                    } => {
                        tracing::error!(message = "X refuses replays for this webhook; holding it and re-validating", webhook, error = %error);
                        self.revalidate_after
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(webhook);
                        (backoff(self.backoff, attempts), false, "webhook_refused")
                    }
                    // Clock skew or a boundary: planned again next time with fresh limits.
                    XError::Refused {
                        reason: Reason::QueryParamInvalid,
                        ..
                    }
                    // Doubling, so a window X keeps refusing is not retried
                    // every minute until it ages out.
                    | XError::Invalid(_) => (backoff(self.backoff, attempts), false, "window_refused"),
                    _ => (backoff(self.backoff, attempts), false, "failed"),
                };
                metrics::counter!("aaa_watermark_replay_submissions_total", "webhook" => webhook.to_owned(), "outcome" => outcome).increment(1);
                tracing::warn!(message = "replay not accepted; will retry", webhook, outcome, retry_in_secs = delay.num_seconds(), error = %error);
                set_retry(delay, error.to_string(), conflict)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    async fn report(
        &self,
        conn: &mut PgConnection,
        webhook: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let states: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT kind, state, count(*) FROM replay_windows WHERE webhook_id = $1 GROUP BY kind, state",
        )
        .bind(webhook)
        .fetch_all(&mut *conn)
        .await?;
        for kind in [GAP, AUDIT] {
            for state in ["pending", "submitted", "reconciled", "expired"] {
                let n = states
                    .iter()
                    .find(|(k, s, _)| k == kind && s == state)
                    .map_or(0, |(_, _, n)| *n);
                metrics::gauge!("aaa_watermark_windows", "webhook" => webhook.to_owned(), "kind" => kind, "state" => state).set(n as f64);
            }
        }
        // Only gaps: an audit that ages out loses nothing coverage did not judge.
        let oldest: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT min(window_from) FROM replay_windows WHERE webhook_id = $1 AND kind = 'gap' AND state IN ('pending', 'submitted')")
                .bind(webhook)
                .fetch_one(&mut *conn)
                .await?;
        let seconds_left = oldest.map_or(f64::INFINITY, |from| {
            (from + aaa_replay_window::MAX_AGE - now).as_seconds_f64()
        });
        metrics::gauge!("aaa_watermark_oldest_gap_expires_in_seconds", "webhook" => webhook.to_owned()).set(seconds_left);
        Ok(())
    }
}

/// How far `webhook`'s timeline was judged, and where tracking began.
async fn progress(
    conn: &mut PgConnection,
    webhook: &str,
) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), Error> {
    let row: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT judged_to, tracked_from FROM watermark_progress WHERE webhook_id = $1",
    )
    .bind(webhook)
    .fetch_optional(&mut *conn)
    .await?;
    Ok((row.map(|r| r.0), row.and_then(|r| r.1)))
}

/// Stretches longer than `max_silence` in which nobody learnt whether the
/// webhook was valid: between two checks, and from the last one to `now`.
/// (Before the first check ever, nothing was tracked: not suspect.)
pub fn unknown_periods(
    checks: &[(DateTime<Utc>, bool)],
    now: DateTime<Utc>,
    max_silence: TimeDelta,
) -> Vec<Interval> {
    let times: Vec<DateTime<Utc>> = checks
        .iter()
        .map(|(at, _)| *at)
        .chain(checks.last().map(|_| now))
        .collect();
    times
        .windows(2)
        .filter(|pair| pair[1] - pair[0] > max_silence)
        .map(|pair| Interval::new(pair[0], pair[1]))
        .collect()
}

/// The earliest time a round judges. Normally the last 25 h are judged
/// again each round (cheap, and late heartbeats count). After a long stop,
/// judging resumes where it stopped (less a margin for the widened
/// neighbour minutes). On the very first round, what X can still replay is
/// the past that matters, and no later round judges before where tracking
/// began: a webhook registered long ago has no heartbeats from before the
/// watermark was installed, which is not an expired gap.
pub fn judging_floor(
    now: DateTime<Utc>,
    judged_to: Option<DateTime<Utc>>,
    tracked_from: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let floor = match judged_to {
        Some(judged_to) => judged_to.min(now - TimeDelta::hours(25)) - TimeDelta::minutes(2),
        None => earliest_from(now),
    };
    tracked_from.map_or(floor, |tracked_from| floor.max(tracked_from))
}

/// Periods the webhook was (or may have been) invalid: from the last check
/// that saw it valid to the first check that sees it valid again.
pub fn invalid_periods(checks: &[(DateTime<Utc>, bool)], now: DateTime<Utc>) -> Vec<Interval> {
    let mut periods = Vec::new();
    let mut last_valid: Option<DateTime<Utc>> = None;
    let mut invalid_since: Option<DateTime<Utc>> = None;
    for (at, valid) in checks {
        match (valid, invalid_since) {
            // With no valid check before it, nobody knows since when the
            // webhook was invalid: since before anything judged.
            (false, None) => invalid_since = Some(last_valid.unwrap_or(DateTime::<Utc>::MIN_UTC)),
            (true, Some(since)) => {
                periods.push(Interval::new(since, *at));
                invalid_since = None;
                last_valid = Some(*at);
            }
            (true, None) => last_valid = Some(*at),
            (false, Some(_)) => {}
        }
    }
    if let Some(since) = invalid_since {
        periods.push(Interval::new(since, now));
    }
    periods
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minute: i64) -> DateTime<Utc> {
        "2026-11-25T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::minutes(minute)
    }

    #[test]
    fn invalid_periods_run_from_the_last_valid_check_to_the_next_valid_one() {
        let checks = [
            (t(0), true),
            (t(5), true),
            (t(10), false),
            (t(15), false),
            (t(20), true),
            (t(25), false),
        ];
        assert_eq!(
            invalid_periods(&checks, t(30)),
            vec![Interval::new(t(5), t(20)), Interval::new(t(20), t(30))]
        );
        // Invalid at the first check ever: since when is unknown.
        assert_eq!(
            invalid_periods(&[(t(3), false)], t(9)),
            vec![Interval::new(DateTime::<Utc>::MIN_UTC, t(9))]
        );
        assert_eq!(invalid_periods(&[(t(3), true)], t(9)), vec![]);
    }

    #[test]
    fn validity_nobody_checked_for_too_long_is_suspect() {
        let checks = [(t(0), true), (t(1), true), (t(30), true), (t(31), true)];
        let ten = TimeDelta::minutes(10);
        assert_eq!(
            unknown_periods(&checks, t(32), ten),
            vec![Interval::new(t(1), t(30))]
        );
        // Silent since the last check.
        assert_eq!(
            unknown_periods(&checks, t(50), ten),
            vec![Interval::new(t(1), t(30)), Interval::new(t(31), t(50))]
        );
        assert_eq!(unknown_periods(&[], t(50), ten), vec![]);
    }

    #[test]
    fn no_round_judges_before_tracking_began() {
        let now = t(60 * 30);
        // First round: what X can still replay.
        assert_eq!(judging_floor(now, None, None), earliest_from(now));
        // Second round of a watermark installed against an old webhook:
        // without `tracked_from` it would judge the hour before X's 24 h,
        // where nothing was ever tracked (and mark it expired).
        let tracked_from = earliest_from(now - TimeDelta::minutes(1));
        let floor = judging_floor(now, Some(now - TimeDelta::seconds(30)), Some(tracked_from));
        assert_eq!(floor, tracked_from);
        assert!(judging_floor(now, Some(now), None) < tracked_from);
        // A watermark stopped for 30 h resumes where it stopped.
        let stopped = now - TimeDelta::hours(30);
        assert_eq!(
            judging_floor(now, Some(stopped), Some(stopped - TimeDelta::hours(5))),
            stopped - TimeDelta::minutes(2)
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(TimeDelta::seconds(60), 0), TimeDelta::seconds(60));
        assert_eq!(backoff(TimeDelta::seconds(60), 2), TimeDelta::seconds(240));
        assert_eq!(backoff(TimeDelta::seconds(60), 9), MAX_BACKOFF);
    }
}
