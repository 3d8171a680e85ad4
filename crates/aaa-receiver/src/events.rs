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
    /// Over the body limit and signed by X: kept whole as a dead letter,
    /// answered 200.
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
            // Kept whole as a dead letter: received.
            Outcome::TooLargeAuthentic => Coverage::Accepted,
            Outcome::BrokerUnavailable | Outcome::Shed => Coverage::Refused,
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
                message = "delivery signed by X over the body limit: kept whole as a dead letter, answered 200",
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

/// This run of the replica announced itself (its opening heartbeat was
/// written): from here on the watermark holds it to account.
pub struct LifeOpened {
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl InternalEvent for LifeOpened {
    fn emit(self) {
        tracing::info!(message = "heartbeats opened this replica's life", started_at = %self.started_at);
    }
}

/// The closing heartbeat after the drain: written, this life's last
/// stretch is proven; not written, it counts as a gap.
pub struct LifeClosed {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub written: bool,
}

impl InternalEvent for LifeClosed {
    fn emit(self) {
        if self.written {
            tracing::info!(message = "closing heartbeat written: the drain is accounted for", started_at = %self.started_at);
        } else {
            tracing::warn!(message = "closing heartbeat not written: this replica's last stretch will count as a gap", started_at = %self.started_at);
        }
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

pub const STREAM_DISCONNECTS: &str = "aaa_receiver_stream_disconnects_total";
pub const STREAM_LINES: &str = "aaa_receiver_stream_lines_total";
pub const STREAM_CONNECTED: &str = "aaa_receiver_stream_connected";
pub const STREAM_LOCKED_OUT: &str = "aaa_receiver_stream_locked_out";

/// Why a stream connection ended (`aaa_receiver_stream_disconnects_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// X answered the connection with an error.
    Refused,
    /// 429 TooManyConnections: the lock-out.
    TooManyConnections,
    Transport,
    /// No data or keep-alive for too long.
    Stalled,
    Closed,
    BrokerUnavailable,
}

impl Disconnect {
    pub const ALL: [Disconnect; 6] = [
        Disconnect::Refused,
        Disconnect::TooManyConnections,
        Disconnect::Transport,
        Disconnect::Stalled,
        Disconnect::Closed,
        Disconnect::BrokerUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disconnect::Refused => "refused",
            Disconnect::TooManyConnections => "too_many_connections",
            Disconnect::Transport => "transport",
            Disconnect::Stalled => "stalled",
            Disconnect::Closed => "closed",
            Disconnect::BrokerUnavailable => "broker_unavailable",
        }
    }
}

/// What became of a stream line (`aaa_receiver_stream_lines_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamLine {
    Produced,
    /// X's in-band `{"errors": [...]}`: logged, not an event.
    ErrorMessage,
    /// Over the size limit: dropped whole, as the webhook answers 413.
    Oversized,
}

impl StreamLine {
    pub const ALL: [StreamLine; 3] = [
        StreamLine::Produced,
        StreamLine::ErrorMessage,
        StreamLine::Oversized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamLine::Produced => "produced",
            StreamLine::ErrorMessage => "error_message",
            StreamLine::Oversized => "oversized",
        }
    }
}

pub struct StreamConnected {
    pub backfill_minutes: u32,
}

impl InternalEvent for StreamConnected {
    fn emit(self) {
        metrics::gauge!(STREAM_CONNECTED).set(1.0);
        tracing::info!(
            message = "activity stream connected",
            backfill_minutes = self.backfill_minutes
        );
    }
}

/// A connection ended; `reason` is `None` on shutdown (not counted).
pub struct StreamDisconnected {
    pub reason: Option<Disconnect>,
}

impl InternalEvent for StreamDisconnected {
    fn emit(self) {
        metrics::gauge!(STREAM_CONNECTED).set(0.0);
        if let Some(reason) = self.reason {
            metrics::counter!(STREAM_DISCONNECTS, "reason" => reason.as_str()).increment(1);
        }
    }
}

/// X refused the stream for too many connections: the reader stays away
/// for `wait`.
pub struct StreamLockOutBegan<'a> {
    pub reason: &'a dyn std::fmt::Display,
    pub wait: Duration,
}

impl InternalEvent for StreamLockOutBegan<'_> {
    fn emit(self) {
        tracing::error!(message = "X refuses the activity stream: too many connections of this app (at most 2, and an abruptly dropped one counts for 15 to 20 minutes); staying away for the lock-out", reason = %self.reason, retry_in_ms = self.wait.as_millis() as u64);
        metrics::gauge!(STREAM_LOCKED_OUT).set(1.0);
    }
}

/// The lock-out is over; the reader connects again.
pub struct StreamLockOutEnded;

impl InternalEvent for StreamLockOutEnded {
    fn emit(self) {
        metrics::gauge!(STREAM_LOCKED_OUT).set(0.0);
    }
}

pub struct StreamLinesDropped {
    pub lines: u64,
    pub limit: usize,
}

impl InternalEvent for StreamLinesDropped {
    fn emit(self) {
        tracing::error!(
            message = "stream line over the size limit dropped",
            limit = self.limit
        );
        metrics::counter!(STREAM_LINES, "outcome" => StreamLine::Oversized.as_str())
            .increment(self.lines);
    }
}

pub struct StreamErrorMessage<'a> {
    pub errors: &'a serde_json::Value,
}

impl InternalEvent for StreamErrorMessage<'_> {
    fn emit(self) {
        tracing::warn!(message = "X sent an error on the activity stream", errors = %self.errors);
        metrics::counter!(STREAM_LINES, "outcome" => StreamLine::ErrorMessage.as_str())
            .increment(1);
    }
}

pub struct StreamLineProduced;

impl InternalEvent for StreamLineProduced {
    fn emit(self) {
        metrics::counter!(STREAM_LINES, "outcome" => StreamLine::Produced.as_str()).increment(1);
    }
}

/// The stream's series at zero from the start.
pub fn register_stream() {
    for reason in Disconnect::ALL {
        metrics::counter!(STREAM_DISCONNECTS, "reason" => reason.as_str()).increment(0);
    }
    for outcome in StreamLine::ALL {
        metrics::counter!(STREAM_LINES, "outcome" => outcome.as_str()).increment(0);
    }
    metrics::gauge!(STREAM_CONNECTED).set(0.0);
    metrics::gauge!(STREAM_LOCKED_OUT).set(0.0);
}
