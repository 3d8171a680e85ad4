//! Where the client's settings and secrets come from. Secrets are read from
//! environment variables or files (`*_FILE`), never from command-line
//! arguments, which process lists show to everyone on the machine.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::XError;

#[derive(Debug, Clone, clap::Args)]
pub struct XApiArgs {
    /// Base URL of X's API (the simulator's in tests and the demo).
    #[arg(
        long = "x-api-base-url",
        env = "AAA_X_API_BASE_URL",
        default_value = "https://api.x.com",
        global = true
    )]
    pub base_url: String,
    /// Timeout of every call, in milliseconds.
    #[arg(
        long = "x-api-timeout-ms",
        env = "AAA_X_API_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub timeout_ms: u64,
    /// Treat `to_date` of POST /2/webhooks/replay as inclusive (its spec says
    /// so; X's older endpoint was exclusive). Off by default: an exclusive
    /// reading never asks for less than intended.
    #[arg(long = "webhooks-replay-to-inclusive", env = "AAA_X_WEBHOOKS_REPLAY_TO_INCLUSIVE", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub webhooks_replay_to_inclusive: bool,
}

impl XApiArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A secret from `VAR`, or from the file named by `VAR_FILE`.
pub fn secret(var: &str) -> Result<Option<SecretString>, XError> {
    if let Ok(value) = std::env::var(var)
        && !value.is_empty()
    {
        return Ok(Some(SecretString::from(value)));
    }
    let file_var = format!("{var}_FILE");
    match std::env::var(&file_var) {
        Ok(path) if !path.is_empty() => std::fs::read_to_string(&path)
            .map(|text| {
                Some(SecretString::from(
                    text.trim_end_matches(['\n', '\r']).to_owned(),
                ))
            })
            .map_err(|e| XError::Invalid(format!("{file_var}={path}: {e}"))),
        _ => Ok(None),
    }
}

fn expose(value: &Option<SecretString>, var: &str, purpose: &str) -> Result<String, XError> {
    value
        .as_ref()
        .map(|v| v.expose_secret().to_owned())
        .ok_or_else(|| XError::Invalid(format!("{var} (or {var}_FILE) must be set: {purpose}")))
}

/// Credentials, each loaded only when a call needs it.
#[derive(Clone, Default)]
pub struct Credentials {
    pub bearer_token: Option<SecretString>,
    pub consumer_key: Option<SecretString>,
    pub consumer_secret: Option<SecretString>,
    pub access_token: Option<SecretString>,
    pub access_token_secret: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl Credentials {
    /// From `AAA_X_BEARER_TOKEN`, `AAA_X_CONSUMER_KEY`, `AAA_X_CONSUMER_SECRET`,
    /// `AAA_X_ACCESS_TOKEN`, `AAA_X_ACCESS_TOKEN_SECRET` (each also `*_FILE`).
    pub fn from_env() -> Result<Credentials, XError> {
        Ok(Credentials {
            bearer_token: secret("AAA_X_BEARER_TOKEN")?,
            consumer_key: secret("AAA_X_CONSUMER_KEY")?,
            consumer_secret: secret("AAA_X_CONSUMER_SECRET")?,
            access_token: secret("AAA_X_ACCESS_TOKEN")?,
            access_token_secret: secret("AAA_X_ACCESS_TOKEN_SECRET")?,
        })
    }

    pub(crate) fn bearer(&self) -> Result<String, XError> {
        expose(
            &self.bearer_token,
            "AAA_X_BEARER_TOKEN",
            "the app's bearer token",
        )
    }

    pub(crate) fn user(&self) -> Result<aaa_oauth1::Credentials, XError> {
        let get = expose;
        Ok(aaa_oauth1::Credentials {
            consumer_key: get(
                &self.consumer_key,
                "AAA_X_CONSUMER_KEY",
                "the app's consumer key",
            )?,
            consumer_secret: get(
                &self.consumer_secret,
                "AAA_X_CONSUMER_SECRET",
                "the app's consumer secret",
            )?,
            token: get(
                &self.access_token,
                "AAA_X_ACCESS_TOKEN",
                "the subscribing user's access token",
            )?,
            token_secret: get(
                &self.access_token_secret,
                "AAA_X_ACCESS_TOKEN_SECRET",
                "the subscribing user's access token secret",
            )?,
        })
    }
}
