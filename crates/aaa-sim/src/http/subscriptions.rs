//! `/2/account_activity/...`: Account Activity subscriptions, one per
//! account and webhook, added and checked as the user (OAuth 1.0a), listed,
//! counted and removed as the app.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::context::Sim;
use crate::http::auth::{App, User};
use crate::http::error::{XApiError, XResult};

pub async fn subscribe(
    State(sim): State<Sim>,
    User(user): User,
    Path(id): Path<String>,
) -> XResult {
    let mut world = sim.world();
    if !world.webhooks.contains_key(&id) {
        return Err(XApiError::webhook_id_invalid());
    }
    if world
        .subscriptions
        .get(&id)
        .is_some_and(|s| s.contains(&user))
    {
        return Err(XApiError::reason(
            StatusCode::BAD_REQUEST,
            "DuplicateSubscriptionFailed",
            "A subscription for this user already exists for the specified webhook_id.",
        ));
    }
    if world.subscription_count() >= sim.args.provisioned_count {
        return Err(XApiError::reason(
            StatusCode::BAD_REQUEST,
            "SubscriptionLimitExceeded",
            "The application has reached its subscription limit across all webhooks.",
        ));
    }
    world.subscriptions.entry(id).or_default().insert(user);
    Ok(Json(json!({"data": {"subscribed": true}})).into_response())
}

pub async fn check(State(sim): State<Sim>, User(user): User, Path(id): Path<String>) -> XResult {
    let world = sim.world();
    match world.subscriptions.get(&id) {
        Some(users) if world.webhooks.contains_key(&id) => {
            Ok(Json(json!({"data": {"subscribed": users.contains(&user)}})).into_response())
        }
        _ => Err(XApiError::webhook_id_invalid()),
    }
}

pub async fn list(State(sim): State<Sim>, _: App, Path(id): Path<String>) -> XResult {
    let world = sim.world();
    let Some(users) = world
        .subscriptions
        .get(&id)
        .filter(|_| world.webhooks.contains_key(&id))
    else {
        return Err(XApiError::webhook_id_invalid());
    };
    let subscriptions: Vec<Value> = users.iter().map(|u| json!({"user_id": u})).collect();
    let url = world.webhooks.get(&id).map(|w| w.url.clone());
    Ok(Json(json!({"data": {"application_id": world.app.app_id, "webhook_id": id, "webhook_url": url, "subscriptions": subscriptions}})).into_response())
}

pub async fn count(State(sim): State<Sim>, _: App) -> XResult {
    let count = sim.world().subscription_count();
    Ok(Json(json!({"data": {"account_name": "sim", "provisioned_count": sim.args.provisioned_count.to_string(),
                            "subscriptions_count_all": count.to_string(), "subscriptions_count_direct_messages": count.to_string()}}))
        .into_response())
}

pub async fn unsubscribe(
    State(sim): State<Sim>,
    _: App,
    Path((id, user_id)): Path<(String, String)>,
) -> XResult {
    let mut world = sim.world();
    if !world.webhooks.contains_key(&id) {
        return Err(XApiError::webhook_id_invalid());
    }
    let removed = world
        .subscriptions
        .get_mut(&id)
        .is_some_and(|users| users.remove(&user_id));
    if !removed {
        return Err(XApiError::reason(
            StatusCode::BAD_REQUEST,
            "SubscriptionNotFound",
            "No subscription exists for the specified user_id on the given webhook_id.",
        ));
    }
    Ok(Json(json!({"data": {"subscribed": false}})).into_response())
}
