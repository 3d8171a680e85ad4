//! The public HTTP surface: one GET (CRC) and one POST (delivery) route per
//! configured webhook. Thin on purpose: verify, frame, produce, answer.
//!
//! Everything on this port is reachable by anyone on the internet, so every
//! request is bounded: in time (a total deadline, body included), in size
//! (bodies over the limit are never buffered), and in number (requests past
//! the concurrency limit are shed with 503, which X retries).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aaa_common::Clock;
use aaa_common::kafka::{control, headers};
use aaa_common::observe::InternalEvent;
use axum::body::{Body, HttpBody as _};
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use rdkafka::message::{Header, OwnedHeaders};
use serde::Deserialize;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::events::{
    CrcAnswered, DeliveryHandled, InFlight, Outcome, ProduceAcknowledged, RequestShed,
};
use crate::producer::{RawProducer, RecordSink};
use crate::webhooks::Webhook;

pub struct AppState<P = RawProducer> {
    pub producer: Arc<P>,
    pub topic: String,
    pub clock: Clock,
    pub coverage: Arc<crate::coverage::Coverage>,
    /// One permit per oversized body held at once (`max_oversized`).
    pub oversized_slots: Arc<tokio::sync::Semaphore>,
    pub limits: RequestLimits,
}

/// What one request may cost the receiver.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Largest body stored; larger ones get 413.
    pub max_body_bytes: usize,
    /// Up to this many bytes of an oversized body are still read whole: X's
    /// is kept as a dead letter; beyond, 413 at once.
    pub max_verified_bytes: u64,
    /// Oversized bodies held at once; one more gets 503.
    pub max_oversized: usize,
    /// How long a delivery's body may take to arrive in full; then 408.
    pub body_timeout: Duration,
    /// How long the broker's acknowledgement is awaited; then 503.
    pub produce_timeout: Duration,
    /// Requests handled at once, over every route; the rest get 503 at once.
    pub max_concurrent: usize,
}

impl RequestLimits {
    /// The deadline of last resort on every request. Longer than a
    /// delivery's own steps (body, then produce) together, so a handler is
    /// never dropped mid-produce, where its outcome would go unrecorded.
    pub fn backstop(&self) -> Duration {
        self.body_timeout + self.produce_timeout + Duration::from_secs(1)
    }
}

pub fn router<P: RecordSink>(state: Arc<AppState<P>>, webhooks: Vec<Webhook>) -> Router {
    let limits = state.limits;
    // One semaphore for every route: `Router::layer` wraps each route on its
    // own, and tower's plain concurrency limit would give each its own.
    let slots = GlobalConcurrencyLimitLayer::new(limits.max_concurrent.max(1));
    let mut app = Router::new();
    for webhook in webhooks {
        let webhook = Arc::new(webhook);
        let shed_state = state.clone();
        let shed_webhook = webhook.clone();
        let on_shed = move |method: Method, request_headers: HeaderMap, _: tower::BoxError| {
            let response = shed(&shed_state, &shed_webhook, &method, &request_headers);
            std::future::ready(response)
        };
        app = app.merge(
            Router::new()
                .route(&webhook.path, get(crc).post(deliver::<P>))
                .layer(
                    ServiceBuilder::new()
                        // Outermost: a shed request is answered, never queued.
                        .layer(HandleErrorLayer::new(on_shed))
                        .load_shed()
                        .layer(slots.clone())
                        // Inside the limit, so a request past its deadline
                        // frees its slot. The delivery handler keeps its own
                        // (counted) deadlines; this is the backstop.
                        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                            StatusCode::REQUEST_TIMEOUT,
                            limits.backstop(),
                        )),
                )
                .layer(Extension(webhook.clone())),
        );
    }
    app.with_state(state)
}

