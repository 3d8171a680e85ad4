//! Everything the watermark reports: each type logs and counts in one place
//! (Vector's internal events), so a round, a job and a maintenance run read
//! as their story and logs and metrics never drift. Label sets come from
//! enums with `ALL`, and [`register`] sets every series at zero from them.

use std::time::Duration;

use aaa_common::observe::InternalEvent;
use chrono::{DateTime, TimeDelta, Utc};

use crate::Error;
use crate::compliance::Erased;
use crate::coverage::Interval;
use crate::decisions::{Hold, JobOutcome, Retry, Submission};
use crate::planner::WindowKind;
use crate::store::WindowState;

pub const TICKS_SKIPPED: &str = "aaa_watermark_ticks_skipped_total";
pub const LEASE_LOST: &str = "aaa_watermark_lease_lost_total";
pub const MAINTENANCE_FAILURES: &str = "aaa_watermark_maintenance_failures_total";
pub const MAINTENANCE_SKIPPED: &str = "aaa_watermark_maintenance_skipped_total";

/// A scheduler tick that found the previous round still running: skipped,
/// so one replica never runs two rounds at once.
pub struct TickSkipped;

impl InternalEvent for TickSkipped {
    fn emit(self) {
        tracing::info!(message = "previous round still running; this tick is skipped");
        metrics::counter!(TICKS_SKIPPED).increment(1);
    }
}

/// A round that found, at a state change, that another replica took its
/// lease over (it outlived its lease: frozen, or slow). It changed nothing
/// from then on.
pub struct LeaseLostMidRound<'a> {
    pub webhook: &'a str,
}

impl InternalEvent for LeaseLostMidRound<'_> {
    fn emit(self) {
        tracing::warn!(
            message = "another replica took this webhook's lease during the round; the round stopped without acting",
            webhook = self.webhook
        );
        metrics::counter!(LEASE_LOST, "webhook" => self.webhook.to_owned()).increment(1);
    }
}

/// A part of a maintenance run failed (pruning, payload retention, erasing
/// deleted posts); the next run tries again (`AaaWatermarkMaintenanceFailing`).
pub struct MaintenanceFailed<'a> {
    /// The log line, which names the part (docs/runbook.md quotes them).
    pub message: &'static str,
    pub error: &'a sqlx::Error,
}

impl InternalEvent for MaintenanceFailed<'_> {
    fn emit(self) {
        tracing::error!(message = self.message, error = %self.error);
        metrics::counter!(MAINTENANCE_FAILURES).increment(1);
    }
}

/// A maintenance run due while the last one on this replica is still going:
/// skipped, so runs never pile up on a slow database.
pub struct MaintenanceSkipped;

impl InternalEvent for MaintenanceSkipped {
    fn emit(self) {
        tracing::info!(message = "previous maintenance run still going; this one is skipped");
        metrics::counter!(MAINTENANCE_SKIPPED).increment(1);
    }
}

/// What X bills for the current UTC day so far (`v_x_charges_daily`),
/// read each maintenance run.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ChargesToday {
    pub billable: i64,
    pub estimated_usd: f64,
    /// Copies the pipeline stored once (retries, replays, both envelopes).
    pub duplicates_absorbed: i64,
    /// Of those, copies X charged again (first stored on an earlier day).
    pub duplicates_billed: i64,
}

pub const BILLABLE_TODAY: &str = "aaa_x_billable_events_today";
pub const CHARGES_TODAY: &str = "aaa_x_estimated_charges_today_usd";
pub const DUPLICATES_TODAY: &str = "aaa_x_duplicates_absorbed_today";
pub const DUPLICATES_BILLED_TODAY: &str = "aaa_x_duplicates_billed_today";

