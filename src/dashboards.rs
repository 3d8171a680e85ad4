//! Grafana dashboards and Prometheus alert rules, generated from one typed
//! description so every panel and every alert names metrics the services
//! really export (a test runs each query against a real Prometheus).
//!
//! `aaa dashboards --out dashboards/` rewrites the checked-in files.

use serde_json::{Value, json};

/// One panel: a title, a PromQL query per series, and a unit.
pub struct Panel {
    pub title: &'static str,
    pub queries: &'static [&'static str],
    pub unit: &'static str,
}

pub struct Dashboard {
    pub uid: &'static str,
    pub title: &'static str,
    pub panels: &'static [Panel],
}

pub const DASHBOARDS: &[Dashboard] = &[
    Dashboard {
        uid: "aaa-overview",
        title: "aaa / Overview: is anything being lost?",
        panels: &[
            Panel {
                title: "Deliveries accepted per second",
                queries: &[
                    "sum(rate(aaa_receiver_requests_total{route=\"delivery\",outcome=\"ok\",webhook=~\"$webhook\"}[5m]))",
                ],
                unit: "reqps",
            },
            Panel {
                title: "Deliveries refused per second, by reason",
                queries: &[
                    "sum by (outcome) (rate(aaa_receiver_requests_total{route=\"delivery\",outcome!=\"ok\",webhook=~\"$webhook\"}[5m]))",
                ],
                unit: "reqps",
            },
            Panel {
                title: "Events stored per second",
                queries: &["sum(rate(aaa_consumer_events_total{outcome=\"inserted\"}[5m]))"],
                unit: "ops",
            },
            Panel {
                title: "Uncovered minutes",
                queries: &["sum(aaa_watermark_uncovered_minutes{webhook=~\"$webhook\"})"],
                unit: "m",
            },
            Panel {
                title: "Replay windows by state",
                queries: &["sum by (state) (aaa_watermark_windows{webhook=~\"$webhook\"})"],
                unit: "short",
            },
            Panel {
                title: "Seconds until the oldest open gap expires",
                queries: &[
                    "min(aaa_watermark_oldest_gap_expires_in_seconds{webhook=~\"$webhook\"})",
                ],
                unit: "s",
            },
            Panel {
                title: "Dead letters stored",
                queries: &["sum(aaa_consumer_dead_letters_total) or vector(0)"],
                unit: "short",
            },
            // Every watermark replica reports the same day: max, not sum.
            Panel {
                title: "Estimated X charges today (UTC)",
                queries: &["max(aaa_x_estimated_charges_today_usd)"],
                unit: "currencyUSD",
            },
            Panel {
                title: "Billable events today, and copies absorbed (retries, replays, both envelopes)",
                queries: &[
                    "max(aaa_x_billable_events_today)",
                    "max(aaa_x_duplicates_absorbed_today)",
                    "max(aaa_x_duplicates_billed_today)",
                ],
                unit: "short",
            },
        ],
    },
    Dashboard {
        uid: "aaa-receiver",
        title: "aaa / Receiver",
        panels: &[
            Panel {
                title: "Requests by route and outcome",
                queries: &[
                    "sum by (route, outcome) (rate(aaa_receiver_requests_total{webhook=~\"$webhook\"}[5m]))",
                ],
                unit: "reqps",
            },
            Panel {
                title: "Broker acknowledgement latency (p50, p99)",
                queries: &[
                    "histogram_quantile(0.5, sum by (le) (rate(aaa_receiver_produce_duration_seconds_bucket{webhook=~\"$webhook\"}[5m])))",
                    "histogram_quantile(0.99, sum by (le) (rate(aaa_receiver_produce_duration_seconds_bucket{webhook=~\"$webhook\"}[5m])))",
                ],
                unit: "s",
            },
            Panel {
                title: "Request latency, arrival to answer (p99)",
                queries: &[
                    "histogram_quantile(0.99, sum by (le) (rate(aaa_receiver_request_duration_seconds_bucket{webhook=~\"$webhook\"}[5m])))",
                ],
                unit: "s",
            },
            Panel {
                title: "In flight",
                queries: &["sum(aaa_receiver_in_flight_requests)"],
                unit: "short",
            },
            Panel {
                title: "Requests shed at the concurrency limit",
                queries: &["sum(rate(aaa_receiver_requests_shed_total[5m]))"],
                unit: "reqps",
            },
            Panel {
                title: "Body bytes per second",
                queries: &["sum(rate(aaa_receiver_body_bytes_total{webhook=~\"$webhook\"}[5m]))"],
                unit: "Bps",
            },
            Panel {
                title: "Resident memory",
                queries: &["process_resident_memory_bytes{job=\"aaa-receiver\"}"],
                unit: "bytes",
            },
        ],
    },
    Dashboard {
        uid: "aaa-consumer",
        title: "aaa / Consumer & lag",
        panels: &[
            Panel {
                title: "Events by kind and outcome",
                queries: &["sum by (kind, outcome) (rate(aaa_consumer_events_total[5m]))"],
                unit: "ops",
            },
            Panel {
                title: "Consumer lag (records) per partition",
                queries: &["max by (partition) (aaa_consumer_lag_records)"],
                unit: "short",
            },
            Panel {
                title: "Event-time lag",
                queries: &["max(aaa_consumer_event_time_lag_seconds)"],
                unit: "s",
            },
            Panel {
                title: "Batch write latency (p99)",
                queries: &[
                    "histogram_quantile(0.99, sum by (le) (rate(aaa_consumer_write_duration_seconds_bucket[5m])))",
                ],
                unit: "s",
            },
            Panel {
                title: "Records per batch (p50)",
                queries: &[
                    "histogram_quantile(0.5, sum by (le) (rate(aaa_consumer_batch_records_bucket[5m])))",
                ],
                unit: "short",
            },
            Panel {
                title: "Last committed offset per partition",
                queries: &["max by (partition) (aaa_consumer_committed_offset)"],
                unit: "short",
            },
            Panel {
                title: "Records refused by Postgres for good (dead-lettered), and stall",
                queries: &[
                    "sum(increase(aaa_consumer_rejected_records_total[1h]))",
                    "max(aaa_consumer_stalled_seconds)",
                ],
                unit: "short",
            },
            Panel {
                title: "Write and commit failures",
                queries: &[
                    "sum(rate(aaa_consumer_write_failures_total[5m])) or vector(0)",
                    "sum(rate(aaa_consumer_commit_failures_total[5m])) or vector(0)",
                ],
                unit: "ops",
            },
        ],
    },
    Dashboard {
        uid: "aaa-gaps",
        title: "aaa / Gaps & replay",
        panels: &[
            Panel {
                title: "Uncovered minutes by webhook",
                queries: &["aaa_watermark_uncovered_minutes{webhook=~\"$webhook\"}"],
                unit: "m",
            },
            Panel {
                title: "Replay submissions by outcome",
                queries: &[
                    "sum by (outcome) (increase(aaa_watermark_replay_submissions_total{webhook=~\"$webhook\"}[1h]))",
                ],
                unit: "short",
            },
            Panel {
                title: "Replay jobs by outcome",
                queries: &[
                    "sum by (outcome) (increase(aaa_watermark_replay_jobs_total{webhook=~\"$webhook\"}[1h]))",
                ],
                unit: "short",
            },
            Panel {
                title: "Recovered vs duplicate events (and what audits found X dropped)",
                queries: &[
                    "sum(aaa_watermark_recovered_events_total{webhook=~\"$webhook\"})",
                    "sum(aaa_watermark_duplicate_events_total{webhook=~\"$webhook\"})",
                    "sum(aaa_watermark_audit_recovered_events_total{webhook=~\"$webhook\"})",
                ],
                unit: "short",
            },
            Panel {
                title: "Webhook valid at X",
                queries: &["min by (webhook) (aaa_watermark_webhook_valid{webhook=~\"$webhook\"})"],
                unit: "short",
            },
            Panel {
                title: "Watermark: lease held (per replica), age of judged timeline, time since a replica last started a round",
                queries: &[
                    "sum by (webhook) (aaa_watermark_lease_held{webhook=~\"$webhook\"})",
                    "max by (webhook) (aaa_watermark_judged_age_seconds{webhook=~\"$webhook\"})",
                    "min(aaa_watermark_stalled_seconds)",
                ],
                unit: "short",
            },
            Panel {
                title: "Time from gap to recovery (p90)",
                queries: &[
                    "histogram_quantile(0.9, sum by (le) (rate(aaa_watermark_gap_recovery_seconds_bucket[1h])))",
                ],
                unit: "s",
            },
        ],
    },
];

