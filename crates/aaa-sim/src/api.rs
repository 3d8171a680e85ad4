//! The simulated X API v2: webhooks, subscriptions and both replay endpoints,
//! with X's validation, error reasons and rate limits.

use aaa_common::observe::InternalEvent;
use std::collections::HashMap;

use aaa_replay_window::Rules;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::TimeDelta;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::{Sim, crc, replay};

const REPLAY_RATE_WINDOW: TimeDelta = TimeDelta::minutes(15);

pub fn router(sim: Sim) -> Router {
    Router::new()
        .route("/2/webhooks", post(register).get(list_webhooks))
        .route("/2/webhooks/replay", post(replay_webhooks))
        .route("/2/webhooks/{id}", put(validate).delete(delete_webhook))
        .route(
            "/2/account_activity/webhooks/{id}/subscriptions/all",
            post(subscribe).get(check_subscription),
        )
        .route(
            "/2/account_activity/webhooks/{id}/subscriptions/all/list",
            get(list_subscriptions),
        )
        .route(
            "/2/account_activity/webhooks/{id}/subscriptions/{user_id}/all",
            axum::routing::delete(unsubscribe),
        )
        .route(
            "/2/account_activity/subscriptions/count",
            get(count_subscriptions),
        )
        .route(
            "/2/account_activity/replay/webhooks/{id}/subscriptions/all",
            post(retired_account_activity_replay),
        )
        .merge(crate::activity::router())
        .merge(crate::stream::router())
        .layer(middleware::from_fn_with_state(sim.clone(), api_faults))
        .with_state(sim)
}

/// X's error shape: the reason name in `title` and in each error, the
/// human text in `detail`.
pub(crate) fn x_error(status: StatusCode, reason: &str, detail: &str) -> Response {
    let body = json!({
        "errors": [{"message": detail, "reason": reason}],
        "title": reason,
        "detail": detail,
        "type": format!("https://api.x.com/2/problems/{reason}"),
    });
    (status, Json(body)).into_response()
}

pub(crate) fn unauthorized() -> Response {
    let body = json!({"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized",
                      "errors": [{"message": "Could not authenticate you", "code": 32}]});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

fn webhook_id_invalid() -> Response {
    x_error(
        StatusCode::BAD_REQUEST,
        "WebhookIdInvalid",
        "The provided webhook_id was not found or is not associated with the app.",
    )
}

/// Injected 503s, and a count of every API call.
async fn api_faults(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let delay_ms = sim.world().faults.api_delay_ms;
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    let fail = sim.chance(sim.world().faults.api_error_share);
    let response = if fail {
        x_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service Unavailable (injected fault)",
        )
    } else {
        next.run(request).await
    };
    let endpoint = path.split('/').take(4).collect::<Vec<_>>().join("/");
    crate::events::ApiAnswered {
        endpoint,
        status: response.status().as_u16(),
    }
    .emit();
    // X's clock, not the machine's: the simulated one, and skewed if asked.
    let mut response = response;
    let date = x_now(&sim).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(value) = header::HeaderValue::from_str(&date) {
        response.headers_mut().insert(header::DATE, value);
    }
    response
}

/// What X's clock says now.
pub(crate) fn x_now(sim: &Sim) -> chrono::DateTime<chrono::Utc> {
    sim.clock.now() + chrono::TimeDelta::seconds(sim.args.clock_skew_secs)
}

pub(crate) fn bearer_ok(sim: &Sim, headers: &HeaderMap) -> bool {
    let expected = sim.world().app.bearer_token.clone();
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| bool::from(token.as_bytes().ct_eq(expected.as_bytes())))
}

macro_rules! require_bearer {
    ($sim:expr, $headers:expr) => {
        if !bearer_ok(&$sim, &$headers) {
            return unauthorized();
        }
    };
}

/// App-only (bearer) or OAuth 1.0a user context: what X's webhook
/// management endpoints accept.
macro_rules! require_app_or_user {
    ($sim:expr, $headers:expr, $method:expr, $path:expr, $query:expr) => {
        if !bearer_ok(&$sim, &$headers)
            && oauth_user(&$sim, $method, &$headers, &$path, &$query).is_none()
        {
            return unauthorized();
        }
    };
}

