//! The watermark end to end, on a scaled clock (1 real second = 5 simulated
//! minutes), with the simulator as X, a real broker and Postgres: gaps are
//! found, replayed one job per webhook, reconciled, and afterwards Postgres
//! holds exactly what X delivered, nothing missing.

use std::time::{Duration, Instant};

use aaa_testkit::{
    SMALL_SIM_ARGS, SimProcess, Stack, StackOptions, TestDb, delivered_keys, eventually,
    stored_keys,
};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aaa");
const WAIT: Duration = Duration::from_secs(120);
const SPEED: f64 = 300.0;

async fn windows(db: &TestDb) -> Vec<(String, i32, i32, i64, i64)> {
    sqlx::query_as("SELECT state, attempts, conflicts, recovered, duplicates FROM replay_windows ORDER BY window_from")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// Waits until every gap is reconciled and X owes nothing; then checks that
/// Postgres holds exactly what X delivered.
async fn converged(stack: &Stack, sim: &SimProcess) -> Value {
    // What was last seen, for the failure message.
    let last = std::sync::Mutex::new(String::new());
    let summary = tokio::time::timeout(
        WAIT,
        eventually(
            WAIT * 2,
            "every gap reconciled and nothing missing",
            || async {
                let open: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM replay_windows WHERE state IN ('pending', 'submitted')",
                )
                .fetch_one(&stack.db.pool)
                .await
                .ok()?;
                let reconciled: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM replay_windows WHERE state = 'reconciled'",
                )
                .fetch_one(&stack.db.pool)
                .await
                .ok()?;
                let summary = sim.summary().await;
                *last.lock().unwrap_or_else(|p| p.into_inner()) =
                    format!("open windows {open}, reconciled {reconciled}, X: {summary}");
                (open == 0 && reconciled > 0 && summary["missing"] == 0 && summary["pending"] == 0)
                    .then_some(summary)
            },
        ),
    )
    .await;
    let Ok(summary) = summary else {
        let windows: Vec<(String, String, i32, i32)> = sqlx::query_as(
            "SELECT kind, state, attempts, conflicts FROM replay_windows ORDER BY window_from",
        )
        .fetch_all(&stack.db.pool)
        .await
        .unwrap_or_default();
        panic!(
            "not converged after {WAIT:?}: {}; windows (kind, state, attempts, conflicts): {windows:?}",
            last.lock().unwrap_or_else(|p| p.into_inner())
        );
    };
    let expected = delivered_keys(sim).await;
    eventually(
        WAIT,
        "Postgres to hold every delivered activity",
        || async {
            (stack.db.count("SELECT count(*) FROM events").await == expected.len() as i64)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        stored_keys(&stack.db).await,
        expected,
        "Postgres holds exactly what X delivered"
    );
    summary
}

/// Live traffic; the receiver down for `outage` (simulated) and back for
/// 2 more minutes; traffic stopped. Returns when the outage began.
async fn outage_under_traffic(
    stack: &mut Stack,
    sim: &SimProcess,
    outage: TimeDelta,
) -> DateTime<Utc> {
    let clock = stack.options.clock();
    let traffic = stack.start_traffic(sim, WAIT).await;
    stack.receiver.kill();
    let outage_start = clock.now();
    wait_until_sim(clock, outage_start + outage).await;
    stack.restart_receiver().await;
    wait_until_sim(clock, clock.now() + TimeDelta::minutes(2)).await;
    traffic.stop().await;
    outage_start
}

