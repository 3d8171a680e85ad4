//! The results file (`<date>.json`) and its Markdown summary (`<date>.md`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::consumer::ConsumerReport;
use crate::e2e::E2eReport;
use crate::receiver::ReceiverReport;
use crate::recovery::RecoveryReport;
use crate::soak::SoakReport;

/// Goals from the benchmark issue: tracked here, not asserted by tests.
// The goals of issue #17: the receiver against the bare handler that also
// waits for the broker's ack (no handler that acks only after the broker
// can approach bare axum), the consumer against COPY, and X's documented
// replay delivery rate end to end.
const RECEIVER_RATIO_GOAL: f64 = 0.90;
const CONSUMER_RATIO_GOAL: f64 = 0.25;
const E2E_P99_GOAL_MS: f64 = 1000.0;
const E2E_GOAL_RATE: u64 = 2500;
const CRC_P99_GOAL_MS: f64 = 5.0;
const RSS_GOAL_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, serde::Serialize)]
pub struct Host {
    pub cores: usize,
    pub kernel: String,
    pub commit: String,
}

#[derive(Debug, serde::Serialize)]
pub struct Results {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub host: Host,
    pub receiver: Option<ReceiverReport>,
    pub consumer: Option<ConsumerReport>,
    pub e2e: Option<E2eReport>,
    pub scale: Vec<ConsumerReport>,
    /// The consumer stage with 1, 2, 4 ... processes in one group.
    pub replicas: Vec<ConsumerReport>,
    /// The consumer scenario again with the other `--writers` values.
    pub writers: Vec<ConsumerReport>,
    pub recovery: Option<RecoveryReport>,
    pub soak: Option<SoakReport>,
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Results {
    pub fn new() -> Results {
        Results {
            started_at: chrono::Utc::now(),
            host: Host {
                cores: std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
                kernel: command_output("uname", &["-r"]),
                commit: command_output("git", &["rev-parse", "--short", "HEAD"]),
            },
            receiver: None,
            consumer: None,
            e2e: None,
            scale: Vec::new(),
            replicas: Vec::new(),
            writers: Vec::new(),
            recovery: None,
            soak: None,
        }
    }

    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
        std::fs::create_dir_all(dir)?;
        let stem = self.started_at.format("%Y-%m-%dT%H%M%SZ").to_string();
        let json = dir.join(format!("{stem}.json"));
        let markdown = dir.join(format!("{stem}.md"));
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Setup(e.to_string()))?;
        std::fs::write(&json, text + "\n")?;
        std::fs::write(&markdown, self.markdown())?;
        Ok((json, markdown))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.summary(&mut md);
        self.receiver_section(&mut md);
        self.consumer_section(&mut md);
        self.e2e_section(&mut md);
        self.recovery_section(&mut md);
        self.soak_section(&mut md);
        self.replicas_section(&mut md);
        self.scale_section(&mut md);
        md
    }

    /// The title and the table of ratios and goals.
    fn summary(&self, md: &mut String) {
        let h = &self.host;
        let _ = writeln!(
            md,
            "# Benchmarks {}\n\ncommit {}, {} cores, Linux {}. Ratios are against a baseline measured in the same run; absolute numbers are context only (shared, noisy machine).\n",
            self.started_at.format("%Y-%m-%d %H:%M UTC"),
            h.commit,
            h.cores,
            h.kernel
        );
        let _ = writeln!(
            md,
            "| What | Measured | Baseline | Ratio | Goal | Met |\n|---|---|---|---|---|---|"
        );
        let met = |ok: bool| if ok { "yes" } else { "**no**" };
        if let Some(r) = &self.receiver {
            let _ = writeln!(
                md,
                "| Receiver, signed {} B deliveries, req/s | {:.0} | {:.0} (bare axum) | {:.2} | | |",
                r.body_bytes,
                r.receiver.requests_per_second(),
                r.baseline.requests_per_second(),
                r.ratio,
            );
            let _ = writeln!(
                md,
                "| Receiver vs a bare handler that also waits for the broker's ack, req/s | {:.0} | {:.0} | {:.2} | ≥ {RECEIVER_RATIO_GOAL:.2} | {} |",
                r.receiver.requests_per_second(),
                r.produce_baseline.requests_per_second(),
                r.ratio_to_produce_baseline,
                met(r.ratio_to_produce_baseline >= RECEIVER_RATIO_GOAL)
            );
            let crc_p99 = r.crc.p99_us as f64 / 1000.0;
            let _ = writeln!(
                md,
                "| CRC GET p99 | {crc_p99:.2} ms | {:.2} ms | {:.2} | < {CRC_P99_GOAL_MS} ms | {} |",
                r.crc_baseline.p99_us as f64 / 1000.0,
                crc_p99 / (r.crc_baseline.p99_us.max(1) as f64 / 1000.0),
                met(crc_p99 < CRC_P99_GOAL_MS)
            );
        }
        if let Some(c) = &self.consumer {
            let _ = writeln!(
                md,
                "| Consumer, deliveries/s into normalized rows | {:.0} | {:.0} (COPY) | {:.2} | ≥ {CONSUMER_RATIO_GOAL:.2} | {} |",
                c.deliveries as f64 / c.seconds,
                c.copy_rows_per_second,
                c.ratio_to_copy,
                met(c.ratio_to_copy >= CONSUMER_RATIO_GOAL)
            );
            let _ = writeln!(
                md,
                "| Consumer ÷ COPY of the same normalized rows into the same indexed tables | {:.1} s | {:.1} s | {:.2} | (the rows' own cost) | |",
                c.seconds, c.rows_copy_seconds, c.ratio_to_rows_copy
            );
        }
        if let Some(r) = self.e2e.as_ref().and_then(|e| {
            e.rates
                .iter()
                .find(|r| r.offered_per_second == E2E_GOAL_RATE)
        }) {
            let _ = writeln!(
                md,
                "| End to end p99 at {E2E_GOAL_RATE}/s offered, sustained | {:.0} ms | | | < {E2E_P99_GOAL_MS} ms | {} |",
                r.latency.p99_ms,
                met(r.latency.p99_ms < E2E_P99_GOAL_MS && r.sustained)
            );
        }
        if let Some(r) = &self.recovery {
            let live = self.consumer.as_ref().map(|c| c.events_per_second);
            let _ = writeln!(
                md,
                "| Gap recovery: replayed activities ingested/s | {:.0} | {} | {} | | |",
                r.replay_events_per_second,
                live.map(|l| format!("{l:.0} (consumer, backlog)"))
                    .unwrap_or_default(),
                live.map(|l| format!("{:.2}", r.replay_events_per_second / l))
                    .unwrap_or_default(),
            );
        }
        if let Some(r) = &self.soak {
            let _ = writeln!(
                md,
                "| Watermark round duration, day 7 vs day 1 | {:.1} ms | {:.1} ms | {:.2} | ≤ 1.2 | {} |",
                r.days.last().map_or(0.0, |d| d.mean_round_ms),
                r.days.first().map_or(0.0, |d| d.mean_round_ms),
                r.round_ratio,
                met(r.round_ratio <= 1.2)
            );
            let _ = writeln!(
                md,
                "| Watermark round duration, days 5–7 vs days 1–3 | | | {:.2} | ≤ 1.2 | {} |",
                r.round_ratio_last3_first3,
                met(r.round_ratio_last3_first3 <= 1.2)
            );
            let _ = writeln!(
                md,
                "| Watermark tables' bytes, day 7 vs day 4 (past the 72 h horizon) | | | {:.2} | ≤ 1.1 | {} |",
                r.watermark_bytes_day7_day4,
                met(r.watermark_bytes_day7_day4 <= 1.1)
            );
        }
        let memories = [
            (
                "receiver",
                self.receiver.as_ref().and_then(|r| r.receiver_memory),
            ),
            (
                "consumer",
                self.consumer.as_ref().and_then(|c| c.consumer_memory),
            ),
        ];
        for (service, memory) in memories {
            if let Some(m) = memory {
                let _ = writeln!(
                    md,
                    "| Peak RSS, {service} under load | {:.1} MB | | | < 64 MB | {} |",
                    m.peak_rss_bytes as f64 / 1048576.0,
                    met(m.peak_rss_bytes < RSS_GOAL_BYTES)
                );
            }
        }
    }

    /// Receiver runs, each against its baselines.
    fn receiver_section(&self, md: &mut String) {
        if let Some(r) = &self.receiver {
            let _ = writeln!(
                md,
                "\n## Receiver\n\n| Server | req/s | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---|---|---|---|---|"
            );
            for (name, w) in [
                ("bare axum", &r.baseline),
                ("bare axum + produce, ack", &r.produce_baseline),
                ("receiver", &r.receiver),
                ("bare axum, GET", &r.crc_baseline),
                ("receiver, CRC GET", &r.crc),
            ] {
                let _ = writeln!(
                    md,
                    "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                    w.requests_per_second(),
                    w.p50_us as f64 / 1000.0,
                    w.p99_us as f64 / 1000.0,
                    w.p999_us as f64 / 1000.0,
                    w.errors()
                );
            }
            let cores = |c: Option<f64>| c.map(|c| format!("{c:.2}")).unwrap_or_else(|| "?".into());
            let _ = writeln!(
                md,
                "\nCPU cores during the receiver run: receiver {}, broker {}; broker during the produce baseline: {}. The load generator (wrk) shares the same cores.",
                cores(r.receiver_cpu_cores),
                cores(r.broker_cpu_cores),
                cores(r.produce_baseline_broker_cpu_cores)
            );
        }
    }

    /// Consumer runs, per writer count, with where the time went.
    fn consumer_section(&self, md: &mut String) {
        if let Some(c) = &self.consumer {
            let _ = writeln!(md, "\n## Consumer\n\n{CONSUMER_HEADER}");
            consumer_row(md, c);
            for other in &self.writers {
                consumer_row(md, other);
            }
            let _ = writeln!(
                md,
                "\nCOPY of the same {} raw payloads into an unindexed table: {:.2} s. COPY of the {} rows the consumer stored (every table, same indexes and constraints, one transaction): {:.2} s, so the consumer reached {:.2} of the rows' own cost. Pre-loading Kafka took {:.1} s.",
                c.deliveries,
                c.copy_seconds,
                c.rows,
                c.rows_copy_seconds,
                c.ratio_to_rows_copy,
                c.preload_seconds
            );
            let _ = writeln!(
                md,
                "\nThe rows copied, per table (MB of binary COPY data): {}.",
                c.rows_copy_tables
                    .iter()
                    .map(|(table, mb)| format!("{table} {mb:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(
                md,
                "\n| Writers | mean batch transaction ms | writers busy in transactions (per writer; 1.0: never idle) | broker CPU (cores) | Postgres + consumer + broker (cores) |\n|---|---|---|---|---|"
            );
            for w in std::iter::once(c).chain(&self.writers) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    w.writers,
                    w.mean_write_ms.map_or("?".into(), |m| format!("{m:.1}")),
                    w.writer_busy.map_or("?".into(), |b| format!(
                        "{:.2}",
                        b / w.writers.max(1) as f64
                    )),
                    w.broker_cpu_cores.map_or("?".into(), |b| format!("{b:.2}")),
                    w.consumer_cpu_cores.zip(w.broker_cpu_cores).map_or(
                        "?".into(),
                        |(c, b)| format!("{:.2}", w.db_cpu_cores + c + b)
                    ),
                );
            }
            let _ = writeln!(
                md,
                "\nReading the same records from the broker and nothing else: {:.0} records/s; the consumer reached {:.2} of that{}.",
                c.read_only_per_second,
                c.ratio_to_read_only,
                self.writers
                    .iter()
                    .map(|w| format!(
                        " ({} writers: {:.2} of {:.0})",
                        w.writers, w.ratio_to_read_only, w.read_only_per_second
                    ))
                    .collect::<String>()
            );
            let _ = writeln!(
                md,
                "\nWAL per delivery: {:.0} B (COPY: {:.0} B per row). Where Postgres spent the run:\n{}",
                c.wal_bytes_per_delivery,
                c.copy_wal_bytes_per_row,
                crate::pgprofile::markdown(&c.pg_profile, c.deliveries)
            );
        }
    }

    /// End to end, per offered rate.
    fn e2e_section(&self, md: &mut String) {
        if let Some(e) = &self.e2e {
            let _ = writeln!(
                md,
                "\n## End to end ({} s per rate, open loop)\n\n| Offered/s | Achieved/s | Shed | Failed | Events | Missing | Stored, not seen in time | p50 ms | p99 ms | p50 1st half | p50 2nd half | Drain s | Sustained |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|",
                e.duration_seconds
            );
            for r in &e.rates {
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
                    r.offered_per_second,
                    r.achieved_per_second,
                    r.shed,
                    r.failed,
                    r.events,
                    r.missing,
                    r.unobserved_but_stored,
                    r.latency.p50_ms,
                    r.latency.p99_ms,
                    r.p50_first_half_ms,
                    r.p50_second_half_ms,
                    r.drain_seconds,
                    if r.sustained { "yes" } else { "no" }
                );
            }
            let _ = writeln!(
                md,
                "\nThe receiver's account (first attempts refused: shed at its concurrency limit, or not acknowledged by the broker; every delivery holds a slot until the broker acknowledges):\n\n| Offered/s | Shed | Broker refused | Produce → ack mean ms | Acks over 50 ms |\n|---|---|---|---|---|"
            );
            for r in &e.rates {
                let v = &r.receiver;
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {:.0} | {:.1} | {:.1} % |",
                    r.offered_per_second,
                    v.shed,
                    v.broker_refused,
                    v.produce_mean_ms,
                    100.0 * v.produce_over_50ms
                );
            }
            let _ = writeln!(
                md,
                "\nHighest sustained offered rate: {}.",
                e.max_sustained_per_second
                    .map(|r| format!("{r}/s"))
                    .unwrap_or_else(|| "none of those offered".into())
            );
        }
    }

    /// Gap recovery by replay.
    fn recovery_section(&self, md: &mut String) {
        if let Some(r) = &self.recovery {
            let _ = writeln!(
                md,
                "\n## Gap recovery\n\nReceiver down for {} simulated minutes (clock ×{}), {} activities generated per real second meanwhile; X gave up on {} deliveries. The replay was submitted {:.1} s after the receiver came back; {} activities came back by replay in {:.1} s ({:.0}/s); missing afterwards: {}.",
                r.outage_simulated_minutes,
                r.clock_speed,
                r.offered_per_second,
                r.lost_live,
                r.detect_seconds,
                r.recovered_by_replay,
                r.recover_seconds,
                r.replay_events_per_second,
                r.missing_after
            );
        }
    }

    /// A week of operation, per day.
    fn soak_section(&self, md: &mut String) {
        if let Some(r) = &self.soak {
            let _ = writeln!(
                md,
                "\n## A week of operation\n\n7 simulated days at clock ×{}, steady traffic, audits every 2 h, maintenance (72 h retention), autovacuum every second (its 60 s scaled with the clock). Round duration day 7 / day 1: {:.2} (days 5–7 / days 1–3: {:.2}); rows read per round day 7 / day 1: {:.2}; heartbeat rows day 7 / day 4: {:.2}; watermark tables' bytes day 7 / day 4: {:.2}; rows pruned: {:.0}.\n\n| day | rounds | mean round | rows read per round | events | heartbeats | validity samples | replay windows | X requests logged | watermark tables |\n|---|---|---|---|---|---|---|---|---|---|",
                r.clock_speed,
                r.round_ratio,
                r.round_ratio_last3_first3,
                r.rows_read_ratio,
                r.heartbeats_growth_after_horizon,
                r.watermark_bytes_day7_day4,
                r.pruned_rows
            );
            for d in &r.days {
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {:.1} ms | {:.0} | {} | {} | {} | {} | {} | {} kB |",
                    d.day,
                    d.rounds,
                    d.mean_round_ms,
                    d.rows_read,
                    d.events,
                    d.heartbeats,
                    d.validity_samples,
                    d.replay_windows,
                    d.x_api_requests,
                    d.watermark_tables_bytes / 1024
                );
            }
        }
    }

    /// Consumer replicas in one group.
    fn replicas_section(&self, md: &mut String) {
        if let Some(one) = self.replicas.first() {
            let _ = writeln!(
                md,
                "\n## Consumer replicas (one group, 6 partitions, {} deliveries)\n\n| replicas | deliveries/s | vs 1 replica | consumer CPU (cores, all) | per replica | Postgres CPU (cores) | mean batch | WAL per delivery | COPY: WAL per row |\n|---|---|---|---|---|---|---|---|---|",
                one.deliveries
            );
            let base = one.deliveries as f64 / one.seconds;
            for r in &self.replicas {
                let rate = r.deliveries as f64 / r.seconds;
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {:.2} | {} | {} | {:.2} | {} | {:.0} B | {:.0} B |",
                    r.replicas,
                    rate,
                    rate / base,
                    r.consumer_cpu_cores
                        .map_or("?".into(), |c| format!("{c:.2}")),
                    r.consumer_cpu_cores_per_replica
                        .map_or("?".into(), |c| format!("{c:.2}")),
                    r.db_cpu_cores,
                    r.mean_batch_records
                        .map_or("?".into(), |b| format!("{b:.0}")),
                    r.wal_bytes_per_delivery,
                    r.copy_wal_bytes_per_row,
                );
            }
        }
    }

    /// The consumer stage as events and accounts grow.
    fn scale_section(&self, md: &mut String) {
        if !self.scale.is_empty() {
            let _ = writeln!(md, "\n## Scale curve (consumer stage)\n\n{CONSUMER_HEADER}");
            for c in &self.scale {
                consumer_row(md, c);
            }
            let _ = writeln!(md, "\n{}", scale_growth(&self.scale));
        }
    }
}