impl InternalEvent for ChargesToday {
    fn emit(self) {
        tracing::debug!(
            message = "X charges today",
            billable = self.billable,
            estimated_usd = self.estimated_usd,
            duplicates_absorbed = self.duplicates_absorbed,
            duplicates_billed = self.duplicates_billed
        );
        metrics::gauge!(BILLABLE_TODAY).set(self.billable as f64);
        metrics::gauge!(CHARGES_TODAY).set(self.estimated_usd);
        metrics::gauge!(DUPLICATES_TODAY).set(self.duplicates_absorbed as f64);
        metrics::gauge!(DUPLICATES_BILLED_TODAY).set(self.duplicates_billed as f64);
    }
}

pub const ROUND_FAILURES: &str = "aaa_watermark_round_failures_total";
pub const ROUND_SECONDS: &str = "aaa_watermark_round_seconds";
pub const ROUND_ROWS_READ: &str = "aaa_watermark_round_rows_read";
pub const JUDGED_AGE: &str = "aaa_watermark_judged_age_seconds";
pub const STALLED_SECONDS: &str = "aaa_watermark_stalled_seconds";
pub const LEASE_HELD: &str = "aaa_watermark_lease_held";
pub const X_CLOCK_SKEW: &str = "aaa_watermark_x_clock_skew_seconds";
pub const WEBHOOK_VALID: &str = "aaa_watermark_webhook_valid";
pub const UNCOVERED_MINUTES: &str = "aaa_watermark_uncovered_minutes";
pub const EXPIRED_MINUTES: &str = "aaa_watermark_expired_minutes_total";
pub const REPLAY_SUBMISSIONS: &str = "aaa_watermark_replay_submissions_total";
pub const REPLAY_JOBS: &str = "aaa_watermark_replay_jobs_total";
pub const RECOVERED_EVENTS: &str = "aaa_watermark_recovered_events_total";
pub const DUPLICATE_EVENTS: &str = "aaa_watermark_duplicate_events_total";
pub const AUDIT_RECOVERED_EVENTS: &str = "aaa_watermark_audit_recovered_events_total";
pub const GAP_RECOVERY_SECONDS: &str = "aaa_watermark_gap_recovery_seconds";
pub const WINDOWS: &str = "aaa_watermark_windows";
pub const OLDEST_GAP_EXPIRES_IN: &str = "aaa_watermark_oldest_gap_expires_in_seconds";
pub const PRUNED_ROWS: &str = "aaa_watermark_pruned_rows_total";
pub const MAINTENANCE_SECONDS: &str = "aaa_watermark_maintenance_seconds";
pub const DROPPED_PAYLOADS: &str = "aaa_watermark_dropped_payloads_total";
/// Undated relationship changes that repeated their pair's state.
pub const REPEATED_CHANGES_DROPPED: &str =
    "aaa_watermark_repeated_relationship_changes_dropped_total";
pub const ERASED_POSTS: &str = "aaa_watermark_erased_posts_total";
pub const ERASED_PAYLOADS: &str = "aaa_watermark_erased_payloads_total";
pub const ERASED_DEAD_LETTERS: &str = "aaa_watermark_erased_dead_letters_total";
pub const ERASE_BACKLOG: &str = "aaa_watermark_erase_backlog";
pub const TABLE_ROWS: &str = "aaa_table_rows_estimate";
pub const TABLE_BYTES: &str = "aaa_table_bytes";

/// The tables maintenance prunes (`aaa_watermark_pruned_rows_total{table}`).
pub const PRUNED_TABLES: [&str; 5] = [
    "coverage_heartbeats",
    "webhook_validity",
    "replay_windows",
    "x_api_requests",
    "dead_letters",
];

fn gauge_flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// A webhook's round failed; the next round tries again.
pub struct RoundFailed<'a> {
    pub webhook: &'a str,
    pub error: &'a Error,
}

impl InternalEvent for RoundFailed<'_> {
    fn emit(self) {
        tracing::error!(message = "watermark round failed; retrying next round", webhook = %self.webhook, error = %self.error);
        metrics::counter!(ROUND_FAILURES, "webhook" => self.webhook.to_owned()).increment(1);
    }
}

