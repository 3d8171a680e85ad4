//! X's refusals as types: one variant per documented reason, so callers
//! (the watermark above all) match on meaning, never on message text.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A reason X names in an error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    ReplayConflict,
    QueryParamInvalid,
    CrcValidationFailed,
    WebhookIdInvalid,
    DuplicateSubscriptionFailed,
    SubscriptionLimitExceeded,
    SubscriptionNotFound,
    /// Something else X said; its title or first message.
    Other(String),
}

const NAMED: &[(&str, Reason)] = &[
    ("ReplayConflictError", Reason::ReplayConflict),
    ("QueryParamInvalid", Reason::QueryParamInvalid),
    ("CrcValidationFailed", Reason::CrcValidationFailed),
    ("WebhookIdInvalid", Reason::WebhookIdInvalid),
    (
        "DuplicateSubscriptionFailed",
        Reason::DuplicateSubscriptionFailed,
    ),
    (
        "SubscriptionLimitExceeded",
        Reason::SubscriptionLimitExceeded,
    ),
    ("SubscriptionNotFound", Reason::SubscriptionNotFound),
];

impl Reason {
    pub fn name(&self) -> &str {
        NAMED
            .iter()
            .find(|(_, r)| r == self)
            .map(|(n, _)| *n)
            .unwrap_or(match self {
                Reason::Other(text) => text.as_str(),
                _ => "Unknown",
            })
    }

