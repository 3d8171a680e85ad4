//! Logs and metrics.
//!
//! Following Vector's internal events: each observable event is a type whose
//! `emit` both logs and counts, so logs and metrics cannot drift apart.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::Error;

pub use crate::events::InternalEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for machines: Kubernetes, tests).
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Logs go to stdout, filtered by `AAA_LOG` (default `info`). Secrets are
/// never logged: configuration types redact them in `Debug`.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("AAA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // A second init (tests running several services in-process) is harmless.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Latency buckets in seconds, from 0.5 ms to X's 3 s delivery limit and past it.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 10.0,
];

/// How long a gap takes from being found to being recovered: minutes (X
/// replays only windows at least 31 min old) to a day (X's replay horizon).
const RECOVERY_BUCKETS: &[f64] = &[
    60.0, 300.0, 600.0, 1200.0, 1800.0, 2700.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0,
];

/// Batch sizes in records.
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Installs the global Prometheus recorder. Histograms named `*_seconds` get
/// latency buckets (gap recovery: minutes to a day), `*_records` size buckets.
pub fn install_metrics() -> Result<PrometheusHandle, Error> {
    let handle = PrometheusBuilder::new()
        // A full name wins over the `_seconds` suffix: a recovery is no request latency.
        .set_buckets_for_metric(
            Matcher::Full("aaa_watermark_gap_recovery_seconds".into()),
            RECOVERY_BUCKETS,
        )
        .map_err(|e| Error::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| Error::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Suffix("_records".into()), SIZE_BUCKETS)
        .map_err(|e| Error::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))?;
    // Without the exporter's own HTTP listener, histograms need periodic
    // upkeep; process metrics (RSS, CPU, open fds) are sampled on the same beat.
    let upkeep = handle.clone();
    let process = metrics_process::Collector::default();
    process.describe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            process.collect();
            upkeep.run_upkeep();
        }
    });
    crate::events::BuildInfo.emit();
    Ok(handle)
}
