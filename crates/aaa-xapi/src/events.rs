//! What the X client reports: each type logs and counts in one place.
//! (The same shape as `aaa_common::observe::InternalEvent`; this crate
//! stays free of the services' runtime dependencies.)

use std::time::Duration;

use crate::XError;

pub const REQUESTS: &str = "aaa_xapi_requests_total";
pub const REQUEST_SECONDS: &str = "aaa_xapi_request_duration_seconds";

/// One HTTP request to X and how it ended.
pub struct XRequestAnswered<'a> {
    pub endpoint: &'static str,
    pub elapsed: Duration,
    pub error: Option<&'a XError>,
}

impl XRequestAnswered<'_> {
    pub fn emit(self) {
        metrics::histogram!(REQUEST_SECONDS, "endpoint" => self.endpoint)
            .record(self.elapsed.as_secs_f64());
        let outcome = self.error.map_or("ok", XError::label);
        metrics::counter!(REQUESTS, "endpoint" => self.endpoint, "outcome" => outcome).increment(1);
    }
}
