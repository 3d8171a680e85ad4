//! Fault injection: the whole stack as separate processes (receiver,
//! consumer, watermark, broker, Postgres) with the simulator as X, on a
//! scaled clock (1 real second = 5 simulated minutes). Each scenario injects
//! its faults while traffic flows, lets everything settle, and then holds
//! Postgres to the simulator's ground truth: every activity X delivered is
//! stored exactly once, nothing else is, no dead letters, no gap left open or
//! expired. Each scenario adds a row to the report (AAA_CHAOS_REPORT).

mod harness;
mod hostile;

use std::time::Duration;

use aaa_testkit::StackOptions;
use aaa_testkit::eventually;
use chrono::TimeDelta;
use harness::{Expect, Run, kill_watermark_mid_replay};
use serde_json::json;

/// The receiver dies (SIGKILL) under load and comes back after 3 simulated
/// minutes: X's retries cover the gap, or the watermark replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_killed_during_load() {
    let mut run = Run::start().await;
    run.stack.receiver.kill();
    run.sim.generate(5).await;
    run.wait_sim(TimeDelta::minutes(3)).await;
    run.stack.restart_receiver().await;
    let settled = run.settle("receiver killed during load").await;
    assert!(
        settled.failed_attempts > 0,
        "X saw the receiver down: {settled:?}"
    );
}

/// The consumer dies (SIGKILL) three times, mid-batch, and restarts each
/// time: uncommitted offsets are consumed again and absorbed as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_batch() {
    let mut run = Run::start().await;
    for _ in 0..3 {
        run.stack.consumer.kill();
        run.wait_sim(TimeDelta::minutes(1)).await;
        run.stack.consumer = run.stack.spawn_consumer();
        run.wait_sim(TimeDelta::minutes(2)).await;
    }
    run.settle("consumer killed mid-batch (3 times)").await;
}

/// Many replicas under load: 2 receivers behind a load balancer and 3
/// consumers in one group. One consumer is killed, one added, one frozen
/// (SIGSTOP) past the group's session timeout and thawed, one receiver
/// killed and restarted, and both receivers go down for 10 simulated
/// minutes so a replay flows too. Nothing is lost or stored twice, and the
/// lag the live consumers report (for the partitions each holds now) comes
/// back to 0: no partition a replica gave up keeps counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_come_and_go_under_load() {
    let mut run = Run::start_replicated(StackOptions::scaled(300.0), 2, 3).await;
    let assignments = |consumer: &aaa_testkit::Service| {
        consumer
            .output()
            .iter()
            .filter(|l| l.contains("\"partitions assigned\""))
            .count()
    };
    // Every consumer took part in a rebalance.
    eventually(
        Duration::from_secs(60),
        "3 consumers in the group",
        || async {
            run.consumers
                .iter()
                .all(|c| assignments(c) > 0)
                .then_some(())
        },
    )
    .await;
    run.wait_sim(TimeDelta::minutes(10)).await;
    run.stack.consumer.kill();
    run.consumers.push(run.stack.spawn_consumer());
    run.wait_sim(TimeDelta::minutes(10)).await;
    // Frozen past the session timeout: the others take its partitions.
    let before: Vec<usize> = run.consumers.iter().map(assignments).collect();
    run.consumers[0].freeze();
    eventually(
        Duration::from_secs(60),
        "a rebalance without the frozen consumer",
        || async {
            run.consumers[1..]
                .iter()
                .zip(&before[1..])
                .any(|(c, n)| assignments(c) > *n)
                .then_some(())
        },
    )
    .await;
    run.consumers[0].thaw();
    let (mut receiver, at) = run.receivers.pop().expect("a second receiver");
    receiver.kill();
    run.wait_sim(TimeDelta::minutes(5)).await;
    run.receivers.push(
        run.stack
            .spawn_receiver_replica("receiver-1", Some(at))
            .await,
    );
    // Both down: a gap the watermark replays.
    let (mut receiver, at) = run.receivers.pop().expect("a second receiver");
    receiver.kill();
    run.receiver_outage(TimeDelta::minutes(10)).await;
    run.receivers.push(
        run.stack
            .spawn_receiver_replica("receiver-1", Some(at))
            .await,
    );
    let mut admins = Vec::new();
    for consumer in &run.consumers {
        admins.push(format!("http://{}", consumer.addr("admin").await));
    }
    // Heartbeats flow all the time (every 33 real ms here), so a caught-up
    // group still shows a few records in flight; a partition nobody
    // reports, or one a replica gave up and still counts, grows by
    // thousands a minute.
    let last = std::sync::Mutex::new(String::new());
    let caught_up = tokio::time::timeout(
        Duration::from_secs(120),
        eventually(Duration::from_secs(240), "the group's lag", || async {
            let (mut series, mut total) = (0, 0.0);
            let mut lines = Vec::new();
            for admin in &admins {
                let text = reqwest::get(format!("{admin}/metrics"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                for line in text
                    .lines()
                    .filter(|l| l.starts_with("aaa_consumer_lag_records{"))
                {
                    series += 1;
                    total += line.rsplit(' ').next()?.parse::<f64>().ok()?;
                    lines.push(format!("{admin} {line}"));
                }
            }
            *last.lock().unwrap_or_else(|p| p.into_inner()) = lines.join("\n");
            (series >= 3 && total < 200.0).then_some(total)
        }),
    )
    .await;
    assert!(
        caught_up.is_ok(),
        "lag per partition, as the live consumers report it:\n{}",
        last.lock().unwrap_or_else(|p| p.into_inner())
    );
    let settled = run
        .settle("replicas come and go under load (2 receivers, 3 consumers)")
        .await;
    assert!(
        settled.recovered_by_replay > 0 && settled.duplicates_absorbed > 0,
        "{settled:?}"
    );
}

/// A receiver outage of 20 simulated minutes, and the watermark that
/// submitted its replay dies (SIGKILL) while the job runs; another replica
/// takes over without submitting a second job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_killed_mid_replay() {
    let mut run = Run::start().await;
    run.receiver_outage(TimeDelta::minutes(20)).await;
    kill_watermark_mid_replay(&mut run).await;
    let settled = run.settle("watermark killed mid-replay").await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}