#[derive(Deserialize)]
struct RegisterBody {
    url: String,
}

async fn register(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Option<Json<RegisterBody>>,
) -> Response {
    require_app_or_user!(sim, headers, "POST", "/2/webhooks", query);
    let Some(Json(RegisterBody { url })) = body else {
        return x_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "body must be {\"url\": \"https://...\"}",
        );
    };
    if let Err(reason) = crc::challenge(&sim, &url).await {
        return x_error(
            StatusCode::BAD_REQUEST,
            "CrcValidationFailed",
            &format!(
                "Incorrect response received from the webhook URL during CRC validation: {reason}"
            ),
        );
    }
    let webhook = sim.world().add_webhook(url, sim.clock.now());
    Json(json!({"data": webhook})).into_response()
}

/// 429 as X answers it, with when the window resets.
fn too_many_requests(limit: u32, reset: chrono::DateTime<chrono::Utc>) -> Response {
    let mut response = x_error(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Too Many Requests",
    );
    let headers = response.headers_mut();
    headers.insert("x-rate-limit-limit", limit.into());
    headers.insert("x-rate-limit-remaining", 0.into());
    headers.insert("x-rate-limit-reset", reset.timestamp().into());
    response
}

/// X's limit on the webhook endpoints, per endpoint: the 429 to answer
/// when it is reached.
fn webhooks_rate(sim: &Sim, endpoint: &'static str) -> Option<Response> {
    let limit = sim.args.webhooks_read_limit;
    let now = sim.clock.now();
    if let Some(until) = sim.world().faults.webhooks_rate_limited_until
        && now < until
    {
        return Some(too_many_requests(limit, until));
    }
    sim.world()
        .take_rate(endpoint, limit, REPLAY_RATE_WINDOW, sim.clock.now())
        .err()
        .map(|reset| too_many_requests(limit, reset))
}

async fn list_webhooks(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    require_bearer!(sim, headers);
    if let Some(refused) = webhooks_rate(&sim, "webhooks_list") {
        return refused;
    }
    let webhooks: Vec<Value> = sim.world().webhooks.values().map(|w| json!(w)).collect();
    Json(json!({"data": webhooks, "meta": {"result_count": webhooks.len()}})).into_response()
}

async fn validate(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    require_app_or_user!(sim, headers, "PUT", format!("/2/webhooks/{id}"), query);
    if let Some(refused) = webhooks_rate(&sim, "webhooks_validate") {
        return refused;
    }
    match crc::revalidate(&sim, &id).await {
        None => webhook_id_invalid(),
        Some(Ok(())) => Json(json!({"data": {"valid": true}})).into_response(),
        Some(Err(reason)) => x_error(
            StatusCode::BAD_REQUEST,
            "CrcValidationFailed",
            &format!(
                "Incorrect response received from the webhook URL during CRC validation: {reason}"
            ),
        ),
    }
}

async fn delete_webhook(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    require_app_or_user!(sim, headers, "DELETE", format!("/2/webhooks/{id}"), query);
    let mut world = sim.world();
    if world.webhooks.remove(&id).is_none() {
        return webhook_id_invalid();
    }
    world.subscriptions.remove(&id);
    Json(json!({"data": {"deleted": true}})).into_response()
}

/// The URL the client signed: scheme + Host + path.
fn base_url(headers: &HeaderMap, path: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}{path}")
}

struct OAuthCheck<'a>(&'a Sim);

impl aaa_oauth1::Verifier for OAuthCheck<'_> {
    fn consumer_secret(&self, consumer_key: &str) -> Option<String> {
        let world = self.0.world();
        (world.app.consumer_key == consumer_key).then(|| world.app.consumer_secret.clone())
    }
    fn token_secret(&self, token: &str) -> Option<String> {
        self.0
            .world()
            .account_by_token(token)
            .map(|a| a.access_token_secret.clone())
    }
    /// OAuth timestamps are the client's real time, whatever the simulated clock says.
    fn now(&self) -> u64 {
        chrono::Utc::now().timestamp().max(0) as u64
    }
    fn remember_nonce(&self, consumer_key: &str, nonce: &str, _timestamp: u64) -> bool {
        self.0.world().remember_nonce(consumer_key, nonce)
    }
}