/// The columns of a consumer run (the consumer section and the scale curve).
const CONSUMER_HEADER: &str = "| Writers | Accounts | Deliveries | Events | Rows | Seconds | Events/s | Rows/s | µs/event | ÷ COPY | Mean batch | DB cores | Consumer cores | Peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// One consumer run as a row under [`CONSUMER_HEADER`].
fn consumer_row(md: &mut String, c: &ConsumerReport) {
    let _ = writeln!(
        md,
        "| {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {:.2} | {} | {:.2} | {:.2} | {:.1} |",
        c.writers,
        c.accounts,
        c.deliveries,
        c.events,
        c.rows,
        c.seconds,
        c.events_per_second,
        c.rows_per_second,
        1e6 * c.seconds / c.events.max(1) as f64,
        c.ratio_to_copy,
        c.mean_batch_records
            .map(|b| format!("{b:.0}"))
            .unwrap_or_default(),
        c.db_cpu_cores,
        c.consumer_cpu_cores.unwrap_or(0.0),
        c.consumer_memory
            .map(|m| m.peak_rss_bytes as f64 / 1048576.0)
            .unwrap_or(0.0),
    );
}

/// How the per-event cost grows from the smallest to the largest run, per
/// account count (1.0: linear total cost).
pub fn scale_growth(runs: &[ConsumerReport]) -> String {
    let mut lines = Vec::new();
    let mut accounts: Vec<usize> = runs.iter().map(|r| r.accounts).collect();
    accounts.sort_unstable();
    accounts.dedup();
    for a in accounts {
        let mut these: Vec<&ConsumerReport> = runs.iter().filter(|r| r.accounts == a).collect();
        these.sort_by_key(|r| r.deliveries);
        if let (Some(small), Some(large)) = (these.first(), these.last())
            && small.deliveries < large.deliveries
        {
            let per_event = |r: &ConsumerReport| r.seconds / r.events.max(1) as f64;
            lines.push(format!(
                "{a} accounts: {}× the deliveries cost {:.2}× as much per event.",
                large.deliveries / small.deliveries.max(1),
                per_event(large) / per_event(small)
            ));
        }
    }
    lines.join(" ")
}