/// The watermark holding the lease freezes (SIGSTOP) while its replay job
/// runs; a second replica takes the lease over and finishes the job; then
/// the frozen one thaws mid-round. Fenced by the lease generation, it
/// changes nothing: no window planned twice, no minute replayed twice, no
/// reconciled window put back in line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_holder_frozen_mid_replay_and_thawed() {
    let mut run = Run::start().await;
    let second = run.stack.spawn_watermark(&run.sim, "watermark-b");
    run.receiver_outage(TimeDelta::minutes(20)).await;
    run.sim.set_faults(json!({"replay_delay_ms": 20})).await;
    run.stack.replay_in_flight(Duration::from_secs(120)).await;
    let holder = || async {
        sqlx::query_scalar::<_, String>("SELECT holder FROM watermark_leases WHERE webhook_id = $1")
            .bind(&run.stack.webhook_id)
            .fetch_optional(&run.stack.db.pool)
            .await
            .unwrap()
    };
    let frozen_name = holder().await.expect("a lease holder");
    let frozen = if frozen_name == "watermark-a" {
        &run.watermark
    } else {
        &second
    };
    frozen.freeze();
    eventually(
        Duration::from_secs(60),
        "the other replica to take over",
        || async { (holder().await.is_some_and(|h| h != frozen_name)).then_some(()) },
    )
    .await;
    // The new holder finishes the job (and anything else pending).
    let open = || async {
        run.stack
            .db
            .count("SELECT count(*) FROM replay_windows WHERE state IN ('pending', 'submitted')")
            .await
    };
    eventually(
        Duration::from_secs(120),
        "every window reconciled",
        || async { (open().await == 0).then_some(()) },
    )
    .await;
    let reconciled = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT id FROM replay_windows WHERE state = 'reconciled' ORDER BY id",
        )
        .fetch_all(&run.stack.db.pool)
        .await
        .unwrap()
    };
    let before_thaw = reconciled().await;
    assert!(!before_thaw.is_empty());
    frozen.thaw();
    // The thawed replica runs the rest of its round (fenced: it finds the
    // lease lost at its first state change), then ticks again. That tick
    // finds the lease taken, or, when the new holder's last renewal is older
    // than the lease (a slow round on a loaded machine), takes it back under
    // a new generation: the holder of record is then the thawed replica
    // again. A replica ticks only after its previous round ended, so each of
    // these says the frozen round is over.
    let admin = format!("http://{}", frozen.addr("admin").await);
    let last = std::sync::Mutex::new(String::new());
    let noticed = tokio::time::timeout(
        Duration::from_secs(60),
        eventually(
            Duration::from_secs(120),
            "the thawed replica to end its frozen round",
            || async {
                let held = aaa_testkit::metric(&admin, "aaa_watermark_lease_held").await;
                let lost = aaa_testkit::metric(&admin, "aaa_watermark_lease_lost_total").await;
                let holder = holder().await;
                *last.lock().unwrap_or_else(|p| p.into_inner()) =
                    format!("lease held {held}, lost {lost}, holder of record {holder:?}");
                (held == 0.0 || lost > 0.0 || holder.as_deref() == Some(frozen_name.as_str()))
                    .then_some(())
            },
        ),
    )
    .await;
    assert!(
        noticed.is_ok(),
        "the thawed replica {frozen_name} never ended its frozen round within 60 s: {}\nits last log lines:\n{}",
        last.lock().unwrap_or_else(|p| p.into_inner()),
        frozen.output_tail(40)
    );
    run.wait_sim(TimeDelta::minutes(10)).await;
    let after_thaw = reconciled().await;
    assert!(
        before_thaw.iter().all(|id| after_thaw.contains(id)),
        "a reconciled window was put back in line: {before_thaw:?} then {after_thaw:?}"
    );
    let twice = run
        .stack
        .db
        .count(
            "SELECT count(*) FROM (SELECT 1 FROM replay_windows GROUP BY webhook_id, kind, window_from, window_to HAVING count(*) > 1) d",
        )
        .await;
    assert_eq!(twice, 0, "a window planned twice");
    // No minute replayed twice for the same reason (an audit replays its
    // whole slot once, gaps in it included, by design), and every job X ran
    // was one accepted submission of a window.
    let windows: Vec<(String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as(
            "SELECT kind, window_from, window_to FROM replay_windows WHERE state <> 'expired' ORDER BY kind, window_from",
        )
        .fetch_all(&run.stack.db.pool)
        .await
        .unwrap();
    for pair in windows.windows(2) {
        assert!(
            pair[0].0 != pair[1].0 || pair[0].2 <= pair[1].1,
            "a minute replayed twice: {pair:?}"
        );
    }
    let jobs = run.sim.jobs().await["data"].as_array().unwrap().len() as i64;
    let accepted = run
        .stack
        .db
        .count("SELECT coalesce(sum(attempts - conflicts), 0)::int8 FROM replay_windows")
        .await;
    assert_eq!(
        jobs, accepted,
        "every job X ran was one accepted submission"
    );
    let settled = run
        .settle("watermark holder frozen mid-replay and thawed")
        .await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}

