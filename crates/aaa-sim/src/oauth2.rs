//! X's OAuth 2.0 for users, as the simulator plays it (pure state): the
//! Authorization Code grant with PKCE (S256 only), refresh tokens that
//! rotate (a used one is refused with `invalid_grant`), revocation, and
//! access tokens that expire on the simulated clock (X: 2 hours).
//!
//! X's authorization page asks a person to approve; the simulator approves
//! at once as the account a test named (`POST /sim/oauth2/approver`), with
//! the scopes asked for or a chosen subset.

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// How long an access token lives (X: 2 hours).
pub const ACCESS_TOKEN_LIFETIME: TimeDelta = TimeDelta::hours(2);
/// How long an authorization code may wait for its exchange (X: 30 s).
pub const CODE_LIFETIME: TimeDelta = TimeDelta::seconds(30);

/// Who approves the next authorizations, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    pub user_id: String,
    /// Grant only these of the scopes asked for; `None`: all asked for.
    pub scopes: Option<BTreeSet<String>>,
}

/// A refusal in OAuth 2.0's shape (RFC 6749 §5.2): `error` and a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
}

fn refuse(error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        error,
        description: description.into(),
    }
}

/// What the authorization page was asked.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest {
    pub response_type: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub code_challenge: String,
    pub code_challenge_method: String,
}

/// A token endpoint's answer (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    pub token_type: &'static str,
    pub access_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub expires_in: i64,
    pub scope: String,
}

