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

use crate::context::Sim;
use crate::faults::Faults;
use crate::state::Cutover;
use crate::traffic;

pub fn router(sim: Sim, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/sim/accounts", get(accounts))
        .route("/sim/generate", post(generate))
        .route("/sim/faults", get(get_faults).put(put_faults))
        .route("/sim/webhooks/{id}/invalidate", post(invalidate))
        .route("/sim/managed-migration", post(managed_migration))
        .route("/sim/jobs", get(jobs))
        .route("/sim/jobs/release", post(release_jobs))
        .route("/sim/oauth2/approver", post(oauth2_approver))
        .route("/sim/oauth2/revoke-user", post(oauth2_revoke_user))
        .route("/sim/truth/summary", get(summary))
        .route("/sim/truth.jsonl", get(truth_jsonl))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(move || async move { metrics.render() }))
        .with_state(sim)
}

/// The app's and every account's credentials: a simulator has nothing to hide.
async fn accounts(State(sim): State<Sim>) -> Json<Value> {
    let world = sim.world();
    Json(json!({"app": world.app, "accounts": world.accounts,
                "oauth2": {"client_id": world.oauth2.client_id, "client_secret": world.oauth2.client_secret}}))
}

#[derive(Deserialize)]
struct ApproverBody {
    user_id: String,
    /// Grant only these of what is asked; absent: everything asked.
    scopes: Option<Vec<String>>,
}

/// Who approves X's OAuth 2.0 authorization page from now on, and what.
async fn oauth2_approver(State(sim): State<Sim>, Json(body): Json<ApproverBody>) -> Json<Value> {
    sim.world().oauth2.approver = Some(crate::oauth2::Approver {
        user_id: body.user_id,
        scopes: body.scopes.map(|s| s.into_iter().collect()),
    });
    Json(json!({"ok": true}))
}

#[derive(Deserialize)]
struct RevokeUserBody {
    user_id: String,
}

/// The user revokes the app's access in their settings: every token ends.
async fn oauth2_revoke_user(
    State(sim): State<Sim>,
    Json(body): Json<RevokeUserBody>,
) -> Json<Value> {
    sim.world().oauth2.revoke_user(&body.user_id);
    Json(json!({"ok": true}))
}

#[derive(Deserialize)]
struct GenerateBody {
    count: usize,
}

async fn generate(State(sim): State<Sim>, Json(body): Json<GenerateBody>) -> Json<Value> {
    let owed = traffic::generate(&sim, body.count);
    Json(json!({"owed": owed}))
}

/// X's managed migration, now: every account subscribed on the Account
/// Activity API (or those named) gets the X Activity API subscriptions that
/// carry the same activity, on the same webhook (tagged as `aaa
/// subscriptions migrate` would), and its AAA subscription ends. With
/// `overlap_secs` both envelopes are delivered for that long (simulated);
/// with `gap_secs` neither is for that long: what happens meanwhile is owed
/// but not attempted.
#[derive(Deserialize)]
struct ManagedMigration {
    #[serde(default)]
    overlap_secs: u64,
    #[serde(default)]
    gap_secs: u64,
    accounts: Option<Vec<String>>,
}

async fn managed_migration(State(sim): State<Sim>, Json(body): Json<ManagedMigration>) -> Response {
    if body.overlap_secs > 0 && body.gap_secs > 0 {
        return (
            StatusCode::BAD_REQUEST,
            "overlap_secs or gap_secs, not both",
        )
            .into_response();
    }
    let now = sim.clock.now();
    let aaa_until = now + chrono::TimeDelta::seconds(body.overlap_secs as i64);
    let xaa_from = now + chrono::TimeDelta::seconds(body.gap_secs as i64);
    let mut world = sim.world();
    let moving: Vec<(String, Vec<String>)> = world
        .subscriptions
        .iter()
        .map(|(webhook, users)| {
            let users = users
                .iter()
                .filter(|u| body.accounts.as_ref().is_none_or(|a| a.contains(u)))
                .cloned()
                .collect();
            (webhook.clone(), users)
        })
        .collect();
    let before = world.activity_subscriptions.len();
    let mut accounts = 0;
    for (webhook, users) in moving {
        world.subscribe_on_xaa(&webhook, &users, now);
        accounts += users.len();
        for user in users {
            world.cutovers.push(Cutover {
                webhook_id: webhook.clone(),
                user_id: user,
                aaa_until,
                xaa_from,
            });
        }
    }
    world.apply_cutovers(now);
    let created = world.activity_subscriptions.len() - before;
    tracing::info!(message = "managed migration", accounts, created, aaa_until = %aaa_until, xaa_from = %xaa_from);
    Json(
        json!({"accounts": accounts, "subscriptions_created": created,
                "aaa_until": aaa_until, "xaa_from": xaa_from}),
    )
    .into_response()
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
