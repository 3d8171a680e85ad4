use std::time::{Duration, Instant};

use aaa_replay_window::{Rules, Window};
use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::events::XRequestAnswered;
use crate::{Credentials, XApiArgs, XError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub valid: bool,
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayJob {
    pub job_id: String,
    #[serde(default)]
    pub created_at: Option<String>,
    /// What was sent, for the operator.
    #[serde(default)]
    pub from_date: String,
    #[serde(default)]
    pub to_date: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionCount {
    pub provisioned_count: String,
    pub subscriptions_count_all: String,
}

pub struct XClient {
    http: reqwest::Client,
    base: String,
    credentials: Credentials,
    timeout: Duration,
    webhooks_replay_to_inclusive: bool,
    /// X's clock as its last response's `Date` header told it.
    x_date: std::sync::Mutex<Option<DateTime<Utc>>>,
    /// Attempts per idempotent read (writes get one).
    read_attempts: u32,
    /// HTTP requests sent per endpoint, every attempt counted.
    requests_sent: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// An HTTP `Date` (IMF-fixdate, `Tue, 01 Dec 2026 03:15:00 GMT`).
pub fn parse_http_date(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Attempts for idempotent reads; writes get one.
const READ_ATTEMPTS: u32 = 3;

impl XClient {
    pub fn new(args: &XApiArgs, credentials: Credentials) -> Result<XClient, XError> {
        let http = reqwest::Client::builder()
            .timeout(args.timeout())
            .build()
            .map_err(|e| XError::Invalid(format!("HTTP client: {e}")))?;
        Ok(XClient {
            http,
            base: args.base_url.trim_end_matches('/').to_owned(),
            credentials,
            timeout: args.timeout(),
            webhooks_replay_to_inclusive: args.webhooks_replay_to_inclusive,
            x_date: std::sync::Mutex::new(None),
            read_attempts: READ_ATTEMPTS,
            requests_sent: std::sync::Mutex::default(),
        })
    }

    /// One HTTP request per call, reads included: for a caller that
    /// reserves X's request budget per request and retries on its own
    /// schedule (the watermark's rounds).
    pub fn one_attempt_per_call(mut self) -> XClient {
        self.read_attempts = 1;
        self
    }

    /// HTTP requests this client sent so far per endpoint, every retry
    /// counted: what they cost of X's per-endpoint budgets.
    pub fn requests_sent(&self) -> Vec<(&'static str, u64)> {
        let sent = self.requests_sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter().map(|(e, n)| (*e, *n)).collect()
    }

    /// X's time per the `Date` header of the last response (to the second),
    /// for telling how far X's clock is from ours.
    pub fn last_x_date(&self) -> Option<DateTime<Utc>> {
        *self.x_date.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The window rules of `POST /2/webhooks/replay` as configured.
    pub fn replay_rules(&self) -> Rules {
        Rules {
            to_inclusive: self.webhooks_replay_to_inclusive,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn bearer(
        &self,
        method: Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, XError> {
        Ok(self
            .http
            .request(method, self.url(path))
            .bearer_auth(self.credentials.bearer()?))
    }

    /// A request signed with OAuth 1.0a user context (no query parameters).
    fn user(&self, method: Method, path: &str) -> Result<reqwest::RequestBuilder, XError> {
        let credentials = self.credentials.user()?;
        let url = self.url(path);
        let nonce = format!("{:032x}", rand::rng().random::<u128>());
        let timestamp = Utc::now().timestamp().max(0) as u64;
        let header = aaa_oauth1::authorization_header(
            method.as_str(),
            &url,
            &[],
            &credentials,
            &nonce,
            timestamp,
        );
        Ok(self
            .http
            .request(method, url)
            .header(reqwest::header::AUTHORIZATION, header))
    }

    /// Sends, maps errors, counts; retries idempotent reads with backoff.
    pub(crate) async fn call(
        &self,
        endpoint: &'static str,
        idempotent: bool,
        build: impl Fn() -> Result<reqwest::RequestBuilder, XError>,
    ) -> Result<Value, XError> {
        let attempts = if idempotent { self.read_attempts } else { 1 };
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            *self
                .requests_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(endpoint)
                .or_default() += 1;
            let result = self.once(build()?).await;
            XRequestAnswered {
                endpoint,
                elapsed: started.elapsed(),
                error: result.as_ref().err(),
            }
            .emit();
            match result {
                Err(err)
                    if attempt < attempts
                        && err.is_retryable()
                        && !matches!(err, XError::RateLimited { .. }) =>
                {
                    tracing::warn!(message = "X API call failed; retrying", endpoint, attempt, error = %err);
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn once(&self, request: reqwest::RequestBuilder) -> Result<Value, XError> {
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                XError::Timeout(self.timeout)
            } else {
                XError::Transport(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        if let Some(date) = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
        {
            *self.x_date.lock().unwrap_or_else(|p| p.into_inner()) = Some(date);
        }
        let reset = response
            .headers()
            .get("x-rate-limit-reset")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .text()
            .await
            .map_err(|e| XError::Transport(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(XError::from_response(status, reset.as_deref(), body));
        }
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body).map_err(|e| XError::Unexpected(format!("{e}: {body}")))
    }

    pub(crate) fn data<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, XError> {
        // Some X docs show responses unwrapped: accept both.
        let inner = match value.get("data") {
            Some(data) => data.clone(),
            None => value,
        };
        serde_json::from_value(inner.clone())
            .map_err(|e| XError::Unexpected(format!("{e}: {inner}")))
    }

    pub async fn register_webhook(&self, url: &str) -> Result<Webhook, XError> {
        let body = json!({"url": url});
        let value = self
            .call("webhooks_register", false, || {
                Ok(self.bearer(Method::POST, "/2/webhooks")?.json(&body))
            })
            .await?;
        Self::data(value)
    }

    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, XError> {
        let value = self
            .call("webhooks_list", true, || {
                self.bearer(Method::GET, "/2/webhooks")
            })
            .await?;
        Self::data(value)
    }

    /// Asks X to re-run CRC; `Ok(true)` when the webhook is valid again.
    pub async fn validate_webhook(&self, id: &str) -> Result<bool, XError> {
        let path = format!("/2/webhooks/{id}");
        let value = self
            .call("webhooks_validate", false, || {
                self.bearer(Method::PUT, &path)
            })
            .await?;
        Ok(Self::data::<Value>(value)?["valid"]
            .as_bool()
            .unwrap_or(false))
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<(), XError> {
        let path = format!("/2/webhooks/{id}");
        self.call("webhooks_delete", false, || {
            self.bearer(Method::DELETE, &path)
        })
        .await
        .map(|_| ())
    }

    fn subscription_path(webhook_id: &str) -> String {
        format!("/2/account_activity/webhooks/{webhook_id}/subscriptions/all")
    }

    /// Subscribes the user whose access token is configured.
    pub async fn subscribe(&self, webhook_id: &str) -> Result<(), XError> {
        let path = Self::subscription_path(webhook_id);
        self.call("subscriptions_add", false, || {
            self.user(Method::POST, &path)
        })
        .await
        .map(|_| ())
    }

    /// Whether the configured user is subscribed.
    pub async fn check_subscription(&self, webhook_id: &str) -> Result<bool, XError> {
        let path = Self::subscription_path(webhook_id);
        let value = self
            .call("subscriptions_check", true, || {
                self.user(Method::GET, &path)
            })
            .await?;
        Ok(Self::data::<Value>(value)?["subscribed"]
            .as_bool()
            .unwrap_or(false))
    }

    pub async fn list_subscriptions(&self, webhook_id: &str) -> Result<Vec<String>, XError> {
        let path = format!("{}/list", Self::subscription_path(webhook_id));
        let value = self
            .call("subscriptions_list", true, || {
                self.bearer(Method::GET, &path)
            })
            .await?;
        let data: Value = Self::data(value)?;
        Ok(data["subscriptions"]
            .as_array()
            .map(|subs| {
                subs.iter()
                    .filter_map(|s| s["user_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn subscription_count(&self) -> Result<SubscriptionCount, XError> {
        let value = self
            .call("subscriptions_count", true, || {
                self.bearer(Method::GET, "/2/account_activity/subscriptions/count")
            })
            .await?;
        let data: Value = Self::data(value)?;
        let text = |key: &str| match &data[key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(SubscriptionCount {
            provisioned_count: text("provisioned_count"),
            subscriptions_count_all: text("subscriptions_count_all"),
        })
    }

    pub async fn unsubscribe(&self, webhook_id: &str, user_id: &str) -> Result<(), XError> {
        let path = format!("/2/account_activity/webhooks/{webhook_id}/subscriptions/{user_id}/all");
        self.call("subscriptions_remove", false, || {
            self.bearer(Method::DELETE, &path)
        })
        .await
        .map(|_| ())
    }

    /// The `from_date`/`to_date` that ask the endpoint in use for exactly
    /// `window`, checked against X's rules at `now` before anything is sent.
    pub fn replay_params(
        &self,
        window: Window,
        now: DateTime<Utc>,
    ) -> Result<(String, String), XError> {
        let rules = self.replay_rules();
        let to = if rules.to_inclusive {
            window.to_exclusive - TimeDelta::minutes(1)
        } else {
            window.to_exclusive
        };
        let (from, to) = (
            aaa_replay_window::format_minute(window.from),
            aaa_replay_window::format_minute(to),
        );
        aaa_replay_window::validate(now, &from, &to, rules)
            .map_err(|e| XError::Invalid(format!("replay window refused before sending: {e}")))?;
        Ok((from, to))
    }

    /// Submits a replay of `window` (half-open) for `webhook_id` through
    /// `POST /2/webhooks/replay`, X's only replay endpoint (the Account
    /// Activity one was retired on 2026-03-25). Never retried:
    /// a lost answer may still have started a job (a retry would only meet
    /// ReplayConflictError, which callers handle).
    pub async fn submit_replay(
        &self,
        webhook_id: &str,
        window: Window,
        now: DateTime<Utc>,
    ) -> Result<ReplayJob, XError> {
        let (from, to) = self.replay_params(window, now)?;
        let body = json!({"webhook_id": webhook_id, "from_date": from, "to_date": to});
        let value = self
            .call("replay_submit", false, || {
                Ok(self.bearer(Method::POST, "/2/webhooks/replay")?.json(&body))
            })
            .await?;
        let mut job: ReplayJob = Self::data(value)?;
        job.from_date = from;
        job.to_date = to;
        Ok(job)
    }
}

#[cfg(test)]
mod date_tests {
    use super::*;

    #[test]
    fn reads_an_http_date() {
        assert_eq!(
            parse_http_date("Tue, 01 Dec 2026 03:15:00 GMT"),
            "2026-12-01T03:15:00Z".parse().ok()
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }
}