/// How far judging got, as every replica reads it at the start of a round
/// (holder or not: a holder that is frozen or failing cannot report its own
/// stall).
pub struct JudgedUpTo<'a> {
    pub webhook: &'a str,
    pub age: TimeDelta,
}

impl InternalEvent for JudgedUpTo<'_> {
    fn emit(self) {
        metrics::gauge!(JUDGED_AGE, "webhook" => self.webhook.to_owned())
            .set(self.age.as_seconds_f64().max(0.0));
    }
}

/// How long ago this replica last started a round (real time).
pub struct Stalled {
    pub for_: std::time::Duration,
}

impl InternalEvent for Stalled {
    fn emit(self) {
        metrics::gauge!(STALLED_SECONDS).set(self.for_.as_secs_f64());
    }
}

/// Whether this replica holds the webhook's lease this round.
pub struct LeaseChecked<'a> {
    pub webhook: &'a str,
    pub replica: &'a str,
    pub held: bool,
}

impl InternalEvent for LeaseChecked<'_> {
    fn emit(self) {
        if !self.held {
            tracing::debug!(message = "another watermark replica holds this webhook's lease", webhook = self.webhook, replica = %self.replica);
        }
        metrics::gauge!(LEASE_HELD, "webhook" => self.webhook.to_owned())
            .set(gauge_flag(self.held));
    }
}

/// A round under the lease ended (well or not).
pub struct RoundEnded<'a> {
    pub webhook: &'a str,
    pub elapsed: Duration,
}

impl InternalEvent for RoundEnded<'_> {
    fn emit(self) {
        metrics::histogram!(ROUND_SECONDS, "webhook" => self.webhook.to_owned())
            .record(self.elapsed.as_secs_f64());
    }
}

/// The very first round of any replica marked where tracking began.
pub struct TrackingBegan<'a> {
    pub webhook: &'a str,
    pub from: DateTime<Utc>,
}

impl InternalEvent for TrackingBegan<'_> {
    fn emit(self) {
        tracing::info!(message = "tracking began: the first round judges what X can still replay, no later round judges before it", webhook = self.webhook, tracked_from = %self.from);
    }
}

/// A fence the broker did not take: the horizon waits for the next.
pub const FENCES_UNWRITTEN: &str = "aaa_watermark_fences_unwritten_total";
pub const FENCE_FAILURES_IN_A_ROW: &str = "aaa_watermark_fence_failures_in_a_row";
pub const FENCE_PRODUCER_REBUILDS: &str = "aaa_watermark_fence_producer_rebuilds_total";

pub struct FenceNotWritten<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl InternalEvent for FenceNotWritten<'_> {
    fn emit(self) {
        tracing::warn!(message = "fence not written; the processed horizon waits", error = %self.error);
        metrics::counter!(FENCES_UNWRITTEN).increment(1);
    }
}

/// How many fence writes in a row failed (0 after one that succeeded).
pub struct FenceWrites {
    pub failures_in_a_row: u32,
}

impl InternalEvent for FenceWrites {
    fn emit(self) {
        metrics::gauge!(FENCE_FAILURES_IN_A_ROW).set(f64::from(self.failures_in_a_row));
    }
}

/// The fence producer hit a fatal error (an idempotent producer's state
/// lost) and was replaced; otherwise it would refuse every fence for good.
pub struct FenceProducerRebuilt<'a> {
    pub code: String,
    pub reason: &'a str,
}

impl InternalEvent for FenceProducerRebuilt<'_> {
    fn emit(self) {
        tracing::error!(message = "fence producer hit a fatal error and was rebuilt", code = %self.code, reason = self.reason);
        metrics::counter!(FENCE_PRODUCER_REBUILDS).increment(1);
    }
}

/// This replica cannot write fences: it gives up its leases (so another
/// replica takes its webhooks over) and starts no round until a fence is
/// written again; /healthz fails meanwhile.
pub struct FencesFailing {
    pub failures_in_a_row: u32,
}

