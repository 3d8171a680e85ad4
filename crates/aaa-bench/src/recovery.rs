//! Scenario 5: gap recovery. The receiver is down for 30 simulated minutes
//! while X generates activity at a fixed real rate; X gives up on all of it.
//! Then the watermark finds the gap and replays it. Measured: from the
//! replay's submission (the gap became eligible) to every owed activity
//! stored, and the rate at which replayed activities were ingested, as a
//! ratio to the consumer's rate from a pre-loaded backlog (scenario 2) when
//! that ran in the same invocation.

use std::time::{Duration, Instant};

use aaa_testkit::{Stack, StackOptions, delivered_keys, eventually};
use chrono::TimeDelta;

use crate::{Error, Settings};

/// 1 real second = 1 simulated minute: a 30-minute outage takes 30 s.
const SPEED: f64 = 60.0;
const OUTAGE_MINUTES: i64 = 30;
const WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, serde::Serialize)]
pub struct RecoveryReport {
    pub clock_speed: f64,
    pub outage_simulated_minutes: i64,
    /// Activities generated per real second during the outage.
    pub offered_per_second: u64,
    /// Deliveries X gave up on (only a replay can bring them back).
    pub lost_live: u64,
    pub recovered_by_replay: u64,
    /// From the receiver's restart to the replay's submission.
    pub detect_seconds: f64,
    /// From the replay's submission to every owed activity stored.
    pub recover_seconds: f64,
    pub replay_events_per_second: f64,
    pub missing_after: u64,
}

pub async fn run(settings: &Settings, per_second: u64) -> Result<RecoveryReport, Error> {
    let mut stack = Stack::start(
        &settings.aaa_bin.display().to_string(),
        StackOptions::scaled(SPEED),
    )
    .await;
    let clock = stack.options.clock();
    let sim = stack
        .start_sim(&[
            "--accounts",
            "1000",
            "--interaction-share",
            "0",
            "--revoke-share",
            "0",
        ])
        .await;
    let _watermark = stack.spawn_watermark(&sim, "watermark-bench");
    let traffic = stack.start_traffic(&sim, WAIT).await;
    traffic.stop().await;

    eprintln!(
        "  receiver down for {OUTAGE_MINUTES} simulated minutes, {per_second} activities/s generated"
    );
    stack.receiver.kill();
    let outage_end = clock.now() + TimeDelta::minutes(OUTAGE_MINUTES);
    let tick = Duration::from_millis(100);
    let per_tick = (per_second / 10).max(1) as usize;
    while clock.now() < outage_end {
        sim.generate(per_tick).await;
        tokio::time::sleep(tick).await;
    }
    stack.restart_receiver().await;
    let restarted = Instant::now();
    sim.settled(WAIT).await;

    let submitted = eventually(WAIT, "the replay to be submitted", || async {
        let n = stack
            .db
            .count("SELECT count(*) FROM replay_windows WHERE state IN ('submitted', 'reconciled')")
            .await;
        (n > 0).then(Instant::now)
    })
    .await;
    let summary = eventually(WAIT, "every owed activity delivered", || async {
        let summary = sim.summary().await;
        (summary["missing"] == 0).then_some(summary)
    })
    .await;
    let expected = delivered_keys(&sim).await.len() as i64;
    eventually(WAIT, "every delivered activity stored", || async {
        (stack.db.count("SELECT count(*) FROM events").await >= expected).then_some(())
    })
    .await;
    let recover_seconds = submitted.elapsed().as_secs_f64();
    let recovered = summary["delivered_by_replay_only"].as_u64().unwrap_or(0);
    let missing_after = summary["missing"].as_u64().unwrap_or(0);
    Ok(RecoveryReport {
        clock_speed: SPEED,
        outage_simulated_minutes: OUTAGE_MINUTES,
        offered_per_second: per_second,
        lost_live: recovered + missing_after,
        recovered_by_replay: recovered,
        detect_seconds: submitted.duration_since(restarted).as_secs_f64(),
        recover_seconds,
        replay_events_per_second: recovered as f64 / recover_seconds.max(1e-3),
        missing_after,
    })
}