/// Answers a request turned away at the concurrency limit. A POST carrying
/// a signature shaped like X's may be X's delivery: it is recorded in the
/// heartbeat as refused, so its minute becomes a gap and is replayed.
fn shed<P>(
    state: &AppState<P>,
    webhook: &Webhook,
    method: &Method,
    request_headers: &HeaderMap,
) -> Response {
    RequestShed.emit();
    if method == Method::POST {
        let signature = request_headers
            .get(aaa_signing::SIGNATURE_HEADER)
            .map(|v| v.as_bytes());
        let outcome = if aaa_signing::is_well_formed_signature(signature) {
            Outcome::Shed
        } else {
            Outcome::ShedUnsigned
        };
        state.coverage.record(&webhook.id, outcome);
        DeliveryHandled {
            webhook: &webhook.id,
            request_id: "",
            outcome,
            detail: Some("concurrency limit reached"),
            bytes: 0,
            elapsed: Duration::ZERO,
        }
        .emit();
    }
    (StatusCode::SERVICE_UNAVAILABLE, "overloaded, retry").into_response()
}

#[derive(Deserialize)]
struct CrcQuery {
    crc_token: Option<String>,
}

async fn crc(
    Extension(webhook): Extension<Arc<Webhook>>,
    query: Result<Query<CrcQuery>, QueryRejection>,
) -> Response {
    let token = query
        .ok()
        .and_then(|Query(q)| q.crc_token)
        .unwrap_or_default();
    // Only tokens shaped like X's are signed: the answer is the same HMAC as
    // a delivery signature, so signing anything would forge deliveries.
    let answer = aaa_signing::crc_response_token(webhook.crc_secret(), &token);
    CrcAnswered {
        webhook: &webhook.id,
        refused: answer.as_ref().err(),
    }
    .emit();
    match answer {
        Ok(response_token) => {
            Json(serde_json::json!({ "response_token": response_token })).into_response()
        }
        Err(err) => (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    }
}

/// A request body as far as the receiver read it.
enum ReadBody {
    Complete(Bytes),
    /// Over the body limit, within the verified limit, read whole (holding
    /// one of the oversized slots until it is produced).
    Oversized {
        body: Bytes,
        slot: tokio::sync::OwnedSemaphorePermit,
    },
    /// Over a limit and not kept. `authentic`: the whole body was read and
    /// X signed it (every oversized slot was taken).
    TooLarge {
        size: u64,
        authentic: bool,
    },
    Failed(String),
}

/// Buffers up to `max_body_bytes`; past that, holds the body whole while
/// an oversized slot is free (else keeps only a running signature check),
/// up to `max_verified_bytes`.
async fn read_body(
    body: Body,
    limits: &RequestLimits,
    oversized_slots: &Arc<tokio::sync::Semaphore>,
    webhook: &Webhook,
    signature: Option<&[u8]>,
) -> ReadBody {
    // A declared length past what is worth reading is refused unread.
    let declared = body.size_hint().lower();
    if declared > limits.max_verified_bytes {
        return ReadBody::TooLarge {
            size: declared,
            authentic: false,
        };
    }
    let mut body = body;
    let mut buffered = BytesMut::new();
    let mut slot: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut unheld: Option<aaa_signing::SignedStream> = None;
    let mut size: u64 = 0;
    while let Some(frame) = body.frame().await {
        let chunk = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(chunk) => chunk,
                Err(_) => continue, // trailers carry nothing we read
            },
            Err(err) => return ReadBody::Failed(err.to_string()),
        };
        size += chunk.len() as u64;
        if size > limits.max_verified_bytes {
            return ReadBody::TooLarge {
                size,
                authentic: false,
            };
        }
        if let Some(signed) = &mut unheld {
            signed.update(&chunk);
            continue;
        }
        if slot.is_none() && buffered.len() + chunk.len() > limits.max_body_bytes {
            match oversized_slots.clone().try_acquire_owned() {
                Ok(permit) => slot = Some(permit),
                Err(_) => {
                    let mut signed = aaa_signing::SignedStream::new(&webhook.verify_secrets());
                    signed.update(&buffered);
                    signed.update(&chunk);
                    buffered = BytesMut::new();
                    unheld = Some(signed);
                    continue;
                }
            }
        }
        buffered.extend_from_slice(&chunk);
    }
    match (unheld, slot) {
        (Some(signed), _) => ReadBody::TooLarge {
            size,
            authentic: signed.verify(signature).is_ok(),
        },
        (None, Some(slot)) => ReadBody::Oversized {
            body: buffered.freeze(),
            slot,
        },
        (None, None) => ReadBody::Complete(buffered.freeze()),
    }
}