async fn wait_until_sim(clock: aaa_common::Clock, at: DateTime<Utc>) {
    eventually(WAIT, "simulated time to pass", || async {
        (clock.now() >= at).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_outage_is_found_replayed_and_recovered() {
    let mut stack = Stack::start(BIN, StackOptions::scaled(SPEED)).await;
    let clock = stack.options.clock();
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    let _watermark = stack.spawn_watermark(&sim, "watermark-a");
    let traffic = stack.start_traffic(&sim, WAIT).await;

    // The receiver is down for 20 simulated minutes; X gives up on what it
    // could not deliver (its retries end within 5 minutes).
    stack.receiver.kill();
    let outage_start = clock.now();
    wait_until_sim(clock, outage_start + TimeDelta::minutes(20)).await;
    stack.restart_receiver().await;
    let outage_end = clock.now();
    let real_end = Instant::now();
    wait_until_sim(clock, outage_end + TimeDelta::minutes(2)).await;
    traffic.stop().await;
    let lost = eventually(WAIT, "X to give up on the outage's deliveries", || async {
        let summary = sim.summary().await;
        (summary["pending"] == 0).then(|| summary["missing"].as_i64().unwrap_or(0))
    })
    .await;
    assert!(lost > 0, "the outage lost deliveries");

    let summary = converged(&stack, &sim).await;
    let recovered_at = clock.now();
    let windows = windows(&stack.db).await;
    let recovered: i64 = windows.iter().map(|w| w.3).sum();
    // X counts a delivery as lost when the receiver died before answering,
    // even if the receiver had already handed it to Kafka: its replayed copy
    // is then a duplicate. So recovered ≤ lost; that nothing is missing is
    // proven above by ground truth == Postgres.
    assert!(
        recovered > 0 && recovered <= lost,
        "lost deliveries came back by replay: {recovered} recovered of {lost} lost, windows {windows:?}"
    );
    assert_eq!(summary["delivered_by_replay_only"], lost);
    let via_replay = stack
        .db
        .count("SELECT count(*) FROM events WHERE via_replay")
        .await;
    assert_eq!(
        via_replay, recovered,
        "every recovered row is tagged via_replay"
    );

    // What an operator sees, as a reader.
    let reader_url = stack.db.reader_url().await;
    let output = std::process::Command::new(BIN)
        .args(["gaps", "list", "--json"])
        .env("AAA_DATABASE_URL", &reader_url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let gaps: Value = serde_json::from_slice(&output.stdout).unwrap();
    let listed: i64 = gaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] == "reconciled")
        .map(|g| g["recovered"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(
        listed, recovered,
        "aaa gaps list shows the recovery: {gaps}"
    );
    let table = std::process::Command::new(BIN)
        .args(["gaps", "list"])
        .env("AAA_DATABASE_URL", &reader_url)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("reconciled"));
    println!(
        "outage end to recovery: {} simulated minutes, {:.1} real seconds; {lost} deliveries lost and recovered; windows {windows:?}",
        (recovered_at - outage_end).num_minutes(),
        real_end.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_replay_is_submitted_again() {
    let mut stack = Stack::start(BIN, StackOptions::scaled(SPEED)).await;
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    sim.set_faults(json!({"next_replay": "incomplete"})).await;
    let _watermark = stack.spawn_watermark(&sim, "watermark-a");
    outage_under_traffic(&mut stack, &sim, TimeDelta::minutes(10)).await;

    converged(&stack, &sim).await;
    let jobs = sim.jobs().await;
    let states: Vec<&str> = jobs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["state"].as_str())
        .collect();
    assert!(
        states.contains(&"Incomplete") && states.contains(&"Complete"),
        "{states:?}"
    );
    assert!(
        windows(&stack.db).await.iter().any(|w| w.1 >= 2),
        "the window was submitted again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_job_is_waited_out_and_never_doubled() {
    let mut stack = Stack::start(BIN, StackOptions::scaled(SPEED)).await;
    let clock = stack.options.clock();
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    let outage_start = outage_under_traffic(&mut stack, &sim, TimeDelta::minutes(10)).await;

    // An operator's replay holds the webhook when the watermark starts; it
    // runs only when the test releases it.
    sim.set_faults(json!({"next_replay": "hold"})).await;
    let window_from = outage_start - TimeDelta::minutes(60);
    wait_until_sim(clock, outage_start + TimeDelta::minutes(45)).await;
    let operator = sim
        .api(reqwest::Method::POST, "/2/webhooks/replay")
        .json(&json!({"webhook_id": stack.webhook_id, "from_date": aaa_replay_window::format_minute(window_from),
                      "to_date": aaa_replay_window::format_minute(outage_start - TimeDelta::minutes(5))}))
        .send()
        .await
        .unwrap();
    assert_eq!(operator.status(), 200);
    let _watermark = stack.spawn_watermark(&sim, "watermark-a");
    eventually(
        WAIT,
        "the watermark to meet ReplayConflictError",
        || async {
            (stack
                .db
                .count("SELECT coalesce(sum(conflicts), 0)::int8 FROM replay_windows")
                .await
                > 0)
            .then_some(())
        },
    )
    .await;
    let released = reqwest::Client::new()
        .post(format!("{}/sim/jobs/release", sim.url))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), 200);
    converged(&stack, &sim).await;
    assert_no_overlapping_jobs(&sim).await;
}

/// At no moment did two jobs run for one webhook.
async fn assert_no_overlapping_jobs(sim: &SimProcess) {
    let jobs = sim.jobs().await;
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = jobs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let start = j["created_at"].as_str().unwrap().parse().unwrap();
            let end = j["finished_at"]
                .as_str()
                .map(|t| t.parse().unwrap())
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            (start, end)
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "jobs overlap: {pair:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_webhook_is_revalidated_and_its_invalid_period_replayed() {
    let stack = Stack::start(BIN, StackOptions::scaled(SPEED)).await;
    let clock = stack.options.clock();
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    let _watermark = stack.spawn_watermark(&sim, "watermark-a");
    let traffic = stack.start_traffic(&sim, WAIT).await;
    let invalidated = reqwest::Client::new()
        .post(format!(
            "{}/sim/webhooks/{}/invalidate",
            sim.url, stack.webhook_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(invalidated.status(), 200);
    // Activity while invalid, whatever the traffic's pace on a loaded
    // machine: X owes it and delivers none of it.
    sim.generate(10).await;
    // Nothing is delivered while invalid; the watermark notices and re-validates.
    eventually(
        WAIT,
        "the watermark to record the invalid webhook",
        || async {
            (stack
                .db
                .count("SELECT count(*) FROM webhook_validity WHERE NOT valid")
                .await
                > 0)
            .then_some(())
        },
    )
    .await;
    // Read from Postgres, not from X: polling X's webhook list here would
    // spend the app's read budget the watermark needs.
    eventually(
        WAIT,
        "the watermark to have the webhook re-validated",
        || async {
            (stack
                .db
                .count(
                    "SELECT count(*) FROM webhook_validity v WHERE valid AND checked_at >
                 (SELECT min(checked_at) FROM webhook_validity WHERE NOT valid)",
                )
                .await
                > 0)
            .then_some(())
        },
    )
    .await;
    wait_until_sim(clock, clock.now() + TimeDelta::minutes(2)).await;
    traffic.stop().await;
    let summary = converged(&stack, &sim).await;
    assert!(
        summary["delivered_by_replay_only"].as_i64().unwrap() > 0,
        "the invalid period was replayed: {summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_double_submit_and_a_killed_one_is_taken_over() {
    let mut stack = Stack::start(BIN, StackOptions::scaled(SPEED)).await;
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    let mut first = stack.spawn_watermark(&sim, "watermark-a");
    let _second = stack.spawn_watermark(&sim, "watermark-b");
    outage_under_traffic(&mut stack, &sim, TimeDelta::minutes(10)).await;

    // Kill -9 one replica as soon as a job is in flight; the other finishes.
    stack.replay_in_flight(WAIT).await;
    first.kill();
    converged(&stack, &sim).await;
    assert_no_overlapping_jobs(&sim).await;
    let jobs = sim.jobs().await["data"].as_array().unwrap().len() as i64;
    let attempts = stack
        .db
        .count("SELECT coalesce(sum(attempts - conflicts), 0)::int8 FROM replay_windows")
        .await;
    assert_eq!(
        jobs, attempts,
        "every job X ran was one accepted submission"
    );
}

/// Readers cannot interfere with the watermark: the advisory lock it once
/// used, held by `aaa_reader`, stops nothing, and the lease table is
/// read-only to readers. A holder that freezes (SIGSTOP) is replaced by the
/// other replica within the lease time (3 s here), and judging goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_cannot_stall_the_watermark_and_a_frozen_holder_is_replaced() {
    let stack = Stack::start(BIN, StackOptions::scaled(SPEED)).await;
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    let reader = sqlx::PgPool::connect(&stack.db.reader_url().await)
        .await
        .unwrap();
    let mut held = reader.acquire().await.unwrap();
    let lock = format!("aaa-watermark:{}", stack.webhook_id);
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(&lock)
        .execute(&mut *held)
        .await
        .unwrap();
    let first = stack.spawn_watermark(&sim, "watermark-a");

    let holder = || async {
        sqlx::query_scalar::<_, String>("SELECT holder FROM watermark_leases WHERE webhook_id = $1")
            .bind(&stack.webhook_id)
            .fetch_optional(&reader)
            .await
            .unwrap()
    };
    let judged = || async {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT judged_to FROM watermark_progress WHERE webhook_id = $1",
        )
        .bind(&stack.webhook_id)
        .fetch_optional(&reader)
        .await
        .unwrap()
    };
    eventually(WAIT, "watermark-a to hold the lease and judge", || async {
        (holder().await.as_deref() == Some("watermark-a") && judged().await.is_some()).then_some(())
    })
    .await;

    for statement in [
        "INSERT INTO watermark_leases VALUES ('1', 'reader', now(), now(), now() + interval '1 day')",
        "UPDATE watermark_leases SET holder = 'reader', expires_at = now() + interval '1 day'",
        "DELETE FROM watermark_leases",
    ] {
        let error = sqlx::query(statement).execute(&reader).await.unwrap_err();
        let code = error.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
    }

    let _second = stack.spawn_watermark(&sim, "watermark-b");
    first.freeze();
    let frozen = Instant::now();
    eventually(
        WAIT,
        "watermark-b to take the frozen holder's lease",
        || async { (holder().await.as_deref() == Some("watermark-b")).then_some(()) },
    )
    .await;
    let took = frozen.elapsed();
    assert!(took < Duration::from_secs(15), "taken over after {took:?}");
    let before = judged().await;
    eventually(WAIT, "judging to go on under watermark-b", || async {
        (judged().await > before).then_some(())
    })
    .await;
    first.thaw();
}

/// A replica paused for longer than its tick (SIGSTOP here; a paused VM or a
/// starved process alike) goes on with its rounds once it runs again. The
/// scheduler's own fixed-interval jobs started one late round after such a
/// pause and then none, for good, with /healthz green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_goes_on_with_its_rounds() {
    let stack = Stack::start(BIN, StackOptions::scaled(SPEED)).await;
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    let watermark = stack.spawn_watermark(&sim, "watermark-a");
    let admin = format!("http://{}", watermark.addr("admin").await);
    let rounds = || aaa_testkit::metric(&admin, "aaa_watermark_round_seconds_count");
    eventually(WAIT, "a first round", || async {
        (rounds().await >= 1.0).then_some(())
    })
    .await;
    watermark.freeze();
    // The pause's length (four ticks), not a synchronisation.
    tokio::time::sleep(Duration::from_secs(4)).await;
    watermark.thaw();
    let after_thaw = rounds().await;
    eventually(WAIT, "three more rounds after the pause", || async {
        (rounds().await >= after_thaw + 3.0).then_some(())
    })
    .await;
}

/// Maintenance deletes, as `aaa_watermark`, what only the watermark needs once
/// it is past the horizon, in batches, and nothing a round may still read:
/// pending windows, and a stopped webhook's history back to 26 h before
/// where it was judged. Dead letters stay unless a retention is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_prunes_only_what_no_round_can_read() {
    use aaa_watermark::maintenance::{Retention, prune};
    let db = TestDb::migrated().await;
    let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
    let days = |d: i64| now - TimeDelta::days(d);
    // Webhook "live" judged up to now; webhook "stopped" judged 10 days ago.
    for (webhook, judged) in [("live", now), ("stopped", days(10))] {
        sqlx::query("INSERT INTO watermark_progress (webhook_id, judged_to) VALUES ($1, $2)")
            .bind(webhook)
            .bind(judged)
            .execute(&db.pool)
            .await
            .unwrap();
        // A heartbeat every hour for 12 days, and a validity sample.
        for hour in 0..(12 * 24) {
            let at = now - TimeDelta::hours(hour);
            sqlx::query("INSERT INTO coverage_heartbeats (replica_id, webhook_id, covered_from, covered_to, accepted, refused) VALUES ('r', $1, $2, $3, 1, 0)")
                .bind(webhook)
                .bind(at - TimeDelta::hours(1))
                .bind(at)
                .execute(&db.pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO webhook_validity (webhook_id, checked_at, valid) VALUES ($1, $2, true)")
                .bind(webhook)
                .bind(at)
                .execute(&db.pool)
                .await
                .unwrap();
        }
        // Distinct windows (a window is planned once): each starts a
        // minute later than the one before.
        for (i, (state, age)) in [
            ("reconciled", 5),
            ("expired", 5),
            ("pending", 5),
            ("reconciled", 1),
        ]
        .into_iter()
        .enumerate()
        {
            sqlx::query("INSERT INTO replay_windows (webhook_id, window_from, window_to, state, kind, created_at) VALUES ($1, $2, $3, $4, 'gap', $3)")
                .bind(webhook)
                .bind(days(age) - TimeDelta::hours(1) + TimeDelta::minutes(i as i64))
                .bind(days(age))
                .bind(state)
                .execute(&db.pool)
                .await
                .unwrap();
        }
    }
    sqlx::query("INSERT INTO dead_letters (activity_index, error_kind, reason, raw, raw_sha256, kafka_topic, kafka_partition, kafka_offset, received_at) VALUES (-1, 'not_json', 'x', 'x', 'h', 't', 0, 0, $1)")
        .bind(days(30))
        .execute(&db.pool)
        .await
        .unwrap();

    let writer = db.watermark_pool().await;
    let retention = Retention {
        horizon: TimeDelta::hours(72),
        dead_letters: None,
        batch: 50,
    };
    let deleted = prune(&writer, now, &retention).await.unwrap();

    let db = &db;
    let count = |sql: &'static str| async move { db.count(sql).await };
    // live: 72 h of the hourly heartbeats stay (the one ending exactly at
    // the cutoff included); stopped: everything from 26 h before day 10.
    let live_kept =
        count("SELECT count(*) FROM coverage_heartbeats WHERE webhook_id = 'live'").await;
    assert_eq!(live_kept, 73);
    let stopped_oldest: DateTime<Utc> = sqlx::query_scalar(
        "SELECT min(covered_to) FROM coverage_heartbeats WHERE webhook_id = 'stopped'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stopped_oldest, days(10) - TimeDelta::hours(26));
    assert_eq!(
        count("SELECT count(*) FROM webhook_validity WHERE webhook_id = 'live'").await,
        73
    );
    // Settled windows past the horizon go; pending ones and recent ones stay.
    let windows: Vec<(String, String)> = sqlx::query_as(
        "SELECT webhook_id, state FROM replay_windows ORDER BY webhook_id, state, window_to",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        windows,
        [
            ("live".into(), "pending".into()),
            ("live".into(), "reconciled".into()),
            ("stopped".into(), "expired".into()),
            ("stopped".into(), "pending".into()),
            ("stopped".into(), "reconciled".into()),
            ("stopped".into(), "reconciled".into()),
        ]
    );
    // live: 288 - 73; stopped: those ending more than 266 h ago (267..=287).
    assert_eq!(deleted["coverage_heartbeats"], 215 + 21);
    assert_eq!(count("SELECT count(*) FROM dead_letters").await, 1);

    // With a dead-letter retention, old dead letters go too.
    let deleted = prune(
        &writer,
        now,
        &Retention {
            dead_letters: Some(TimeDelta::days(7)),
            ..retention
        },
    )
    .await
    .unwrap();
    assert_eq!(deleted["dead_letters"], 1);
    assert_eq!(deleted["coverage_heartbeats"], 0, "nothing left to prune");
}

/// With an event retention, old events keep their identity (so a late
/// duplicate is still recognised, and normalized rows keep their event_id)
/// and lose their payload, and the index of the posts it held
/// (`event_posts`) with it; each run starts where the last stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_retention_drops_old_payloads_and_keeps_identity() {
    use aaa_watermark::maintenance::drop_old_payloads;
    let db = TestDb::migrated().await;
    let now = Utc::now();
    let stored = |days: i64| now - TimeDelta::days(days);
    // Stored in id order: six 40 days ago, then four yesterday; each a like
    // of a post of its own, indexed as the consumer indexes it.
    for (i, age) in [40, 40, 40, 40, 40, 40, 1, 1, 1, 1].into_iter().enumerate() {
        let payload =
            json!({"id": i, "favorited_status": {"id_str": format!("70{i}"), "text": "hi"}});
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (for_user_id, kind, natural_key, payload, context, activity_index, kafka_topic, kafka_partition, kafka_offset, received_at, stored_at)
             VALUES ('1', 'favorite_events', $1, $4::text::json, '{\"users\": {}}', 0, 't', 0, $2, $3, $3) RETURNING id",
        )
        .bind(format!("fav-{i}"))
        .bind(i as i64)
        .bind(stored(age))
        .bind(payload.to_string())
        .fetch_one(&db.pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO event_posts (post_id, event_id) VALUES ($1, $2)")
            .bind(format!("70{i}"))
            .bind(id)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let indexed = || async {
        sqlx::query_scalar::<_, String>("SELECT post_id FROM event_posts ORDER BY post_id")
            .fetch_all(&db.pool)
            .await
            .unwrap()
    };
    let writer = db.watermark_pool().await;
    let budget = Duration::from_secs(60);
    // Batches of 4. With its time spent, a run starts no second batch; the
    // next continues from there, past a full batch, and stops at the first
    // row too young.
    assert_eq!(
        drop_old_payloads(&writer, stored(30), 4, Duration::ZERO)
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        drop_old_payloads(&writer, stored(30), 4, budget)
            .await
            .unwrap(),
        2
    );
    let rows: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT natural_key, payload::text, context::text FROM events ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 10, "identity stays");
    for (key, payload, context) in &rows[..6] {
        assert!(
            payload.is_none() && context == "{}",
            "{key}: {payload:?} {context}"
        );
    }
    for (key, payload, _) in &rows[6..] {
        assert!(payload.is_some(), "{key} is young");
    }
    assert_eq!(
        indexed().await,
        ["706", "707", "708", "709"],
        "the posts of dropped payloads are no longer indexed"
    );
    assert_eq!(
        drop_old_payloads(&writer, stored(30), 4, budget)
            .await
            .unwrap(),
        0
    );
    let done_to: i64 =
        sqlx::query_scalar("SELECT done_to FROM retention_progress WHERE table_name = 'events'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let sixth: i64 = sqlx::query_scalar("SELECT id FROM events WHERE natural_key = 'fav-5'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(done_to, sixth, "the next run starts after the last old row");
    // Once the young rows age, the next run takes them.
    assert_eq!(drop_old_payloads(&writer, now, 4, budget).await.unwrap(), 4);
}

/// A watermark installed against a webhook X registered more than 25 h ago
/// (nothing of ours ran then): the first round replays what X can still
/// replay, and no later round judges the time before that, so nothing is
/// marked expired and no critical alert fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installing_against_an_old_webhook_expires_nothing() {
    let mut stack = Stack::start(
        BIN,
        StackOptions {
            heartbeat_secs: 600,
            ..StackOptions::scaled(3000.0)
        },
    )
    .await;
    let clock = stack.options.clock();
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    // The webhook exists at X; nothing of ours serves it for 26 h.
    stack.receiver.kill();
    wait_until_sim(clock, clock.now() + TimeDelta::hours(26)).await;
    stack.restart_receiver().await;
    let watermark = stack.spawn_watermark(&sim, "watermark-a");
    let judged = || async {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT judged_to FROM watermark_progress WHERE webhook_id = $1",
        )
        .bind(&stack.webhook_id)
        .fetch_optional(&stack.db.pool)
        .await
        .unwrap()
    };
    let first = eventually(WAIT, "a first round", || async { judged().await }).await;
    // Several more rounds (each judges up to the consumer's horizon).
    eventually(WAIT, "rounds covering two more simulated hours", || async {
        judged()
            .await
            .filter(|j| *j > first + TimeDelta::hours(2))
            .map(|_| ())
    })
    .await;
    let tracked_from: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT tracked_from FROM watermark_progress WHERE webhook_id = $1")
            .bind(&stack.webhook_id)
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    let tracked_from = tracked_from.expect("tracking start recorded");
    assert!(tracked_from <= first, "{tracked_from} after {first}");
    // Nothing before tracking began is judged, so nothing there expires. (At
    // 3000x a round is 50 simulated minutes: the oldest backfill window may
    // age out while it waits; that is after tracking began, and counted.)
    let before: Vec<(DateTime<Utc>, DateTime<Utc>, Option<String>)> = sqlx::query_as(
        "SELECT window_from, window_to, last_error FROM replay_windows
         WHERE state = 'expired' AND window_from < $1",
    )
    .bind(tracked_from)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(before, [], "expired before tracking began ({tracked_from})");
    let admin = format!("http://{}", watermark.addr("admin").await);
    let counted = aaa_testkit::metric(&admin, "aaa_watermark_expired_minutes_total").await;
    let marked = stack
        .db
        .count("SELECT coalesce(sum(extract(epoch FROM window_to - window_from) / 60), 0)::int8 FROM replay_windows WHERE state = 'expired' AND kind = 'gap'")
        .await;
    assert_eq!(counted, marked as f64, "every expired minute counted");
}

/// The first round of a watermark marks where tracking began even when it
/// can judge nothing yet (the consumer has not stored its fences). A
/// receiver outage after that, found only when a watermark runs again 25 h
/// later, is expired and counted, never skipped as "before tracking".
/// (1 real second = 50 simulated minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_after_tracking_began_expires_even_if_nothing_was_judged_then() {
    let mut stack = Stack::start(
        BIN,
        StackOptions {
            heartbeat_secs: 600,
            ..StackOptions::scaled(3000.0)
        },
    )
    .await;
    let clock = stack.options.clock();
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    stack.consumer.freeze();
    let mut watermark = stack.spawn_watermark(&sim, "watermark-a");
    let tracked_from: DateTime<Utc> = eventually(WAIT, "tracking to begin", || async {
        sqlx::query_scalar("SELECT tracked_from FROM watermark_progress WHERE webhook_id = $1")
            .bind(&stack.webhook_id)
            .fetch_optional(&stack.db.pool)
            .await
            .ok()
            .flatten()
            .flatten()
    })
    .await;
    watermark.kill();
    stack.consumer.thaw();
    let outage_from = clock.now();
    assert!(tracked_from < outage_from - TimeDelta::hours(23));
    stack.receiver.kill();
    wait_until_sim(clock, outage_from + TimeDelta::hours(2)).await;
    let outage_to = clock.now();
    stack.restart_receiver().await;
    wait_until_sim(clock, outage_to + TimeDelta::hours(25)).await;
    let watermark = stack.spawn_watermark(&sim, "watermark-b");
    let inside = TimeDelta::minutes(30);
    let expired: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        eventually(WAIT, "the outage marked expired", || async {
            let windows: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
                "SELECT window_from, window_to FROM replay_windows
                 WHERE state = 'expired' AND kind = 'gap' ORDER BY window_from",
            )
            .fetch_all(&stack.db.pool)
            .await
            .ok()?;
            // Every minute of the outage (less the edges heartbeats blur)
            // lies in an expired window.
            let mut minute = outage_from + inside;
            while minute < outage_to - inside {
                windows.iter().find(|(f, t)| *f <= minute && minute < *t)?;
                minute += TimeDelta::minutes(1);
            }
            Some(windows)
        })
        .await;
    assert!(
        expired.iter().all(|(from, _)| *from >= tracked_from),
        "nothing before tracking began is judged: {expired:?}"
    );
    let admin = format!("http://{}", watermark.addr("admin").await);
    let marked = stack
        .db
        .count("SELECT coalesce(sum(extract(epoch FROM window_to - window_from) / 60), 0)::int8 FROM replay_windows WHERE state = 'expired' AND kind = 'gap'")
        .await;
    eventually(WAIT, "every expired minute counted", || async {
        let counted = aaa_testkit::metric(&admin, "aaa_watermark_expired_minutes_total").await;
        (counted >= marked as f64).then_some(())
    })
    .await;
}