/// An outsider holds every slot of the receiver with trickling bodies,
/// first during live traffic, then while the replay of that stretch runs,
/// and X (as it may) reports the replay job Complete although deliveries
/// failed. Shed deliveries that may be X's make their minutes a gap (seen in
/// `aaa gaps list`, counted for `AaaReceiverShedding`), the replay that ran
/// while the receiver refused is submitted again instead of reconciled, and
/// nothing X sent is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_holds_the_receiver_during_traffic_and_its_replay() {
    // More than the simulator's replay concurrency (4) plus live traffic,
    // so X's own deliveries fit when nobody else holds the slots.
    const SLOTS: usize = 16;
    let run = Run::start_with(StackOptions {
        audit_minutes: 0,
        receiver_env: vec![
            ("AAA_MAX_CONCURRENT_REQUESTS", SLOTS.to_string()),
            ("AAA_BODY_TIMEOUT_MS", "2000".into()),
        ],
        ..StackOptions::scaled(300.0)
    })
    .await;
    run.sim
        .set_faults(json!({"complete_despite_failures": true}))
        .await;
    let url = run.stack.webhook_url.clone();
    let slots_full = || async {
        let in_flight = run.receiver_metric("aaa_receiver_in_flight_requests").await;
        (in_flight >= SLOTS as f64).then_some(())
    };

    // Live traffic meets a full receiver for 20 simulated minutes.
    let outsider = hostile::SlotHolder::start(&url, 2 * SLOTS);
    eventually(
        Duration::from_secs(30),
        "the outsider holding every slot",
        slots_full,
    )
    .await;
    run.wait_sim(TimeDelta::minutes(20)).await;
    outsider.stop().await;
    let shed = run.stack.delivery_outcomes("shed").await;
    assert!(
        shed > 0.0,
        "X's deliveries were shed (AaaReceiverShedding's signal)"
    );

    // The gap is found; its replay is held until the outsider is back.
    eventually(
        Duration::from_secs(120),
        "the shed minutes planned as a gap",
        || async {
            let gaps = run
                .stack
                .db
                .count("SELECT count(*) FROM replay_windows WHERE kind = 'gap'")
                .await;
            (gaps > 0).then_some(())
        },
    )
    .await;
    run.sim
        .set_faults(json!({"complete_despite_failures": true, "next_replay": "hold"}))
        .await;
    run.stack.replay_in_flight(Duration::from_secs(120)).await;
    let outsider = hostile::SlotHolder::start(&url, 2 * SLOTS);
    eventually(
        Duration::from_secs(30),
        "the outsider holding every slot again",
        slots_full,
    )
    .await;
    let jobs_before = run.sim.jobs().await["data"].as_array().unwrap().len();
    run.sim.release_jobs().await;
    eventually(
        Duration::from_secs(60),
        "the held job to finish",
        || async {
            let jobs = run.sim.jobs().await;
            let finished = jobs["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| j["finished_at"].is_string())
                .count();
            (finished >= jobs_before).then_some(())
        },
    )
    .await;
    outsider.stop().await;

    // X said Complete; the receivers say they refused meanwhile.
    let admin = format!("http://{}", run.watermark.addr("admin").await);
    eventually(
        Duration::from_secs(120),
        "the replay submitted again",
        || async {
            let missed = aaa_testkit::metric_where(&admin, |l| {
                l.starts_with("aaa_watermark_replay_jobs_total") && l.contains("receivers_missed")
            })
            .await;
            (missed >= 1.0).then_some(())
        },
    )
    .await;

    // What an operator sees.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aaa"))
        .args(["gaps", "list", "--json"])
        .env("AAA_DATABASE_URL", run.stack.db.reader_url().await)
        .output()
        .unwrap();
    assert!(output.status.success());
    let gaps: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        gaps.as_array().unwrap().iter().any(|g| g["kind"] == "gap"),
        "aaa gaps list shows the gap: {gaps}"
    );
    let settled = run
        .settle("outsider holds the receiver during traffic and its replay")
        .await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}

/// X's webhook endpoints answer 429 for 30 simulated minutes, and meanwhile
/// X invalidates the webhook (it delivers nothing, retries nothing): the
/// watermark waits out the rate limit without hammering, then sees the
/// webhook invalid, has it re-validated and replays the invalid stretch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_endpoint_rate_limited_while_invalid() {
    let run = Run::start().await;
    let until = run.now() + TimeDelta::minutes(30);
    run.sim
        .set_faults(json!({"webhooks_rate_limited_until": until}))
        .await;
    run.sim.invalidate(&run.stack.webhook_id).await;
    run.sim.generate(10).await;
    run.wait_sim(TimeDelta::minutes(30)).await;
    let settled = run
        .settle("X's webhook endpoints rate-limited 30 min while the webhook is invalid")
        .await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}

/// Authentic records Postgres refuses for good (NUL characters, a timestamp
/// before 4713 BC, a key too long for its index), on several partitions in
/// the middle of live traffic, twice: the consumer isolates each one into
/// `dead_letters` with its raw bytes and the SQLSTATE, and everything around
/// them lands; nothing waits behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_mid_stream() {
    let mut run = Run::start().await;
    run.inject_poison(0..3, "poison-a").await;
    run.wait_sim(TimeDelta::minutes(2)).await;
    run.inject_poison(3..6, "poison-b").await;
    run.wait_sim(TimeDelta::minutes(2)).await;
    eventually(
        Duration::from_secs(60),
        "Postgres to refuse the 18 poison records planning lets through",
        || async {
            let rejected = run
                .consumer_metric("aaa_consumer_rejected_records_total")
                .await;
            (rejected >= 18.0).then_some(())
        },
    )
    .await;
    run.settle("poison records mid-stream").await;
}

