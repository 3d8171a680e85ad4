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
    /// Validly signed, but a string the CRC route would sign: a replayed
    /// CRC answer, not a delivery.
    Forged,
    /// Over the body limit and not shown to be X's.
    TooLarge,
    /// Over the body limit and signed by X: its trace is a dead letter.
    TooLargeAuthentic,
    BadRequest,
    BrokerUnavailable,
    /// Turned away unread at the concurrency limit, with a signature header
    /// shaped like X's: it may have been X's delivery, so its minute is
    /// suspect (a gap). An outsider holding every slot must not make X's
    /// deliveries vanish unseen.
    Shed,
    /// Turned away unread at the concurrency limit, without such a header:
    /// not X's.
    ShedUnsigned,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::BadSignature,
        Outcome::Forged,
        Outcome::TooLarge,
        Outcome::TooLargeAuthentic,
        Outcome::BadRequest,
        Outcome::BrokerUnavailable,
        Outcome::Shed,
        Outcome::ShedUnsigned,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadSignature => "bad_signature",
            Outcome::Forged => "forged",
            Outcome::TooLarge => "too_large",
            Outcome::TooLargeAuthentic => "too_large_authentic",
            Outcome::BadRequest => "bad_request",
            Outcome::BrokerUnavailable => "broker_unavailable",
            Outcome::Shed => "shed",
            Outcome::ShedUnsigned => "shed_unsigned",
        }
    }

    /// What this outcome tells the watermark. Only a delivery X sent that
    /// was not kept may open a gap (and so a replay): anyone on the internet
    /// can cause the other refusals, and a replay per scanner hit would
    /// spend X's replay budget.
    pub fn coverage(self) -> Coverage {
        match self {
            Outcome::Ok => Coverage::Accepted,
            Outcome::BrokerUnavailable | Outcome::TooLargeAuthentic | Outcome::Shed => {
                Coverage::Refused
            }
            Outcome::BadSignature
            | Outcome::Forged
            | Outcome::TooLarge
            | Outcome::BadRequest
            | Outcome::ShedUnsigned => Coverage::NotFromX,
        }
    }
}

/// How an outcome counts in this replica's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Accepted,
    Refused,
    /// Counted in metrics only.
    NotFromX,
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
    // Refusals anyone on the internet can cause (bad signatures, junk,
    // shed requests) log at debug only: a warn line each would be a log
    // flood an outsider controls. Every one is counted, and those that may
    // be X's (`Coverage::Refused`) also reach the heartbeats.
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
            Outcome::TooLargeAuthentic => tracing::warn!(
                message =
                    "delivery signed by X over the body limit: its trace is kept as a dead letter",
                webhook = self.webhook,
                request_id = self.request_id,
                detail = self.detail.unwrap_or_default()
            ),
            _ => tracing::debug!(
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
    /// Why the token was not answered; `None`: answered.
    pub refused: Option<&'a aaa_signing::CrcTokenError>,
}

/// CRC outcomes: `ok`, `bad_request` (no token), `bad_token` (not X's shape).
const CRC_OUTCOMES: [&str; 3] = ["ok", "bad_request", "bad_token"];

impl InternalEvent for CrcAnswered<'_> {
    // Logged at debug only: anyone can send CRC requests, and one log line
    // each was a flood an outsider could cause (45 000 lines/s in the
    // receiver benchmark, its pipe writes visible in the profile). Every one is
    // counted (`aaa_receiver_requests_total{route="crc"}`).
    fn emit(self) {
        let outcome = match self.refused {
            None => {
                tracing::debug!(message = "answered CRC challenge", webhook = self.webhook);
                CRC_OUTCOMES[0]
            }
            Some(reason) => {
                tracing::debug!(
                    message = "CRC request refused: the token is not shaped like X's",
                    webhook = self.webhook,
                    reason = reason.as_label()
                );
                match reason {
                    aaa_signing::CrcTokenError::Missing => CRC_OUTCOMES[1],
                    _ => CRC_OUTCOMES[2],
                }
            }
        };
        metrics::counter!(REQUESTS, "webhook" => self.webhook.to_owned(), "route" => "crc", "outcome" => outcome)
            .increment(1);
    }
}

/// A request turned away because the concurrency limit was reached (every
/// route; a shed delivery is also a [`DeliveryHandled`]).
pub struct RequestShed;

pub const SHED: &str = "aaa_receiver_requests_shed_total";

impl InternalEvent for RequestShed {
    // Debug only: whoever fills the slots also chooses how many lines a
    // warn per request would write. Counted, and alerted on when
    // deliveries that may be X's are shed (`AaaReceiverShedding`).
    fn emit(self) {
        tracing::debug!(message = "request shed: concurrency limit reached, answered 503");
        metrics::counter!(SHED).increment(1);
    }
}

pub const HEARTBEAT_FAILURES: &str = "aaa_receiver_heartbeat_failures_total";

/// A heartbeat the broker did not take: its interval will count as a gap.
pub struct HeartbeatNotWritten<'a> {
    pub webhook: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for HeartbeatNotWritten<'_> {
    fn emit(self) {
        tracing::warn!(message = "heartbeat not written: this interval will count as a gap", webhook = %self.webhook, error = %self.error);
        metrics::counter!(HEARTBEAT_FAILURES).increment(1);
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
        for outcome in Outcome::ALL {
            metrics::counter!(REQUESTS, "webhook" => webhook.clone(), "route" => "delivery", "outcome" => outcome.as_label()).increment(0);
        }
        for outcome in CRC_OUTCOMES {
            metrics::counter!(REQUESTS, "webhook" => webhook.clone(), "route" => "crc", "outcome" => outcome).increment(0);
        }
        metrics::counter!(BODY_BYTES, "webhook" => webhook.clone()).increment(0);
    }
    metrics::counter!(PRODUCER_REBUILDS).increment(0);
    metrics::counter!(SHED).increment(0);
    metrics::counter!(HEARTBEAT_FAILURES).increment(0);
    metrics::gauge!(IN_FLIGHT).set(0.0);
}
