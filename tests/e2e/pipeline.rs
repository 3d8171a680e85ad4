//! End-to-end: signed webhook → receiver → real broker → consumer → real
//! Postgres, every service a real process.

use sha2::Digest as _;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aaa_sim::generate::Generator;
use aaa_testkit::{Stack, StackOptions, TestDb, eventually, metric, metric_where};

const BIN: &str = env!("CARGO_BIN_EXE_aaa");
const LANDING: Duration = Duration::from_secs(60);

fn deliveries(seed: u64, n: usize) -> Vec<aaa_sim::generate::Delivery> {
    Generator::new(seed, 20, "2026-11-01T00:00:00Z".parse().unwrap()).take(n)
}

async fn wait_for_rows(db: &TestDb, sql: &'static str, expected: i64) {
    eventually(LANDING, &format!("{sql} = {expected}"), || async {
        (db.count(sql).await == expected).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc_challenge_is_answered_with_the_hmac_of_the_token() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let client = reqwest::Client::new();
    let crc = |token: &[u8]| {
        client
            .get(&stack.webhook_url)
            .query(&[("crc_token", String::from_utf8_lossy(token).into_owned())])
            .send()
    };
    // X-shaped tokens: the simulator's (hex) and base64 of random bytes.
    for token in [
        "abc123",
        "0123456789abcdef0123456789abcdef",
        "q1w2E3+r4/t5Y6==",
        "a-b_c",
    ] {
        let response = crc(token.as_bytes()).await.unwrap();
        assert_eq!(response.status(), 200, "{token}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["response_token"].as_str(),
            aaa_signing::crc_response_token(stack.secret.as_bytes(), token)
                .ok()
                .as_deref()
        );
    }

    for url in [
        stack.webhook_url.clone(),
        format!("{}?crc_token=", stack.webhook_url),
    ] {
        let status = reqwest::get(url).await.unwrap().status();
        assert_eq!(status, 400);
    }

    // The signing oracle: ask the CRC route to sign deliveries, then post
    // them with what it answered. None may be accepted or stored.
    let forged: Vec<Vec<u8>> = vec![
        br#"{"for_user_id":"1","follow_events":[{"type":"unfollow","created_timestamp":"9999999999999","source":{"id":"1"},"target":{"id":"2"}}]}"#.to_vec(),
        br#"{"user_event":{"revoke":{"date_time":"2030-01-01T00:00:00Z","target":{"app_id":"1"},"source":{"user_id":"1"}}}}"#.to_vec(),
        b" {\"for_user_id\":\"1\",\"favorite_events\":[{\"id\":\"f\"}]}".to_vec(),
        b"\xef\xbb\xbf{\"for_user_id\":\"1\",\"favorite_events\":[{\"id\":\"g\"}]}".to_vec(),
        b"[{\"for_user_id\":\"1\"}]".to_vec(),
        b"12345".to_vec(),
        b"abc123".to_vec(),
    ];
    let mut accepted = 0;
    for body in &forged {
        let answer = crc(body).await.unwrap();
        let status = answer.status().as_u16();
        let token = answer
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["response_token"].as_str().map(str::to_owned));
        let expected = String::from_utf8(body.clone())
            .ok()
            .filter(|text| aaa_signing::check_crc_token(text).is_ok());
        // Only token-shaped bodies are answered at all ...
        assert_eq!(
            status == 200,
            expected.is_some(),
            "{body:?} answered {status}"
        );
        let Some(token) = token else { continue };
        // ... and what the answer signs is refused as a delivery.
        let posted = client
            .post(&stack.webhook_url)
            .header(aaa_signing::SIGNATURE_HEADER, token)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(
            posted, 401,
            "a CRC answer was accepted as the signature of {body:?}"
        );
        accepted += usize::from(posted.is_success());
    }
    assert_eq!(accepted, 0);
    assert_eq!(stack.delivery_outcomes("forged").await, 2.0);
    let crc_refused = aaa_testkit::metric_where(&stack.receiver_admin, |l| {
        l.starts_with("aaa_receiver_requests_total")
            && l.contains("route=\"crc\"")
            && l.contains("outcome=\"bad_token\"")
    })
    .await;
    assert_eq!(crc_refused, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_deliveries_with_100_redeliveries_store_900_rows() {
    let mut stack = Stack::start(BIN, StackOptions::default()).await;
    let unique = deliveries(11, 900);
    let mut bodies: Vec<Vec<u8>> = unique.iter().map(|d| d.to_bytes()).collect();
    // X redelivers exactly the same bytes.
    bodies.extend(unique.iter().step_by(9).take(100).map(|d| d.to_bytes()));
    assert_eq!(bodies.len(), 1000);

    stack
        .sender()
        .deliver_all(&bodies, 8)
        .await
        .expect("every delivery acknowledged");
    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 900).await;

    // Per kind, the table holds exactly what was sent.
    let mut sent: BTreeMap<String, i64> = BTreeMap::new();
    for d in &unique {
        let stored = match d.kind {
            "spaces_events" => "unknown:spaces_events".to_owned(),
            kind => kind.to_owned(),
        };
        *sent.entry(stored).or_default() += 1;
    }
    let stored: BTreeMap<String, i64> =
        sqlx::query_as("SELECT kind, count(*) FROM events GROUP BY kind")
            .fetch_all(&stack.db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(stored, sent);
    assert_eq!(stack.db.count("SELECT count(*) FROM dead_letters").await, 0);

    let ok = metric(&stack.receiver_admin, "aaa_receiver_requests_total{").await;
    assert_eq!(ok, 1000.0, "every request counted");
    let consumer_admin = format!("http://{}", stack.consumer.addr("admin").await);
    // The last redeliveries may still be in flight after row 900 landed.
    eventually(
        LANDING,
        "1000 activities counted by the consumer",
        || async {
            (metric(&consumer_admin, "aaa_consumer_events_total{").await == 1000.0).then_some(())
        },
    )
    .await;
    let counted = |outcome: &'static str| {
        let label = format!("outcome=\"{outcome}\"");
        let admin = consumer_admin.clone();
        async move {
            metric_where(&admin, |l| {
                l.starts_with("aaa_consumer_events_total{") && l.contains(&label)
            })
            .await
        }
    };
    assert_eq!(counted("inserted").await, 900.0);
    assert_eq!(counted("duplicate").await, 100.0);

    // Graceful stops exit cleanly.
    stack.consumer.sigterm();
    assert!(stack.consumer.wait_exit(LANDING).await.success());
    stack.receiver.sigterm();
    assert!(stack.receiver.wait_exit(LANDING).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_killed_consumer_restarts_with_nothing_missing_or_doubled() {
    let mut stack = Stack::start(
        BIN,
        StackOptions {
            batch_max_records: 10,
            ..StackOptions::default()
        },
    )
    .await;
    let unique = deliveries(23, 1000);
    let bodies: Vec<Vec<u8>> = unique.iter().map(|d| d.to_bytes()).collect();

    // Deliver in the background, at most 4 at a time, while we kill the consumer.
    let sender = stack.sender();
    let sending = tokio::spawn(async move { sender.deliver_all(&bodies, 4).await });

    eventually(LANDING, "the consumer to store its first rows", || async {
        (stack.db.count("SELECT count(*) FROM events").await >= 50).then_some(())
    })
    .await;
    assert!(!sending.is_finished(), "the kill must land mid-stream");
    stack.consumer.kill();
    let at_kill = stack.db.count("SELECT count(*) FROM events").await;
    assert!(
        at_kill < 1000,
        "consumer was killed mid-stream ({at_kill} rows)"
    );

    sending.await.unwrap().expect("every delivery acknowledged");
    stack.consumer = stack.spawn_consumer();
    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 1000).await;

    // Exactly the sent keys, each once.
    let mut expected: Vec<(String, String)> = unique
        .iter()
        .map(|d| {
            let env = aaa_events::parse_envelope(&d.to_bytes()).unwrap();
            let a = env.activities[0].as_ref().unwrap();
            (a.kind.to_string(), a.natural_key.clone())
        })
        .collect();
    expected.sort();
    let mut stored: Vec<(String, String)> = sqlx::query_as("SELECT kind, natural_key FROM events")
        .fetch_all(&stack.db.pool)
        .await
        .unwrap();
    stored.sort();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_broker_gets_503_never_200_and_retries_land_once_it_is_back() {
    let produce_timeout = Duration::from_millis(1500);
    let stack = Stack::start(
        BIN,
        StackOptions {
            produce_timeout_ms: produce_timeout.as_millis() as u64,
            ..StackOptions::default()
        },
    )
    .await;
    let sender = stack.sender();
    let warmup = deliveries(31, 1)[0].to_bytes();
    assert_eq!(sender.post(&warmup).await.unwrap(), 200);

    let readyz = format!("{}/readyz", stack.receiver_admin);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);

    stack.broker.pause();
    assert_eq!(
        reqwest::get(&readyz).await.unwrap().status(),
        503,
        "not ready without a broker"
    );
    let outage = deliveries(37, 5);
    for delivery in &outage {
        let started = Instant::now();
        let status = sender.post(&delivery.to_bytes()).await.unwrap();
        assert_eq!(status, 503, "no 2xx while the broker cannot acknowledge");
        assert!(
            started.elapsed() < produce_timeout + Duration::from_secs(1),
            "answered within the produce timeout, took {:?}",
            started.elapsed()
        );
    }
    stack.broker.resume();

    // X retries what it did not get a 2xx for.
    for delivery in &outage {
        let body = delivery.to_bytes();
        eventually(LANDING, "a retried delivery to be acknowledged", || async {
            (sender.post(&body).await.ok()? == 200).then_some(())
        })
        .await;
    }
    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 6).await;
    let unavailable = metric(&stack.receiver_admin, "aaa_receiver_requests_total{webhook=\"1146654567674912769\",route=\"delivery\",outcome=\"broker_unavailable\"}").await;
    assert!(unavailable >= 5.0, "503s counted, got {unavailable}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_counted_or_dead_lettered_never_lost() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let client = reqwest::Client::new();
    let good = deliveries(41, 2);

    // Wrong secret → 401, nothing written.
    let forged = good[0].to_bytes();
    let status = client
        .post(&stack.webhook_url)
        .header(
            aaa_signing::SIGNATURE_HEADER,
            aaa_signing::sign(b"not-the-secret", &forged),
        )
        .body(forged.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    let unsigned = client
        .post(&stack.webhook_url)
        .body(forged.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(unsigned, 401);

    // 2 MiB body signed by X (over the 1 MiB body limit, within the 2 MiB
    // read whole) → 200, kept whole as a dead letter.
    let huge = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(stack.sender().post(&huge).await.unwrap(), 200);
    // The same size unsigned: 413, no trace.
    let unsigned_huge = client
        .post(&stack.webhook_url)
        .header(
            aaa_signing::SIGNATURE_HEADER,
            aaa_signing::sign(b"other", &huge),
        )
        .body(huge.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(unsigned_huge, 413);
    let sender = stack.sender();

    // Authentic but unparseable → exactly one dead letter with its raw bytes.
    let garbage = b"{\"for_user_id\": \"1\", \"tweet_create_events\": [".to_vec();
    assert_eq!(sender.post(&garbage).await.unwrap(), 200);

    // A fence: a good delivery for the forged one's account, so it shares
    // its partition. Once it is stored, a forged record (had one reached
    // Kafka) would have been processed too.
    let mut fence = good[1].body.clone();
    fence["for_user_id"] = good[0].body["for_user_id"].clone();
    assert_eq!(
        sender.post(fence.to_string().as_bytes()).await.unwrap(),
        200
    );
    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 1).await;
    wait_for_rows(&stack.db, "SELECT count(*) FROM dead_letters", 2).await;

    let (raw, kind): (Vec<u8>, String) =
        sqlx::query_as("SELECT raw, error_kind FROM dead_letters WHERE error_kind <> 'too_large'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(raw, garbage);
    assert_eq!(kind, "not_json");
    let (hash, reason, kept): (String, String, Vec<u8>) = sqlx::query_as(
        "SELECT raw_sha256, reason, raw FROM dead_letters WHERE error_kind = 'too_large'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(hash, hex::encode(sha2::Sha256::digest(&huge)));
    assert!(reason.contains("2097152 bytes"), "{reason}");
    assert!(kept == huge, "kept whole: {} bytes", kept.len());
    let forged_key = aaa_events::parse_envelope(&forged).unwrap().activities[0]
        .as_ref()
        .unwrap()
        .natural_key
        .clone();
    let forged_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE natural_key = $1")
        .bind(&forged_key)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(forged_rows, 0, "a forged delivery must not be stored");

    let admin = &stack.receiver_admin;
    let label = |outcome: &str| {
        format!(
            "aaa_receiver_requests_total{{webhook=\"{}\",route=\"delivery\",outcome=\"{outcome}\"}}",
            stack.webhook_id
        )
    };
    assert_eq!(metric(admin, &label("bad_signature")).await, 2.0);
    assert_eq!(metric(admin, &label("too_large")).await, 1.0);
    assert_eq!(metric(admin, &label("too_large_authentic")).await, 1.0);
    assert_eq!(metric(admin, &label("ok")).await, 2.0);
}

/// A delivery exactly at the receiver's body limit is accepted, so it must
/// also fit through the producer and the broker (librdkafka's own default
/// limit is below 1 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_exactly_at_the_body_limit_lands() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let mut body = deliveries(43, 1)[0].body.clone();
    body["padding"] = serde_json::Value::String(String::new());
    let unpadded = body.to_string().len();
    let limit = stack.options.max_body_bytes;
    body["padding"] = serde_json::Value::String("x".repeat(limit - unpadded));
    let bytes = body.to_string().into_bytes();
    assert_eq!(bytes.len(), limit);
    assert_eq!(stack.sender().post(&bytes).await.unwrap(), 200);
    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_refuses_a_schema_that_is_behind() {
    let db = TestDb::empty().await;
    let mut consumer = aaa_testkit::Service::spawn(
        "consumer",
        std::path::Path::new(BIN),
        &["consumer"],
        &[
            ("AAA_DATABASE_URL", db.url.clone()),
            ("AAA_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("AAA_KAFKA_BROKERS", "127.0.0.1:1".into()),
        ],
    );
    let status = consumer.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let output = consumer.output().join("\n");
    assert!(output.contains("run `aaa migrate` first"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_receiver_serves_several_webhooks_each_with_its_own_secret() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let crc = |url: &str| format!("{url}?crc_token=token-2");
    let answer: serde_json::Value = reqwest::get(crc(&stack.second_webhook_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["response_token"],
        aaa_signing::crc_response_token(stack.second_secret.as_bytes(), "token-2").unwrap()
    );

    let body = deliveries(53, 1)[0].to_bytes();
    let first_secret = aaa_sim::send::Sender::new(
        stack.second_webhook_url.clone(),
        stack.secret.clone().into(),
    )
    .unwrap();
    assert_eq!(
        first_secret.post(&body).await.unwrap(),
        401,
        "another webhook's secret is refused"
    );
    let own_secret = aaa_sim::send::Sender::new(
        stack.second_webhook_url.clone(),
        stack.second_secret.clone().into(),
    )
    .unwrap();
    assert_eq!(own_secret.post(&body).await.unwrap(), 200);

    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 1).await;
    let webhook: String = sqlx::query_scalar("SELECT webhook_id FROM events")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(webhook, aaa_testkit::SECOND_WEBHOOK_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_deliveries_before_the_receiver_exits() {
    let mut stack = Stack::start(
        BIN,
        StackOptions {
            produce_timeout_ms: 20_000,
            ..StackOptions::default()
        },
    )
    .await;
    let admin = stack.receiver_admin.clone();
    assert_eq!(
        reqwest::get(format!("{admin}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );

    // A delivery held in flight: the broker cannot acknowledge it yet.
    stack.broker.pause();
    let body = deliveries(59, 1)[0].to_bytes();
    let request = reqwest::Client::new()
        .post(&stack.webhook_url)
        .header(
            aaa_signing::SIGNATURE_HEADER,
            aaa_signing::sign(stack.secret.as_bytes(), &body),
        )
        .body(body);
    let in_flight = tokio::spawn(request.send());
    eventually(LANDING, "the delivery to be in flight", || async {
        (metric(&admin, "aaa_receiver_in_flight_requests").await == 1.0).then_some(())
    })
    .await;

    stack.receiver.sigterm();
    stack
        .receiver
        .wait_for_log("the drain to start", LANDING, |e| {
            e["message"] == "shutdown requested: draining"
        })
        .await;
    stack.broker.resume();

    let status = in_flight
        .await
        .unwrap()
        .expect("an answer, not a dropped connection")
        .status();
    assert_eq!(
        status, 200,
        "the in-flight delivery was acknowledged after the broker acked"
    );
    assert!(stack.receiver.wait_exit(LANDING).await.success());
    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_holds_offsets_and_everything_lands_once_it_is_back() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let consumer_admin = format!("http://{}", stack.consumer.addr("admin").await);
    stack.db.go_down().await;

    let unique = deliveries(61, 200);
    let bodies: Vec<Vec<u8>> = unique.iter().map(|d| d.to_bytes()).collect();
    // The receiver has no database on its path: X still gets its 200s.
    stack
        .sender()
        .deliver_all(&bodies, 8)
        .await
        .expect("acknowledged while Postgres is down");
    stack
        .consumer
        .wait_for_log("a failed write", LANDING, |e| {
            e["message"] == "writing batch to Postgres failed; retrying without committing offsets"
        })
        .await;
    assert!(metric(&consumer_admin, "aaa_consumer_write_failures_total").await >= 1.0);
    let ready = reqwest::get(format!("{consumer_admin}/readyz"))
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 503, "not ready while the database is down");

    stack.db.come_back().await;
    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 200).await;
    let ready = reqwest::get(format!("{consumer_admin}/readyz"))
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 200);
}

/// The simulator drives the pipeline; its ground truth and the table agree
/// exactly: every delivery X got a 2xx for is stored once, nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_drives_the_pipeline_and_ground_truth_matches_postgres() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let sim = stack
        .start_sim(&[
            "--accounts",
            "40",
            "--seed",
            "5",
            "--drop-share",
            "0.05",
            "--duplicate-share",
            "0.1",
            "--reorder-ms",
            "20",
        ])
        .await;
    let owed = sim.generate(600).await;
    assert!(
        owed >= 600,
        "interactions between subscribed accounts are owed to both ({owed})"
    );
    let summary = sim.settled(LANDING).await;
    assert_eq!(summary["owed"], owed);
    let delivered = summary["delivered"].as_u64().unwrap();
    let missing = summary["missing"].as_u64().unwrap();
    assert!(missing > 0, "the drop fault lost some deliveries");
    assert_eq!(delivered + missing, owed);

    let expected = aaa_testkit::delivered_keys(&sim).await;
    assert_eq!(expected.len() as u64, delivered);

    eventually(LANDING, "every delivered activity in Postgres", || async {
        (stack.db.count("SELECT count(*) FROM events").await == expected.len() as i64).then_some(())
    })
    .await;
    let stored = aaa_testkit::stored_keys(&stack.db).await;
    assert_eq!(stored, expected, "Postgres holds exactly what X delivered");
    assert_eq!(stack.db.count("SELECT count(*) FROM dead_letters").await, 0);
}

/// `events.payload` is what X sent, byte for byte: numbers that a JSON
/// library or jsonb would rewrite (`1e2`, `-0`, a 30-digit integer, `1.50`),
/// escapes and key order. A `for_user_id` that is no account id (a number
/// past u64, which no parser keeps exactly) is a dead letter, never a NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_stored_as_sent_and_a_bad_for_user_id_is_kept() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let sender = stack.sender();
    let item = r#"{"id":"exact-1","z":1e2,"neg":-0,"big":123456789012345678901234567890,"price":1.50,"s":"caf\u00e9 \/ \"","a":{"b":[1,2.0]}}"#;
    let body = format!(r#"{{"for_user_id":"42","favorite_events":[ {item} ]}}"#);
    assert_eq!(sender.post(body.as_bytes()).await.unwrap(), 200);
    let bad = br#"{"for_user_id":123456789012345678901,"favorite_events":[{"id":"lost-id"}]}"#;
    assert_eq!(sender.post(bad).await.unwrap(), 200);

    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 1).await;
    wait_for_rows(&stack.db, "SELECT count(*) FROM dead_letters", 1).await;
    let (stored, number): (String, String) = sqlx::query_as(
        "SELECT payload::text, payload->>'big' FROM events WHERE natural_key = 'exact-1'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(stored, item);
    assert_eq!(number, "123456789012345678901234567890");
    let (raw, kind, reason): (Vec<u8>, String, String) =
        sqlx::query_as("SELECT raw, error_kind, reason FROM dead_letters")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(raw, bad);
    assert_eq!(kind, "bad_for_user_id");
    assert!(reason.contains("123456789012345678901"), "{reason}");
    let nulls = stack
        .db
        .count("SELECT count(*) FROM events WHERE for_user_id IS NULL")
        .await;
    assert_eq!(nulls, 0);
}

/// When a subscription was last active (`last_event_at`, which decides
/// whether a revoked subscription is active again) is state: it is stored
/// before the offsets of the batch that saw it are committed, so a consumer
/// killed right after a commit has lost none of it. (An older build wrote
/// it every `AAA_SEEN_INTERVAL_MS`, set to an hour here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_batch_saw_is_stored_before_its_offsets_are_committed() {
    let mut stack = Stack::start(
        BIN,
        StackOptions {
            partitions: 1,
            ..StackOptions::default()
        },
    )
    .await;
    stack
        .replace_consumer("consumer-b", &[("AAA_SEEN_INTERVAL_MS", "3600000".into())])
        .await;
    let admin = format!("http://{}", stack.consumer.addr("admin").await);
    let body = serde_json::json!({"for_user_id": "4100", "favorite_events": [{
        "id": "fav-4100", "created_at": "Wed Oct 10 20:20:00 +0000 2018",
        "timestamp_ms": "1539202800000",
        "favorited_status": {"id_str": "4101", "text": "hi", "user": {"id_str": "4102"}},
        "user": {"id_str": "4100"}}]});
    assert_eq!(
        stack
            .sender()
            .post(body.to_string().as_bytes())
            .await
            .unwrap(),
        200
    );
    eventually(LANDING, "the delivery's offset committed", || async {
        (metric_where(&admin, |l| {
            l.starts_with("aaa_consumer_committed_offset{") && l.contains("partition=\"0\"")
        })
        .await
            >= 1.0)
            .then_some(())
    })
    .await;
    stack.consumer.kill();
    let (last_event_at, last_seen_at): (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT s.last_event_at, w.last_seen_at FROM subscriptions s JOIN webhooks w USING (webhook_id)
         WHERE s.user_id = '4100'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .expect("the subscription's row");
    assert_eq!(
        last_event_at,
        Some("2018-10-10T20:20:00Z".parse().unwrap()),
        "the like's time, stored with its offset"
    );
    assert!(last_seen_at.is_some());
}

/// A write blocked without any error (behind a lock nobody releases) is a
/// stall from its start: /healthz fails after `AAA_STALL_SECS` (2 s here).
/// And SIGTERM ends the consumer within its grace (5 s) although the write
/// is still blocked: it is rolled back and read again later. Lock waits are
/// unbounded here (`AAA_DATABASE_LOCK_TIMEOUT_MS=0`), so only these two
/// can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_blocked_without_an_error_is_a_stall_and_shutdown_interrupts_it() {
    let mut stack = Stack::start(BIN, StackOptions::default()).await;
    stack
        .replace_consumer(
            "consumer-blocked",
            &[("AAA_DATABASE_LOCK_TIMEOUT_MS", "0".into())],
        )
        .await;
    let admin = format!("http://{}", stack.consumer.addr("admin").await);
    let healthz = || async {
        reqwest::get(format!("{admin}/healthz"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(healthz().await, 200);
    let mut lock = stack.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let body = deliveries(41, 1)[0].to_bytes();
    assert_eq!(stack.sender().post(&body).await.unwrap(), 200);
    eventually(
        LANDING,
        "the consumer's write waiting on the lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'consumer-blocked' AND wait_event_type = 'Lock'",
            )
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    eventually(LANDING, "/healthz to report the stall", || async {
        (healthz().await == 503).then_some(())
    })
    .await;
    stack.consumer.sigterm();
    let asked = Instant::now();
    let status = stack.consumer.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "stopped {:?} after SIGTERM, the write still blocked",
        asked.elapsed()
    );
    lock.rollback().await.unwrap();
    // Nothing was committed: the next consumer stores the delivery.
    stack.consumer = stack.spawn_consumer();
    wait_for_rows(&stack.db, "SELECT count(*) FROM events", 1).await;
}

/// After a rebalance a replica reports committed offsets only for the
/// partitions it still owns: those revoked go to 0 (their new owner reports
/// them), so `max by (partition)` over replicas is the group's position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_leave_the_committed_offset_gauge() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let first = format!("http://{}", stack.consumer.addr("admin").await);
    let committed = |admin: String| async move {
        let text = reqwest::get(format!("{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("aaa_consumer_committed_offset{"))
            .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0))
            .count()
    };
    // Deliveries for many accounts land on every partition.
    let bodies: Vec<Vec<u8>> = deliveries(57, 60).iter().map(|d| d.to_bytes()).collect();
    stack.sender().deliver_all(&bodies, 4).await.unwrap();
    eventually(LANDING, "offsets committed on all 3 partitions", || async {
        (committed(first.clone()).await == 3).then_some(())
    })
    .await;
    let second = stack.spawn_consumer();
    second
        .wait_for_log("partition assignment", LANDING, |e| {
            e["message"] == "partitions assigned"
        })
        .await;
    let assigned = |service: &aaa_testkit::Service| -> i64 {
        service
            .output()
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["message"] == "partitions assigned")
            .and_then(|e| e["partitions"].as_i64())
            .unwrap_or(-1)
    };
    eventually(
        LANDING,
        "the first replica's gauges follow its assignment",
        || async {
            let kept = assigned(&stack.consumer);
            let reported = committed(first.clone()).await as i64;
            (kept > 0 && kept < 3 && reported <= kept).then_some(())
        },
    )
    .await;
}

/// X Activity API only, as every deployment will be after 2027-01-01: the
/// accounts are subscribed per event type (tagged), X delivers XAA
/// envelopes only, and Postgres holds exactly what X delivered, each event
/// under the tag of the subscription that matched it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xaa_only_deployment_stores_exactly_what_x_delivered_under_its_tags() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let sim = stack
        .start_sim(&[
            "--accounts",
            "20",
            "--seed",
            "11",
            "--revoke-share",
            "0.05",
            "--subscribe-product",
            "xaa",
        ])
        .await;
    let owed = sim.generate(300).await;
    let summary = sim.settled(LANDING).await;
    assert_eq!(summary["owed"], owed);
    let expected = aaa_testkit::delivered_keys(&sim).await;
    eventually(LANDING, "every delivered activity in Postgres", || async {
        (stack.db.count("SELECT count(*) FROM events").await == expected.len() as i64).then_some(())
    })
    .await;
    assert_eq!(aaa_testkit::stored_keys(&stack.db).await, expected);
    assert_eq!(
        stack
            .db
            .count("SELECT count(*) FROM events WHERE NOT context ? 'xaa'")
            .await,
        0,
        "no Account Activity envelope"
    );
    let untagged = stack
        .db
        .count(
            "SELECT count(*) FROM v_xaa_events
             WHERE subscription_tag IS NULL
                OR subscription_tag <> CASE WHEN event_type = 'oauth.revoke' THEN 'aaa:revoke'
                                            ELSE 'aaa:' || for_user_id || ':' || event_type END",
        )
        .await;
    assert_eq!(
        untagged, 0,
        "each event carries the tag of the subscription that matched it"
    );
    assert!(
        stack
            .db
            .count("SELECT count(*) FROM v_xaa_events WHERE event_type = 'oauth.revoke'")
            .await
            > 0,
        "revocations came through the app's subscription"
    );
}
