//! The simulator's own API: credentials, activity on demand, faults, and the
//! ground truth tests compare Postgres against.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Sim;
use crate::faults::Faults;

pub fn router(sim: Sim, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/sim/accounts", get(accounts))
        .route("/sim/generate", post(generate))
        .route("/sim/faults", get(get_faults).put(put_faults))
        .route("/sim/webhooks/{id}/invalidate", post(invalidate))
        .route("/sim/jobs", get(jobs))
        .route("/sim/jobs/release", post(release_jobs))
        .route("/sim/truth/summary", get(summary))
        .route("/sim/truth.jsonl", get(truth_jsonl))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(move || async move { metrics.render() }))
        .with_state(sim)
}

/// The app's and every account's credentials: a simulator has nothing to hide.
async fn accounts(State(sim): State<Sim>) -> Json<Value> {
    let world = sim.world();
    Json(json!({"app": world.app, "accounts": world.accounts}))
}

#[derive(Deserialize)]
struct GenerateBody {
    count: usize,
}

async fn generate(State(sim): State<Sim>, Json(body): Json<GenerateBody>) -> Json<Value> {
    let owed = crate::generate(&sim, body.count);
    Json(json!({"owed": owed}))
}

async fn get_faults(State(sim): State<Sim>) -> Json<Faults> {
    Json(sim.world().faults.clone())
}

async fn put_faults(State(sim): State<Sim>, Json(faults): Json<Faults>) -> Json<Faults> {
    tracing::info!(message = "faults set", faults = ?faults);
    sim.world().faults = faults.clone();
    Json(faults)
}

async fn invalidate(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    match sim.world().webhooks.get_mut(&id) {
        Some(webhook) => {
            webhook.valid = false;
            Json(json!({"data": {"valid": false}})).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such webhook").into_response(),
    }
}

/// Lets the held replay job run (or the next one to be held, if none waits yet).
async fn release_jobs(State(sim): State<Sim>) -> Json<Value> {
    sim.release_jobs.notify_one();
    Json(json!({"released": true}))
}

async fn jobs(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({"data": sim.world().jobs}))
}

async fn summary(State(sim): State<Sim>) -> Json<Value> {
    Json(json!(sim.world().summary()))
}

/// One line per owed delivery, with its body and every attempt.
async fn truth_jsonl(State(sim): State<Sim>) -> Response {
    let world = sim.world();
    let mut out = String::new();
    for owed in &world.owed {
        let mut line = json!(owed);
        line["body"] = serde_json::from_slice(&owed.body).unwrap_or(Value::Null);
        line["delivered"] = json!(owed.delivered());
        out.push_str(&line.to_string());
        out.push('\n');
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response()
}
