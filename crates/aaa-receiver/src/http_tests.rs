//! The router in process (`tower::ServiceExt::oneshot`), with a record sink
//! in memory in place of the broker: what X gets answered, and what reaches
//! Kafka, for each kind of request. The same paths against a real broker
//! are in tests/e2e.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aaa_common::Clock;
use aaa_common::kafka::{control, headers};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use rdkafka::message::{Headers, OwnedHeaders};
use secrecy::SecretString;
use tower::ServiceExt;

use crate::coverage::Coverage;
use crate::http::{AppState, RequestLimits, router};
use crate::producer::{ProduceError, RecordSink};
use crate::webhooks::Webhook;

const SECRET: &str = "consumer-secret";
const PATH: &str = "/webhooks/x";

/// One record as the broker would have taken it.
#[derive(Debug, Clone)]
struct Record {
    key: String,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Takes every record, or refuses every one (a broker that is down).
#[derive(Default)]
struct MemorySink {
    refuse: bool,
    records: Mutex<Vec<Record>>,
}

impl RecordSink for MemorySink {
    async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        record_headers: OwnedHeaders,
    ) -> Result<(), ProduceError> {
        assert_eq!(topic, "aaa.raw");
        if self.refuse {
            return Err(ProduceError::Timeout(Duration::from_millis(1)));
        }
        let headers = record_headers
            .iter()
            .map(|h| {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                (h.key.to_owned(), value.unwrap_or_default())
            })
            .collect();
        self.records.lock().expect("not poisoned").push(Record {
            key: key.to_owned(),
            payload: payload.to_vec(),
            headers,
        });
        Ok(())
    }
}

struct Receiver {
    sink: Arc<MemorySink>,
    coverage: Arc<Coverage>,
    app: axum::Router,
}

impl Receiver {
    fn with(sink: MemorySink) -> Receiver {
        let sink = Arc::new(sink);
        let coverage = Arc::new(Coverage::new("r1".into(), ["w1".to_owned()]));
        let state = Arc::new(AppState {
            producer: sink.clone(),
            topic: "aaa.raw".into(),
            clock: Clock::Wall,
            coverage: coverage.clone(),
            limits: RequestLimits {
                max_body_bytes: 1024,
                max_verified_bytes: 4096,
                body_timeout: Duration::from_secs(2),
                produce_timeout: Duration::from_secs(2),
                max_concurrent: 8,
            },
        });
        let webhook = Webhook::new("w1".into(), PATH.into(), vec![SecretString::from(SECRET)])
            .expect("a webhook");
        Receiver {
            sink,
            coverage,
            app: router(state, vec![webhook]),
        }
    }

    async fn post(&self, body: &[u8], signature: Option<String>) -> StatusCode {
        let mut request = Request::post(PATH).header("content-type", "application/json");
        if let Some(signature) = signature {
            request = request.header(aaa_signing::SIGNATURE_HEADER, signature);
        }
        let request = request.body(Body::from(body.to_vec())).expect("a request");
        self.app
            .clone()
            .oneshot(request)
            .await
            .expect("an answer")
            .status()
    }

    fn records(&self) -> Vec<Record> {
        self.sink.records.lock().expect("not poisoned").clone()
    }

    /// (accepted, refused) in this interval's heartbeat.
    fn heartbeat(&self) -> (u64, u64) {
        let now = chrono::Utc::now();
        let beats = self.coverage.take(now, now);
        (beats[0].accepted, beats[0].refused)
    }
}

fn signed(body: &[u8]) -> Option<String> {
    Some(aaa_signing::sign(SECRET.as_bytes(), body))
}

#[tokio::test]
async fn a_crc_challenge_is_answered_with_the_signed_token() {
    let receiver = Receiver::with(MemorySink::default());
    let token = "abcdefghijklmnopqrstuvwxyz0123456789";
    let request = Request::get(format!("{PATH}?crc_token={token}"))
        .body(Body::empty())
        .expect("a request");
    let response = receiver
        .app
        .clone()
        .oneshot(request)
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .expect("a body");
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let expected = aaa_signing::crc_response_token(SECRET.as_bytes(), token).expect("X's shape");
    assert_eq!(answer["response_token"], expected.as_str());
}

#[tokio::test]
async fn a_signed_delivery_is_answered_ok_only_once_the_broker_took_it_untouched() {
    let receiver = Receiver::with(MemorySink::default());
    let body = br#"{"for_user_id":"123","tweet_create_events":[{"id_str":"1","n":1e2}]}"#;
    assert_eq!(receiver.post(body, signed(body)).await, StatusCode::OK);
    let records = receiver.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, body, "bytes as X sent them");
    assert_eq!(records[0].key, "123", "keyed by the account");
    assert_eq!(records[0].headers[headers::WEBHOOK_ID], "w1");
    assert_eq!(records[0].headers[headers::SIGNATURE], "ok");
    assert!(!records[0].headers[headers::REQUEST_ID].is_empty());
    assert!(
        records[0].headers[headers::RECEIVED_AT_MS]
            .parse::<i64>()
            .is_ok()
    );
    assert_eq!(receiver.heartbeat(), (1, 0));
}

#[tokio::test]
async fn a_delivery_the_broker_did_not_take_is_answered_503_and_counted_as_refused() {
    let receiver = Receiver::with(MemorySink {
        refuse: true,
        ..MemorySink::default()
    });
    let body = br#"{"for_user_id":"123","favorite_events":[]}"#;
    assert_eq!(
        receiver.post(body, signed(body)).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "X retries a 503"
    );
    assert_eq!(receiver.heartbeat(), (0, 1), "its minute becomes a gap");
}

#[tokio::test]
async fn forged_or_unsigned_deliveries_are_refused_and_never_produced() {
    let receiver = Receiver::with(MemorySink::default());
    let body = br#"{"for_user_id":"123","follow_events":[]}"#;
    let wrong = Some(aaa_signing::sign(b"another-secret", body));
    assert_eq!(receiver.post(body, wrong).await, StatusCode::UNAUTHORIZED);
    assert_eq!(receiver.post(body, None).await, StatusCode::UNAUTHORIZED);
    // A CRC answer replayed as a delivery: signed, but never X's.
    let token = b"abcdefghijklmnopqrstuvwxyz0123456789";
    assert_eq!(
        receiver.post(token, signed(token)).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(receiver.records().is_empty());
    assert_eq!(receiver.heartbeat(), (0, 0), "not X's: no gap, no replay");
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_only_xs_leaves_a_trace() {
    let receiver = Receiver::with(MemorySink::default());
    let body = format!(r#"{{"for_user_id":"123","pad":"{}"}}"#, "x".repeat(2000));
    let body = body.as_bytes();
    assert_eq!(
        receiver.post(body, None).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert!(
        receiver.records().is_empty(),
        "an unsigned one leaves nothing"
    );
    assert_eq!(
        receiver.post(body, signed(body)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let records = receiver.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].headers[headers::RECORD_TYPE], control::OVERSIZED);
    let trace: serde_json::Value = serde_json::from_slice(&records[0].payload).expect("JSON");
    assert_eq!(trace["size"], body.len());
    assert_eq!(trace["limit"], 1024);
    // Too big to be worth reading: refused unread.
    let huge = vec![b'x'; 8192];
    assert_eq!(
        receiver.post(&huge, signed(&huge)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(receiver.records().len(), 1);
}