/// X's clock runs 10 minutes ahead: the watermark reads it from the `Date`
/// of X's answers, reports it, and still gets every gap replayed (X checks
/// windows by its own clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_clock_skew_is_measured_and_planned_around() {
    let mut stack = Stack::start(BIN, StackOptions::scaled(SPEED)).await;
    let args: Vec<&str> = SMALL_SIM_ARGS
        .iter()
        .copied()
        .chain(["--clock-skew-secs", "600"])
        .collect();
    let sim = stack.start_sim(&args).await;
    let watermark = stack.spawn_watermark(&sim, "watermark-a");
    let admin = format!("http://{}", watermark.addr("admin").await);
    let skew = eventually(WAIT, "the skew to be measured", || async {
        let skew = aaa_testkit::metric(&admin, "aaa_watermark_x_clock_skew_seconds").await;
        (skew > 0.0).then_some(skew)
    })
    .await;
    // Date has whole seconds and the request takes a little (x300).
    assert!((590.0..=660.0).contains(&skew), "measured {skew}");

    outage_under_traffic(&mut stack, &sim, TimeDelta::minutes(10)).await;
    converged(&stack, &sim).await;
}

/// Fencing: a replica whose lease was taken over (it froze, or its round
/// outlived the lease) changes nothing afterwards, whatever statement it
/// reaches; a window is planned once; a reconciled window is never put back
/// in line; and releasing a lease never resets its generation. Run as
/// `aaa_watermark`, the watermark's login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_lease_changes_nothing() {
    use aaa_watermark::coverage::Interval;
    use aaa_watermark::planner::WindowKind;
    use aaa_watermark::store::{self, Planned, WindowState};
    let db = TestDb::migrated().await;
    let writer = db.watermark_pool().await;
    let mut conn = writer.acquire().await.unwrap();
    let lease_secs = Duration::from_secs(60);
    let now = Utc::now();
    let window = |minutes: i64| {
        Interval::new(
            now - TimeDelta::hours(2) + TimeDelta::minutes(minutes),
            now - TimeDelta::hours(2) + TimeDelta::minutes(minutes + 10),
        )
    };
    async fn gap(
        conn: &mut sqlx::PgConnection,
        lease: &store::Lease,
        window: Interval,
        now: DateTime<Utc>,
    ) -> Result<Planned, sqlx::Error> {
        store::insert_window(
            conn,
            lease,
            window,
            WindowKind::Gap,
            WindowState::Pending,
            now,
        )
        .await
    }

    let a = store::take_lease(&mut conn, "w", "a", lease_secs)
        .await
        .unwrap()
        .expect("a free lease");
    assert_eq!(
        gap(&mut conn, &a, window(0), now).await.unwrap(),
        Planned::Inserted
    );
    assert_eq!(
        gap(&mut conn, &a, window(0), now).await.unwrap(),
        Planned::AlreadyPlanned,
        "a window is planned once"
    );
    assert!(
        store::take_lease(&mut conn, "w", "b", lease_secs)
            .await
            .unwrap()
            .is_none(),
        "a held lease is not taken"
    );

    // a freezes past its lease; b takes over.
    sqlx::query("UPDATE watermark_leases SET expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    let b = store::take_lease(&mut conn, "w", "b", lease_secs)
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert!(b.generation > a.generation);

    // a thaws mid-round: nothing it does lands.
    assert_eq!(
        gap(&mut conn, &a, window(20), now).await.unwrap(),
        Planned::LeaseLost
    );
    let pending = store::next_pending(&mut conn, "w", now)
        .await
        .unwrap()
        .unwrap();
    let at = now + TimeDelta::minutes(5);
    assert!(
        !store::retry_later(&mut conn, &a, pending.id, at, "x", false)
            .await
            .unwrap()
    );
    assert!(
        !store::trim_start(&mut conn, &a, &pending, at)
            .await
            .unwrap()
    );
    assert!(!store::expire(&mut conn, &a, pending.id, "x").await.unwrap());

    // b submits; the stale a can neither fence, reconcile nor requeue it.
    assert!(
        store::mark_submitted(&mut conn, pending.id, "job-1", now)
            .await
            .unwrap()
    );
    let job = store::in_flight(&mut conn, "w").await.unwrap().unwrap();
    assert!(!store::set_fence(&mut conn, &a, &job, now).await.unwrap());
    assert!(
        store::reconcile(&mut conn, &a, &job, now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!store::requeue(&mut conn, &a, &job, now, "x").await.unwrap());
    assert!(store::set_fence(&mut conn, &b, &job, now).await.unwrap());
    assert!(
        store::reconcile(&mut conn, &b, &job, now)
            .await
            .unwrap()
            .is_some()
    );
    // Reconciled stays reconciled, even for the holder acting on a stale view.
    assert!(!store::requeue(&mut conn, &b, &job, now, "x").await.unwrap());
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM replay_windows")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(states, ["reconciled"]);

    // Released leases keep their generation: a later holder's is higher
    // than every earlier one, so no stale round can match it.
    store::release_leases(&writer, "b").await.unwrap();
    let c = store::take_lease(&mut conn, "w", "c", lease_secs)
        .await
        .unwrap()
        .expect("a released lease is free");
    assert!(c.generation > b.generation);
}

/// X's request budget is reserved in one transaction per request: replicas
/// asking at once never spend more than the limit, and a reader cannot
/// hold the budget row (it would stall every replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_budget_is_reserved_atomically_across_replicas() {
    use aaa_watermark::store;
    let db = TestDb::migrated().await;
    let writer = db.watermark_pool().await;
    let now = Utc::now();
    let lease = {
        let mut conn = writer.acquire().await.unwrap();
        store::take_lease(&mut conn, "w", "a", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("a free lease")
    };
    let asks = (0..24).map(|_| {
        let writer = writer.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            let mut conn = writer.acquire().await.unwrap();
            store::reserve_x_request(&mut conn, &lease, "replay_submit", 5, now)
                .await
                .unwrap()
        })
    });
    let answers: Vec<store::Reservation> = futures::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let granted = answers
        .iter()
        .filter(|r| matches!(r, store::Reservation::Reserved(_)))
        .count();
    assert_eq!(granted, 5, "exactly the limit, however many ask at once");
    assert!(
        answers.iter().all(|r| *r != store::Reservation::LeaseLost),
        "{answers:?}"
    );
    let recorded = db
        .count("SELECT count(*) FROM x_api_requests WHERE endpoint = 'replay_submit'")
        .await;
    assert_eq!(recorded, 5);
    // The lease changed hands (another replica took it after it expired):
    // the former holder's reservation is refused and spends nothing.
    sqlx::query("UPDATE watermark_leases SET holder = 'b', generation = generation + 1 WHERE webhook_id = 'w'")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut conn = writer.acquire().await.unwrap();
    let thawed = store::reserve_x_request(&mut conn, &lease, "webhooks_validate", 5, now)
        .await
        .unwrap();
    assert_eq!(thawed, store::Reservation::LeaseLost);
    assert_eq!(
        db.count("SELECT count(*) FROM x_api_requests WHERE endpoint = 'webhooks_validate'")
            .await,
        0
    );

    let reader = sqlx::PgPool::connect(&db.reader_url().await).await.unwrap();
    let error = sqlx::query("SELECT 1 FROM x_api_budgets FOR UPDATE")
        .execute(&reader)
        .await
        .unwrap_err();
    let code = error.as_database_error().and_then(|e| e.code());
    assert_eq!(code.as_deref(), Some("42501"), "{error}");
}