impl InternalEvent for FencesFailing {
    fn emit(self) {
        tracing::error!(
            message = "fences keep failing: leases released, no rounds until a fence is written",
            failures_in_a_row = self.failures_in_a_row
        );
    }
}

/// How far X's clock is ahead of ours, from the `Date` of its last answer.
pub struct XClockSkew {
    pub skew: TimeDelta,
}

impl InternalEvent for XClockSkew {
    fn emit(self) {
        metrics::gauge!(X_CLOCK_SKEW).set(self.skew.as_seconds_f64());
        if self.skew.abs() > TimeDelta::seconds(60) {
            tracing::warn!(
                message = "X's clock differs from ours; replay windows are planned by X's",
                skew_seconds = self.skew.num_seconds()
            );
        }
    }
}

/// X's request budget for an endpoint is used up for this 15-minute window.
pub struct XBudgetUsedUp<'a> {
    pub endpoint: &'a str,
    pub limit: i64,
}

impl InternalEvent for XBudgetUsedUp<'_> {
    fn emit(self) {
        tracing::info!(
            message = "X's request budget for this endpoint is used up for this 15-minute window; waiting",
            endpoint = self.endpoint,
            limit = self.limit
        );
    }
}

/// X's answer to a counted request could not be written down.
pub struct XOutcomeNotRecorded<'a> {
    pub endpoint: &'a str,
    pub error: &'a sqlx::Error,
}

impl InternalEvent for XOutcomeNotRecorded<'_> {
    fn emit(self) {
        tracing::warn!(message = "X's answer not recorded (the request is counted)", endpoint = self.endpoint, error = %self.error);
    }
}

/// X did not answer the webhook list.
pub struct WebhookListUnread<'a> {
    pub error: &'a aaa_xapi::XError,
}

impl InternalEvent for WebhookListUnread<'_> {
    fn emit(self) {
        tracing::warn!(message = "cannot read webhook validity from X", error = %self.error);
    }
}

/// X's webhook list does not have the watched webhook.
pub struct WebhookUnknownAtX<'a> {
    pub webhook: &'a str,
}

impl InternalEvent for WebhookUnknownAtX<'_> {
    fn emit(self) {
        tracing::error!(
            message = "X does not know this webhook (WebhookIdInvalid): nothing can be replayed",
            webhook = self.webhook
        );
    }
}

/// X lists the webhook as invalid (failed CRC).
pub struct WebhookInvalidAtX<'a> {
    pub webhook: &'a str,
    pub revalidating: bool,
}

impl InternalEvent for WebhookInvalidAtX<'_> {
    fn emit(self) {
        tracing::error!(
            message = "webhook is invalid at X (failed CRC): nothing is delivered until it is re-validated",
            webhook = self.webhook,
            revalidating = self.revalidating
        );
    }
}

/// What a re-validation (PUT) of an invalid webhook gave.
pub struct Revalidated<'a> {
    pub webhook: &'a str,
    /// `None` when X re-validated it; otherwise what X answered.
    pub failure: Option<String>,
}

impl InternalEvent for Revalidated<'_> {
    fn emit(self) {
        match self.failure {
            None => tracing::info!(
                message = "webhook re-validated; its invalid period will be replayed",
                webhook = self.webhook
            ),
            Some(result) => {
                tracing::warn!(message = "re-validation failed; backing off", webhook = self.webhook, result = %result)
            }
        }
    }
}

/// Whether the webhook is valid at X as of this round.
pub struct WebhookValidity<'a> {
    pub webhook: &'a str,
    pub valid: bool,
}

impl InternalEvent for WebhookValidity<'_> {
    fn emit(self) {
        metrics::gauge!(WEBHOOK_VALID, "webhook" => self.webhook.to_owned())
            .set(gauge_flag(self.valid));
    }
}