/// The broker dies (SIGKILL), stays down for 30 real seconds (150 simulated
/// minutes), and restarts on the same storage. The receiver answers 503
/// meanwhile; X retries and the watermark replays the refused stretch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_30s_and_restarted() {
    let mut run = Run::start().await;
    run.stack.broker.kill();
    let down_since = std::time::Instant::now();
    run.sim.generate(10).await;
    eventually(
        Duration::from_secs(30),
        "the receiver to answer 503 while the broker is down",
        || async {
            let refused = run.stack.delivery_outcomes("broker_unavailable").await;
            (refused > 0.0).then_some(())
        },
    )
    .await;
    // The fault's length, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_since.elapsed())).await;
    run.stack.broker.start_again().await;
    let settled = run.settle("broker stopped 30 s and restarted").await;
    assert!(
        settled.failed_attempts > 0 && settled.gap_windows > 0,
        "X saw 503s and the watermark replayed the refused stretch: {settled:?}"
    );
}

/// Receiver and consumer cut off from the broker (the broker frozen with
/// SIGSTOP: connections stay open, nothing answers) until the receiver has
/// noticed: deliveries answered 503 (X retries them) or heartbeats failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_partitioned() {
    let run = Run::start().await;
    run.stack.broker.pause();
    run.sim.generate(10).await;
    eventually(
        Duration::from_secs(30),
        "the receiver to notice the partition",
        || async {
            let noticed = run
                .receiver_metric("aaa_receiver_heartbeat_failures_total")
                .await
                + run.stack.delivery_outcomes("broker_unavailable").await;
            (noticed > 0.0).then_some(())
        },
    )
    .await;
    run.stack.broker.resume();
    run.settle("broker partitioned (SIGSTOP until noticed)")
        .await;
}

/// Postgres refuses every connection for 3 real seconds, then comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_and_back() {
    let run = Run::start().await;
    run.stack.db.go_down().await;
    run.sim.generate(5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.consumer_noticed_write_failures().await;
    run.stack.db.come_back().await;
    run.settle("Postgres down and back").await;
}

/// The Postgres server itself crashes (`pg_ctl stop -m immediate`) under
/// load, stays down for 5 real seconds, and is started again on the same
/// data: the consumer retries its batch with backoff and commits no offset
/// meanwhile; the watermark's rounds fail and resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_crashed_and_restarted() {
    let server = aaa_testkit::PgServer::start();
    let run = Run::start_with(StackOptions {
        database_cluster: Some(server.admin_url()),
        audit_minutes: 60,
        ..StackOptions::scaled(300.0)
    })
    .await;
    server.crash();
    let down_since = std::time::Instant::now();
    run.sim.generate(10).await;
    run.consumer_noticed_write_failures().await;
    // The fault's length, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down_since.elapsed())).await;
    server.start_again();
    run.settle("Postgres server crashed, down 5 s, restarted")
        .await;
}

/// Lock contention: another session holds an exclusive lock on `events` for
/// 3 real seconds, so every write waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slow_under_lock_contention() {
    let run = Run::start().await;
    let mut tx = run.stack.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    run.sim.generate(5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    tx.rollback().await.unwrap();
    // The blocked write is timed when it completes, just after the rollback.
    eventually(
        Duration::from_secs(30),
        "the consumer's blocked write to finish, having waited for the lock",
        || async {
            let waited = run
                .consumer_metric("aaa_consumer_write_duration_seconds_sum")
                .await;
            (waited >= 2.0).then_some(())
        },
    )
    .await;
    run.settle("Postgres slow (exclusive lock held 3 s)").await;
}

/// A consumer replica frozen (SIGSTOP) in the middle of a transaction, and
/// left frozen to the end. Its row locks (the batch's users, posts,
/// subscriptions) would hold the other replica's writes for good, and no
/// write would fail, so nothing would say so. Postgres ends the frozen
/// session after `AAA_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS` (30 s), the
/// other replica's lock waits end after `AAA_DATABASE_LOCK_TIMEOUT_MS` and
/// are retried, and the group hands the frozen replica's partitions over:
/// everything is stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_frozen_mid_transaction_for_good() {
    let mut run = Run::start_replicated(StackOptions::scaled(300.0), 1, 1).await;
    let frozen = run.stack.spawn_consumer_as("consumer-frozen", &[]);
    frozen
        .wait_for_log("partition assignment", Duration::from_secs(60), |e| {
            e["message"] == "partitions assigned"
        })
        .await;
    run.wait_sim(TimeDelta::minutes(5)).await;
    let in_transaction = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'consumer-frozen' AND backend_xid IS NOT NULL",
        )
        .fetch_one(&run.stack.db.pool)
        .await
        .unwrap()
    };
    // Caught holding rows: stopped, and kept stopped if it had written in
    // its open transaction.
    let mut caught = false;
    for _ in 0..2000 {
        frozen.freeze();
        if in_transaction().await > 0 {
            caught = true;
            break;
        }
        frozen.thaw();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(caught, "the consumer was never caught mid-transaction");
    eventually(
        Duration::from_secs(90),
        "Postgres to end the frozen replica's transaction",
        || async { (in_transaction().await == 0).then_some(()) },
    )
    .await;
    run.consumers.push(frozen);
    run.settle("consumer frozen mid-transaction, never thawed")
        .await;
}

