//! Scenario 6: a week of operation. The whole stack runs for 7 simulated
//! days (clock x3000: about 3.5 real minutes) with steady traffic, receiver
//! heartbeats, the watermark with audits and its maintenance job. Per
//! simulated day: the mean watermark round duration, rows a round reads,
//! and table sizes. The baseline is day 1 of the same run: a deployment a
//! week old should cost what it cost on its first day (goal: day 7 within
//! 1.2x of day 1), and the watermark's tables stop growing after the
//! retention horizon (72 h).

use std::time::Duration;

use aaa_testkit::{Stack, StackOptions, eventually, metric};
use chrono::TimeDelta;

use crate::{Error, Settings};

const SPEED: f64 = 3000.0;
const DAYS: i64 = 7;
const WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakDay {
    pub day: i64,
    /// Rounds the watermark ran that day.
    pub rounds: f64,
    pub mean_round_ms: f64,
    /// Rows the last sampled rounds read (heartbeats and validity samples).
    pub rows_read: f64,
    pub events: i64,
    pub heartbeats: i64,
    pub validity_samples: i64,
    pub replay_windows: i64,
    pub x_api_requests: i64,
    /// `pg_total_relation_size` of the watermark's tables together.
    pub watermark_tables_bytes: i64,
}

#[derive(Debug, serde::Serialize)]
pub struct SoakReport {
    pub clock_speed: f64,
    pub days: Vec<SoakDay>,
    /// Day 7's mean round duration over day 1's.
    pub round_ratio: f64,
    /// Days 5-7's mean round duration over days 1-3's.
    pub round_ratio_last3_first3: f64,
    /// The watermark tables' bytes at day 7 over day 4 (after the horizon).
    pub watermark_bytes_day7_day4: f64,
    pub rows_read_ratio: f64,
    /// Heartbeat rows at day 7 over day 4 (after the 72 h horizon: ~1).
    pub heartbeats_growth_after_horizon: f64,
    pub pruned_rows: f64,
}

async fn count(stack: &Stack, sql: &'static str) -> i64 {
    stack.db.count(sql).await
}

pub async fn run(settings: &Settings) -> Result<SoakReport, Error> {
    let stack = Stack::start(
        &settings.aaa_bin.display().to_string(),
        StackOptions {
            heartbeat_secs: 60,
            audit_minutes: 120,
            watermark_env: vec![
                // Every 2 real seconds: 100 simulated minutes.
                ("AAA_WATERMARK_MAINTENANCE_SECS", "2".into()),
            ],
            ..StackOptions::scaled(SPEED)
        },
    )
    .await;
    // Autovacuum wakes every 60 real seconds: 50 simulated hours at this
    // speed, while in real time it passes many times an hour. Scaled with
    // the clock (to 1 s) for this run, so what pruning frees is reused as it
    // would be; the throwaway cluster's setting is restored afterwards.
    set_autovacuum_naptime(&stack, Some("1s")).await?;
    let clock = stack.options.clock();
    let sim = stack
        .start_sim(&["--accounts", "200", "--revoke-share", "0"])
        .await;
    let watermark = stack.spawn_watermark(&sim, "watermark-soak");
    let admin = format!("http://{}", watermark.addr("admin").await);
    let traffic = stack.start_traffic(&sim, WAIT).await;
    let start = clock.now();
    let mut days = Vec::new();
    let (mut last_sum, mut last_count) = (0.0, 0.0);
    for day in 1..=DAYS {
        let end = start + TimeDelta::days(day);
        let mut rows_read = Vec::new();
        while clock.now() < end {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rows_read.push(metric(&admin, "aaa_watermark_round_rows_read").await);
        }
        let sum = metric(&admin, "aaa_watermark_round_seconds_sum").await;
        let rounds = metric(&admin, "aaa_watermark_round_seconds_count").await;
        let size: i64 = sqlx::query_scalar(
            "SELECT (pg_total_relation_size('coverage_heartbeats') + pg_total_relation_size('webhook_validity')
                    + pg_total_relation_size('replay_windows') + pg_total_relation_size('x_api_requests'))::int8",
        )
        .fetch_one(&stack.db.pool)
        .await?;
        let report = SoakDay {
            day,
            rounds: rounds - last_count,
            mean_round_ms: 1000.0 * (sum - last_sum) / (rounds - last_count).max(1.0),
            rows_read: rows_read.iter().sum::<f64>() / rows_read.len().max(1) as f64,
            events: count(&stack, "SELECT count(*) FROM events").await,
            heartbeats: count(&stack, "SELECT count(*) FROM coverage_heartbeats").await,
            validity_samples: count(&stack, "SELECT count(*) FROM webhook_validity").await,
            replay_windows: count(&stack, "SELECT count(*) FROM replay_windows").await,
            x_api_requests: count(&stack, "SELECT count(*) FROM x_api_requests").await,
            watermark_tables_bytes: size,
        };
        eprintln!("  day {day}: {report:?}");
        days.push(report);
        (last_sum, last_count) = (sum, rounds);
    }
    traffic.stop().await;
    set_autovacuum_naptime(&stack, None).await?;
    let pruned = eventually(WAIT, "the pruning counter", || async {
        Some(metric(&admin, "aaa_watermark_pruned_rows_total").await)
    })
    .await;
    let first = &days[0];
    let last = &days[days.len() - 1];
    let day4 = &days[3];
    // Rounds of ~10 ms vary by a few ms from one day to the next: the last
    // three days against the first three says the same with less noise.
    let mean_of = |days: &[SoakDay]| {
        days.iter().map(|d| d.mean_round_ms).sum::<f64>() / days.len().max(1) as f64
    };
    Ok(SoakReport {
        clock_speed: SPEED,
        round_ratio: last.mean_round_ms / first.mean_round_ms.max(1e-9),
        round_ratio_last3_first3: mean_of(&days[days.len() - 3..]) / mean_of(&days[..3]).max(1e-9),
        watermark_bytes_day7_day4: last.watermark_tables_bytes as f64
            / day4.watermark_tables_bytes.max(1) as f64,
        rows_read_ratio: last.rows_read / first.rows_read.max(1e-9),
        heartbeats_growth_after_horizon: last.heartbeats as f64 / day4.heartbeats.max(1) as f64,
        pruned_rows: pruned,
        days,
    })
}

/// Sets (or with `None` resets) the cluster's autovacuum cadence.
async fn set_autovacuum_naptime(stack: &Stack, value: Option<&str>) -> Result<(), Error> {
    let statement = match value {
        // A fixed set of values, never input.
        Some("1s") => "ALTER SYSTEM SET autovacuum_naptime = '1s'",
        _ => "ALTER SYSTEM RESET autovacuum_naptime",
    };
    sqlx::query(statement).execute(&stack.db.pool).await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&stack.db.pool)
        .await?;
    Ok(())
}