/// The scheduler fires every second whether or not the previous round
/// finished; with X answering slowly (3 s a call) a replica skips those
/// ticks instead of running two rounds at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_still_running_makes_the_next_ticks_skip() {
    let stack = Stack::start(BIN, StackOptions::scaled(SPEED)).await;
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    sim.set_faults(json!({"api_delay_ms": 3000})).await;
    let watermark = stack.spawn_watermark(&sim, "watermark-a");
    let admin = format!("http://{}", watermark.addr("admin").await);
    eventually(WAIT, "ticks skipped while a slow round runs", || async {
        let skipped = aaa_testkit::metric(&admin, "aaa_watermark_ticks_skipped_total").await;
        (skipped >= 2.0).then_some(())
    })
    .await;
    // Every X request it made was reserved first: none beyond what the
    // budget table holds.
    sim.set_faults(json!({})).await;
    let sent = aaa_testkit::metric(&admin, "aaa_xapi_requests_total").await;
    let recorded = stack.db.count("SELECT count(*) FROM x_api_requests").await;
    assert!(
        sent as i64 <= recorded,
        "{sent} requests sent, {recorded} recorded"
    );
}

/// A round that never ends (here a lock wait, with the timeouts turned
/// off) keeps every later round from starting, while the replica exports
/// its last, healthy-looking gauges. /healthz fails once no round has
/// started for `AAA_WATERMARK_STALL_SECS` (2 s here), so Kubernetes
/// restarts the replica, and `aaa_watermark_stalled_seconds` says how long;
/// once the round ends, rounds start again and /healthz recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_that_never_ends_fails_healthz() {
    let stack = Stack::start(
        BIN,
        StackOptions {
            watermark_env: vec![
                ("AAA_WATERMARK_STALL_SECS", "2".into()),
                ("AAA_DATABASE_LOCK_TIMEOUT_MS", "0".into()),
                ("AAA_DATABASE_STATEMENT_TIMEOUT_MS", "0".into()),
            ],
            ..StackOptions::scaled(SPEED)
        },
    )
    .await;
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    let watermark = stack.spawn_watermark(&sim, "watermark-a");
    let admin = format!("http://{}", watermark.addr("admin").await);
    let healthz = || async {
        let response = reqwest::get(format!("{admin}/healthz")).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let rounds = || aaa_testkit::metric(&admin, "aaa_watermark_round_seconds_count");
    eventually(WAIT, "a first round, and /healthz ok", || async {
        (rounds().await >= 1.0 && healthz().await.0 == 200).then_some(())
    })
    .await;
    let mut lock = stack.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE watermark_progress IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    eventually(WAIT, "a round waiting on the lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE '%watermark_progress%'
               AND pid <> pg_backend_pid()",
        )
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
    let reason = eventually(WAIT, "/healthz to report the stall", || async {
        let (status, body) = healthz().await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(
        reason.starts_with("no watermark round started for"),
        "{reason}"
    );
    eventually(WAIT, "the stall gauge past the limit", || async {
        let stalled = aaa_testkit::metric(&admin, "aaa_watermark_stalled_seconds").await;
        (stalled >= 2.0).then_some(())
    })
    .await;
    let blocked_at = rounds().await;
    lock.rollback().await.unwrap();
    eventually(WAIT, "rounds again, and /healthz ok", || async {
        (rounds().await > blocked_at && healthz().await.0 == 200).then_some(())
    })
    .await;
}

/// Maintenance is scheduled every second whether or not the last run
/// ended. With `tweet_deletions` locked, a run waits on it; the runs due
/// meanwhile are skipped and counted, not started beside it (each would hold
/// a pooled connection, and enough of them starve the rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_run_still_going_makes_the_next_ones_skip() {
    let stack = Stack::start(
        BIN,
        StackOptions {
            watermark_env: vec![
                ("AAA_WATERMARK_MAINTENANCE_SECS", "1".into()),
                // The blocked run waits for the lock, not for a timeout.
                ("AAA_DATABASE_LOCK_TIMEOUT_MS", "0".into()),
                ("AAA_DATABASE_STATEMENT_TIMEOUT_MS", "0".into()),
            ],
            ..StackOptions::scaled(SPEED)
        },
    )
    .await;
    let sim = stack.start_sim(SMALL_SIM_ARGS).await;
    let mut lock = stack.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tweet_deletions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let watermark = stack.spawn_watermark(&sim, "watermark-a");
    let admin = format!("http://{}", watermark.addr("admin").await);
    let waiting = || {
        stack.db.count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query ILIKE '%tweet_deletions%'",
        )
    };
    eventually(
        WAIT,
        "maintenance runs skipped behind the blocked one",
        || async {
            let skipped =
                aaa_testkit::metric(&admin, "aaa_watermark_maintenance_skipped_total").await;
            (skipped >= 3.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        waiting().await,
        1,
        "one run waits on the lock, no other beside it"
    );
    lock.rollback().await.unwrap();
    eventually(WAIT, "the blocked run to finish", || async {
        (waiting().await == 0).then_some(())
    })
    .await;
}

/// Every watermark replica writes the configured X prices when it starts,
/// often at the same moment as the others: concurrent writes all succeed
/// and leave exactly the configured prices (a delete-all-then-insert made
/// the second replica fail to start on a key collision).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_write_the_prices_without_colliding() {
    let db = TestDb::migrated().await;
    sqlx::query("INSERT INTO x_prices (event_type, usd) VALUES ('no.longer.priced', 1)")
        .execute(&db.pool)
        .await
        .unwrap();
    let pool = db.watermark_pool().await;
    let prices = aaa_events::billing::prices("post.create=0.5").unwrap();
    for _ in 0..5 {
        let writes = (0..8).map(|_| aaa_watermark::maintenance::write_prices(&pool, &prices));
        for written in futures::future::join_all(writes).await {
            written.expect("every replica writes the prices");
        }
    }
    let stored: Vec<(String, f64)> =
        sqlx::query_as("SELECT event_type, usd::float8 FROM x_prices ORDER BY event_type")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, prices);
}