/// Every insert into `events` fails for 3 real seconds, as on a full disk:
/// the consumer must keep its offsets and retry, never skip. Not the data's
/// fault, so nothing is dead-lettered; a consumer held up past its stall
/// limit (2 s here) says so on /healthz, and recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_write_errors() {
    let run = Run::start().await;
    run.fail_event_writes(true).await;
    run.sim.generate(5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.consumer_noticed_write_failures().await;
    let health = || async {
        let admin = run.stack.consumer.addr("admin").await;
        reqwest::get(format!("http://{admin}/healthz"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    eventually(
        Duration::from_secs(30),
        "/healthz to report the stall",
        || async { (health().await == 503).then_some(()) },
    )
    .await;
    run.fail_event_writes(false).await;
    eventually(Duration::from_secs(30), "/healthz to recover", || async {
        (health().await == 200).then_some(())
    })
    .await;
    run.settle("Postgres write errors for 3 s").await;
}

/// X sends 30 % of deliveries twice and lets them overtake each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_duplicates_and_reorders() {
    let run = Run::start().await;
    run.sim
        .set_faults(json!({"duplicate_share": 0.3, "reorder_ms": 200}))
        .await;
    run.wait_sim(TimeDelta::minutes(10)).await;
    run.sim.set_faults(json!({})).await;
    let settled = run.settle("X duplicates (30 %) and reorders").await;
    assert!(settled.duplicates_absorbed > 0, "{settled:?}");
}

/// X loses a fifth of the live deliveries outright and then stops
/// delivering for 10 simulated minutes, while the receiver is up and healthy:
/// coverage sees no gap, and only the watermark's audit replays of the closed
/// hours bring those activities back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_drops_deliveries_beyond_its_retries() {
    let run = Run::start().await;
    run.sim.set_faults(json!({"drop_share": 0.2})).await;
    run.wait_sim(TimeDelta::minutes(10)).await;
    let now = run.now();
    run.sim
        .set_faults(json!({"outage": {"from": now, "to": now + TimeDelta::minutes(10)}}))
        .await;
    run.sim.generate(5).await;
    run.wait_sim(TimeDelta::minutes(10)).await;
    run.sim.set_faults(json!({})).await;
    let settled = run
        .settle("X drops 20 % beyond retries + X-side outage")
        .await;
    assert!(
        settled.recovered_by_replay > 0 && settled.audit_windows > 0,
        "{settled:?}"
    );
    assert_eq!(
        settled.gap_windows, 0,
        "the receiver was up, so coverage saw no gap: {settled:?}"
    );
    assert!(
        settled.recovered_by_audits >= settled.recovered_by_replay,
        "the audits brought back everything X dropped: {settled:?}"
    );
}

/// No watermark runs for 25 simulated hours, and the receiver was down for 2
/// of them at the start: when a watermark runs again, X can no longer replay
/// that outage. It is marked expired and counted (the AaaGapExpired alert),
/// never skipped; what X could not deliver lies inside it, and everything
/// else is stored exactly once. (1 real second = 50 simulated minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_aged_past_24_hours() {
    let mut run = Run::start_with(StackOptions {
        heartbeat_secs: 600,
        ..StackOptions::scaled(3000.0)
    })
    .await;
    run.tracking_began().await;
    run.watermark.kill();
    run.receiver_outage(TimeDelta::hours(2)).await;
    run.wait_sim(TimeDelta::hours(25)).await;
    run.watermark = run.stack.spawn_watermark(&run.sim, "watermark-b");
    let restarted_at = run.now();
    let admin = format!("http://{}", run.watermark.addr("admin").await);
    // Once the restarted watermark has judged up to now, the outage is
    // counted. (Exact agreement with the windows is checked once settled:
    // until then, windows that wait for the replay slot keep aging out.)
    // Judging reaches `restarted_at` once the consumer stored a fence
    // written after it, behind 25 simulated hours of traffic: on a loaded
    // machine that takes as long as the other catch-ups here.
    run.await_judged(
        restarted_at,
        "the watermark to count expired minutes (the alert's signal)",
        || async { aaa_testkit::metric(&admin, "aaa_watermark_expired_minutes_total").await > 0.0 },
    )
    .await;
    let settled = run
        .settle_expecting("gap aged past 24 h (watermark down 25 h)", Expect::AgedOut)
        .await;
    assert!(
        settled.lost > 0 && settled.expired_minutes >= 120,
        "the outage held activity X could not deliver: {settled:?}"
    );
    assert_eq!(
        settled.expired_counted, settled.expired_minutes as f64,
        "every expired minute is counted for the alert"
    );
}

/// X's managed migration of the Account Activity API (ending 2027-01-01)
/// to the X Activity API, on a running pipeline: at one instant X gives
/// every subscribed account the XAA subscriptions that carry its activity
/// and, 10 simulated minutes later, ends its AAA subscription; meanwhile
/// both envelopes are delivered. Nothing is lost, and posts, likes and DMs
/// are stored once per account whichever envelope came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_migration_with_an_overlap() {
    let run = migrating_run().await;
    let moved = run
        .sim
        .managed_migration(json!({"overlap_secs": 600}))
        .await;
    assert!(moved["accounts"].as_u64() > Some(0), "{moved}");
    run.wait_sim(TimeDelta::minutes(20)).await;
    let settled = run
        .settle("managed migration AAA to XAA, 10 min overlap")
        .await;
    stored_once_per_account(&settled, "tweet_create_events");
    stored_once_per_account(&settled, "favorite_events");
    let (posts, first_from_xaa) = settled
        .events_by_kind
        .iter()
        .find(|(k, _, _)| k == "tweet_create_events")
        .map_or((0, 0), |(_, rows, xaa)| (*rows, *xaa));
    assert!(
        first_from_xaa > 0 && first_from_xaa < posts,
        "posts came in both envelopes: {:?}",
        settled.events_by_kind
    );
    let both = settled
        .truth
        .iter()
        .filter(|o| o["kind"] == "tweet_create_events")
        .fold(
            std::collections::BTreeMap::<String, usize>::new(),
            |mut n, o| {
                *n.entry(format!("{}:{}", o["activity_id"], o["for_user_id"]))
                    .or_default() += 1;
                n
            },
        )
        .values()
        .filter(|n| **n > 1)
        .count();
    assert!(
        both > 0,
        "during the overlap X owed posts in both envelopes"
    );
    assert!(
        settled.undated_changes > 0,
        "XAA follows, blocks or mutes were stored (settle checks none is stored twice): {settled:?}"
    );
}

