//! The simulator's HTTP surface, laid out by resource: the X API v2
//! (`webhooks`, `subscriptions`, `replay`, `activity`, `stream`, with X's
//! errors in `error` and its callers in `auth`) and the simulator's own
//! `control` API.

pub mod activity;
pub mod auth;
pub mod control;
pub mod error;
pub mod oauth2;
pub mod replay;
pub mod stream;
pub mod subscriptions;
pub mod webhooks;

use aaa_common::observe::InternalEvent;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::context::Sim;
use crate::events::ApiAnswered;
use crate::http::error::XApiError;

/// The simulated X API and the control API, on one listener.
pub fn router(sim: Sim, metrics: PrometheusHandle) -> Router {
    x_api(sim.clone()).merge(control::router(sim, metrics))
}

fn x_api(sim: Sim) -> Router {
    Router::new()
        .route("/2/webhooks", post(webhooks::register).get(webhooks::list))
        .route("/2/webhooks/replay", post(replay::submit))
        .route(
            "/2/webhooks/{id}",
            put(webhooks::validate).delete(webhooks::delete),
        )
        .route(
            "/2/account_activity/webhooks/{id}/subscriptions/all",
            post(subscriptions::subscribe).get(subscriptions::check),
        )
        .route(
            "/2/account_activity/webhooks/{id}/subscriptions/all/list",
            get(subscriptions::list),
        )
        .route(
            "/2/account_activity/webhooks/{id}/subscriptions/{user_id}/all",
            delete(subscriptions::unsubscribe),
        )
        .route(
            "/2/account_activity/subscriptions/count",
            get(subscriptions::count),
        )
        .route(
            "/2/account_activity/replay/webhooks/{id}/subscriptions/all",
            post(replay::retired_account_activity_replay),
        )
        .route(
            "/2/activity/subscriptions",
            get(activity::list)
                .post(activity::create)
                .delete(activity::delete_many),
        )
        .route(
            "/2/activity/subscriptions/{id}",
            put(activity::update).delete(activity::delete_one),
        )
        .route("/2/activity/stream", get(stream::connect))
        .route("/i/oauth2/authorize", get(oauth2::authorize))
        .route("/2/oauth2/token", post(oauth2::token))
        .route("/2/oauth2/revoke", post(oauth2::revoke))
        .route("/2/users/me", get(oauth2::me))
        .layer(middleware::from_fn_with_state(sim.clone(), x_api_layer))
        .with_state(sim)
}

/// Around every X API call: injected slowness and 503s, a count of every
/// answer, and X's clock in `Date`.
async fn x_api_layer(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let delay_ms = sim.world().faults.api_delay_ms;
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    let fail = sim.chance(sim.world().faults.api_error_share);
    let mut response = if fail {
        XApiError::service_unavailable().into_response()
    } else {
        next.run(request).await
    };
    ApiAnswered {
        endpoint: path.split('/').take(4).collect::<Vec<_>>().join("/"),
        status: response.status().as_u16(),
    }
    .emit();
    // X's clock, not the machine's: the simulated one, and skewed if asked.
    let date = sim.x_now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(value) = header::HeaderValue::from_str(&date) {
        response.headers_mut().insert(header::DATE, value);
    }
    response
}
