//! Which webhooks this receiver serves, loaded from a TOML file. Secrets are
//! never in the file itself: it names environment variables or files.
//!
//! ```toml
//! [[webhooks]]
//! id = "1146654567674912769"
//! path = "/webhooks/x"
//! # Several secrets during a rotation; the first one answers CRC.
//! consumer_secret_env = ["X_CONSUMER_SECRET"]
//! consumer_secret_files = ["/run/secrets/x-old/consumer_secret"]
//! ```

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::Error;

/// One webhook as served: its id, URL path and consumer secret(s).
#[derive(Debug)]
pub struct Webhook {
    pub id: String,
    pub path: String,
    /// Current secret first; it answers CRC. All of them verify deliveries.
    secrets: Vec<SecretString>,
}

impl Webhook {
    pub fn new(id: String, path: String, secrets: Vec<SecretString>) -> Result<Self, Error> {
        if id.trim().is_empty() {
            return Err(Error::Webhooks("a webhook has an empty id".into()));
        }
        if !path.starts_with('/') || path.contains(['{', '}', '*']) {
            return Err(Error::Webhooks(format!(
                "webhook {id}: path `{path}` must start with / and contain no route patterns"
            )));
        }
        if secrets.is_empty() || secrets.iter().any(|s| s.expose_secret().is_empty()) {
            return Err(Error::Webhooks(format!(
                "webhook {id}: needs at least one non-empty consumer secret"
            )));
        }
        Ok(Webhook { id, path, secrets })
    }

    pub fn crc_secret(&self) -> &[u8] {
        self.secrets[0].expose_secret().as_bytes()
    }

    pub fn verify_secrets(&self) -> Vec<&[u8]> {
        self.secrets
            .iter()
            .map(|s| s.expose_secret().as_bytes())
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhooksFile {
    webhooks: Vec<WebhookEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookEntry {
    id: String,
    path: String,
    #[serde(default)]
    consumer_secret_env: Vec<String>,
    #[serde(default)]
    consumer_secret_files: Vec<PathBuf>,
}

/// Reads the webhooks file; secrets are resolved through `env` (a lookup,
/// so tests need not touch the process environment).
pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Vec<Webhook>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Webhooks(format!("cannot read {}: {e}", path.display())))?;
    let file: WebhooksFile =
        toml::from_str(&text).map_err(|e| Error::Webhooks(format!("{}: {e}", path.display())))?;
    if file.webhooks.is_empty() {
        return Err(Error::Webhooks(format!(
            "{}: no [[webhooks]] configured",
            path.display()
        )));
    }
    let mut webhooks = Vec::new();
    for entry in file.webhooks {
        let mut secrets = Vec::new();
        for var in &entry.consumer_secret_env {
            let value = env(var).ok_or_else(|| {
                Error::Webhooks(format!(
                    "webhook {}: environment variable {var} is not set",
                    entry.id
                ))
            })?;
            secrets.push(SecretString::from(value));
        }
        for file in &entry.consumer_secret_files {
            let value = std::fs::read_to_string(file).map_err(|e| {
                Error::Webhooks(format!(
                    "webhook {}: cannot read {}: {e}",
                    entry.id,
                    file.display()
                ))
            })?;
            // Secret files usually end with a newline that is not part of the secret.
            secrets.push(SecretString::from(
                value.trim_end_matches(['\n', '\r']).to_owned(),
            ));
        }
        webhooks.push(Webhook::new(entry.id, entry.path, secrets)?);
    }
    for (i, a) in webhooks.iter().enumerate() {
        if webhooks[..i]
            .iter()
            .any(|b| b.path == a.path || b.id == a.id)
        {
            return Err(Error::Webhooks(format!(
                "webhook {} (path {}) is configured twice",
                a.id, a.path
            )));
        }
    }
    Ok(webhooks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn env(var: &str) -> Option<String> {
        match var {
            "SECRET_A" => Some("a".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn loads_secrets_from_env_and_files() {
        let secret = write("from-file\n");
        let config = write(&format!(
            "[[webhooks]]\nid = \"1\"\npath = \"/x\"\nconsumer_secret_env = [\"SECRET_A\"]\nconsumer_secret_files = [\"{}\"]\n",
            secret.path().display()
        ));
        let hooks = load(config.path(), env).unwrap();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].crc_secret(), b"a");
        assert_eq!(
            hooks[0].verify_secrets(),
            vec![&b"a"[..], &b"from-file"[..]]
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = write(
            "[[webhooks]]\nid = \"1\"\npath = \"/x\"\nconsumer_secret_env = [\"SECRET_A\"]\n",
        );
        let hooks = load(config.path(), |_| Some("hunter2-secret".into())).unwrap();
        assert!(!format!("{hooks:?}").contains("hunter2-secret"));
    }

    #[test]
    fn refuses_bad_configurations_with_a_reason() {
        let cases = [
            (
                "[[webhooks]]\nid = \"1\"\npath = \"/x\"\n",
                "non-empty consumer secret",
            ),
            (
                "[[webhooks]]\nid = \"1\"\npath = \"/x\"\nconsumer_secret_env = [\"MISSING\"]\n",
                "MISSING is not set",
            ),
            (
                "[[webhooks]]\nid = \"1\"\npath = \"/x\"\nconsumer_secret_env = [\"EMPTY\"]\n",
                "non-empty",
            ),
            (
                "[[webhooks]]\nid = \"1\"\npath = \"x\"\nconsumer_secret_env = [\"SECRET_A\"]\n",
                "must start with /",
            ),
            ("webhooks = []\n", "no [[webhooks]]"),
            (
                "[[webhooks]]\nid = \"1\"\npath = \"/x\"\nconsumer_secret_env = [\"SECRET_A\"]\n[[webhooks]]\nid = \"2\"\npath = \"/x\"\nconsumer_secret_env = [\"SECRET_A\"]\n",
                "configured twice",
            ),
            (
                "[[webhooks]]\nid = \"1\"\npath = \"/x\"\nsecret = \"inline\"\n",
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let err = load(write(text).path(), env).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