/// The same migration with a gap instead: X ends the AAA subscriptions at
/// once and starts delivering XAA 10 simulated minutes later. What happened
/// in between was never attempted while the receiver was up, so coverage
/// sees no gap: the watermark's audit replays (through `/2/webhooks/replay`)
/// bring it back, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_migration_with_a_gap() {
    let run = migrating_run().await;
    run.sim.managed_migration(json!({"gap_secs": 600})).await;
    run.wait_sim(TimeDelta::minutes(20)).await;
    let settled = run.settle("managed migration AAA to XAA, 10 min gap").await;
    let unattempted = settled
        .truth
        .iter()
        .filter(|o| o.to_string().contains("migration_gap"))
        .count();
    assert!(unattempted > 0, "activity fell into the gap");
    assert!(
        settled.recovered_by_audits > 0,
        "the audits replayed the gap: {settled:?}"
    );
    stored_once_per_account(&settled, "tweet_create_events");
}

/// Live AAA traffic for 10 simulated minutes, with hourly audits (1 real
/// second = 5 simulated minutes), before X's managed migration.
async fn migrating_run() -> Run {
    let run = Run::start_with_sim(
        StackOptions {
            audit_minutes: 60,
            ..StackOptions::scaled(300.0)
        },
        &["--format", "subscribed"],
    )
    .await;
    run.wait_sim(TimeDelta::minutes(10)).await;
    run
}

/// Rows of `kind` equal the (activity, account) pairs X delivered it for,
/// however many envelopes carried each.
fn stored_once_per_account(settled: &harness::Settled, kind: &str) {
    let mut owed: Vec<(u64, String)> = settled
        .truth
        .iter()
        .filter(|o| o["kind"] == kind && o["delivered"] == true)
        .map(|o| {
            (
                o["activity_id"].as_u64().unwrap_or_default(),
                o["for_user_id"].to_string(),
            )
        })
        .collect();
    owed.sort();
    owed.dedup();
    let rows = settled
        .events_by_kind
        .iter()
        .find(|(k, _, _)| k == kind)
        .map_or(0, |(_, rows, _)| *rows);
    assert!(rows > 0, "{kind}: {:?}", settled.events_by_kind);
    assert_eq!(rows, owed.len() as i64, "{kind}: once per account");
}

/// A migration in progress: X delivers every activity twice, once as Account
/// Activity and once as X Activity API envelope, and the receiver is down for
/// 15 simulated minutes, so both formats come back through the same
/// replay. Posts, likes, DMs, typing, read receipts and revokes land once per
/// account whichever copy comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaa_and_xaa_mixed_with_a_gap() {
    let mut run = Run::start_with_sim(
        StackOptions {
            audit_minutes: 60,
            ..StackOptions::scaled(300.0)
        },
        &["--format", "both"],
    )
    .await;
    run.receiver_outage(TimeDelta::minutes(15)).await;
    let settled = run
        .settle("AAA and XAA mixed (both formats), receiver down 15 min")
        .await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
    let owed_posts = settled
        .truth
        .iter()
        .filter(|o| o["kind"] == "tweet_create_events" && o["delivered"] == true)
        .count() as i64;
    let rows = |kind: &str| {
        settled
            .events_by_kind
            .iter()
            .find(|(k, _, _)| k == kind)
            .map_or((0, 0), |(_, rows, from_xaa)| (*rows, *from_xaa))
    };
    let (posts, posts_from_xaa) = rows("tweet_create_events");
    assert!(
        posts > 0 && posts_from_xaa > 0,
        "{:?}",
        settled.events_by_kind
    );
    assert_eq!(
        owed_posts,
        2 * posts,
        "every post once, not once per format"
    );
    assert!(
        rows("xaa:spaces.start").0 > 0,
        "families AAA never had are kept raw: {:?}",
        settled.events_by_kind
    );
}

/// An X Activity API webhook (XAA envelopes only) loses 15 simulated
/// minutes to a receiver outage: the same watermark replays it through
/// /2/webhooks/replay and reconciles on a completion message that also comes
/// in the XAA envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xaa_webhook_gap_replayed() {
    let mut run = Run::start_with_sim(StackOptions::scaled(300.0), &["--format", "xaa"]).await;
    run.receiver_outage(TimeDelta::minutes(15)).await;
    let settled = run.settle("XAA webhook, receiver down 15 min").await;
    assert!(
        settled.recovered_by_replay > 0 && settled.gap_windows > 0,
        "{settled:?}"
    );
    let from_xaa: i64 = settled.events_by_kind.iter().map(|(_, _, x)| x).sum();
    let all: i64 = settled.events_by_kind.iter().map(|(_, n, _)| n).sum();
    assert_eq!(from_xaa, all, "every row came in an XAA envelope");
    assert!(
        settled
            .events_by_kind
            .iter()
            .any(|(k, _, _)| k == "replay_job_status"),
        "the XAA-shaped completion was stored: {:?}",
        settled.events_by_kind
    );
}

/// A receiver outage whose replay first comes back `Incomplete`, while X's
/// API answers 503 to a fifth of the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_incomplete_and_api_errors() {
    let run = Run::start().await;
    run.sim
        .set_faults(json!({"next_replay": "incomplete", "api_error_share": 0.2}))
        .await;
    let mut run = run;
    run.receiver_outage(TimeDelta::minutes(15)).await;
    let settled = run.settle("replay Incomplete + 20 % API 503s").await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}

/// An operator's replay job keeps the webhook busy (held by the simulator)
/// when the watermark wants to replay a receiver outage: the watermark meets
/// ReplayConflictError, waits, and replays once the job is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_conflict_waited_out() {
    let mut run = Run::start().await;
    run.sim.set_faults(json!({"next_replay": "hold"})).await;
    run.operator_replay(TimeDelta::minutes(40), TimeDelta::minutes(15))
        .await;
    run.receiver_outage(TimeDelta::minutes(15)).await;
    eventually(
        Duration::from_secs(120),
        "the watermark to meet ReplayConflictError",
        || async {
            let conflicts = run
                .stack
                .db
                .count("SELECT coalesce(sum(conflicts), 0) FROM replay_windows")
                .await;
            (conflicts > 0).then_some(())
        },
    )
    .await;
    run.sim.release_jobs().await;
    let settled = run.settle("ReplayConflictError waited out").await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}

