//! The public HTTP surface: one GET (CRC) and one POST (delivery) route per
//! configured webhook. Thin on purpose: verify, frame, produce, answer.

use std::sync::Arc;
use std::time::Instant;

use aaa_common::Clock;
use aaa_common::kafka::headers;
use aaa_common::observe::InternalEvent;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};
use serde::Deserialize;

use crate::events::{CrcAnswered, DeliveryHandled, InFlight, Outcome, ProduceAcknowledged};
use crate::producer::RawProducer;
use crate::webhooks::Webhook;

pub struct AppState {
    pub producer: Arc<RawProducer>,
    pub topic: String,
    pub clock: Clock,
    pub coverage: Arc<crate::coverage::Coverage>,
}

pub fn router(
    state: Arc<AppState>,
    webhooks: Vec<Webhook>,
    max_body_bytes: usize,
    body_timeout: std::time::Duration,
) -> Router {
    let mut app = Router::new();
    for webhook in webhooks {
        let path = webhook.path.clone();
        app = app.merge(
            Router::new()
                .route(&path, get(crc).post(deliver))
                .layer(Extension(Arc::new(webhook))),
        );
    }
    app.layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .with_state(state)
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
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        CrcAnswered {
            webhook: &webhook.id,
            ok: false,
        }
        .emit();
        return (StatusCode::BAD_REQUEST, "missing crc_token").into_response();
    };
    CrcAnswered {
        webhook: &webhook.id,
        ok: true,
    }
    .emit();
    let response_token = aaa_signing::crc_response_token(webhook.crc_secret(), &token);
    Json(serde_json::json!({ "response_token": response_token })).into_response()
}

async fn deliver(
    State(state): State<Arc<AppState>>,
    Extension(webhook): Extension<Arc<Webhook>>,
    request_headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let _in_flight = InFlight::enter();
    let arrived = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let done = |outcome: Outcome, detail: Option<&str>, bytes: usize| {
        state.coverage.record(&webhook.id, outcome);
        DeliveryHandled {
            webhook: &webhook.id,
            request_id: &request_id,
            outcome,
            detail,
            bytes,
            elapsed: arrived.elapsed(),
        }
        .emit();
    };

    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let outcome = if status == StatusCode::PAYLOAD_TOO_LARGE {
                Outcome::TooLarge
            } else {
                Outcome::BadRequest
            };
            done(outcome, Some(&rejection.body_text()), 0);
            return (status, rejection.body_text()).into_response();
        }
    };

    let signature = request_headers
        .get(aaa_signing::SIGNATURE_HEADER)
        .map(|v| v.as_bytes());
    if let Err(err) = aaa_signing::verify(&webhook.verify_secrets(), signature, &body) {
        done(Outcome::BadSignature, Some(err.as_label()), body.len());
        return (StatusCode::UNAUTHORIZED, "invalid signature").into_response();
    }

    // Only the key is read from the body; bytes go to Kafka untouched.
    let key = aaa_events::probe_partition_key(&body).unwrap_or_else(|| webhook.id.clone());
    let received_at_ms = state.clock.now().timestamp_millis().to_string();
    let record_headers = OwnedHeaders::new()
        .insert(Header {
            key: headers::WEBHOOK_ID,
            value: Some(webhook.id.as_str()),
        })
        .insert(Header {
            key: headers::RECEIVED_AT_MS,
            value: Some(received_at_ms.as_str()),
        })
        .insert(Header {
            key: headers::REQUEST_ID,
            value: Some(request_id.as_str()),
        })
        .insert(Header {
            key: headers::SIGNATURE,
            value: Some("ok"),
        });

    let started = Instant::now();
    match state
        .producer
        .send(&state.topic, &key, &body, record_headers)
        .await
    {
        Ok(()) => {
            ProduceAcknowledged {
                webhook: &webhook.id,
                elapsed: started.elapsed(),
            }
            .emit();
            done(Outcome::Ok, None, body.len());
            StatusCode::OK.into_response()
        }
        Err(err) => {
            done(
                Outcome::BrokerUnavailable,
                Some(&err.to_string()),
                body.len(),
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily unavailable, retry",
            )
                .into_response()
        }
    }
}
