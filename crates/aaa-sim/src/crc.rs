//! X's Challenge-Response Check, from X's side: on registration, on PUT,
//! before a replay, and on a schedule. A wrong or slow answer invalidates
//! the webhook; while invalid, nothing is delivered or retried.

use aaa_common::observe::InternalEvent;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::context::Sim;

/// Challenges `url`; `Err` says what was wrong with the answer.
pub async fn challenge(sim: &Sim, url: &str) -> Result<(), String> {
    let token = sim.random_token();
    // The simulator's tokens are hex, which X's token rule accepts.
    let expected = aaa_signing::crc_response_token(sim.consumer_secret(), &token)
        .map_err(|e| format!("simulator token refused: {e}"))?;
    let outcome = async {
        let response = sim
            .http
            .get(url)
            .query(&[("crc_token", &token)])
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "no answer within 3 s".to_owned()
                } else {
                    format!("request failed: {e}")
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered HTTP {status}"));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("answer is not JSON: {e}"))?;
        if body["response_token"].as_str() != Some(expected.as_str()) {
            return Err("wrong response_token".to_owned());
        }
        Ok(())
    }
    .await;
    crate::events::CrcChecked {
        url,
        failure: outcome.as_ref().err().map(String::as_str),
    }
    .emit();
    outcome
}

/// Runs CRC for a registered webhook and records the verdict.
pub async fn revalidate(sim: &Sim, webhook_id: &str) -> Option<Result<(), String>> {
    let url = sim.world().webhooks.get(webhook_id)?.url.clone();
    let verdict = challenge(sim, &url).await;
    let now = sim.clock.now();
    if let Some(webhook) = sim.world().webhooks.get_mut(webhook_id) {
        webhook.valid = verdict.is_ok();
        webhook.last_crc_at = now;
    }
    Some(verdict)
}

/// X repeats CRC about every 24 hours (simulated).
pub async fn schedule_loop(sim: Sim, shutdown: CancellationToken) {
    let interval = chrono::TimeDelta::seconds(sim.args.crc_interval_secs as i64);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let now = sim.clock.now();
        let due: Vec<String> = sim
            .world()
            .webhooks
            .values()
            .filter(|w| now - w.last_crc_at >= interval)
            .map(|w| w.id.clone())
            .collect();
        for id in due {
            revalidate(&sim, &id).await;
        }
    }
}
