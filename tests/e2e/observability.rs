//! Every dashboard panel and every alert expression, run against a real
//! Prometheus scraping the real stack (driven by the simulator through an
//! outage and its recovery): each must parse, each panel must return data,
//! and every metric a query names must be exported by some service.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aaa_testkit::{Stack, StackOptions, eventually, free_port};
use chrono::TimeDelta;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aaa");
const WAIT: Duration = Duration::from_secs(120);

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus on a free port and waits until it is ready; a port
/// taken in the meantime by another process means another try.
async fn start_prometheus(targets: &[(&str, String)]) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let jobs: String = targets
        .iter()
        .map(|(job, addr)| {
            format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n")
        })
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    for attempt in 0..5 {
        let port = free_port();
        let mut child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join(format!("data-{attempt}")).display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package) on PATH: run the tests through scripts/test.sh");
        let url = format!("http://127.0.0.1:{port}");
        let ready = eventually(
            Duration::from_secs(30),
            "Prometheus to be ready or exit",
            || {
                let exited = child.try_wait().ok().flatten().is_some();
                let url = url.clone();
                async move {
                    if exited {
                        return Some(false);
                    }
                    let response = reqwest::get(format!("{url}/-/ready")).await.ok()?;
                    response.status().is_success().then_some(true)
                }
            },
        )
        .await;
        if ready {
            return Prometheus {
                child,
                url,
                _dir: dir,
            };
        }
        let _ = child.wait();
    }
    panic!("Prometheus did not start on any of 5 free ports");
}

/// `None` while Prometheus is still starting.
async fn try_query(prometheus: &Prometheus, expr: &str) -> Option<Value> {
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prometheus.url))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

async fn query(prometheus: &Prometheus, expr: &str) -> Value {
    try_query(prometheus, expr)
        .await
        .expect("Prometheus answers")
}

fn panel_queries() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for panel in dashboard["panels"].as_array().unwrap() {
                for target in panel["targets"].as_array().unwrap() {
                    let expr = target["expr"].as_str().unwrap().replace("$webhook", ".*");
                    queries.push((format!("{} / {}", dashboard["uid"], panel["title"]), expr));
                }
            }
        }
    }
    queries
}

fn alert_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/alerts.yml"),
    )
    .unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr: ").map(str::to_owned))
        .collect()
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut current = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            current.push(c);
        } else {
            if current.starts_with("aaa_") || current.starts_with("process_") {
                names.insert(current.clone());
            }
            current.clear();
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_works_against_a_real_prometheus() {
    let mut stack = Stack::start(BIN, StackOptions::scaled(300.0)).await;
    let clock = stack.options.clock();
    let sim = stack.start_sim(aaa_testkit::SMALL_SIM_ARGS).await;
    let watermark = stack.spawn_watermark(&sim, "watermark-a");
    let watermark_admin = watermark.addr("admin").await.to_string();
    let consumer_admin = stack.consumer.addr("admin").await.to_string();

    // Traffic, a refused delivery, an outage and its recovery: every metric has something to say.
    sim.generate(50).await;
    let forged = reqwest::Client::new()
        .post(&stack.webhook_url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    stack.receiver.kill();
    let outage_start = clock.now();
    sim.generate(30).await;
    eventually(WAIT, "20 simulated minutes of outage", || async {
        (clock.now() >= outage_start + TimeDelta::minutes(20)).then_some(())
    })
    .await;
    stack.restart_receiver().await;
    let receiver_admin = stack.receiver.addr("admin").await.to_string();
    sim.generate(30).await;

    // The pipeline itself first: the gap found, replayed and reconciled. (How
    // much it recovers depends on load: when the machine is slow, X's 3 s
    // timeout can count stored deliveries as failed; the watermark tests
    // check recovery exactly, this one checks what Prometheus sees.)
    let reconciled = tokio::time::timeout(WAIT, async {
        loop {
            let n = stack
                .db
                .count("SELECT count(*) FROM replay_windows WHERE state = 'reconciled'")
                .await;
            if n > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if reconciled.is_err() {
        let windows: Vec<(String, i64, Option<String>)> =
            sqlx::query_as("SELECT state, recovered, last_error FROM replay_windows")
                .fetch_all(&stack.db.pool)
                .await
                .unwrap();
        panic!(
            "no reconciled gap: windows {windows:?}, simulator {}, watermark log:\n{}",
            sim.summary().await,
            watermark.output().join("\n")
        );
    }
    let prometheus = start_prometheus(&[
        ("aaa-receiver", receiver_admin),
        ("aaa-consumer", consumer_admin),
        ("aaa-watermark", watermark_admin),
    ])
    .await;
    eventually(WAIT, "the reconciled job scraped", || async {
        let result = try_query(
            &prometheus,
            "sum(aaa_watermark_replay_jobs_total{outcome=\"reconciled\"})",
        )
        .await?;
        let value: f64 = result["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()?;
        (value > 0.0).then_some(())
    })
    .await;
    eventually(WAIT, "every target up", || async {
        let result = try_query(&prometheus, "sum(up)").await?;
        (result["data"]["result"][0]["value"][1] == "3").then_some(())
    })
    .await;
    // A few more scrapes so rate() has two samples everywhere.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    eventually(WAIT, "four more seconds of scrapes", || async {
        (std::time::Instant::now() >= until).then_some(())
    })
    .await;

    let names: Value = reqwest::get(format!("{}/api/v1/label/__name__/values", prometheus.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let exported: BTreeSet<String> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();

    // Counters exist from zero, before anything happened to them.
    assert!(
        exported.contains("aaa_receiver_heartbeat_failures_total"),
        "{exported:?}"
    );
    // Gap recovery is measured in minutes to hours, not request latency.
    let watermark_metrics =
        reqwest::get(format!("http://{}/metrics", watermark.addr("admin").await))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    assert!(
        watermark_metrics.lines().any(|l| l
            .starts_with("aaa_watermark_gap_recovery_seconds_bucket{")
            && l.contains("le=\"86400\"")),
        "{watermark_metrics}"
    );

    let panels = panel_queries();
    assert!(
        panels.len() >= 20,
        "dashboards have their panels ({})",
        panels.len()
    );
    for (panel, expr) in &panels {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "{panel}: no service exports {name}"
            );
        }
        let result = query(&prometheus, expr).await;
        assert_eq!(result["status"], "success", "{panel}: {expr}: {result}");
        assert!(
            result["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
            "{panel}: no data for {expr}"
        );
    }
    let alerts = alert_expressions();
    assert_eq!(alerts.len(), 17);
    for expr in &alerts {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "alert {expr}: no service exports {name}"
            );
        }
        let result = query(&prometheus, expr).await;
        assert_eq!(result["status"], "success", "alert {expr}: {result}");
    }
    // The dashboards' webhook variable finds the webhook.
    let webhooks: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/label/webhook/values", prometheus.url))
        .query(&[("match[]", "aaa_receiver_requests_total")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        webhooks["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == stack.webhook_id.as_str())
    );
}