/// X reported the job complete; fences are written after it.
pub struct JobCompleteAtX<'a> {
    pub webhook: &'a str,
    pub job_id: &'a str,
}

impl InternalEvent for JobCompleteAtX<'_> {
    fn emit(self) {
        tracing::info!(
            message = "replay job complete; waiting for the consumer to pass the fences",
            webhook = self.webhook,
            job_id = self.job_id
        );
    }
}

/// A replay job reconciled: what it brought is stored.
pub struct JobReconciled<'a> {
    pub webhook: &'a str,
    pub job_id: &'a str,
    pub kind: WindowKind,
    pub recovered: i64,
    pub duplicates: i64,
    /// From the window being planned to now.
    pub took: TimeDelta,
}

impl InternalEvent for JobReconciled<'_> {
    fn emit(self) {
        let webhook = || self.webhook.to_owned();
        let (recovered, duplicates) = (self.recovered, self.duplicates);
        metrics::counter!(RECOVERED_EVENTS, "webhook" => webhook()).increment(recovered as u64);
        metrics::counter!(DUPLICATE_EVENTS, "webhook" => webhook()).increment(duplicates as u64);
        metrics::counter!(REPLAY_JOBS, "webhook" => webhook(), "outcome" => JobOutcome::Reconciled.as_str())
            .increment(1);
        let (webhook, job_id) = (self.webhook, self.job_id);
        match self.kind {
            WindowKind::Audit => {
                metrics::counter!(AUDIT_RECOVERED_EVENTS, "webhook" => webhook.to_owned())
                    .increment(recovered as u64);
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
                metrics::histogram!(GAP_RECOVERY_SECONDS, "webhook" => webhook.to_owned())
                    .record(self.took.as_seconds_f64());
                tracing::info!(
                    message = "replay reconciled: gap recovered",
                    webhook,
                    job_id,
                    recovered,
                    duplicates
                );
            }
        }
    }
}

/// A replay job that did not bring its window: the window goes back to
/// pending, to be submitted again.
pub struct JobRequeued<'a> {
    pub webhook: &'a str,
    pub job_id: &'a str,
    pub why: Requeue<'a>,
}

/// Why a job's window goes back to pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue<'a> {
    /// Complete at X, but the receivers refused deliveries while it ran.
    ReceiversMissed,
    /// X ended it in this other state.
    Incomplete { state: &'a str },
    /// No completion message within the job timeout.
    Lost,
}

impl Requeue<'_> {
    pub fn outcome(self) -> JobOutcome {
        match self {
            Requeue::ReceiversMissed => JobOutcome::ReceiversMissed,
            Requeue::Incomplete { .. } => JobOutcome::Incomplete,
            Requeue::Lost => JobOutcome::Lost,
        }
    }
}

impl InternalEvent for JobRequeued<'_> {
    fn emit(self) {
        let (webhook, job_id) = (self.webhook, self.job_id);
        metrics::counter!(REPLAY_JOBS, "webhook" => webhook.to_owned(), "outcome" => self.why.outcome().as_str())
            .increment(1);
        match self.why {
            Requeue::ReceiversMissed => tracing::warn!(
                message = "replay job complete at X, but the receivers refused deliveries while it ran (shed or broker down); the same window will be submitted again",
                webhook,
                job_id
            ),
            Requeue::Incomplete { state } => tracing::warn!(
                message = "replay job not complete; the same window will be submitted again",
                webhook,
                job_id,
                state
            ),
            Requeue::Lost => tracing::warn!(
                message = "no completion for the replay job; treating it as lost and resubmitting (a conflict will tell if it still runs)",
                webhook,
                job_id
            ),
        }
    }
}

/// What a judging round read and found uncovered.
pub struct CoverageJudged<'a> {
    pub webhook: &'a str,
    pub rows_read: usize,
    pub uncovered_minutes: i64,
}