    /// Finds the reason in an error body: X puts it in `title`, `type`,
    /// `detail` or an error's `message`/`reason` depending on the endpoint, and
    /// v1.1 uses numeric codes (355: replay in progress, 214: CRC failed).
    pub fn from_body(body: &Value) -> Reason {
        let mut texts: Vec<&str> = ["title", "type", "detail", "reason"]
            .iter()
            .filter_map(|k| body[*k].as_str())
            .collect();
        let mut codes = Vec::new();
        if let Some(errors) = body["errors"].as_array() {
            for error in errors {
                texts.extend(
                    ["message", "reason", "title", "type"]
                        .iter()
                        .filter_map(|k| error[*k].as_str()),
                );
                codes.extend(error["code"].as_i64());
            }
        }
        for (name, reason) in NAMED {
            if texts.iter().any(|t| t.contains(name)) {
                return reason.clone();
            }
        }
        match codes.first() {
            Some(355) => Reason::ReplayConflict,
            Some(214) => Reason::CrcValidationFailed,
            _ => Reason::Other(
                texts
                    .first()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "unknown error".into()),
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XError {
    /// X refused the request and said why.
    #[error("X refused ({status}): {}: {message}", reason.name())]
    Refused {
        status: u16,
        reason: Reason,
        message: String,
        body: String,
    },
    /// 429: come back after `reset` (from `x-rate-limit-reset`).
    #[error("rate limited by X{}", reset.map(|r| format!(" until {r}")).unwrap_or_default())]
    RateLimited {
        reset: Option<DateTime<Utc>>,
        body: String,
    },
    /// Bad or missing credentials (v1.1 code 32 "Could not authenticate you").
    #[error("X did not accept the credentials ({status}): {message}")]
    Unauthorized {
        status: u16,
        message: String,
        body: String,
    },
    /// X is unavailable (5xx): worth retrying later.
    #[error("X is unavailable ({status})")]
    Unavailable { status: u16, body: String },
    /// No answer: connection refused, reset, DNS, TLS.
    #[error("cannot reach X: {0}")]
    Transport(String),
    #[error("no answer from X within {0:?}")]
    Timeout(std::time::Duration),
    /// X answered 2xx with something this client cannot read.
    #[error("unexpected answer from X: {0}")]
    Unexpected(String),
    /// A request the client refuses to send (bad window, missing credentials).
    #[error("{0}")]
    Invalid(String),
}

impl XError {
    /// Worth retrying later without changing the request.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            XError::Transport(_)
                | XError::Timeout(_)
                | XError::Unavailable { .. }
                | XError::RateLimited { .. }
        ) || matches!(
            self,
            XError::Refused {
                reason: Reason::ReplayConflict,
                ..
            }
        )
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            XError::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The raw body X sent, for the operator.
    pub fn body(&self) -> Option<&str> {
        match self {
            XError::Refused { body, .. }
            | XError::RateLimited { body, .. }
            | XError::Unauthorized { body, .. }
            | XError::Unavailable { body, .. } => Some(body),
            _ => None,
        }
    }

    /// Low-cardinality metric label.
    pub fn label(&self) -> &'static str {
        match self {
            XError::Refused { .. } => "refused",
            XError::RateLimited { .. } => "rate_limited",
            XError::Unauthorized { .. } => "unauthorized",
            XError::Unavailable { .. } => "unavailable",
            XError::Transport(_) => "transport",
            XError::Timeout(_) => "timeout",
            XError::Unexpected(_) => "unexpected",
            XError::Invalid(_) => "invalid",
        }
    }

    /// Maps a non-2xx answer.
    pub fn from_response(status: u16, reset_header: Option<&str>, body: String) -> XError {
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let message = json["detail"]
            .as_str()
            .or_else(|| json["errors"][0]["message"].as_str())
            .unwrap_or(body.as_str())
            .chars()
            .take(300)
            .collect::<String>();
        match status {
            429 => XError::RateLimited {
                reset: reset_header
                    .and_then(|r| r.trim().parse::<i64>().ok())
                    .and_then(|s| DateTime::from_timestamp(s, 0)),
                body,
            },
            401 | 403 => XError::Unauthorized {
                status,
                message,
                body,
            },
            500..=599 => XError::Unavailable { status, body },
            _ => XError::Refused {
                status,
                reason: Reason::from_body(&json),
                message,
                body,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(status: u16, body: Value) -> XError {
        XError::from_response(status, None, body.to_string())
    }

    #[test]
    fn every_documented_reason_maps_to_its_variant() {
        for (name, reason) in NAMED {
            // v2 style: the reason is the title.
            let err = refused(
                400,
                json!({"title": name, "detail": "x", "errors": [{"message": "x"}]}),
            );
            assert_eq!(err.reason(), Some(reason), "{name} in title");
            // Or only inside an error's message.
            let err = refused(
                400,
                json!({"errors": [{"message": format!("{name}: something")}]}),
            );
            assert_eq!(err.reason(), Some(reason), "{name} in message");
            assert_eq!(reason.name(), *name);
        }
    }

    #[test]
    fn v1_codes_and_statuses() {
        let conflict = refused(
            409,
            json!({"errors": [{"code": 355, "message": "A replay job is already in progress for this webhook."}]}),
        );
        assert_eq!(conflict.reason(), Some(&Reason::ReplayConflict));
        assert!(conflict.is_retryable());
        let crc = refused(
            400,
            json!({"errors": [{"code": 214, "message": "Webhook URL does not meet the requirements."}]}),
        );
        assert_eq!(crc.reason(), Some(&Reason::CrcValidationFailed));
        let auth = refused(
            401,
            json!({"errors": [{"code": 32, "message": "Could not authenticate you."}]}),
        );
        assert!(
            matches!(auth, XError::Unauthorized { ref message, .. } if message == "Could not authenticate you.")
        );
        assert!(matches!(
            refused(503, json!({})),
            XError::Unavailable { status: 503, .. }
        ));
        let other = refused(400, json!({"title": "SomethingNew"}));
        assert_eq!(other.reason(), Some(&Reason::Other("SomethingNew".into())));
        assert!(!other.is_retryable());
        assert_eq!(other.body(), Some(r#"{"title":"SomethingNew"}"#));
    }

    #[test]
    fn rate_limits_carry_the_reset_time() {
        let err = XError::from_response(429, Some("1764072000"), "{}".into());
        match err {
            XError::RateLimited { reset, .. } => {
                assert_eq!(reset.map(|r| r.timestamp()), Some(1_764_072_000))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            XError::from_response(429, Some("soon"), "{}".into()),
            XError::RateLimited { reset: None, .. }
        ));
    }

    #[test]
    fn garbage_bodies_still_map() {
        let err = XError::from_response(400, None, "<html>bad gateway</html>".into());
        assert!(matches!(
            err,
            XError::Refused {
                reason: Reason::Other(_),
                ..
            }
        ));
    }
}
