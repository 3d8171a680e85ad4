//! Everything the receiver reports: each type logs and counts in one place.

use std::time::Duration;

use aaa_common::observe::InternalEvent;

pub const REQUESTS: &str = "aaa_receiver_requests_total";
pub const PRODUCE_SECONDS: &str = "aaa_receiver_produce_duration_seconds";
pub const REQUEST_SECONDS: &str = "aaa_receiver_request_duration_seconds";
pub const IN_FLIGHT: &str = "aaa_receiver_in_flight_requests";
pub const BODY_BYTES: &str = "aaa_receiver_body_bytes_total";
pub const PRODUCER_REBUILDS: &str = "aaa_receiver_producer_rebuilds_total";

/// How a request ended; the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    BadSignature,
    TooLarge,
    BadRequest,
    BrokerUnavailable,
}

impl Outcome {
    pub fn as_label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadSignature => "bad_signature",
            Outcome::TooLarge => "too_large",
            Outcome::BadRequest => "bad_request",
            Outcome::BrokerUnavailable => "broker_unavailable",
        }
    }
}

pub struct DeliveryHandled<'a> {
    pub webhook: &'a str,
    pub request_id: &'a str,
    pub outcome: Outcome,
    pub detail: Option<&'a str>,
    pub bytes: usize,
    /// Time from the request's arrival to this answer.
    pub elapsed: Duration,
}

impl InternalEvent for DeliveryHandled<'_> {
    fn emit(self) {
        let outcome = self.outcome.as_label();
        match self.outcome {
            Outcome::Ok => tracing::debug!(
                message = "delivery accepted",
                webhook = self.webhook,
                request_id = self.request_id,
                bytes = self.bytes
            ),
            Outcome::BrokerUnavailable => tracing::warn!(
                message = "delivery not acknowledged by the broker: answered 503 so X retries",
                webhook = self.webhook,
                request_id = self.request_id,
                detail = self.detail.unwrap_or_default()
            ),
            _ => tracing::warn!(
                message = "delivery rejected",
                webhook = self.webhook,
                request_id = self.request_id,
                outcome,
                detail = self.detail.unwrap_or_default()
            ),
        }
        metrics::counter!(REQUESTS, "webhook" => self.webhook.to_owned(), "route" => "delivery", "outcome" => outcome)
            .increment(1);
        metrics::histogram!(REQUEST_SECONDS, "webhook" => self.webhook.to_owned(), "outcome" => outcome)
            .record(self.elapsed.as_secs_f64());
        if self.outcome == Outcome::Ok {
            metrics::counter!(BODY_BYTES, "webhook" => self.webhook.to_owned())
                .increment(self.bytes as u64);
        }
    }
}

pub struct ProduceAcknowledged<'a> {
    pub webhook: &'a str,
    pub elapsed: Duration,
}

impl InternalEvent for ProduceAcknowledged<'_> {
    fn emit(self) {
        metrics::histogram!(PRODUCE_SECONDS, "webhook" => self.webhook.to_owned())
            .record(self.elapsed.as_secs_f64());
    }
}

pub struct CrcAnswered<'a> {
    pub webhook: &'a str,
    pub ok: bool,
}

impl InternalEvent for CrcAnswered<'_> {
    fn emit(self) {
        let outcome = if self.ok { "ok" } else { "bad_request" };
        if self.ok {
            tracing::info!(message = "answered CRC challenge", webhook = self.webhook);
        } else {
            tracing::warn!(
                message = "CRC request without crc_token",
                webhook = self.webhook
            );
        }
        metrics::counter!(REQUESTS, "webhook" => self.webhook.to_owned(), "route" => "crc", "outcome" => outcome)
            .increment(1);
    }
}

pub struct ProducerRebuilt<'a> {
    pub code: String,
    pub reason: &'a str,
}

impl InternalEvent for ProducerRebuilt<'_> {
    fn emit(self) {
        tracing::error!(
            message = "producer hit a fatal error and was rebuilt",
            code = %self.code,
            reason = self.reason
        );
        metrics::counter!(PRODUCER_REBUILDS).increment(1);
    }
}

/// Decrements the in-flight gauge however the request ends.
pub struct InFlight;

impl InFlight {
    pub fn enter() -> Self {
        metrics::gauge!(IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(IN_FLIGHT).decrement(1.0);
    }
}

/// Every outcome of every webhook at zero from the start (an absent series is not a zero).
pub fn register(webhooks: &[String]) {
    for webhook in webhooks {
        for outcome in [
            Outcome::Ok,
            Outcome::BadSignature,
            Outcome::TooLarge,
            Outcome::BadRequest,
            Outcome::BrokerUnavailable,
        ] {
            metrics::counter!(REQUESTS, "webhook" => webhook.clone(), "route" => "delivery", "outcome" => outcome.as_label()).increment(0);
        }
        metrics::counter!(BODY_BYTES, "webhook" => webhook.clone()).increment(0);
    }
    metrics::counter!(PRODUCER_REBUILDS).increment(0);
    metrics::gauge!(IN_FLIGHT).set(0.0);
}