impl InternalEvent for CoverageJudged<'_> {
    fn emit(self) {
        metrics::gauge!(ROUND_ROWS_READ, "webhook" => self.webhook.to_owned())
            .set(self.rows_read as f64);
        metrics::gauge!(UNCOVERED_MINUTES, "webhook" => self.webhook.to_owned())
            .set(self.uncovered_minutes as f64);
    }
}

/// A window recorded for replay.
pub struct WindowPlanned<'a> {
    pub webhook: &'a str,
    pub kind: WindowKind,
    pub window: Interval,
}

impl InternalEvent for WindowPlanned<'_> {
    fn emit(self) {
        let (webhook, from, to) = (self.webhook, self.window.from, self.window.to);
        match self.kind {
            WindowKind::Gap => {
                tracing::info!(message = "gap found: window planned for replay", webhook, from = %from, to = %to)
            }
            WindowKind::Audit => {
                tracing::info!(message = "closed slot planned for an audit replay", webhook, from = %from, to = %to)
            }
        }
    }
}

/// A gap not replayable yet (X replays windows at least 31 min old).
pub struct GapNotReplayableYet<'a> {
    pub webhook: &'a str,
    pub window: Interval,
    pub until: DateTime<Utc>,
}

impl InternalEvent for GapNotReplayableYet<'_> {
    fn emit(self) {
        tracing::debug!(message = "gap not replayable yet (X replays windows at least 31 min old)", webhook = self.webhook, from = %self.window.from, to = %self.window.to, until = %self.until);
    }
}

/// Minutes past X's 24 h replay limit: lost for good.
pub struct MinutesExpired<'a> {
    pub webhook: &'a str,
    pub window: Interval,
    pub why: Expiry,
    /// Counted in `aaa_watermark_expired_minutes_total`: a gap's minutes,
    /// the first time they are recorded (an audit's lose nothing coverage
    /// did not judge).
    pub counted: bool,
}

/// How minutes came to expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Found uncovered when already older than 24 h.
    FoundTooOld,
    /// A pending window of this kind aged out before it could be submitted.
    AgedWaiting(WindowKind),
    /// The oldest minutes of a pending window aged out; the rest is replayed.
    OldestAgedWaiting,
}

impl InternalEvent for MinutesExpired<'_> {
    fn emit(self) {
        let (webhook, from, to) = (self.webhook, self.window.from, self.window.to);
        if self.counted {
            metrics::counter!(EXPIRED_MINUTES, "webhook" => webhook.to_owned())
                .increment(self.window.minutes().max(0) as u64);
        }
        match self.why {
            Expiry::FoundTooOld => {
                tracing::error!(message = "gap older than X's 24 h replay limit: these minutes cannot be recovered", webhook, from = %from, to = %to)
            }
            // Coverage judged these minutes already; only the extra check is lost.
            Expiry::AgedWaiting(WindowKind::Audit) => {
                tracing::warn!(message = "audit window aged past 24 h before it could be replayed (replay budget too small for the audit rate?)", webhook, from = %from, to = %to)
            }
            Expiry::AgedWaiting(WindowKind::Gap) => {
                tracing::error!(message = "window aged past 24 h before it could be replayed", webhook, from = %from, to = %to)
            }
            Expiry::OldestAgedWaiting => {
                tracing::error!(message = "the oldest minutes of a window aged past 24 h before it could be replayed", webhook, from = %from, to = %to)
            }
        }
    }
}

/// A pending window not submitted this round.
pub struct ReplayHeld<'a> {
    pub webhook: &'a str,
    pub window: Interval,
    pub hold: &'a Hold,
}

impl InternalEvent for ReplayHeld<'_> {
    fn emit(self) {
        tracing::info!(message = "replay not submitted now", webhook = self.webhook, from = %self.window.from, to = %self.window.to, reason = %self.hold);
    }
}

/// X accepted a replay job.
pub struct ReplaySubmitted<'a> {
    pub webhook: &'a str,
    pub job: &'a aaa_xapi::ReplayJob,
    pub attempt: i32,
    /// `false` when the window was no longer pending when marked (another
    /// replica acted on it).
    pub marked: bool,
}

