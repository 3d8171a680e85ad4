//! The X Activity API's persistent stream (`GET /2/activity/stream`) as a
//! second input: every event line goes to the same topic as webhook
//! deliveries, keyed by account, under the pseudo webhook id `stream`.
//!
//! A stream cannot answer 503: X does not retry on it. So when the broker
//! does not acknowledge a line, the connection is dropped, and the reconnect
//! asks X for `backfill_minutes` (at most 5) of what it sent meanwhile;
//! duplicates are absorbed downstream by natural key. A silent connection
//! (no keep-alive for `stall`) is treated as dead. Reconnects back off
//! exponentially with jitter, up to a minute.

use std::sync::Arc;
use std::time::Duration;

use aaa_common::Clock;
use aaa_common::kafka::headers;
use aaa_common::observe::InternalEvent;
use rdkafka::message::{Header, OwnedHeaders};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::events::{
    Disconnect, StreamConnected, StreamDisconnected, StreamErrorMessage, StreamLineProduced,
    StreamLinesDropped, StreamLockOutBegan, StreamLockOutEnded,
};
use crate::producer::{RawProducer, RecordSink};

/// The `aaa-webhook-id` header of records read from the stream.
pub const STREAM_ID: &str = "stream";
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How to reach and read the stream.
pub struct StreamSource {
    pub url: String,
    pub bearer: SecretString,
    /// Asked for on every reconnect (X allows 0 to 5).
    pub backfill_minutes: u8,
    /// No bytes (not even a keep-alive) for this long: reconnect.
    pub stall: Duration,
    /// How long to stay away after a 429 that does not say.
    pub lockout: Duration,
    /// Longest line accepted (the webhook body limit).
    pub max_line_bytes: usize,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("X answered {status}: {body}")]
    Refused { status: u16, body: String },
    /// 429: X counts too many connections of this app (2 at most, and one
    /// that dropped abruptly keeps counting for 15 to 20 minutes).
    #[error("X refused the connection (429 TooManyConnections): {body}")]
    LockedOut {
        body: String,
        /// Until when, when X said (`x-rate-limit-reset`, X's clock).
        reset: Option<chrono::DateTime<chrono::Utc>>,
    },
    #[error("transport: {0}")]
    Transport(String),
    #[error("no data or keep-alive for {0:?}")]
    Stalled(Duration),
    #[error("X closed the stream")]
    Closed,
    #[error("broker did not acknowledge: {0}")]
    Broker(String),
    #[error("shutting down")]
    Shutdown,
}

impl Ended {
    /// Why, as counted; `None` for a shutdown (no disconnect).
    fn reason(&self) -> Option<Disconnect> {
        Some(match self {
            Ended::Refused { .. } => Disconnect::Refused,
            Ended::LockedOut { .. } => Disconnect::TooManyConnections,
            Ended::Transport(_) => Disconnect::Transport,
            Ended::Stalled(_) => Disconnect::Stalled,
            Ended::Closed => Disconnect::Closed,
            Ended::Broker(_) => Disconnect::BrokerUnavailable,
            Ended::Shutdown => return None,
        })
    }
}

/// Reads the stream until `shutdown`, reconnecting forever.
pub async fn run(
    source: StreamSource,
    producer: Arc<RawProducer>,
    topic: String,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(message = "cannot build the stream's HTTP client; stream input off", error = %error);
            return;
        }
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        // Every connection asks for what may have been missed, the first one
        // too: a restarted receiver is a reconnect from X's side, and what
        // comes twice is absorbed by natural key.
        let backfill = source.backfill_minutes;
        let (ended, delivered) = connection(
            &http, &source, backfill, &producer, &topic, clock, &shutdown,
        )
        .await;
        StreamDisconnected {
            reason: ended.reason(),
        }
        .emit();
        if matches!(ended, Ended::Shutdown) {
            return;
        }
        if delivered {
            backoff = Duration::from_secs(1);
        }
        let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
        let wait = match &ended {
            // Each attempt during a lock-out is refused again and may
            // extend it: stay away for the whole of it, once.
            Ended::LockedOut { reset, .. } => {
                let wait = lockout_wait(*reset, source.lockout, clock);
                StreamLockOutBegan {
                    reason: &ended,
                    wait,
                }
                .emit();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                StreamLockOutEnded.emit();
                continue;
            }
            _ => backoff + jitter,
        };
        tracing::warn!(message = "activity stream disconnected; reconnecting with backfill", reason = %ended, retry_in_ms = wait.as_millis() as u64, backfill_minutes = source.backfill_minutes);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How long a lock-out lasts: until X's `x-rate-limit-reset` when it gave