/// Grafana dashboard JSON (schema 39): datasource and webhook as variables.
pub fn render(dashboard: &Dashboard) -> Value {
    let panels: Vec<Value> = dashboard
        .panels
        .iter()
        .enumerate()
        .map(|(i, panel)| {
            let targets: Vec<Value> = panel
                .queries
                .iter()
                .enumerate()
                .map(|(j, expr)| json!({"refId": ((b'A' + j as u8) as char).to_string(), "expr": expr,
                                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}))
                .collect();
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": panel.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "targets": targets,
            })
        })
        .collect();
    json!({
        "uid": dashboard.uid,
        "title": dashboard.title,
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "time": {"from": "now-6h", "to": "now"},
        "tags": ["aaa"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "webhook", "type": "query", "label": "Webhook", "includeAll": true, "multi": true, "allValue": ".*",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(aaa_receiver_requests_total, webhook)", "refId": "webhook"},
             "definition": "label_values(aaa_receiver_requests_total, webhook)", "refresh": 2}
        ]},
        "panels": panels,
    })
}

/// The alert rules of `dashboards/alerts.yml` as a Prometheus Operator
/// `PrometheusRule`, for clusters that load rules that way.
pub fn prometheus_rule(alerts_yaml: &str) -> String {
    let body: String = alerts_yaml
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    format!(
        "# Generated from dashboards/alerts.yml by `aaa dashboards`; do not edit.\n\
         apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: aaa\n  labels:\n    app.kubernetes.io/part-of: aaa\nspec:\n{body}"
    )
}