impl InternalEvent for ReplaySubmitted<'_> {
    fn emit(self) {
        let (webhook, job) = (self.webhook, self.job);
        if !self.marked {
            tracing::error!(message = "X accepted a replay job for a window that is no longer pending (another replica acted on it)", webhook, job_id = %job.job_id);
        }
        metrics::counter!(REPLAY_SUBMISSIONS, "webhook" => webhook.to_owned(), "outcome" => Submission::Accepted.as_str())
            .increment(1);
        tracing::info!(message = "replay submitted", webhook, job_id = %job.job_id, from_date = %job.from_date, to_date = %job.to_date, attempt = self.attempt);
    }
}

/// X did not accept a replay job; the window is retried later.
pub struct ReplayRefused<'a> {
    pub webhook: &'a str,
    pub retry: &'a Retry,
    pub error: &'a aaa_xapi::XError,
}

impl InternalEvent for ReplayRefused<'_> {
    fn emit(self) {
        let (webhook, retry, error) = (self.webhook, self.retry, self.error);
        if retry.revalidate {
            tracing::error!(message = "X refuses replays for this webhook; holding it and re-validating", webhook, error = %error);
        }
        metrics::counter!(REPLAY_SUBMISSIONS, "webhook" => webhook.to_owned(), "outcome" => retry.outcome.as_str())
            .increment(1);
        tracing::warn!(message = "replay not accepted; will retry", webhook, outcome = retry.outcome.as_str(), retry_in_secs = retry.delay.num_seconds(), error = %error);
    }
}

/// The webhook's windows by kind and state, and how long until its oldest
/// open gap can no longer be replayed.
pub struct WindowsCounted<'a> {
    pub webhook: &'a str,
    pub counts: &'a [(WindowKind, WindowState, i64)],
    pub oldest_gap_expires_in: Option<TimeDelta>,
}

impl InternalEvent for WindowsCounted<'_> {
    fn emit(self) {
        for kind in WindowKind::ALL {
            for state in WindowState::ALL {
                let n = self
                    .counts
                    .iter()
                    .find(|(k, s, _)| *k == kind && *s == state)
                    .map_or(0, |(_, _, n)| *n);
                metrics::gauge!(WINDOWS, "webhook" => self.webhook.to_owned(), "kind" => kind.as_str(), "state" => state.as_str())
                    .set(n as f64);
            }
        }
        let seconds_left = self
            .oldest_gap_expires_in
            .map_or(f64::INFINITY, |left| left.as_seconds_f64());
        metrics::gauge!(OLDEST_GAP_EXPIRES_IN, "webhook" => self.webhook.to_owned())
            .set(seconds_left);
    }
}

/// Rows a retention rule deleted in one batch.
pub struct RowsPruned {
    pub table: &'static str,
    pub rows: u64,
}

impl InternalEvent for RowsPruned {
    fn emit(self) {
        metrics::counter!(PRUNED_ROWS, "table" => self.table).increment(self.rows);
    }
}

/// The pruning part of a maintenance run ended.
pub struct PruningEnded {
    pub elapsed: Duration,
}

impl InternalEvent for PruningEnded {
    fn emit(self) {
        metrics::histogram!(MAINTENANCE_SECONDS).record(self.elapsed.as_secs_f64());
    }
}

/// Payloads (and contexts) of old events dropped by the retention.
pub struct PayloadsDropped {
    pub rows: u64,
}

impl InternalEvent for PayloadsDropped {
    fn emit(self) {
        metrics::counter!(DROPPED_PAYLOADS).increment(self.rows);
    }
}

/// A table's size as Postgres estimates it, for the dashboards.
pub struct TableSize {
    pub table: String,
    pub rows: f32,
    pub bytes: i64,
}