/// one (in real time, on the receiver's clock), else `configured`.
fn lockout_wait(
    reset: Option<chrono::DateTime<chrono::Utc>>,
    configured: Duration,
    clock: Clock,
) -> Duration {
    reset
        .and_then(|reset| (reset - clock.now()).to_std().ok())
        .map(|simulated| clock.real_duration(simulated))
        .filter(|wait| !wait.is_zero())
        .unwrap_or(configured)
}

/// One connection; returns why it ended and whether it delivered anything.
async fn connection(
    http: &reqwest::Client,
    source: &StreamSource,
    backfill: u8,
    producer: &RawProducer,
    topic: &str,
    clock: Clock,
    shutdown: &CancellationToken,
) -> (Ended, bool) {
    let mut request = http
        .get(&source.url)
        .bearer_auth(source.bearer.expose_secret());
    if backfill > 0 {
        request = request.query(&[("backfill_minutes", backfill.to_string())]);
    }
    let response = tokio::select! {
        _ = shutdown.cancelled() => return (Ended::Shutdown, false),
        response = request.send() => response,
    };
    let mut response = match response {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => {
            let status = response.status().as_u16();
            let reset = response
                .headers()
                .get("x-rate-limit-reset")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
                .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0));
            let body = response.text().await.unwrap_or_default();
            if status == 429 {
                return (Ended::LockedOut { body, reset }, false);
            }
            return (Ended::Refused { status, body }, false);
        }
        Err(error) => return (Ended::Transport(error.to_string()), false),
    };
    StreamConnected {
        backfill_minutes: u32::from(backfill),
    }
    .emit();
    let mut lines = LineSplitter::new(source.max_line_bytes);
    let mut delivered = false;
    loop {
        let chunk = tokio::select! {
            _ = shutdown.cancelled() => return (Ended::Shutdown, delivered),
            chunk = tokio::time::timeout(source.stall, response.chunk()) => chunk,
        };
        let bytes = match chunk {
            Err(_) => return (Ended::Stalled(source.stall), delivered),
            Ok(Err(error)) => return (Ended::Transport(error.to_string()), delivered),
            Ok(Ok(None)) => return (Ended::Closed, delivered),
            Ok(Ok(Some(bytes))) => bytes,
        };
        let (complete, oversized) = lines.push(&bytes);
        if oversized > 0 {
            // Dropped whole, as the webhook answers 413.
            StreamLinesDropped {
                lines: oversized,
                limit: source.max_line_bytes,
            }
            .emit();
        }
        for line in complete {
            if let Err(error) = produce(&line, producer, topic, clock).await {
                return (Ended::Broker(error), delivered);
            }
            delivered = true;
        }
    }
}

/// Splits the stream's bytes into event lines (`\n` or `\r\n`), skipping
/// blank keep-alives and dropping any line longer than the limit whole.
struct LineSplitter {
    buffer: Vec<u8>,
    max: usize,
    /// Inside a line that went over the limit: skip to its end.
    discarding: bool,
}