/// X invalidates the webhook (a failed CRC): nothing is delivered until the
/// watermark has it revalidated; the invalid period is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_invalidated_by_crc() {
    let mut run = Run::start().await;
    // No watermark while X invalidates, so the invalid period surely holds
    // activity; the next replica finds it.
    run.watermark.kill();
    run.sim.invalidate(&run.stack.webhook_id).await;
    run.sim.generate(10).await;
    run.wait_sim(TimeDelta::minutes(10)).await;
    run.watermark = run.stack.spawn_watermark(&run.sim, "watermark-b");
    let settled = run.settle("webhook invalidated by CRC").await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}

/// A seeded mix: the receiver, the consumer and the broker each fail once,
/// Postgres refuses writes, X duplicates, and X drops deliveries, in an order drawn from the
/// seed (AAA_CHAOS_SEED). AAA_CHAOS_ROUNDS repeats it with the next seeds,
/// AAA_CHAOS_DURATION_SECS until that long has passed: the soak
/// (docs/chaos.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_mix() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (seed, rounds) = (env("AAA_CHAOS_SEED", 7), env("AAA_CHAOS_ROUNDS", 1));
    // A soak for a duration: rounds go on until it has passed.
    let duration = Duration::from_secs(env("AAA_CHAOS_DURATION_SECS", 0));
    let began = std::time::Instant::now();
    let mut run = Run::start().await;
    let mut round = 0;
    while round < rounds || began.elapsed() < duration {
        let order = shuffled(6, seed + round);
        eprintln!(
            "random mix, seed {}: faults in order {order:?}",
            seed + round
        );
        for fault in order {
            match fault {
                0 => {
                    run.stack.receiver.kill();
                    run.wait_sim(TimeDelta::minutes(2)).await;
                    run.stack.restart_receiver().await;
                }
                1 => {
                    run.stack.consumer.kill();
                    run.stack.consumer = run.stack.spawn_consumer();
                }
                2 => run.stack.broker.restart().await,
                3 => {
                    run.fail_event_writes(true).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    run.fail_event_writes(false).await;
                }
                4 => {
                    run.sim.set_faults(json!({"duplicate_share": 0.3})).await;
                    run.wait_sim(TimeDelta::minutes(3)).await;
                    run.sim.set_faults(json!({})).await;
                }
                _ => {
                    run.sim.set_faults(json!({"drop_share": 0.3})).await;
                    run.wait_sim(TimeDelta::minutes(3)).await;
                    run.sim.set_faults(json!({})).await;
                }
            }
            run.wait_sim(TimeDelta::minutes(2)).await;
        }
        round += 1;
    }
    run.settle(&format!("random mix (seed {seed}, {round} round(s))"))
        .await;
}

/// 0..n in an order drawn from `seed` (Fisher-Yates over a 64-bit LCG), so a
/// failing mix can be run again exactly.
fn shuffled(n: u8, seed: u64) -> Vec<u8> {
    let mut order: Vec<u8> = (0..n).collect();
    let mut state = seed;
    for i in (1..order.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    order
}

/// How the replica that refused replayed deliveries ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplicaEnd {
    /// SIGKILL before its next heartbeat: its refusals die with it.
    Killed,
    /// SIGTERM while refused deliveries are in flight: the drain's refusals
    /// reach Postgres only in its closing heartbeat.
    Terminated,
}

