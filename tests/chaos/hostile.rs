//! Hostile requests against a running stack, mixed with good deliveries:
//! each is answered as it should be and counted, the receiver stays healthy,
//! nothing unauthenticated reaches Postgres, authentic garbage becomes a
//! dead letter with its raw bytes, and every good delivery lands.

use std::time::Duration;

use aaa_testkit::{Stack, StackOptions, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_aaa");

type Headers = Vec<(&'static str, String)>;

async fn post(url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> u16 {
    // A client per request: after an early answer (401, 413) the receiver
    // closes the connection, which must not be reused.
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("an answer").status().as_u16()
}

async fn connect(url: &str) -> tokio::net::TcpStream {
    let url = reqwest::Url::parse(url).unwrap();
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

/// Sends `first` on a fresh connection, then nothing: how long until the
/// receiver closes it (reads drain whatever it answered).
async fn closed_after(url: &str, first: &[u8]) -> Duration {
    let mut stream = connect(url).await;
    let started = std::time::Instant::now();
    stream.write_all(first).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after 30 s");
    started.elapsed()
}

/// Headers, then a body that trickles in a byte a second: the receiver must
/// give up on it (total request deadline) rather than hold the slot forever.
async fn slow_body(url: &str, signature: &str) -> String {
    let mut stream = connect(url).await;
    let path = reqwest::Url::parse(url).unwrap().path().to_owned();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nx-twitter-webhooks-signature: {signature}\r\n\r\n",
        path
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let trickle = async {
        loop {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    // The answer must come well before the 1000 bytes would have (1000 s).
    let _ = tokio::time::timeout(Duration::from_secs(15), trickle).await;
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_counted_and_good_ones_land() {
    let stack = Stack::start(
        BIN,
        StackOptions {
            receiver_env: vec![
                ("AAA_BODY_TIMEOUT_MS", "3000".into()),
                ("AAA_HEADER_READ_TIMEOUT_MS", "2000".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    let url = stack.webhook_url.clone();
    let sign = |body: &[u8]| aaa_signing::sign(stack.secret.as_bytes(), body);
    let signed = |body: &[u8]| -> Headers { vec![(aaa_signing::SIGNATURE_HEADER, sign(body))] };
    let start = chrono::DateTime::UNIX_EPOCH + chrono::TimeDelta::days(20_000);
    let good: Vec<Vec<u8>> = aaa_sim::generate::Generator::new(99, 10, start)
        .take(20)
        .iter()
        .map(|d| d.to_bytes())
        .collect();
    let mut good = good.into_iter();
    let mut next_good = async || {
        let body = good.next().expect("a good delivery");
        assert_eq!(post(&url, body.clone(), &signed(&body)).await, 200);
    };

    // Unauthenticated: 401 each, nothing stored.
    let body = b"{\"for_user_id\":\"1\",\"favorite_events\":[]}".to_vec();
    let wrong = aaa_signing::sign(b"not-the-secret", &body);
    let sig = aaa_signing::SIGNATURE_HEADER;
    let unauthenticated: Vec<(Vec<u8>, Headers)> = vec![
        (body.clone(), vec![(sig, wrong)]),
        (body.clone(), vec![]),
        (body.clone(), vec![(sig, "sha256=!!!not-base64!!!".into())]),
        (body.clone(), vec![(sig, "md5=AAAA".into())]),
        (body.clone(), vec![(sig, String::new())]),
        (body.clone(), vec![(sig, "sha256=".into())]),
        // A valid signature replayed over an altered body.
        (
            b"{\"for_user_id\":\"2\",\"favorite_events\":[]}".to_vec(),
            signed(&body),
        ),
    ];
    for (body, headers) in unauthenticated.iter().cloned() {
        assert_eq!(post(&url, body, &headers).await, 401);
        next_good().await;
    }

    // Over the body limit: unsigned, 413 and counted only; signed by X,
    // received (200) and kept whole as a dead letter.
    let huge = vec![b'{'; 2 * 1024 * 1024];
    assert_eq!(post(&url, huge.clone(), &signed(b"other")).await, 413);
    next_good().await;
    assert_eq!(post(&url, huge.clone(), &signed(&huge)).await, 200);
    next_good().await;
    // Past what the receiver reads at all (AAA_MAX_VERIFIED_BYTES): 413.
    let huger = vec![b'{'; 2 * 1024 * 1024 + 1];
    assert_eq!(post(&url, huger.clone(), &signed(&huger)).await, 413);
    next_good().await;

    // A CRC answer replayed as a delivery's signature: refused.
    let token = "0123456789abcdef";
    assert_eq!(
        post(&url, token.into(), &signed(token.as_bytes())).await,
        401
    );
    next_good().await;

    // Authentic but unreadable: accepted (X must not retry them forever) and
    // kept as dead letters with their bytes.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, b'{', 0xc3, 0x28, b'}'],
        nested,
        b"{\"for_user_id\": 18446744073709551616999, \"tweet_create_events\": [{\"id\": 1e400}]}"
            .to_vec(),
        b"[1, 2, 3]".to_vec(),
    ];
    for body in &garbage {
        assert_eq!(post(&url, body.clone(), &signed(body)).await, 200);
        next_good().await;
    }

    // A good delivery with the wrong content type is still a good delivery.
    let body = good.next().unwrap();
    let mut headers = signed(&body);
    headers.push(("content-type", "text/plain; charset=latin1".into()));
    assert_eq!(post(&url, body, &headers).await, 200);

    // Slowloris: the receiver answers 408 at its body deadline (3 s),
    // although bytes keep arriving.
    let started = std::time::Instant::now();
    let answer = slow_body(&url, &sign(b"x")).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "slow body answered {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Connections that send nothing, half a header, or idle after a request
    // are closed at the header deadline (2 s), not held.
    let path = reqwest::Url::parse(&url).unwrap().path().to_owned();
    let crc = format!("GET {path}?crc_token=abc HTTP/1.1\r\nHost: x\r\n\r\n");
    let half = format!("POST {path} HTTP/1.1\r\nHost: x\r\n");
    for first in [&b""[..], half.as_bytes(), crc.as_bytes()] {
        let open_for = closed_after(&url, first).await;
        assert!(
            open_for >= Duration::from_millis(1500) && open_for < Duration::from_secs(8),
            "{:?} closed after {open_for:?}",
            String::from_utf8_lossy(first)
        );
    }

    // Refusals anyone can cause are counted, not logged above debug: no
    // log flood an outsider controls.
    let flood: Vec<String> = stack
        .receiver
        .output()
        .into_iter()
        .filter(|l| l.contains("delivery rejected") || l.contains("request shed"))
        .collect();
    assert!(flood.is_empty(), "logged at info or above: {flood:?}");

    // Healthy, every good delivery stored, the garbage only as dead letters.
    let health = reqwest::get(format!("{}/healthz", stack.receiver_admin))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let good_sent = unauthenticated.len() + 4 + garbage.len() + 1;
    eventually(
        Duration::from_secs(60),
        "good deliveries and dead letters",
        || async {
            let events = stack
                .db
                .count("SELECT count(DISTINCT request_id) FROM events")
                .await;
            let dead = stack.db.count("SELECT count(*) FROM dead_letters").await;
            (events == good_sent as i64 && dead == garbage.len() as i64 + 1).then_some(())
        },
    )
    .await;
    let stored: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT raw FROM dead_letters WHERE error_kind <> 'too_large' ORDER BY id",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let mut expected = garbage.clone();
    expected.sort();
    let mut stored_sorted = stored;
    stored_sorted.sort();
    assert_eq!(stored_sorted, expected, "dead letters keep the raw bytes");
    let kept: Vec<u8> =
        sqlx::query_scalar("SELECT raw FROM dead_letters WHERE error_kind = 'too_large'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert!(
        kept == huge,
        "X's oversized body is kept whole ({} bytes)",
        kept.len()
    );
    assert_eq!(
        stack.delivery_outcomes("bad_signature").await,
        unauthenticated.len() as f64
    );
    assert_eq!(stack.delivery_outcomes("too_large").await, 2.0);
    assert_eq!(stack.delivery_outcomes("too_large_authentic").await, 1.0);
    assert_eq!(stack.delivery_outcomes("bad_request").await, 1.0);
    assert_eq!(stack.delivery_outcomes("forged").await, 1.0);
    assert_eq!(
        stack.delivery_outcomes("ok").await,
        (good_sent + garbage.len()) as f64
    );

    // None of the refusals reaches the heartbeats (a gap, so a replay):
    // junk is counted only, and X's oversized body was received.
    eventually(
        Duration::from_secs(60),
        "heartbeats covering every accepted delivery",
        || async {
            let accepted = stack
                .db
                .count("SELECT coalesce(sum(accepted), 0)::int8 FROM coverage_heartbeats")
                .await;
            (accepted == (good_sent + garbage.len() + 1) as i64).then_some(())
        },
    )
    .await;
    let refused: Vec<(i64, serde_json::Value)> =
        sqlx::query_as("SELECT refused, refused_by FROM coverage_heartbeats WHERE refused > 0")
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(refused, [], "nothing counts against coverage");
}

/// Past the concurrency limit, requests are shed at once with 503 (X
/// retries) instead of queueing behind a stalled broker. The limit holds
/// over every webhook and route together, and a shed delivery that may be
/// X's (its signature header has X's shape) is refused in the heartbeat, so
/// its minute is a gap, not silently covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_concurrency_limit_are_shed_with_503() {
    let stack = Stack::start(
        BIN,
        StackOptions {
            receiver_env: vec![("AAA_MAX_CONCURRENT_REQUESTS", "2".into())],
            ..StackOptions::default()
        },
    )
    .await;
    let url = stack.webhook_url.clone();
    let body = b"{\"for_user_id\":\"1\",\"favorite_events\":[{\"id\":\"shed\"}]}".to_vec();
    let headers = vec![(
        aaa_signing::SIGNATURE_HEADER,
        aaa_signing::sign(stack.secret.as_bytes(), &body),
    )];
    // Two requests to the first webhook hold both slots while the broker
    // does not answer.
    stack.broker.pause();
    let holding: Vec<_> = (0..2)
        .map(|_| {
            let (url, body, headers) = (url.clone(), body.clone(), headers.clone());
            tokio::spawn(async move { post(&url, body, &headers).await })
        })
        .collect();
    eventually(Duration::from_secs(10), "both slots taken", || async {
        let in_flight =
            aaa_testkit::metric(&stack.receiver_admin, "aaa_receiver_in_flight_requests").await;
        (in_flight >= 2.0).then_some(())
    })
    .await;
    // The second webhook shares the limit: its delivery, a CRC challenge
    // and an unsigned POST are all shed at once.
    let second = stack.second_webhook_url.clone();
    let second_headers = vec![(
        aaa_signing::SIGNATURE_HEADER,
        aaa_signing::sign(stack.second_secret.as_bytes(), &body),
    )];
    let started = std::time::Instant::now();
    assert_eq!(post(&second, body.clone(), &second_headers).await, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shed, not queued: one limit for every webhook"
    );
    assert_eq!(post(&second, body.clone(), &[]).await, 503);
    let crc = reqwest::get(format!("{second}?crc_token=abcdef"))
        .await
        .unwrap();
    assert_eq!(crc.status(), 503);
    assert_eq!(post(&url, body.clone(), &headers).await, 503);
    let shed = aaa_testkit::metric(&stack.receiver_admin, "aaa_receiver_requests_shed_total").await;
    assert_eq!(shed, 4.0);
    assert_eq!(stack.delivery_outcomes("shed").await, 2.0);
    assert_eq!(stack.delivery_outcomes("shed_unsigned").await, 1.0);
    let logged = stack
        .receiver
        .output()
        .into_iter()
        .filter(|l| l.contains("shed"))
        .count();
    assert_eq!(logged, 0, "shedding is counted, not logged above debug");
    stack.broker.resume();
    for request in holding {
        // Answered by the produce deadline: 503, or 200 if the broker woke in time.
        let status = request.await.unwrap();
        assert!(status == 503 || status == 200, "{status}");
    }
    assert_eq!(post(&url, body.clone(), &headers).await, 200);

    // Both signed deliveries that were shed are refusals in their webhook's
    // heartbeats (their minutes are gaps); the unsigned one is not.
    eventually(
        Duration::from_secs(60),
        "heartbeats recording the shed deliveries",
        || async {
            let shed = stack
                .db
                .count("SELECT coalesce(sum((refused_by->>'shed')::int8), 0)::int8 FROM coverage_heartbeats")
                .await;
            (shed == 2).then_some(())
        },
    )
    .await;
    let by_webhook: Vec<(String, i64)> = sqlx::query_as(
        "SELECT webhook_id, sum((refused_by->>'shed')::int8)::int8 FROM coverage_heartbeats
         WHERE refused_by ? 'shed' GROUP BY webhook_id ORDER BY webhook_id",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let mut expected = vec![
        (stack.webhook_id.clone(), 1),
        (aaa_testkit::SECOND_WEBHOOK_ID.to_owned(), 1),
    ];
    expected.sort();
    assert_eq!(by_webhook, expected);
    let unsigned = stack
        .db
        .count("SELECT count(*) FROM coverage_heartbeats WHERE refused_by ? 'shed_unsigned'")
        .await;
    assert_eq!(unsigned, 0, "an unsigned request is never a gap");
}

/// An outsider holding the receiver's slots: `connections` connections,
/// each sending a request's headers (no signature) and then a body that
/// trickles in, starting again as soon as it is answered (408 at the body
/// deadline, or 503 when shed), until stopped.
pub struct SlotHolder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SlotHolder {
    pub fn start(url: &str, connections: usize) -> SlotHolder {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let parsed = reqwest::Url::parse(url).unwrap();
        let addr = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap());
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
            parsed.path()
        );
        let tasks = (0..connections)
            .map(|_| {
                let (stop, addr, head) = (stop.clone(), addr.clone(), head.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let (mut read, mut write) = stream.into_split();
                        if write.write_all(head.as_bytes()).await.is_err() {
                            continue;
                        }
                        let mut answer = [0u8; 64];
                        let trickle = async {
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                if write.write_all(b" ").await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        };
                        tokio::select! {
                            _ = read.read(&mut answer) => {}
                            _ = trickle => {}
                        }
                    }
                })
            })
            .collect();
        SlotHolder { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}