impl LineSplitter {
    fn new(max: usize) -> LineSplitter {
        LineSplitter {
            buffer: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// The complete lines `bytes` finished, and how many lines were dropped
    /// for their size.
    fn push(&mut self, bytes: &[u8]) -> (Vec<Vec<u8>>, u64) {
        let mut complete = Vec::new();
        let mut oversized = 0;
        for part in bytes.split_inclusive(|b| *b == b'\n') {
            let ends = part.last() == Some(&b'\n');
            if !self.discarding {
                self.buffer.extend_from_slice(part);
                if self.buffer.len() > self.max + 2 {
                    self.buffer.clear();
                    self.discarding = true;
                    oversized += 1;
                }
            }
            if ends {
                if !std::mem::take(&mut self.discarding) {
                    let line = self.buffer.trim_ascii();
                    if !line.is_empty() {
                        complete.push(line.to_vec());
                    }
                }
                self.buffer.clear();
            }
        }
        (complete, oversized)
    }
}

async fn produce(
    line: &[u8],
    producer: &RawProducer,
    topic: &str,
    clock: Clock,
) -> Result<(), String> {
    // In-band problems ({"errors": [...]} without data) are X talking, not events.
    if let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(line)
        && object.contains_key("errors")
        && !object.contains_key("data")
    {
        StreamErrorMessage {
            errors: &object["errors"],
        }
        .emit();
        return Ok(());
    }
    let key = aaa_events::probe_partition_key(line).unwrap_or_else(|| STREAM_ID.to_owned());
    let received_at_ms = clock.now().timestamp_millis().to_string();
    let record_headers = OwnedHeaders::new()
        .insert(Header {
            key: headers::WEBHOOK_ID,
            value: Some(STREAM_ID),
        })
        .insert(Header {
            key: headers::RECEIVED_AT_MS,
            value: Some(received_at_ms.as_str()),
        });
    producer
        .send(topic, &key, line, record_headers)
        .await
        .map_err(|e| e.to_string())?;
    StreamLineProduced.emit();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{LineSplitter, lockout_wait};
    use std::time::Duration;

    #[test]
    fn a_lockout_lasts_until_xs_reset_else_the_configured_time() {
        let real_epoch = chrono::Utc::now();
        let clock = aaa_common::Clock::Scaled {
            real_epoch,
            sim_epoch: real_epoch,
            speed: 60.0,
        };
        let configured = Duration::from_secs(1200);
        // Ten simulated minutes ahead: ten real seconds at 60x.
        let reset = clock.now() + chrono::TimeDelta::minutes(10);
        let wait = lockout_wait(Some(reset), configured, clock);
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert_eq!(lockout_wait(None, configured, clock), configured);
        let past = clock.now() - chrono::TimeDelta::minutes(1);
        assert_eq!(lockout_wait(Some(past), configured, clock), configured);
    }

    #[test]
    fn lines_across_chunks_keep_alives_and_both_line_ends() {
        let mut lines = LineSplitter::new(100);
        let (done, _) = lines.push(b"{\"data\":1}\r\n\r\n{\"da");
        assert_eq!(done, vec![b"{\"data\":1}".to_vec()]);
        let (done, _) = lines.push(b"ta\":2}\n\n");
        assert_eq!(done, vec![b"{\"data\":2}".to_vec()]);
        assert_eq!(lines.push(b"\r\n"), (vec![], 0));
    }

    #[test]
    fn a_line_over_the_limit_is_dropped_whole_and_the_next_one_kept() {
        let mut lines = LineSplitter::new(8);
        let (done, oversized) = lines.push(b"0123456789ab");
        assert_eq!((done.len(), oversized), (0, 1));
        let (done, oversized) = lines.push(b"cdef\r\nok\r\n");
        assert_eq!((done, oversized), (vec![b"ok".to_vec()], 0));
        let (done, oversized) = lines.push(b"12345678\r\n");
        assert_eq!(
            (done, oversized),
            (vec![b"12345678".to_vec()], 0),
            "exactly the limit fits"
        );
    }
}
