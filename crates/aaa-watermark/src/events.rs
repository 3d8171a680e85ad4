//! What the watermark reports about its own scheduling: each type logs and
//! counts in one place.

use aaa_common::observe::InternalEvent;

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

/// Every series at zero from the start.
pub fn register(webhooks: &[String]) {
    metrics::counter!(TICKS_SKIPPED).increment(0);
    metrics::counter!(MAINTENANCE_SKIPPED).increment(0);
    for webhook in webhooks {
        metrics::counter!(LEASE_LOST, "webhook" => webhook.clone()).increment(0);
    }
}