/// One delivery's answer: records its outcome in the heartbeat tally and
/// reports it, once.
struct Answer<P> {
    state: Arc<AppState<P>>,
    webhook: Arc<Webhook>,
    request_id: String,
    arrived: Instant,
}

impl<P> Answer<P> {
    fn done(&self, outcome: Outcome, detail: Option<&str>, bytes: usize) {
        self.state.coverage.record(&self.webhook.id, outcome);
        DeliveryHandled {
            webhook: &self.webhook.id,
            request_id: &self.request_id,
            outcome,
            detail,
            bytes,
            elapsed: self.arrived.elapsed(),
        }
        .emit();
    }
}

async fn deliver<P: RecordSink>(
    State(state): State<Arc<AppState<P>>>,
    Extension(webhook): Extension<Arc<Webhook>>,
    request_headers: HeaderMap,
    body: Body,
) -> Response {
    let _in_flight = InFlight::enter();
    let answer = Answer {
        state,
        webhook,
        request_id: uuid::Uuid::new_v4().to_string(),
        arrived: Instant::now(),
    };
    let (state, webhook) = (&answer.state, &answer.webhook);
    let signature = request_headers
        .get(aaa_signing::SIGNATURE_HEADER)
        .map(|v| v.as_bytes());

    let read = read_body(
        body,
        &state.limits,
        &state.oversized_slots,
        webhook,
        signature,
    );
    let Ok(read) = tokio::time::timeout(state.limits.body_timeout, read).await else {
        // X sends whole bodies at once: one still trickling is not X's.
        answer.done(
            Outcome::BadRequest,
            Some("body not complete within the body deadline"),
            0,
        );
        return (StatusCode::REQUEST_TIMEOUT, "request body too slow").into_response();
    };
    let (body, oversized) = match read {
        ReadBody::Complete(body) => (body, None),
        ReadBody::Oversized { body, slot } => (body, Some(slot)),
        ReadBody::Failed(reason) => {
            answer.done(Outcome::BadRequest, Some(&reason), 0);
            return (StatusCode::BAD_REQUEST, "request body could not be read").into_response();
        }
        ReadBody::TooLarge {
            size,
            authentic: false,
        } => {
            let detail = format!("{size} bytes, not signed by X or not read");
            answer.done(Outcome::TooLarge, Some(&detail), 0);
            return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
        }
        ReadBody::TooLarge {
            size,
            authentic: true,
        } => {
            // X's, but no memory to hold it now: X retries a 503.
            let detail = format!("{size} bytes signed by X; every oversized slot was taken");
            answer.done(Outcome::Shed, Some(&detail), 0);
            return unavailable();
        }
    };

    if let Err(err) = aaa_signing::verify(&webhook.verify_secrets(), signature, &body) {
        if oversized.is_some() {
            let detail = format!("{} bytes, not signed by X", body.len());
            answer.done(Outcome::TooLarge, Some(&detail), 0);
            return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
        }
        answer.done(Outcome::BadSignature, Some(err.as_label()), body.len());
        return (StatusCode::UNAUTHORIZED, "invalid signature").into_response();
    }
    // The CRC route signs token-shaped strings; such a "delivery" is one of
    // them replayed, never X's (X sends JSON objects).
    if aaa_signing::could_be_crc_token(&body) {
        answer.done(Outcome::Forged, Some("body is a CRC token"), body.len());
        return (StatusCode::UNAUTHORIZED, "invalid signature").into_response();
    }

    let record_headers = received_headers(state, webhook)
        .insert(Header {
            key: headers::REQUEST_ID,
            value: Some(answer.request_id.as_str()),
        })
        .insert(Header {
            key: headers::SIGNATURE,
            value: Some("ok"),
        });
    let produce = match oversized {
        // Kept whole, unread, as a dead letter: X's, too large to be
        // parsed here, and answered 200 (a refusal would be re-sent by
        // every replay of its window until the window expired).
        Some(slot) => Produce {
            key: webhook.id.clone(),
            headers: record_headers.insert(Header {
                key: headers::RECORD_TYPE,
                value: Some(control::OVERSIZED_BODY),
            }),
            body,
            oversized: Some(slot),
        },
        None => Produce {
            // Only the key is read from the body; bytes go to Kafka untouched.
            key: aaa_events::probe_partition_key(&body).unwrap_or_else(|| webhook.id.clone()),
            body,
            headers: record_headers,
            oversized: None,
        },
    };
    finish(answer, produce).await
}