/// Each service's login holds only what that service needs: the consumer
/// cannot rewrite payloads, delete dead letters or touch the watermark's
/// state; the watermark cannot insert or delete events, nor change their
/// identity; an operator may record requests to X and only read the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_holds_only_what_it_needs() {
    let db = TestDb::migrated().await;
    let connect = |url: String| async move { sqlx::PgPool::connect(&url).await.unwrap() };
    let consumer = connect(db.consumer_url().await).await;
    let watermark = connect(db.watermark_url().await).await;
    let operator = connect(db.operator_url().await).await;
    let denied = |pool: &sqlx::PgPool, statement: &'static str| {
        let pool = pool.clone();
        async move {
            let error = sqlx::query(statement).execute(&pool).await.unwrap_err();
            let code = error.as_database_error().and_then(|e| e.code());
            assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
        }
    };
    for statement in [
        "UPDATE events SET payload = NULL",
        "DELETE FROM dead_letters",
        "DELETE FROM events",
        "INSERT INTO replay_windows (webhook_id, window_from, window_to, state, created_at) VALUES ('w', now(), now(), 'pending', now())",
        "UPDATE replay_windows SET state = 'reconciled'",
        "UPDATE watermark_leases SET holder = 'consumer'",
        "INSERT INTO x_api_requests (endpoint, requested_at, outcome) VALUES ('replay_submit', now(), 'x')",
    ] {
        denied(&consumer, statement).await;
    }
    for statement in [
        "INSERT INTO events (for_user_id, kind, natural_key) VALUES ('1', 'k', 'n')",
        "DELETE FROM events",
        "UPDATE events SET kind = 'other'",
        "UPDATE tweets SET author_id = '1'",
        "INSERT INTO relationships (relationship, source_id, target_id, active) VALUES ('follow', '1', '2', true)",
        "UPDATE consumer_fences SET fence_time = now()",
    ] {
        denied(&watermark, statement).await;
    }
    sqlx::query(
        "INSERT INTO x_api_requests (endpoint, requested_at, outcome) VALUES ('webhooks_list', now(), 'operator')",
    )
    .execute(&operator)
    .await
    .unwrap();
    for statement in [
        "UPDATE replay_windows SET state = 'reconciled'",
        "DELETE FROM x_api_requests",
        "SELECT 1 FROM x_api_budgets FOR UPDATE",
    ] {
        denied(&operator, statement).await;
    }
}