/// Writes `deploy/base/prometheus-rule.yaml` from the alert rules in `dashboards`.
pub fn write_rule(
    dashboards: &std::path::Path,
    deploy: &std::path::Path,
) -> std::io::Result<std::path::PathBuf> {
    let alerts = std::fs::read_to_string(dashboards.join("alerts.yml"))?;
    std::fs::create_dir_all(deploy)?;
    let path = deploy.join("prometheus-rule.yaml");
    std::fs::write(&path, prometheus_rule(&alerts))?;
    Ok(path)
}

/// Writes every dashboard as `<uid>.json` into `dir`.
pub fn write_all(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for dashboard in DASHBOARDS {
        let path = dir.join(format!("{}.json", dashboard.uid));
        let text =
            serde_json::to_string_pretty(&render(dashboard)).map_err(std::io::Error::other)? + "\n";
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_dashboards_are_the_generated_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
        for dashboard in DASHBOARDS {
            let path = dir.join(format!("{}.json", dashboard.uid));
            let checked_in: Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|_| {
                    panic!(
                        "{} is missing: run `aaa dashboards --out dashboards`",
                        path.display()
                    )
                }))
                .unwrap();
            assert_eq!(
                checked_in,
                render(dashboard),
                "{} is stale: run `aaa dashboards --out dashboards`",
                path.display()
            );
        }
    }

    #[test]
    fn checked_in_prometheus_rule_is_the_generated_one() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let alerts = std::fs::read_to_string(root.join("dashboards/alerts.yml")).unwrap();
        let rule = std::fs::read_to_string(root.join("deploy/base/prometheus-rule.yaml"))
            .unwrap_or_default();
        assert_eq!(
            rule,
            prometheus_rule(&alerts),
            "deploy/base/prometheus-rule.yaml is stale: run `aaa dashboards`"
        );
        assert!(
            rule.contains("kind: PrometheusRule")
                && rule.contains("  groups:")
                && rule.contains("alert: AaaGapAboutToExpire")
        );
    }

    #[test]
    fn dashboards_lint() {
        let mut uids = std::collections::HashSet::new();
        for dashboard in DASHBOARDS {
            assert!(
                uids.insert(dashboard.uid),
                "duplicate uid {}",
                dashboard.uid
            );
            let json = render(dashboard);
            let ids: Vec<u64> = json["panels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_u64().unwrap())
                .collect();
            let unique: std::collections::HashSet<_> = ids.iter().collect();
            assert_eq!(
                unique.len(),
                ids.len(),
                "{}: panel ids are unique",
                dashboard.uid
            );
            for panel in json["panels"].as_array().unwrap() {
                assert_eq!(
                    panel["datasource"]["uid"], "${datasource}",
                    "{}: {}",
                    dashboard.uid, panel["title"]
                );
                for target in panel["targets"].as_array().unwrap() {
                    assert_eq!(target["datasource"]["uid"], "${datasource}");
                    assert!(!target["expr"].as_str().unwrap().is_empty());
                }
            }
        }
    }
}
