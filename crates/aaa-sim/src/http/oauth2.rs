//! X's OAuth 2.0 endpoints for users (`crate::oauth2` holds the rules):
//! the authorization page (`GET /i/oauth2/authorize`, approved at once as
//! the account a test named), the token endpoint (`POST /2/oauth2/token`:
//! authorization code with PKCE, refresh with rotation), revocation, and
//! `GET /2/users/me` for the token's user.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use base64::Engine as _;
use serde_json::json;

use crate::context::Sim;
use crate::http::error::XApiError;
use crate::oauth2::{AuthorizeRequest, OAuthError, UserToken};

fn oauth_error(error: OAuthError) -> Response {
    let status = if error.error == "invalid_client" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        Json(json!({"error": error.error, "error_description": error.description})),
    )
        .into_response()
}

/// The authorization page: redirects to the client's redirect URI with a
/// code (or an error), carrying `state` back.
pub async fn authorize(
    State(sim): State<Sim>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    let redirect_uri = get("redirect_uri");
    if reqwest::Url::parse(&redirect_uri).is_err() {
        return oauth_error(OAuthError {
            error: "invalid_request",
            description: "redirect_uri is not a URL".into(),
        });
    }
    let request = AuthorizeRequest {
        response_type: get("response_type"),
        client_id: get("client_id"),
        redirect_uri: redirect_uri.clone(),
        scope: get("scope"),
        code_challenge: get("code_challenge"),
        code_challenge_method: get("code_challenge_method"),
    };
    let now = sim.x_now();
    let answer = sim.world().oauth2.authorize(&request, now);
    let mut back = match reqwest::Url::parse(&redirect_uri) {
        Ok(url) => url,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    {
        let mut pairs = back.query_pairs_mut();
        match answer {
            Ok(code) => pairs.append_pair("code", &code),
            Err(error) => pairs
                .append_pair("error", error.error)
                .append_pair("error_description", &error.description),
        };
        pairs.append_pair("state", &get("state"));
    }
    Redirect::to(back.as_str()).into_response()
}

/// The client as it authenticated: HTTP Basic (confidential clients), or
/// `client_id` in the form (public clients).
fn client(headers: &HeaderMap, form: &HashMap<String, String>) -> (String, Option<String>) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        });
    match basic {
        Some((id, secret)) => (id, Some(secret)),
        None => (form.get("client_id").cloned().unwrap_or_default(), None),
    }
}

pub async fn token(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let (client_id, secret) = client(&headers, &form);
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let now = sim.x_now();
    let mut world = sim.world();
    let oauth = &mut world.oauth2;
    if !oauth.client_ok(&client_id, secret.as_deref()) {
        return oauth_error(OAuthError {
            error: "invalid_client",
            description: "client authentication failed".into(),
        });
    }
    let answer = match get("grant_type") {
        "authorization_code" => oauth.exchange(
            get("code"),
            get("code_verifier"),
            get("redirect_uri"),
            &client_id,
            now,
        ),
        "refresh_token" => oauth.refresh(get("refresh_token"), &client_id, now),
        other => Err(OAuthError {
            error: "unsupported_grant_type",
            description: format!("grant_type {other:?}"),
        }),
    };
    match answer {
        Ok(tokens) => Json(tokens).into_response(),
        Err(error) => oauth_error(error),
    }
}

pub async fn revoke(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let (client_id, secret) = client(&headers, &form);
    let mut world = sim.world();
    if !world.oauth2.client_ok(&client_id, secret.as_deref()) {
        return oauth_error(OAuthError {
            error: "invalid_client",
            description: "client authentication failed".into(),
        });
    }
    world
        .oauth2
        .revoke(form.get("token").map(String::as_str).unwrap_or_default());
    Json(json!({"revoked": true})).into_response()
}

/// The live user token the request carries, if any.
pub fn user_token(sim: &Sim, headers: &HeaderMap) -> Option<UserToken> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    sim.world().oauth2.user_token(token, sim.x_now()).cloned()
}

/// `GET /2/users/me`: the user the token belongs to.
pub async fn me(
    State(sim): State<Sim>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, XApiError> {
    let token = user_token(&sim, &headers).ok_or(XApiError::Unauthorized)?;
    if !token.scopes.contains("users.read") {
        return Err(XApiError::reason(
            StatusCode::FORBIDDEN,
            "client-forbidden",
            "users.read is required",
        ));
    }
    let world = sim.world();
    let account = world.accounts.iter().find(|a| a.user_id == token.user_id);
    Ok(Json(json!({"data": {
        "id": token.user_id,
        "username": account.map(|a| a.screen_name.clone()).unwrap_or_default(),
        "name": account.map(|a| a.screen_name.clone()).unwrap_or_default(),
    }})))
}
