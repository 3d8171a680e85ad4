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

/// Every series at zero from the start.
pub fn register(webhooks: &[String]) {
    metrics::counter!(TICKS_SKIPPED).increment(0);
    metrics::counter!(MAINTENANCE_SKIPPED).increment(0);
    for webhook in webhooks {
        metrics::counter!(LEASE_LOST, "webhook" => webhook.clone()).increment(0);
    }
}
