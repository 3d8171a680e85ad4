//! `POST /2/webhooks/replay`, X's only replay endpoint: one job per webhook
//! at a time, within X's window rules and request limit, after a CRC. The
//! Account Activity replay endpoint X retired answers as a path X does not
//! serve.

use aaa_replay_window::Rules;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::context::Sim;
use crate::http::auth::App;
use crate::http::error::{XApiError, XResult};
use crate::http::webhooks::RATE_WINDOW;
use crate::{crc, replay};

/// The Account Activity replay endpoint, retired by X on 2026-03-25 and
/// absent from its OpenAPI spec: answered as X answers a path it does not
/// serve, whatever the credentials.
pub async fn retired_account_activity_replay() -> XApiError {
    XApiError::PageNotFound
}

#[derive(Deserialize)]
pub struct ReplayBody {
    webhook_id: Option<String>,
    from_date: Option<String>,
    to_date: Option<String>,
}

const ENDPOINT: &str = "webhooks_replay";

pub async fn submit(State(sim): State<Sim>, _: App, body: Option<Json<ReplayBody>>) -> XResult {
    if !sim.args.webhooks_replay {
        return Err(XApiError::reason(
            StatusCode::NOT_FOUND,
            "NotFound",
            "POST /2/webhooks/replay is not enabled on this simulator.",
        ));
    }
    let Some(Json(body)) = body else {
        return Err(XApiError::query_param_invalid(
            "body must be JSON with webhook_id, from_date, to_date",
        ));
    };
    let Some(webhook_id) = body.webhook_id else {
        return Err(XApiError::query_param_invalid("webhook_id is required"));
    };
    let rules = Rules {
        to_inclusive: sim.args.webhooks_replay_to_inclusive,
    };
    let limit = sim.args.webhooks_replay_limit;
    let now = sim.x_now();
    if !sim.world().webhooks.contains_key(&webhook_id) {
        return Err(XApiError::reason(
            StatusCode::BAD_REQUEST,
            "WebhookIdInvalid",
            "The provided webhook_id is invalid or not associated with the app.",
        ));
    }
    sim.world()
        .take_rate(ENDPOINT, limit, RATE_WINDOW, now)
        .map_err(|reset| XApiError::TooManyRequests { limit, reset })?;
    let (Some(from), Some(to)) = (body.from_date, body.to_date) else {
        return Err(XApiError::query_param_invalid(
            "from_date and to_date are required (yyyymmddhhmm)",
        ));
    };
    let window = aaa_replay_window::validate(now, &from, &to, rules)
        .map_err(|err| XApiError::reason(StatusCode::BAD_REQUEST, err.reason(), err.to_string()))?;
    if sim.world().running_job(&webhook_id).is_some() {
        return Err(XApiError::replay_conflict());
    }
    // X runs a CRC before it accepts a replay.
    match crc::revalidate(&sim, &webhook_id).await {
        Some(Ok(())) => {}
        None => return Err(XApiError::webhook_id_invalid()),
        Some(Err(reason)) => return Err(XApiError::crc_failed(&reason)),
    }
    let Ok(job) = replay::open_job(&sim, &webhook_id, window, ENDPOINT) else {
        return Err(XApiError::replay_conflict());
    };
    let response =
        json!({"data": {"job_id": job.job_id, "created_at": job.created_at.to_rfc3339()}});
    tracing::info!(message = "replay job accepted", job_id = %job.job_id, webhook = %webhook_id, from = %job.from, to_exclusive = %job.to_exclusive, endpoint = ENDPOINT);
    replay::spawn(sim.clone(), job);
    Ok(Json(response).into_response())
}