/// The subscribing user, proven by an OAuth 1.0a user-context signature;
/// `None` answers 401.
fn oauth_user(
    sim: &Sim,
    method: &str,
    headers: &HeaderMap,
    path: &str,
    query: &HashMap<String, String>,
) -> Option<String> {
    let params: Vec<(String, String)> = query.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match aaa_oauth1::verify(
        &OAuthCheck(sim),
        method,
        &base_url(headers, path),
        &params,
        header,
    ) {
        Ok(verified) => sim
            .world()
            .account_by_token(&verified.token)
            .map(|a| a.user_id.clone()),
        Err(err) => {
            tracing::info!(message = "OAuth 1.0a verification failed", error = %err);
            None
        }
    }
}

async fn subscribe(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let path = format!("/2/account_activity/webhooks/{id}/subscriptions/all");
    let Some(user) = oauth_user(&sim, "POST", &headers, &path, &query) else {
        return unauthorized();
    };
    let mut world = sim.world();
    if !world.webhooks.contains_key(&id) {
        return webhook_id_invalid();
    }
    if world
        .subscriptions
        .get(&id)
        .is_some_and(|s| s.contains(&user))
    {
        return x_error(
            StatusCode::BAD_REQUEST,
            "DuplicateSubscriptionFailed",
            "A subscription for this user already exists for the specified webhook_id.",
        );
    }
    if world.subscription_count() >= sim.args.provisioned_count {
        return x_error(
            StatusCode::BAD_REQUEST,
            "SubscriptionLimitExceeded",
            "The application has reached its subscription limit across all webhooks.",
        );
    }
    world.subscriptions.entry(id).or_default().insert(user);
    Json(json!({"data": {"subscribed": true}})).into_response()
}

async fn check_subscription(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let path = format!("/2/account_activity/webhooks/{id}/subscriptions/all");
    let Some(user) = oauth_user(&sim, "GET", &headers, &path, &query) else {
        return unauthorized();
    };
    let world = sim.world();
    match world.subscriptions.get(&id) {
        Some(users) if world.webhooks.contains_key(&id) => {
            Json(json!({"data": {"subscribed": users.contains(&user)}})).into_response()
        }
        _ => webhook_id_invalid(),
    }
}

async fn list_subscriptions(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    require_bearer!(sim, headers);
    let world = sim.world();
    let Some(users) = world
        .subscriptions
        .get(&id)
        .filter(|_| world.webhooks.contains_key(&id))
    else {
        return webhook_id_invalid();
    };
    let subscriptions: Vec<Value> = users.iter().map(|u| json!({"user_id": u})).collect();
    let url = world.webhooks.get(&id).map(|w| w.url.clone());
    Json(json!({"data": {"application_id": world.app.app_id, "webhook_id": id, "webhook_url": url, "subscriptions": subscriptions}})).into_response()
}

async fn count_subscriptions(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    require_bearer!(sim, headers);
    let count = sim.world().subscription_count();
    Json(json!({"data": {"account_name": "sim", "provisioned_count": sim.args.provisioned_count.to_string(),
                         "subscriptions_count_all": count.to_string(), "subscriptions_count_direct_messages": count.to_string()}}))
        .into_response()
}

async fn unsubscribe(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path((id, user_id)): Path<(String, String)>,
) -> Response {
    require_bearer!(sim, headers);
    let mut world = sim.world();
    if !world.webhooks.contains_key(&id) {
        return webhook_id_invalid();
    }
    let removed = world
        .subscriptions
        .get_mut(&id)
        .is_some_and(|users| users.remove(&user_id));
    match removed {
        true => Json(json!({"data": {"subscribed": false}})).into_response(),
        false => x_error(
            StatusCode::BAD_REQUEST,
            "SubscriptionNotFound",
            "No subscription exists for the specified user_id on the given webhook_id.",
        ),
    }
}

