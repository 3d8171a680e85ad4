//! Who is calling: the app (bearer token) or a user (OAuth 1.0a user
//! context), as extractors that refuse with X's 401 before a handler runs.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::context::Sim;
use crate::http::error::XApiError;

/// The app itself, proven by its bearer token.
pub struct App;

/// A user, proven by an OAuth 1.0a user-context signature: their user id.
pub struct User(pub String);

/// Either: what X's webhook management endpoints accept.
pub struct AppOrUser;

fn bearer_ok(sim: &Sim, headers: &HeaderMap) -> bool {
    let expected = sim.world().app.bearer_token.clone();
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| bool::from(token.as_bytes().ct_eq(expected.as_bytes())))
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

/// The signing user, if the request carries a valid OAuth 1.0a
/// user-context signature over its method, URL (scheme + Host + path) and
/// query.
fn oauth_user(sim: &Sim, parts: &Parts) -> Option<String> {
    let query: HashMap<String, String> = Query::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let params: Vec<(String, String)> = query.into_iter().collect();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let url = format!("http://{host}{}", parts.uri.path());
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match aaa_oauth1::verify(
        &OAuthCheck(sim),
        parts.method.as_str(),
        &url,
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

impl FromRequestParts<Sim> for App {
    type Rejection = XApiError;

    async fn from_request_parts(parts: &mut Parts, sim: &Sim) -> Result<Self, Self::Rejection> {
        bearer_ok(sim, &parts.headers)
            .then_some(App)
            .ok_or(XApiError::Unauthorized)
    }
}

impl FromRequestParts<Sim> for User {
    type Rejection = XApiError;

    async fn from_request_parts(parts: &mut Parts, sim: &Sim) -> Result<Self, Self::Rejection> {
        oauth_user(sim, parts)
            .map(User)
            .ok_or(XApiError::Unauthorized)
    }
}

impl FromRequestParts<Sim> for AppOrUser {
    type Rejection = XApiError;

    async fn from_request_parts(parts: &mut Parts, sim: &Sim) -> Result<Self, Self::Rejection> {
        (bearer_ok(sim, &parts.headers) || oauth_user(sim, parts).is_some())
            .then_some(AppOrUser)
            .ok_or(XApiError::Unauthorized)
    }
}
