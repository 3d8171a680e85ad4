//! `/2/webhooks`: register (CRC first), list, re-validate (PUT) and delete,
//! within X's read limit.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use chrono::TimeDelta;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::context::Sim;
use crate::crc;
use crate::http::auth::{App, AppOrUser};
use crate::http::error::{XApiError, XResult};

/// The window X counts requests over.
pub const RATE_WINDOW: TimeDelta = TimeDelta::minutes(15);

#[derive(Deserialize)]
pub struct RegisterBody {
    url: String,
}

pub async fn register(
    State(sim): State<Sim>,
    _: AppOrUser,
    body: Option<Json<RegisterBody>>,
) -> XResult {
    let Some(Json(RegisterBody { url })) = body else {
        return Err(XApiError::invalid_request(
            "body must be {\"url\": \"https://...\"}",
        ));
    };
    if let Err(reason) = crc::challenge(&sim, &url).await {
        return Err(XApiError::crc_failed(&reason));
    }
    let webhook = sim.world().add_webhook(url, sim.clock.now());
    Ok(Json(json!({"data": webhook})).into_response())
}

/// X's limit on the webhook endpoints, per endpoint.
fn within_rate(sim: &Sim, endpoint: &'static str) -> Result<(), XApiError> {
    let limit = sim.args.webhooks_read_limit;
    let now = sim.clock.now();
    if let Some(until) = sim.world().faults.webhooks_rate_limited_until
        && now < until
    {
        return Err(XApiError::TooManyRequests {
            limit,
            reset: until,
        });
    }
    sim.world()
        .take_rate(endpoint, limit, RATE_WINDOW, now)
        .map_err(|reset| XApiError::TooManyRequests { limit, reset })
}

pub async fn list(State(sim): State<Sim>, _: App) -> XResult {
    within_rate(&sim, "webhooks_list")?;
    let webhooks: Vec<Value> = sim.world().webhooks.values().map(|w| json!(w)).collect();
    Ok(Json(json!({"data": webhooks, "meta": {"result_count": webhooks.len()}})).into_response())
}

pub async fn validate(State(sim): State<Sim>, _: AppOrUser, Path(id): Path<String>) -> XResult {
    within_rate(&sim, "webhooks_validate")?;
    match crc::revalidate(&sim, &id).await {
        None => Err(XApiError::webhook_id_invalid()),
        Some(Ok(())) => Ok(Json(json!({"data": {"valid": true}})).into_response()),
        Some(Err(reason)) => Err(XApiError::crc_failed(&reason)),
    }
}

pub async fn delete(State(sim): State<Sim>, _: AppOrUser, Path(id): Path<String>) -> XResult {
    let mut world = sim.world();
    if world.webhooks.remove(&id).is_none() {
        return Err(XApiError::webhook_id_invalid());
    }
    world.subscriptions.remove(&id);
    Ok(Json(json!({"data": {"deleted": true}})).into_response())
}