/// Two receivers behind the balancer; a replay job in flight; the replica
/// that receives the replayed deliveries cannot reach the broker (its own
/// way to it frozen: the broker refuses it only), answers 503, and ends.
/// The other replica serves on, healthy, all along: under the old rule its
/// heartbeats proved the time and the window was reconciled over the loss
/// (X gives a replayed delivery one attempt). Every receiver live in a
/// minute must prove it: the window is replayed again, nothing is lost.
async fn replayed_deliveries_refused_by_a_replica_that_then(end: ReplicaEnd) -> harness::Settled {
    let stack = Run::stack(StackOptions {
        audit_minutes: 0,
        ..StackOptions::scaled(300.0)
    })
    .await;
    let proxy = aaa_testkit::KafkaProxy::start(&stack.broker).await;
    // Its own way to the broker, and a short produce timeout so that its
    // refusals (503 once the broker did not answer) come quickly.
    let through_proxy = [
        ("AAA_KAFKA_BROKERS", proxy.bootstrap()),
        ("AAA_PRODUCE_TIMEOUT_MS", "500".to_owned()),
    ];
    let replica = stack
        .spawn_receiver_replica_with("receiver-1", None, &through_proxy)
        .await;
    let mut run = Run::start_behind_balancer(stack, vec![replica]).await;
    let own = run.stack.receiver_addr();
    let (mut refusing, at) = run.receivers.pop().expect("the second replica");
    // Kept here for the run's life (settle consumes the run).
    let balancer = run.balancer.take().expect("a balancer");
    // Both down long enough that X gives up on live deliveries: a gap
    // only a replay recovers. From here on X reaches only receiver-1.
    balancer.set_upstreams(vec![at]);
    refusing.kill();
    run.receiver_outage(TimeDelta::minutes(10)).await;
    let (mut refusing, _) = run
        .stack
        .spawn_receiver_replica_with("receiver-1", Some(at), &through_proxy)
        .await;
    // X (as it may) reports the job Complete although deliveries failed:
    // only the receivers' heartbeats can tell. receiver-1 loses its broker
    // while the replay runs.
    run.sim
        .set_faults(json!({"replay_delay_ms": 30, "complete_despite_failures": true}))
        .await;
    run.stack.replay_in_flight(Duration::from_secs(120)).await;
    proxy.pause();
    let admin = format!("http://{}", refusing.addr("admin").await);
    let refused = || async {
        aaa_testkit::metric_where(&admin, |l| {
            l.starts_with("aaa_receiver_requests_total")
                && l.contains("outcome=\"broker_unavailable\"")
        })
        .await
    };
    match end {
        ReplicaEnd::Killed => {
            // receiver-1 refuses deliveries and dies (SIGKILL) before its
            // next heartbeat is due: its refusals are in no heartbeat.
            eventually(
                Duration::from_secs(60),
                "receiver-1 to refuse deliveries",
                || async { (refused().await > 0.0).then_some(()) },
            )
            .await;
            refusing.kill();
            balancer.set_upstreams(vec![own]);
            proxy.resume();
        }
        ReplicaEnd::Terminated => {
            eventually(
                Duration::from_secs(60),
                "deliveries waiting on receiver-1's broker",
                || async {
                    (aaa_testkit::metric(&admin, "aaa_receiver_in_flight_requests").await > 0.0)
                        .then_some(())
                },
            )
            .await;
            // As Kubernetes does: the pod leaves the Service, then stops.
            balancer.set_upstreams(vec![own]);
            refusing.sigterm();
            // Its admin server is gone with the shutdown; its log tells.
            eventually(
                Duration::from_secs(60),
                "the drain to refuse what waited",
                || async {
                    refusing
                        .output()
                        .iter()
                        .any(|l| l.contains("delivery not acknowledged by the broker"))
                        .then_some(())
                },
            )
            .await;
            // The broker is reachable again for the closing heartbeat.
            proxy.resume();
            let status = refusing.wait_exit(Duration::from_secs(30)).await;
            assert!(status.success(), "receiver-1 stopped cleanly: {status:?}");
            let drained = || async {
                sqlx::query_as::<_, (i64, serde_json::Value)>(
                    "SELECT refused, refused_by FROM coverage_heartbeats WHERE replica_id = 'receiver-1' AND closing",
                )
                .fetch_all(&run.stack.db.pool)
                .await
                .unwrap()
            };
            let stored = tokio::time::timeout(
                Duration::from_secs(60),
                eventually(
                    Duration::from_secs(120),
                    "the closing heartbeat stored",
                    || async {
                        let rows = drained().await;
                        (!rows.is_empty()).then_some(rows)
                    },
                ),
            )
            .await;
            assert!(
                stored
                    .as_ref()
                    .is_ok_and(|rows| rows.iter().any(|(refused, _)| *refused > 0)),
                "the closing heartbeat carries the drain's refusals: {stored:?}\n{}",
                refusing.output_tail(30)
            );
        }
    }
    let settled = run
        .settle(match end {
            ReplicaEnd::Killed => "replica refusing replayed deliveries, then SIGKILLed",
            ReplicaEnd::Terminated => "replica refusing replayed deliveries, then SIGTERMed",
        })
        .await;
    assert!(
        settled.receivers_missed >= 1.0,
        "the job receiver-1 refused was replayed again, not reconciled: {settled:?}"
    );
    settled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_refusing_replayed_deliveries_killed_before_its_heartbeat() {
    let settled = replayed_deliveries_refused_by_a_replica_that_then(ReplicaEnd::Killed).await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_refusing_replayed_deliveries_terminated_during_its_drain() {
    let settled = replayed_deliveries_refused_by_a_replica_that_then(ReplicaEnd::Terminated).await;
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}

/// The lease holder's way to the broker freezes: it cannot write fences,
/// so it could never reconcile a replay job. After a few failed fence
/// writes it releases its lease and fails /healthz; the other replica
/// takes the webhook over and finishes the replays; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_holder_cannot_write_fences() {
    let mut run = Run::start().await;
    let proxy = aaa_testkit::KafkaProxy::start(&run.stack.broker).await;
    // Only the holder goes through the proxy: replace the run's watermark.
    run.watermark.kill();
    run.watermark = run.stack.spawn_watermark_with(
        &run.sim,
        "watermark-a",
        &[("AAA_KAFKA_BROKERS", proxy.bootstrap())],
    );
    let (pool, webhook) = (run.stack.db.pool.clone(), run.stack.webhook_id.clone());
    let holder = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT holder FROM watermark_leases WHERE webhook_id = $1 AND expires_at > now()",
        )
        .bind(&webhook)
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    eventually(
        Duration::from_secs(60),
        "watermark-a to hold the lease",
        || async { (holder().await.as_deref() == Some("watermark-a")).then_some(()) },
    )
    .await;
    let second = run.stack.spawn_watermark(&run.sim, "watermark-b");
    run.receiver_outage(TimeDelta::minutes(10)).await;
    proxy.pause();
    // Each fence write now waits out the producer's 10 s; after 3 in a row
    // watermark-a gives up its lease and fails /healthz (Kubernetes would
    // restart it).
    let admin = format!("http://{}", run.watermark.addr("admin").await);
    eventually(
        Duration::from_secs(120),
        "watermark-a to fail /healthz",
        || async {
            let health = reqwest::get(format!("{admin}/healthz")).await.ok()?;
            (health.status() == 503).then_some(())
        },
    )
    .await;
    let unwritten = aaa_testkit::metric(&admin, "aaa_watermark_fences_unwritten_total").await;
    assert!(unwritten > 0.0, "unwritten fences are counted");
    assert_eq!(
        aaa_testkit::metric(&admin, "aaa_watermark_lease_held").await,
        0.0,
        "watermark-a holds no lease"
    );
    eventually(
        Duration::from_secs(60),
        "watermark-b to hold the lease",
        || async { (holder().await.as_deref() == Some("watermark-b")).then_some(()) },
    )
    .await;
    proxy.resume();
    let settled = run.settle("watermark holder cannot write fences").await;
    drop(second);
    assert!(settled.recovered_by_replay > 0, "{settled:?}");
}
