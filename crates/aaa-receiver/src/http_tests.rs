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

/// Takes every record, or refuses every one (a broker that is down); with
/// a gate, answers only once the gate is opened (a slow broker).
#[derive(Default)]
struct MemorySink {
    refuse: bool,
    gate: Option<Arc<tokio::sync::Notify>>,
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
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
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
    oversized_slots: Arc<tokio::sync::Semaphore>,
    app: axum::Router,
}

fn receiver_slots_free(receiver: &Receiver) -> usize {
    receiver.oversized_slots.available_permits()
}

impl Receiver {
    fn with(sink: MemorySink) -> Receiver {
        let sink = Arc::new(sink);
        let coverage = Arc::new(Coverage::new("r1".into(), ["w1".to_owned()]));
        let oversized_slots = Arc::new(tokio::sync::Semaphore::new(1));
        let state = Arc::new(AppState {
            producer: sink.clone(),
            topic: "aaa.raw".into(),
            clock: Clock::Wall,
            coverage: coverage.clone(),
            oversized_slots: oversized_slots.clone(),
            limits: RequestLimits {
                max_body_bytes: 1024,
                max_verified_bytes: 4096,
                max_oversized: 1,
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
            oversized_slots,
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

/// An authentic body over the body limit is received: kept whole (as a
/// dead letter, unparsed), answered 200, counted as accepted. Unsigned, or
/// past the verified limit, it gets 413 and leaves nothing.
#[tokio::test]
async fn an_oversized_body_from_x_is_kept_whole_and_answered_200_others_get_413() {
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
    assert_eq!(receiver.heartbeat(), (0, 0), "not X's: no gap");
    assert_eq!(receiver.post(body, signed(body)).await, StatusCode::OK);
    let records = receiver.records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].headers[headers::RECORD_TYPE],
        control::OVERSIZED_BODY
    );
    assert_eq!(records[0].payload, body, "the bytes X sent, whole");
    assert_eq!(records[0].headers[headers::SIGNATURE], "ok");
    assert_eq!(receiver.heartbeat(), (1, 0), "received, not a gap");
    // Too big to be worth reading: refused unread.
    let huge = vec![b'x'; 8192];
    assert_eq!(
        receiver.post(&huge, signed(&huge)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(receiver.records().len(), 1);
}

/// With every oversized slot taken (a slow broker holds one), another
/// oversized body from X is refused with 503 and counted as refused: X
/// retries, and its minute is a gap until then.
#[tokio::test]
async fn an_oversized_body_from_x_without_a_free_slot_gets_503_and_counts_as_refused() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let receiver = Receiver::with(MemorySink {
        gate: Some(gate.clone()),
        ..MemorySink::default()
    });
    let body = format!(r#"{{"for_user_id":"123","pad":"{}"}}"#, "x".repeat(2000));
    let body = body.into_bytes();
    let first = {
        let app = receiver.app.clone();
        let request = Request::post(PATH)
            .header(
                aaa_signing::SIGNATURE_HEADER,
                signed(&body).expect("signed"),
            )
            .body(Body::from(body.clone()))
            .expect("a request");
        tokio::spawn(async move { app.oneshot(request).await.expect("an answer").status() })
    };
    // The first holds the one slot while the broker is slow.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline && receiver_slots_free(&receiver) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        receiver_slots_free(&receiver),
        0,
        "the first holds the slot"
    );
    assert_eq!(
        receiver.post(&body, signed(&body)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        receiver.heartbeat(),
        (0, 1),
        "X's delivery, not kept: a gap"
    );
    gate.notify_one();
    assert_eq!(first.await.expect("the first"), StatusCode::OK);
}

/// Sums the heartbeat tallies until `done` holds, for at most 5 s.
async fn tally_until(receiver: &Receiver, done: impl Fn((u64, u64)) -> bool) -> (u64, u64) {
    let mut sum = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done(sum) && tokio::time::Instant::now() < deadline {
        let (accepted, refused) = receiver.heartbeat();
        sum = (sum.0 + accepted, sum.1 + refused);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sum
}

/// X (or the ingress) gives up after 3 s and closes the connection, and
/// hyper drops the handler; the broker then refuses the record. The
/// refusal must still reach the heartbeat, or no gap opens for a delivery
/// X counts as failed (and a replayed one X never sends again).
#[tokio::test]
async fn a_delivery_whose_client_gave_up_is_recorded_when_the_broker_then_refuses() {
    for (refuse, expected) in [(true, (0, 1)), (false, (1, 0))] {
        let gate = Arc::new(tokio::sync::Notify::new());
        let receiver = Receiver::with(MemorySink {
            refuse,
            gate: Some(gate.clone()),
            ..MemorySink::default()
        });
        let body = br#"{"for_user_id":"123","favorite_events":[]}"#;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            receiver.post(body, signed(body)),
        )
        .await;
        assert!(gave_up.is_err(), "the broker is still deciding");
        gate.notify_one();
        assert_eq!(
            tally_until(&receiver, |t| t != (0, 0)).await,
            expected,
            "broker refused: {refuse}"
        );
    }
}