/// The Account Activity replay endpoint, retired by X on 2026-03-25 and
/// absent from its OpenAPI spec: answered as X answers a path it does not
/// serve, whatever the credentials.
async fn retired_account_activity_replay() -> Response {
    let body = json!({
        "errors": [{"message": "Sorry, that page does not exist", "code": 34}],
        "title": "Not Found Error",
        "detail": "Sorry, that page does not exist",
        "type": "https://api.x.com/2/problems/resource-not-found",
        "status": 404,
    });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

#[derive(Deserialize)]
struct ReplayBody {
    webhook_id: Option<String>,
    from_date: Option<String>,
    to_date: Option<String>,
}

async fn replay_webhooks(
    State(sim): State<Sim>,
    headers: HeaderMap,
    body: Option<Json<ReplayBody>>,
) -> Response {
    require_bearer!(sim, headers);
    if !sim.args.webhooks_replay {
        return x_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "POST /2/webhooks/replay is not enabled on this simulator.",
        );
    }
    let Some(Json(body)) = body else {
        return x_error(
            StatusCode::BAD_REQUEST,
            "QueryParamInvalid",
            "body must be JSON with webhook_id, from_date, to_date",
        );
    };
    let Some(id) = body.webhook_id else {
        return x_error(
            StatusCode::BAD_REQUEST,
            "QueryParamInvalid",
            "webhook_id is required",
        );
    };
    let rules = Rules {
        to_inclusive: sim.args.webhooks_replay_to_inclusive,
    };
    let limit = sim.args.webhooks_replay_limit;
    submit_replay(
        &sim,
        "webhooks_replay",
        &id,
        body.from_date,
        body.to_date,
        rules,
        limit,
    )
    .await
}

async fn submit_replay(
    sim: &Sim,
    endpoint: &'static str,
    webhook_id: &str,
    from: Option<String>,
    to: Option<String>,
    rules: Rules,
    limit: u32,
) -> Response {
    let now = x_now(sim);
    if !sim.world().webhooks.contains_key(webhook_id) {
        return x_error(
            StatusCode::BAD_REQUEST,
            "WebhookIdInvalid",
            "The provided webhook_id is invalid or not associated with the app.",
        );
    }
    if let Err(reset) = sim
        .world()
        .take_rate(endpoint, limit, REPLAY_RATE_WINDOW, now)
    {
        return too_many_requests(limit, reset);
    }
    let (Some(from), Some(to)) = (from, to) else {
        return x_error(
            StatusCode::BAD_REQUEST,
            "QueryParamInvalid",
            "from_date and to_date are required (yyyymmddhhmm)",
        );
    };
    let window = match aaa_replay_window::validate(now, &from, &to, rules) {
        Ok(window) => window,
        Err(err) => return x_error(StatusCode::BAD_REQUEST, err.reason(), &err.to_string()),
    };
    if sim.world().running_job(webhook_id).is_some() {
        return replay_conflict();
    }
    // X runs a CRC before it accepts a replay.
    match crc::revalidate(sim, webhook_id).await {
        Some(Ok(())) => {}
        None => return webhook_id_invalid(),
        Some(Err(reason)) => {
            return x_error(
                StatusCode::BAD_REQUEST,
                "CrcValidationFailed",
                &format!(
                    "Incorrect response received from the webhook URL during CRC validation: {reason}"
                ),
            );
        }
    }
    let Ok(job) = replay::open_job(sim, webhook_id, window, endpoint) else {
        return replay_conflict();
    };
    let response =
        json!({"data": {"job_id": job.job_id, "created_at": job.created_at.to_rfc3339()}});
    tracing::info!(message = "replay job accepted", job_id = %job.job_id, webhook = webhook_id, from = %job.from, to_exclusive = %job.to_exclusive, endpoint);
    replay::spawn(sim.clone(), job);
    Json(response).into_response()
}

fn replay_conflict() -> Response {
    x_error(
        StatusCode::CONFLICT,
        "ReplayConflictError",
        "A replay job is already in progress for this webhook.",
    )
}