/// A user's access token as X knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserToken {
    pub user_id: String,
    pub scopes: BTreeSet<String>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Code {
    grant: Grant,
    challenge: String,
    redirect_uri: String,
    client_id: String,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Grant {
    user_id: String,
    scopes: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct Refresh {
    grant: Grant,
    client_id: String,
    used: bool,
}

/// The app's OAuth 2.0 client and every grant X made to it.
#[derive(Debug, Clone)]
pub struct OAuth2 {
    pub client_id: String,
    /// A confidential client authenticates with it (HTTP Basic); a public
    /// client has none and proves itself with PKCE alone.
    pub client_secret: Option<String>,
    pub approver: Option<Approver>,
    codes: HashMap<String, Code>,
    access: HashMap<String, UserToken>,
    refresh: HashMap<String, Refresh>,
    /// Users who revoked the app's access: every token of theirs is dead.
    revoked_users: BTreeSet<String>,
    issued: u64,
}

/// PKCE S256: BASE64URL(SHA-256(verifier)), unpadded (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl OAuth2 {
    pub fn new(client_id: String, client_secret: Option<String>) -> OAuth2 {
        OAuth2 {
            client_id,
            client_secret,
            approver: None,
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            revoked_users: BTreeSet::new(),
            issued: 0,
        }
    }

    fn next(&mut self, kind: &str) -> String {
        self.issued += 1;
        format!("sim-{kind}-{}-{:016x}", self.issued, rand::random::<u64>())
    }

    /// The authorization page: approves at once as the approver, returns
    /// the code to send to `redirect_uri`.
    pub fn authorize(
        &mut self,
        request: &AuthorizeRequest,
        now: DateTime<Utc>,
    ) -> Result<String, OAuthError> {
        if request.response_type != "code" {
            return Err(refuse(
                "unsupported_response_type",
                "response_type must be code",
            ));
        }
        if request.client_id != self.client_id {
            return Err(refuse("unauthorized_client", "unknown client_id"));
        }
        if request.code_challenge_method != "S256" || request.code_challenge.is_empty() {
            return Err(refuse(
                "invalid_request",
                "code_challenge with code_challenge_method S256 is required",
            ));
        }
        let Some(approver) = self.approver.clone() else {
            return Err(refuse(
                "access_denied",
                "nobody approves (POST /sim/oauth2/approver first)",
            ));
        };
        let asked: BTreeSet<String> = request
            .scope
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let scopes = match &approver.scopes {
            Some(chosen) => asked.intersection(chosen).cloned().collect(),
            None => asked,
        };
        let code = self.next("code");
        self.codes.insert(
            code.clone(),
            Code {
                grant: Grant {
                    user_id: approver.user_id,
                    scopes,
                },
                challenge: request.code_challenge.clone(),
                redirect_uri: request.redirect_uri.clone(),
                client_id: request.client_id.clone(),
                expires_at: now + CODE_LIFETIME,
            },
        );
        Ok(code)
    }

    /// Whether the client authenticated as it must: a confidential client
    /// with its secret, a public one by its id.
    pub fn client_ok(&self, client_id: &str, secret: Option<&str>) -> bool {
        client_id == self.client_id
            && match (&self.client_secret, secret) {
                (Some(expected), Some(given)) => expected == given,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }

    fn issue(&mut self, grant: Grant, client_id: &str, now: DateTime<Utc>) -> TokenResponse {
        let access_token = self.next("access");
        self.access.insert(
            access_token.clone(),
            UserToken {
                user_id: grant.user_id.clone(),
                scopes: grant.scopes.clone(),
                expires_at: now + ACCESS_TOKEN_LIFETIME,
            },
        );
        let scope = grant.scopes.iter().cloned().collect::<Vec<_>>().join(" ");
        let refresh_token = grant.scopes.contains("offline.access").then(|| {
            let token = self.next("refresh");
            self.refresh.insert(
                token.clone(),
                Refresh {
                    grant,
                    client_id: client_id.to_owned(),
                    used: false,
                },
            );
            token
        });
        TokenResponse {
            token_type: "bearer",
            access_token,
            refresh_token,
            expires_in: ACCESS_TOKEN_LIFETIME.num_seconds(),
            scope,
        }
    }

    /// `grant_type=authorization_code`: once per code, with the verifier
    /// whose S256 is the challenge, to the same redirect URI.
    pub fn exchange(
        &mut self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, OAuthError> {
        let Some(issued) = self.codes.remove(code) else {
            return Err(refuse(
                "invalid_grant",
                "authorization code unknown or used",
            ));
        };
        if issued.expires_at < now {
            return Err(refuse("invalid_grant", "authorization code expired"));
        }
        if issued.client_id != client_id || issued.redirect_uri != redirect_uri {
            return Err(refuse(
                "invalid_grant",
                "client_id or redirect_uri differ from the authorization",
            ));
        }
        if s256(verifier) != issued.challenge {
            return Err(refuse("invalid_grant", "code_verifier does not match"));
        }
        if self.revoked_users.contains(&issued.grant.user_id) {
            return Err(refuse("invalid_grant", "the user revoked the app"));
        }
        Ok(self.issue(issued.grant, client_id, now))
    }

    /// `grant_type=refresh_token`: refresh tokens rotate; a used (or
    /// revoked) one is refused.
    pub fn refresh(
        &mut self,
        refresh_token: &str,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, OAuthError> {
        let Some(refresh) = self.refresh.get_mut(refresh_token) else {
            return Err(refuse("invalid_grant", "refresh token unknown or revoked"));
        };
        if refresh.used {
            return Err(refuse("invalid_grant", "refresh token already used"));
        }
        if refresh.client_id != client_id {
            return Err(refuse("invalid_grant", "refresh token of another client"));
        }
        if self.revoked_users.contains(&refresh.grant.user_id) {
            return Err(refuse("invalid_grant", "the user revoked the app"));
        }
        refresh.used = true;
        let grant = refresh.grant.clone();
        Ok(self.issue(grant, client_id, now))
    }

    /// `POST /2/oauth2/revoke`: an access or refresh token ends.
    pub fn revoke(&mut self, token: &str) {
        self.access.remove(token);
        self.refresh.remove(token);
    }

    /// The user took the app's access away: every token of theirs ends.
    pub fn revoke_user(&mut self, user_id: &str) {
        self.revoked_users.insert(user_id.to_owned());
        self.access.retain(|_, t| t.user_id != user_id);
        self.refresh.retain(|_, r| r.grant.user_id != user_id);
    }

    /// The live user token `access_token` is, if any.
    pub fn user_token(&self, access_token: &str, now: DateTime<Utc>) -> Option<&UserToken> {
        self.access
            .get(access_token)
            .filter(|t| t.expires_at > now && !self.revoked_users.contains(&t.user_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-08T10:00:00Z".parse().unwrap()
    }

    /// RFC 7636, appendix B: the verifier and challenge of its example.
    #[test]
    fn s256_is_rfc_7636s_example() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    fn authorized(oauth: &mut OAuth2, scope: &str) -> String {
        oauth.approver = Some(Approver {
            user_id: "42".into(),
            scopes: None,
        });
        oauth
            .authorize(
                &AuthorizeRequest {
                    response_type: "code".into(),
                    client_id: "client".into(),
                    redirect_uri: "http://127.0.0.1:1/cb".into(),
                    scope: scope.into(),
                    code_challenge: s256("verifier"),
                    code_challenge_method: "S256".into(),
                },
                now(),
            )
            .expect("a code")
    }

    #[test]
    fn a_code_is_exchanged_once_with_its_verifier() {
        let mut oauth = OAuth2::new("client".into(), None);
        let code = authorized(&mut oauth, "tweet.read like.read offline.access");
        let wrong = oauth.exchange(&code, "other", "http://127.0.0.1:1/cb", "client", now());
        assert_eq!(wrong.unwrap_err().error, "invalid_grant");
        // The failed attempt used the code up, as at X.
        let code = authorized(&mut oauth, "tweet.read like.read offline.access");
        let token = oauth
            .exchange(&code, "verifier", "http://127.0.0.1:1/cb", "client", now())
            .expect("tokens");
        assert_eq!(token.scope, "like.read offline.access tweet.read");
        assert!(token.refresh_token.is_some());
        let user = oauth.user_token(&token.access_token, now()).expect("live");
        assert_eq!(user.user_id, "42");
        assert!(
            oauth
                .exchange(&code, "verifier", "http://127.0.0.1:1/cb", "client", now())
                .is_err(),
            "a code works once"
        );
    }

    #[test]
    fn refresh_tokens_rotate_and_a_used_one_is_invalid_grant() {
        let mut oauth = OAuth2::new("client".into(), Some("secret".into()));
        let code = authorized(&mut oauth, "tweet.read offline.access");
        let first = oauth
            .exchange(&code, "verifier", "http://127.0.0.1:1/cb", "client", now())
            .expect("tokens");
        let old = first.refresh_token.expect("offline.access gives one");
        let later = now() + ACCESS_TOKEN_LIFETIME;
        assert!(
            oauth.user_token(&first.access_token, later).is_none(),
            "expired after 2 hours"
        );
        let second = oauth.refresh(&old, "client", later).expect("rotated");
        assert_ne!(second.refresh_token.as_deref(), Some(old.as_str()));
        assert_eq!(
            oauth.refresh(&old, "client", later).unwrap_err().error,
            "invalid_grant"
        );
        oauth.revoke_user("42");
        let newest = second.refresh_token.expect("a new one");
        assert_eq!(
            oauth.refresh(&newest, "client", later).unwrap_err().error,
            "invalid_grant"
        );
        assert!(oauth.user_token(&second.access_token, later).is_none());
        assert!(oauth.client_ok("client", Some("secret")));
        assert!(!oauth.client_ok("client", None), "confidential");
    }

    #[test]
    fn the_approver_may_grant_fewer_scopes_than_asked() {
        let mut oauth = OAuth2::new("client".into(), None);
        let code = {
            oauth.approver = Some(Approver {
                user_id: "7".into(),
                scopes: Some(["tweet.read".to_owned()].into()),
            });
            oauth
                .authorize(
                    &AuthorizeRequest {
                        response_type: "code".into(),
                        client_id: "client".into(),
                        redirect_uri: "r".into(),
                        scope: "tweet.read dm.read".into(),
                        code_challenge: s256("v"),
                        code_challenge_method: "S256".into(),
                    },
                    now(),
                )
                .expect("a code")
        };
        let token = oauth
            .exchange(&code, "v", "r", "client", now())
            .expect("tokens");
        assert_eq!(token.scope, "tweet.read");
        assert_eq!(token.refresh_token, None, "no offline.access, no refresh");
    }
}