/// `aaa migrate` waits for sqlx's advisory lock, which any role can take:
/// a reader holding it makes the migration stop after its lock wait with
/// who holds it, never hang; once released, the migration runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cannot_hang_aaa_migrate() {
    let db = TestDb::migrated().await;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // sqlx's migration lock: a fixed factor times the CRC-32 of the name.
    let key = 0x3d32ad9e_i64 * i64::from(crc32fast::hash(name.as_bytes()));
    let reader = sqlx::PgPool::connect(&db.reader_url().await).await.unwrap();
    let mut held = reader.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *held)
        .await
        .unwrap();
    let migrate = || {
        std::process::Command::new(BIN)
            .arg("migrate")
            .env("AAA_DATABASE_URL", &db.url)
            .env("AAA_MIGRATE_LOCK_WAIT_SECS", "2")
            .env("AAA_LOG", "error")
            .output()
            .unwrap()
    };
    let started = Instant::now();
    let refused = migrate();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("aaa_reader_test"),
        "the holder is named: {stderr}"
    );
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *held)
        .await
        .unwrap();
    let done = migrate();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// Deleted posts are erased on one replica at a time (the holder of the
/// erase lease), and a run does a bounded amount: a backlog (the first run
/// after an upgrade) is worked off over several runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_runs_on_one_replica_a_bounded_amount_per_run() {
    use aaa_watermark::{EraseLimits, erase_deleted_posts};
    let db = TestDb::migrated().await;
    for post in 1..=5 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (for_user_id, kind, natural_key, payload, activity_index, kafka_topic,
                                 kafka_partition, kafka_offset, received_at)
             VALUES ('1', 'tweet_delete_events', $1, '{}'::json, 0, 'aaa.raw', 0, $2, now()) RETURNING id",
        )
        .bind(format!("{post}:1"))
        .bind(post)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO tweet_deletions (tweet_id, user_id, deleted_at, event_id) VALUES ($1, '1', now(), $2)")
            .bind(post.to_string())
            .bind(id)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let pool = db.watermark_pool().await;
    let limits = EraseLimits {
        batch: 2,
        batches_per_run: 2,
    };
    let lease = Duration::from_secs(60);
    let clock = aaa_common::Clock::Wall;
    let first = erase_deleted_posts(&pool, "watermark-a", lease, clock, limits)
        .await
        .expect("the lease was free");
    assert_eq!(first.posts, 4, "two batches of two: {first:?}");
    assert!(
        erase_deleted_posts(&pool, "watermark-b", lease, clock, limits)
            .await
            .is_none(),
        "another replica holds the erase lease"
    );
    let second = erase_deleted_posts(&pool, "watermark-a", lease, clock, limits)
        .await
        .expect("still the holder");
    assert_eq!(second.posts, 1, "the rest, on the next run: {second:?}");
    assert_eq!(
        db.count("SELECT count(*) FROM tweet_deletions WHERE erased_at IS NULL")
            .await,
        0
    );
}