/// What an authentic request leaves in Kafka: a delivery, or an oversized
/// body kept whole for a dead letter.
struct Produce {
    key: String,
    body: Bytes,
    headers: OwnedHeaders,
    /// The oversized slot the body holds until the broker answered.
    oversized: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Produces and records the outcome in a task of its own: when the peer
/// gives up first (X after 3 s, or the ingress), hyper drops the handler,
/// and a produce that then fails must still be recorded as a refusal (a
/// gap), one that succeeds as accepted.
async fn finish<P: RecordSink>(answer: Answer<P>, produce: Produce) -> Response {
    let task = tokio::spawn(async move { produce_and_record(&answer, produce).await });
    task.await.unwrap_or_else(|_| unavailable())
}

async fn produce_and_record<P: RecordSink>(answer: &Answer<P>, produce: Produce) -> Response {
    let (state, webhook) = (&answer.state, &answer.webhook);
    let Produce {
        key,
        body,
        headers,
        oversized,
    } = produce;
    let started = Instant::now();
    match state
        .producer
        .send(&state.topic, &key, &body, headers)
        .await
    {
        Ok(()) if oversized.is_some() => {
            let detail = format!(
                "{} bytes signed by X, over the body limit; kept whole as a dead letter",
                body.len()
            );
            answer.done(Outcome::TooLargeAuthentic, Some(&detail), body.len());
            StatusCode::OK.into_response()
        }
        Ok(()) => {
            ProduceAcknowledged {
                webhook: &webhook.id,
                elapsed: started.elapsed(),
            }
            .emit();
            answer.done(Outcome::Ok, None, body.len());
            StatusCode::OK.into_response()
        }
        Err(err) => {
            answer.done(
                Outcome::BrokerUnavailable,
                Some(&err.to_string()),
                body.len(),
            );
            unavailable()
        }
    }
}

/// The headers every record from a webhook carries: which, and when.
fn received_headers<P>(state: &AppState<P>, webhook: &Webhook) -> OwnedHeaders {
    let received_at_ms = state.clock.now().timestamp_millis().to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: headers::WEBHOOK_ID,
            value: Some(webhook.id.as_str()),
        })
        .insert(Header {
            key: headers::RECEIVED_AT_MS,
            value: Some(received_at_ms.as_str()),
        })
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily unavailable, retry",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backstop must never cut a delivery short between its own
    /// deadlines: dropped mid-produce, its outcome would go unrecorded
    /// (no coverage, no count) while the broker may still take it.
    #[test]
    fn the_backstop_outlasts_a_deliverys_own_deadlines() {
        for (body_ms, produce_ms) in [(2_000, 2_500), (10_000, 2_500), (1, 1), (30_000, 60_000)] {
            let limits = RequestLimits {
                max_body_bytes: 1 << 20,
                max_verified_bytes: 8 << 20,
                max_oversized: 2,
                body_timeout: Duration::from_millis(body_ms),
                produce_timeout: Duration::from_millis(produce_ms),
                max_concurrent: 128,
            };
            assert!(
                limits.backstop() > limits.body_timeout + limits.produce_timeout,
                "{limits:?}"
            );
        }
    }
}
