//! Signs and POSTs deliveries the way X does: `x-twitter-webhooks-signature`
//! over the raw body, success only on 2xx, a few retries otherwise.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::Error;

pub struct Sender {
    client: reqwest::Client,
    url: String,
    secret: SecretString,
    /// Attempts per delivery, the first included.
    pub attempts: u32,
    pub retry_delay: Duration,
}

impl Sender {
    pub fn new(url: impl Into<String>, secret: SecretString) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            // X's delivery limit: an answer after 3 s is a failure.
            .timeout(Duration::from_secs(3))
            .build()?;
        Ok(Sender {
            client,
            url: url.into(),
            secret,
            attempts: 3,
            retry_delay: Duration::from_millis(500),
        })
    }

    /// One signed POST; returns the HTTP status.
    pub async fn post(&self, body: &[u8]) -> Result<reqwest::StatusCode, Error> {
        let signature = aaa_signing::sign(self.secret.expose_secret().as_bytes(), body);
        let response = self
            .client
            .post(&self.url)
            .header(aaa_signing::SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await?;
        Ok(response.status())
    }

    /// POSTs until a 2xx or the attempts run out; the last outcome as text on failure.
    pub async fn deliver(&self, body: &[u8]) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..self.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.retry_delay).await;
            }
            match self.post(body).await {
                Ok(status) if status.is_success() => return Ok(()),
                Ok(status) => last = format!("HTTP {status}"),
                Err(err) => last = err.to_string(),
            }
        }
        Err(last)
    }

    /// Delivers every body with `concurrency` requests in flight.
    pub async fn deliver_all(&self, bodies: &[Vec<u8>], concurrency: usize) -> Result<(), Error> {
        let semaphore = tokio::sync::Semaphore::new(concurrency.max(1));
        let results = futures::future::join_all(bodies.iter().map(|body| async {
            let _permit = semaphore.acquire().await;
            self.deliver(body).await
        }))
        .await;
        let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        match failures.last() {
            None => Ok(()),
            Some(last) => Err(Error::Undelivered {
                failed: failures.len(),
                total: bodies.len(),
                last: last.clone(),
            }),
        }
    }
}
