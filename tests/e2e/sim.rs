//! The X simulator from the outside: CRC, OAuth 1.0a subscriptions with
//! every error reason, and replay with validation, conflicts, rate limits,
//! completion messages. Its webhook here is a small signed-delivery
//! recorder, because these tests need to make the webhook answer CRC
//! wrongly or slowly on command.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aaa_common::Clock;
use aaa_testkit::{SimProcess, eventually};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::Method;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aaa");
const SECRET: &str = "sim-test-consumer-secret";
const WAIT: Duration = Duration::from_secs(60);

const CORRECT: u8 = 0;
const WRONG: u8 = 1;
const SLOW: u8 = 2;

#[derive(Clone)]
struct Hook {
    url: String,
    mode: Arc<AtomicU8>,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    async fn start() -> Hook {
        let mode = Arc::new(AtomicU8::new(CORRECT));
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = (mode.clone(), received.clone());
        let app = axum::Router::new()
            .route("/hook", get(crc).post(deliver))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hook {
            url,
            mode,
            received,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

type HookState = (Arc<AtomicU8>, Arc<Mutex<Vec<Value>>>);

async fn crc(
    State((mode, _)): State<HookState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> axum::Json<Value> {
    let token = q.get("crc_token").cloned().unwrap_or_default();
    let mode = mode.load(Ordering::SeqCst);
    if mode == SLOW {
        tokio::time::sleep(Duration::from_millis(3_500)).await;
    }
    let secret = if mode == WRONG {
        "not-the-secret"
    } else {
        SECRET
    };
    axum::Json(
        json!({"response_token": aaa_signing::crc_response_token(secret.as_bytes(), &token).unwrap_or_default()}),
    )
}

async fn deliver(
    State((_, received)): State<HookState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let signature = headers
        .get(aaa_signing::SIGNATURE_HEADER)
        .map(|v| v.as_bytes());
    if aaa_signing::verify(&[SECRET], signature, &body).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    received
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    StatusCode::OK
}

async fn reason(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["title"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn register(sim: &SimProcess, url: &str) -> String {
    let response = sim
        .api(Method::POST, "/2/webhooks")
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["valid"], true);
    body["data"]["id"].as_str().unwrap().to_owned()
}

/// The id of the webhook the simulator registered at start.
async fn bootstrap_webhook_id(sim: &SimProcess) -> String {
    eventually(WAIT, "the bootstrap webhook", || async {
        let list: Value = sim
            .api(Method::GET, "/2/webhooks")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list["data"][0]["id"].as_str().map(str::to_owned)
    })
    .await
}

async fn webhook_valid(sim: &SimProcess) -> bool {
    let list: Value = sim
        .api(Method::GET, "/2/webhooks")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["data"][0]["valid"] == true
}

/// An OAuth 1.0a user-context request, signed as account `index`.
async fn as_user(
    sim: &SimProcess,
    index: usize,
    method: Method,
    path: &str,
    timestamp_offset: i64,
) -> reqwest::RequestBuilder {
    let creds = sim.accounts().await;
    let account = &creds["accounts"][index];
    let credentials = aaa_oauth1::Credentials {
        consumer_key: creds["app"]["consumer_key"].as_str().unwrap().into(),
        consumer_secret: creds["app"]["consumer_secret"].as_str().unwrap().into(),
        token: account["access_token"].as_str().unwrap().into(),
        token_secret: account["access_token_secret"].as_str().unwrap().into(),
    };
    let url = format!("{}{path}", sim.url);
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let timestamp = (Utc::now().timestamp() + timestamp_offset) as u64;
    let header = aaa_oauth1::authorization_header(
        method.as_str(),
        &url,
        &[],
        &credentials,
        &nonce,
        timestamp,
    );
    reqwest::Client::new()
        .request(method, url)
        .header("authorization", header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_slow_crc_answers_invalidate_the_webhook_and_put_recovers_it() {
    let hook = Hook::start().await;
    let sim = SimProcess::start(BIN.as_ref(), SECRET, &[]).await;
    let id = register(&sim, &hook.url).await;
    let (status, _) = reason(
        as_user(
            &sim,
            0,
            Method::POST,
            &format!("/2/account_activity/webhooks/{id}/subscriptions/all"),
            0,
        )
        .await
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);

    hook.set(WRONG);
    let put = sim
        .api(Method::PUT, &format!("/2/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(reason(put).await, (400, "CrcValidationFailed".into()));
    assert!(!webhook_valid(&sim).await);

    // While invalid, X neither delivers nor retries.
    let owed = sim.generate(5).await;
    let summary = sim.settled(WAIT).await;
    assert_eq!(summary["missing"], owed);
    assert!(hook.received().is_empty());
    let attempts: Vec<Value> = sim
        .truth()
        .await
        .iter()
        .flat_map(|l| l["attempts"].as_array().unwrap().clone())
        .collect();
    assert!(
        attempts.iter().all(|a| a["outcome"] == "webhook_invalid"),
        "{attempts:?}"
    );

    hook.set(CORRECT);
    let put = sim
        .api(Method::PUT, &format!("/2/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    assert!(webhook_valid(&sim).await);
    let more = sim.generate(5).await;
    sim.settled(WAIT).await;
    assert_eq!(hook.received().len() as u64, more);

    // Slower than X's 3 s is as bad as wrong.
    hook.set(SLOW);
    let started = Instant::now();
    let put = sim
        .api(Method::PUT, &format!("/2/webhooks/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(reason(put).await, (400, "CrcValidationFailed".into()));
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(!webhook_valid(&sim).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_crc_invalidates_a_webhook_that_answers_wrongly() {
    let hook = Hook::start().await;
    let epoch = Utc::now().to_rfc3339();
    // One simulated CRC interval (60 s) per real second.
    let sim = SimProcess::start(
        BIN.as_ref(),
        SECRET,
        &[
            "--clock-speed",
            "60",
            "--clock-real-epoch",
            &epoch,
            "--crc-interval-secs",
            "60",
        ],
    )
    .await;
    register(&sim, &hook.url).await;
    hook.set(WRONG);
    eventually(
        WAIT,
        "the scheduled CRC to invalidate the webhook",
        || async { (!webhook_valid(&sim).await).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_need_a_valid_oauth_signature_and_report_every_reason() {
    let hook = Hook::start().await;
    let sim = SimProcess::start(BIN.as_ref(), SECRET, &["--provisioned-count", "2"]).await;
    let id = register(&sim, &hook.url).await;
    let path = format!("/2/account_activity/webhooks/{id}/subscriptions/all");

    let ok = as_user(&sim, 0, Method::POST, &path, 0)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let again = as_user(&sim, 0, Method::POST, &path, 0)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(
        reason(again).await,
        (400, "DuplicateSubscriptionFailed".into())
    );
    let check: Value = as_user(&sim, 0, Method::GET, &path, 0)
        .await
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(check["data"]["subscribed"], true);

    // Tampered: signed for one URL, sent to another; a stale timestamp; a replayed nonce.
    let signed_elsewhere = as_user(
        &sim,
        1,
        Method::POST,
        "/2/account_activity/webhooks/999/subscriptions/all",
        0,
    )
    .await
    .build()
    .unwrap();
    let mut tampered = signed_elsewhere;
    *tampered.url_mut() = format!("{}{path}", sim.url).parse().unwrap();
    assert_eq!(
        reqwest::Client::new()
            .execute(tampered)
            .await
            .unwrap()
            .status(),
        401
    );
    let stale = as_user(&sim, 1, Method::POST, &path, -3_600)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);
    let once = as_user(&sim, 1, Method::GET, &path, 0)
        .await
        .build()
        .unwrap();
    let replayed = once.try_clone().unwrap();
    assert_eq!(
        reqwest::Client::new().execute(once).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::Client::new()
            .execute(replayed)
            .await
            .unwrap()
            .status(),
        401
    );

    let unknown = as_user(
        &sim,
        1,
        Method::POST,
        "/2/account_activity/webhooks/999/subscriptions/all",
        0,
    )
    .await
    .send()
    .await
    .unwrap();
    assert_eq!(reason(unknown).await, (400, "WebhookIdInvalid".into()));

    assert_eq!(
        as_user(&sim, 1, Method::POST, &path, 0)
            .await
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let over = as_user(&sim, 2, Method::POST, &path, 0)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(
        reason(over).await,
        (400, "SubscriptionLimitExceeded".into())
    );

    let list: Value = sim
        .api(Method::GET, &format!("{path}/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"]["subscriptions"].as_array().unwrap().len(), 2);
    let count: Value = sim
        .api(Method::GET, "/2/account_activity/subscriptions/count")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count["data"]["subscriptions_count_all"], "2");

    let user1 = sim.accounts().await["accounts"][1]["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let remove = format!("/2/account_activity/webhooks/{id}/subscriptions/{user1}/all");
    assert_eq!(
        sim.api(Method::DELETE, &remove)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let gone = sim.api(Method::DELETE, &remove).send().await.unwrap();
    assert_eq!(reason(gone).await, (400, "SubscriptionNotFound".into()));
    let no_bearer = reqwest::Client::new()
        .get(format!("{}{path}/list", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(no_bearer.status(), 401);
}

fn minute(t: DateTime<Utc>) -> String {
    aaa_replay_window::format_minute(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_validates_redelivers_the_window_and_honours_one_job_per_webhook() {
    let hook = Hook::start().await;
    let real_epoch = Utc::now();
    // Ten simulated minutes per real second.
    let clock = Clock::Scaled {
        real_epoch,
        sim_epoch: real_epoch,
        speed: 600.0,
    };
    let epoch = real_epoch.to_rfc3339();
    let sim = SimProcess::start(
        BIN.as_ref(),
        SECRET,
        &[
            "--clock-speed",
            "600",
            "--clock-real-epoch",
            &epoch,
            "--register-webhook",
            &hook.url,
            "--subscribe",
            "5",
            "--interaction-share",
            "0",
            "--revoke-share",
            "0",
        ],
    )
    .await;
    let id = bootstrap_webhook_id(&sim).await;

    let owed = sim.generate(30).await;
    sim.settled(WAIT).await;
    assert_eq!(hook.received().len() as u64, owed);
    let created: Vec<DateTime<Utc>> = sim
        .truth()
        .await
        .iter()
        .map(|l| l["created_at"].as_str().unwrap().parse().unwrap())
        .collect();
    let first = *created.iter().min().unwrap();
    let last = *created.iter().max().unwrap();
    let from = first - TimeDelta::minutes(1);
    let to = last + TimeDelta::minutes(2);
    // Wait (in simulated time) until the window is replayable: to ≤ now − 10 min, from ≤ now − 31 min.
    eventually(WAIT, "the window to age", || async {
        let now = clock.now();
        (to <= now - TimeDelta::minutes(11) && from <= now - TimeDelta::minutes(32)).then_some(())
    })
    .await;
    let replay = |from: String, to: String, webhook: String| {
        sim.api(Method::POST, "/2/webhooks/replay")
            .json(&json!({"webhook_id": webhook, "from_date": from, "to_date": to}))
            .send()
    };
    // A job X accepted for the window; its id.
    let submitted_job = || async {
        let accepted: Value = replay(minute(from), minute(to), id.clone())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        accepted["data"]["job_id"]
            .as_str()
            .expect("a job id")
            .to_owned()
    };

    assert_eq!(
        reason(
            replay("2026-11-25".into(), minute(to), id.clone())
                .await
                .unwrap()
        )
        .await,
        (400, "QueryParamInvalid".into())
    );
    assert_eq!(
        reason(replay(minute(to), minute(from), id.clone()).await.unwrap()).await,
        (400, "QueryParamInvalid".into())
    );
    assert_eq!(
        reason(replay(minute(from), minute(to), "42".into()).await.unwrap()).await,
        (400, "WebhookIdInvalid".into())
    );

    // A full job: every event of the window again, then replay_job_status Complete.
    let job_id = submitted_job().await;
    let status = |state: &'static str, job_id: String| {
        let hook = hook.clone();
        async move {
            hook.received().into_iter().find(|b| {
                b["replay_job_status"]["job_id"] == job_id.as_str()
                    && b["replay_job_status"]["job_state"] == state
            })
        }
    };
    eventually(WAIT, "replay_job_status Complete", || {
        status("Complete", job_id.clone())
    })
    .await;
    let bodies = hook.received();
    assert_eq!(
        bodies.len() as u64,
        2 * owed + 1,
        "every event of the window re-delivered once, plus the status"
    );

    // A job that fails partway says Incomplete.
    sim.set_faults(json!({"next_replay": "incomplete"})).await;
    let job_id = submitted_job().await;
    eventually(WAIT, "replay_job_status Incomplete", || {
        status("Incomplete", job_id.clone())
    })
    .await;

    // X runs a CRC first.
    hook.set(WRONG);
    assert_eq!(
        reason(replay(minute(from), minute(to), id.clone()).await.unwrap()).await,
        (400, "CrcValidationFailed".into())
    );
    hook.set(CORRECT);

    // One job per webhook.
    sim.set_faults(json!({"next_replay": "never_finish"})).await;
    assert_eq!(
        replay(minute(from), minute(to), id.clone())
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reason(replay(minute(from), minute(to), id.clone()).await.unwrap()).await,
        (409, "ReplayConflictError".into())
    );

    // 100 requests per 15 minutes (1.5 real seconds): a burst of 101 meets
    // the limit. Repeated so a slow machine cannot spread one burst over two
    // windows.
    let mut limited = None;
    for _ in 0..5 {
        let burst = (0..101).map(|_| replay("bad".into(), "bad".into(), id.clone()));
        limited = futures::future::join_all(burst)
            .await
            .into_iter()
            .map(Result::unwrap)
            .find(|r| r.status() == 429);
        if limited.is_some() {
            break;
        }
    }
    let limited = limited.expect("the replay endpoint's rate limit");
    let reset: i64 = limited.headers()["x-rate-limit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        reset > clock.now().timestamp() - 60,
        "reset {reset} is in the (simulated) future"
    );

    // The Account Activity replay endpoint is gone (X retired it on
    // 2026-03-25): X answers 404, as for any path it does not serve.
    let retired = sim
        .api(
            Method::POST,
            &format!(
                "/2/account_activity/replay/webhooks/{id}/subscriptions/all?from_date={}&to_date={}",
                minute(from),
                minute(to)
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(retired.status(), 404);
    let body: Value = retired.json().await.unwrap();
    assert_eq!(body["title"], "Not Found Error", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_command_lose_duplicate_and_refuse_as_ordered() {
    let hook = Hook::start().await;
    let sim = SimProcess::start(
        BIN.as_ref(),
        SECRET,
        &[
            "--register-webhook",
            &hook.url,
            "--subscribe",
            "3",
            "--interaction-share",
            "0",
            "--revoke-share",
            "0",
        ],
    )
    .await;
    let id = bootstrap_webhook_id(&sim).await;
    let outcomes = |outcome: &'static str| {
        let sim = &sim;
        async move {
            sim.truth()
                .await
                .iter()
                .filter(|l| {
                    l["attempts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|a| a["outcome"] == outcome)
                })
                .count()
        }
    };

    sim.set_faults(json!({"api_error_share": 1.0})).await;
    assert_eq!(
        sim.api(Method::GET, "/2/webhooks")
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    sim.set_faults(json!({"duplicate_share": 1.0})).await;
    let owed = sim.generate(5).await;
    sim.settled(WAIT).await;
    eventually(WAIT, "every delivery twice", || async {
        (hook.received().len() as u64 == 2 * owed).then_some(())
    })
    .await;

    sim.set_faults(json!({"drop_share": 1.0})).await;
    let dropped = sim.generate(5).await;
    let summary = sim.settled(WAIT).await;
    assert_eq!(summary["missing"], dropped);
    assert_eq!(outcomes("dropped").await as u64, dropped);

    let now = Utc::now();
    sim.set_faults(
        json!({"outage": {"from": now - TimeDelta::minutes(1), "to": now + TimeDelta::hours(1)}}),
    )
    .await;
    let in_outage = sim.generate(3).await;
    let summary = sim.settled(WAIT).await;
    assert_eq!(summary["missing"], dropped + in_outage);
    assert_eq!(outcomes("outage").await as u64, in_outage);

    sim.set_faults(json!({})).await;
    let invalidated = reqwest::Client::new()
        .post(format!("{}/sim/webhooks/{id}/invalidate", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(invalidated.status(), 200);
    assert!(!webhook_valid(&sim).await);
    let while_invalid = sim.generate(2).await;
    let summary = sim.settled(WAIT).await;
    assert_eq!(summary["missing"], dropped + in_outage + while_invalid);
    assert_eq!(
        hook.received().len() as u64,
        2 * owed,
        "nothing reached the webhook after the duplicates"
    );
}

/// X's webhook management accepts OAuth 1.0a user context as well as the
/// app's bearer token; anything else is refused. Listing subscriptions
/// names the webhook's URL, as X does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_managed_with_a_bearer_token_or_oauth_user_context() {
    let hook = Hook::start().await;
    let sim = SimProcess::start(BIN.as_ref(), SECRET, &[]).await;
    let registered = as_user(&sim, 0, Method::POST, "/2/webhooks", 0)
        .await
        .json(&json!({"url": hook.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);
    let body: Value = registered.json().await.unwrap();
    let id = body["data"]["id"].as_str().unwrap().to_owned();
    let path = format!("/2/webhooks/{id}");
    let revalidated = as_user(&sim, 1, Method::PUT, &path, 0)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), 200);
    // Neither credential: refused.
    let anonymous = reqwest::Client::new()
        .put(format!("{}{path}", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // A user signature replayed for another request is no credential.
    let stale = as_user(&sim, 0, Method::PUT, &path, -3600)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);
    let subscribed = as_user(
        &sim,
        0,
        Method::POST,
        &format!("/2/account_activity/webhooks/{id}/subscriptions/all"),
        0,
    )
    .await
    .send()
    .await
    .unwrap();
    assert_eq!(subscribed.status(), 200);
    let list: Value = sim
        .api(
            Method::GET,
            &format!("/2/account_activity/webhooks/{id}/subscriptions/all/list"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"]["webhook_url"], hook.url.as_str(), "{list}");
    assert_eq!(
        list["data"]["subscriptions"].as_array().map(Vec::len),
        Some(1)
    );
    let deleted = as_user(&sim, 0, Method::DELETE, &path, 0)
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
}

/// X's official Python SDK (xdk, pinned in tests/xdk/requirements.txt)
/// parses every answer of the simulator it can request: webhooks, replay
/// through `POST /2/webhooks/replay`, X Activity API subscriptions (paged,
/// one per page), Account Activity counts and lists. The SDK validates each
/// response against X's published schema (`tests/xdk/check_sim.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xs_official_sdk_parses_every_simulator_answer_it_can_request() {
    let python = std::env::var("AAA_XDK_PYTHON").expect(
        "AAA_XDK_PYTHON: the Python with X's SDK (scripts/test.sh installs it: scripts/lib.sh ensure_xdk)",
    );
    let stack = aaa_testkit::Stack::start(BIN, aaa_testkit::StackOptions::scaled(600.0)).await;
    let sim = stack.start_sim(aaa_testkit::SMALL_SIM_ARGS).await;
    let clock = stack.options.clock();
    let start = clock.now();
    // A window X will replay: from at least 31 minutes ago, to at least 10.
    eventually(WAIT, "a replayable window", || async {
        (clock.now() > start + TimeDelta::minutes(36)).then_some(())
    })
    .await;
    let accounts = sim.accounts().await;
    let user = accounts["accounts"][0]["user_id"]
        .as_str()
        .expect("an account")
        .to_owned();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xdk/check_sim.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .env("SIM_URL", &sim.url)
        .env("SIM_BEARER", &sim.bearer)
        .env("WEBHOOK_ID", &stack.webhook_id)
        .env("USER_ID", &user)
        .env("REPLAY_FROM", minute(start))
        .env("REPLAY_TO", minute(start + TimeDelta::minutes(20)))
        .output()
        .await
        .expect("run the SDK check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let calls: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON line per call"))
        .collect();
    assert_eq!(calls.len(), 11, "{stdout}");
    assert!(calls.iter().all(|c| c["parsed"] == true), "{stdout}");
}
