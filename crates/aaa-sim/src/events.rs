//! What the simulator reports: each type counts (and logs) in one place, as
//! in the services.

use aaa_common::observe::InternalEvent;

pub const API_REQUESTS: &str = "aaa_sim_api_requests_total";
pub const CRC_CHECKS: &str = "aaa_sim_crc_checks_total";
pub const DELIVERIES: &str = "aaa_sim_deliveries_total";
pub const ACTIVITIES: &str = "aaa_sim_activities_total";
pub const REPLAY_JOBS: &str = "aaa_sim_replay_jobs_total";
pub const STREAM_OPEN: &str = "aaa_sim_stream_open_connections";
pub const STREAM_REFUSED: &str = "aaa_sim_stream_refused_total";
pub const STREAM_CONNECTIONS: &str = "aaa_sim_stream_connections_total";

fn ok_or_failed(ok: bool) -> &'static str {
    if ok { "ok" } else { "failed" }
}

/// An answer of the simulated X API.
pub struct ApiAnswered {
    /// The path's first three segments.
    pub endpoint: String,
    pub status: u16,
}

impl InternalEvent for ApiAnswered {
    fn emit(self) {
        metrics::counter!(API_REQUESTS, "endpoint" => self.endpoint, "status" => self.status.to_string())
            .increment(1);
    }
}

/// A CRC challenge X sent a webhook, and whether it was answered right.
pub struct CrcChecked<'a> {
    pub url: &'a str,
    pub failure: Option<&'a str>,
}

impl InternalEvent for CrcChecked<'_> {
    fn emit(self) {
        metrics::counter!(CRC_CHECKS, "outcome" => ok_or_failed(self.failure.is_none()))
            .increment(1);
        if let Some(reason) = self.failure {
            tracing::warn!(message = "CRC failed", url = self.url, reason = %reason);
        }
    }
}

/// One delivery attempt (webhook, replay or stream).
pub struct DeliveryAttempted {
    pub via: &'static str,
    pub ok: bool,
}

impl InternalEvent for DeliveryAttempted {
    fn emit(self) {
        metrics::counter!(DELIVERIES, "route" => self.via, "result" => ok_or_failed(self.ok))
            .increment(1);
    }
}

/// An activity the generator made up.
pub struct ActivityGenerated {
    pub kind: &'static str,
}

impl InternalEvent for ActivityGenerated {
    fn emit(self) {
        metrics::counter!(ACTIVITIES, "kind" => self.kind).increment(1);
    }
}

/// A replay job started, or ended in `state`.
pub struct ReplayJobState<'a> {
    pub state: &'a str,
}

impl InternalEvent for ReplayJobState<'_> {
    fn emit(self) {
        metrics::counter!(REPLAY_JOBS, "state" => self.state.to_owned()).increment(1);
    }
}

/// Stream connections open now.
pub struct StreamOpen {
    pub connections: usize,
}

impl InternalEvent for StreamOpen {
    fn emit(self) {
        metrics::gauge!(STREAM_OPEN).set(self.connections as f64);
    }
}

/// A stream connection refused (too many connections).
pub struct StreamRefused;

impl InternalEvent for StreamRefused {
    fn emit(self) {
        metrics::counter!(STREAM_REFUSED).increment(1);
    }
}

/// A stream connection accepted.
pub struct StreamAccepted;

impl InternalEvent for StreamAccepted {
    fn emit(self) {
        metrics::counter!(STREAM_CONNECTIONS).increment(1);
    }
}