impl InternalEvent for TableSize {
    fn emit(self) {
        metrics::gauge!(TABLE_ROWS, "table" => self.table.clone())
            .set(f64::from(self.rows.max(0.0)));
        metrics::gauge!(TABLE_BYTES, "table" => self.table).set(self.bytes as f64);
    }
}

/// Undated relationship changes dropped as repeats of their pair's state.
pub struct RepeatedChangesDropped {
    pub rows: u64,
}

impl InternalEvent for RepeatedChangesDropped {
    fn emit(self) {
        metrics::counter!(REPEATED_CHANGES_DROPPED).increment(self.rows);
    }
}

/// Deleted posts erased (or checked again) by one call of a maintenance run.
pub struct PostsErased(pub Erased);

impl InternalEvent for PostsErased {
    fn emit(self) {
        let done = self.0;
        metrics::counter!(ERASED_POSTS).increment(done.posts);
        metrics::counter!(ERASED_PAYLOADS).increment(done.payloads);
        metrics::counter!(ERASED_DEAD_LETTERS).increment(done.dead_letters);
        tracing::info!(
            message = "deleted posts erased",
            posts = done.posts,
            checked = done.checked,
            payloads = done.payloads,
            dead_letters = done.dead_letters
        );
    }
}

/// Deleted posts waiting to be erased or checked; `None` when it could not
/// be read.
pub struct EraseBacklog<'a> {
    pub posts: Result<i64, &'a sqlx::Error>,
}

impl InternalEvent for EraseBacklog<'_> {
    fn emit(self) {
        match self.posts {
            Ok(posts) => metrics::gauge!(ERASE_BACKLOG).set(posts as f64),
            Err(error) => tracing::warn!(message = "erase backlog not read", error = %error),
        }
    }
}

/// Every series at zero from the start, label sets from their enums.
pub fn register(webhooks: &[String]) {
    metrics::counter!(TICKS_SKIPPED).increment(0);
    metrics::counter!(MAINTENANCE_SKIPPED).increment(0);
    metrics::counter!(MAINTENANCE_FAILURES).increment(0);
    metrics::gauge!(X_CLOCK_SKEW).set(0.0);
    metrics::counter!(FENCES_UNWRITTEN).increment(0);
    metrics::counter!(FENCE_PRODUCER_REBUILDS).increment(0);
    metrics::gauge!(FENCE_FAILURES_IN_A_ROW).set(0.0);
    for webhook in webhooks {
        let w = || webhook.clone();
        metrics::counter!(LEASE_LOST, "webhook" => w()).increment(0);
        for outcome in Submission::ALL {
            metrics::counter!(REPLAY_SUBMISSIONS, "webhook" => w(), "outcome" => outcome.as_str())
                .increment(0);
        }
        for outcome in JobOutcome::ALL {
            metrics::counter!(REPLAY_JOBS, "webhook" => w(), "outcome" => outcome.as_str())
                .increment(0);
        }
        for counter in [
            RECOVERED_EVENTS,
            DUPLICATE_EVENTS,
            EXPIRED_MINUTES,
            AUDIT_RECOVERED_EVENTS,
            ROUND_FAILURES,
        ] {
            metrics::counter!(counter, "webhook" => w()).increment(0);
        }
        metrics::gauge!(LEASE_HELD, "webhook" => w()).set(0.0);
        metrics::gauge!(ROUND_ROWS_READ, "webhook" => w()).set(0.0);
    }
    for table in PRUNED_TABLES {
        metrics::counter!(PRUNED_ROWS, "table" => table).increment(0);
    }
    for counter in [
        DROPPED_PAYLOADS,
        REPEATED_CHANGES_DROPPED,
        ERASED_POSTS,
        ERASED_PAYLOADS,
        ERASED_DEAD_LETTERS,
    ] {
        metrics::counter!(counter).increment(0);
    }
    metrics::gauge!(ERASE_BACKLOG).set(0.0);
    ChargesToday::default().emit();
}
