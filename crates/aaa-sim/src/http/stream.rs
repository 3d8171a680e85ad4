//! `GET /2/activity/stream`: the app's persistent connection (see
//! `crate::stream` for what it carries).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use futures::StreamExt as _;
use serde::Deserialize;

use crate::context::Sim;
use crate::http::auth::App;
use crate::http::error::{XApiError, XResult};
use crate::stream;

#[derive(Deserialize)]
pub struct Params {
    backfill_minutes: Option<String>,
}

pub async fn connect(State(sim): State<Sim>, _: App, Query(params): Query<Params>) -> XResult {
    let backfill = match params.backfill_minutes.as_deref().map(str::parse::<i64>) {
        None => 0,
        Some(Ok(n)) if (0..=5).contains(&n) => n,
        Some(_) => {
            return Err(XApiError::invalid_request(
                "backfill_minutes must be between 0 and 5",
            ));
        }
    };
    let lines = stream::connect(&sim, backfill)
        .map_err(|until| XApiError::TooManyConnections { until })?
        .map(Ok::<_, std::convert::Infallible>);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response())
}
