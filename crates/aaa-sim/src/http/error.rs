//! Every refusal of the simulated X API, answered in X's shapes.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::json;

/// What X answers when it refuses a request.
#[derive(Debug, Clone, PartialEq)]
pub enum XApiError {
    /// X's problem shape: the reason in `title` and in each error, the
    /// human text in `detail`.
    Reason {
        status: StatusCode,
        reason: &'static str,
        detail: String,
    },
    /// No valid bearer token or OAuth 1.0a signature.
    Unauthorized,
    /// A rate limit, and when its window resets.
    TooManyRequests { limit: u32, reset: DateTime<Utc> },
    /// The app holds every stream connection X allows (until when one is
    /// free, if known).
    TooManyConnections { until: Option<DateTime<Utc>> },
    /// A path X does not serve.
    PageNotFound,
}

impl XApiError {
    pub fn reason(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        XApiError::Reason {
            status,
            reason,
            detail: detail.into(),
        }
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::reason(StatusCode::BAD_REQUEST, "InvalidRequest", detail)
    }

    pub fn query_param_invalid(detail: impl Into<String>) -> Self {
        Self::reason(StatusCode::BAD_REQUEST, "QueryParamInvalid", detail)
    }

    pub fn webhook_id_invalid() -> Self {
        Self::reason(
            StatusCode::BAD_REQUEST,
            "WebhookIdInvalid",
            "The provided webhook_id was not found or is not associated with the app.",
        )
    }

    pub fn crc_failed(reason: &str) -> Self {
        Self::reason(
            StatusCode::BAD_REQUEST,
            "CrcValidationFailed",
            format!(
                "Incorrect response received from the webhook URL during CRC validation: {reason}"
            ),
        )
    }

    pub fn replay_conflict() -> Self {
        Self::reason(
            StatusCode::CONFLICT,
            "ReplayConflictError",
            "A replay job is already in progress for this webhook.",
        )
    }

    pub fn service_unavailable() -> Self {
        Self::reason(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service Unavailable (injected fault)",
        )
    }
}

fn problem(status: StatusCode, reason: &str, detail: &str) -> Response {
    let body = json!({
        "errors": [{"message": detail, "reason": reason}],
        "title": reason,
        "detail": detail,
        "type": format!("https://api.x.com/2/problems/{reason}"),
    });
    (status, Json(body)).into_response()
}

impl IntoResponse for XApiError {
    fn into_response(self) -> Response {
        match self {
            XApiError::Reason {
                status,
                reason,
                detail,
            } => problem(status, reason, &detail),
            XApiError::Unauthorized => {
                let body = json!({"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized",
                                  "errors": [{"message": "Could not authenticate you", "code": 32}]});
                (StatusCode::UNAUTHORIZED, Json(body)).into_response()
            }
            XApiError::TooManyRequests { limit, reset } => {
                let mut response = problem(
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
            XApiError::TooManyConnections { until } => {
                // v2 streaming's error shape.
                let body = json!({
                    "title": "ConnectionException",
                    "detail": "This stream is currently at the maximum allowed connection limit.",
                    "connection_issue": "TooManyConnections",
                    "type": "https://api.x.com/2/problems/streaming-connection",
                });
                let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
                // The first whole second at which a slot is free again.
                let reset = until
                    .map(|until| until.timestamp() + i64::from(until.timestamp_subsec_nanos() > 0));
                if let Some(reset) = reset
                    && let Ok(value) = reset.to_string().parse()
                {
                    response.headers_mut().insert("x-rate-limit-reset", value);
                }
                response
            }
            XApiError::PageNotFound => {
                let body = json!({
                    "errors": [{"message": "Sorry, that page does not exist", "code": 34}],
                    "title": "Not Found Error",
                    "detail": "Sorry, that page does not exist",
                    "type": "https://api.x.com/2/problems/resource-not-found",
                    "status": 404,
                });
                (StatusCode::NOT_FOUND, Json(body)).into_response()
            }
        }
    }
}

/// What a handler answers: X's data, or X's refusal.
pub type XResult = Result<Response, XApiError>;
