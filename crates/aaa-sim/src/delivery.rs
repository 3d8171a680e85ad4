//! Delivering what X owes: signed POSTs, success only on a 2xx within 3 s,
//! X's retry schedule for live deliveries, no retries for replayed ones.

use aaa_common::observe::InternalEvent;

use crate::context::Sim;
use crate::events::DeliveryAttempted;
use crate::state::{Attempt, Route};
use crate::stream;

async fn post(sim: &Sim, url: &str, body: &[u8]) -> (String, bool) {
    let signature = aaa_signing::sign(sim.consumer_secret(), body);
    let result = sim
        .http
        .post(url)
        .header(aaa_signing::SIGNATURE_HEADER, signature)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await;
    match result {
        Ok(response) => (
            response.status().as_u16().to_string(),
            response.status().is_success(),
        ),
        Err(e) if e.is_timeout() => ("timeout".to_owned(), false),
        Err(_) => ("connection_error".to_owned(), false),
    }
}

/// A body sent again (a duplicate, a replay): the same bytes, unless the
/// `fresh_xaa_uuid_on_resend` fault gives an XAA event a new `event_uuid`.
fn resent(sim: &Sim, body: &[u8]) -> Vec<u8> {
    if !sim.world().faults.fresh_xaa_uuid_on_resend {
        return body.to_vec();
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) if value["data"]["event_uuid"].is_string() => {
            value["data"]["event_uuid"] =
                serde_json::Value::String(sim.random_below(u64::MAX).to_string());
            serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
        }
        _ => body.to_vec(),
    }
}

/// One attempt, in the ground truth as `route` and in the deliveries
/// counter as `via` (the stream is a live route of its own there).
pub(crate) fn record(
    sim: &Sim,
    seq: u64,
    route: Route,
    via: &'static str,
    job_id: Option<&str>,
    outcome: &str,
    ok: bool,
) {
    DeliveryAttempted { via, ok }.emit();
    let attempt = Attempt {
        at: sim.clock.now(),
        route,
        job_id: job_id.map(str::to_owned),
        outcome: outcome.to_owned(),
        ok,
    };
    sim.world().record_attempt(seq, attempt);
}

fn record_live(sim: &Sim, seq: u64, outcome: &str, ok: bool) {
    record(sim, seq, Route::Live, "live", None, outcome, ok);
}

fn settle(sim: &Sim, seq: u64) {
    sim.world().settle(seq);
}

/// Starts (or continues, after `failures` failed attempts) a live delivery.
/// A delivery X owes but does not attempt (the gap of a managed
/// migration's cutover): only a replay can bring it.
pub fn not_attempted(sim: &Sim, seq: u64, reason: &str) {
    record_live(sim, seq, reason, false);
    settle(sim, seq);
}

pub fn spawn_live(sim: Sim, seq: u64, failures: usize) {
    tokio::spawn(async move { live(sim, seq, failures).await });
}

async fn live(sim: Sim, seq: u64, failures: usize) {
    let now = sim.clock.now();
    let (target, envelope, body, faults) = {
        let world = sim.world();
        let Some(owed) = world.owed.get(seq as usize) else {
            return;
        };
        let target = world
            .webhooks
            .get(&owed.webhook_id)
            .map(|w| (w.url.clone(), w.valid));
        (
            target,
            owed.envelope,
            owed.body.clone(),
            world.faults.clone(),
        )
    };
    if stream::carries(&sim, envelope) {
        if faults.in_outage(now) || sim.chance(faults.drop_share) {
            record_live(&sim, seq, "dropped", false);
            settle(&sim, seq);
        } else {
            stream::send(&sim, seq, body);
        }
        return;
    }
    let reason = match target {
        None => Some("webhook_deleted"),
        Some((_, false)) => Some("webhook_invalid"),
        Some(_) if faults.in_outage(now) => Some("outage"),
        Some(_) if sim.chance(faults.drop_share) => Some("dropped"),
        Some(_) => None,
    };
    if let Some(reason) = reason {
        // X neither delivers nor retries: this one can only come back by replay.
        record_live(&sim, seq, reason, false);
        settle(&sim, seq);
        return;
    }
    let Some((url, _)) = target else { return };
    let pause = faults.delay_ms + sim.random_below(faults.reorder_ms);
    if pause > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    let (outcome, ok) = {
        let _permit = sim.deliveries.acquire().await;
        post(&sim, &url, &body).await
    };
    record_live(&sim, seq, &outcome, ok);
    if ok && sim.chance(faults.duplicate_share) {
        let body = resent(&sim, &body);
        let (outcome, ok) = post(&sim, &url, &body).await;
        record_live(&sim, seq, &format!("duplicate {outcome}"), ok);
    }
    if ok {
        settle(&sim, seq);
        return;
    }
    let schedule = sim.args.retry_schedule();
    match schedule.get(failures) {
        Some(delay) => {
            let wait = sim.clock.real_duration(delay.to_std().unwrap_or_default());
            tokio::time::sleep(wait).await;
            Box::pin(live(sim, seq, failures + 1)).await;
        }
        None => settle(&sim, seq),
    }
}

/// One replayed delivery: a single attempt, never retried.
pub async fn replay_once(sim: &Sim, seq: u64, url: &str, job_id: &str) -> bool {
    let body = match sim.world().owed.get(seq as usize) {
        Some(owed) => owed.body.clone(),
        None => return false,
    };
    let body = resent(sim, &body);
    let (outcome, ok) = {
        let _permit = sim.deliveries.acquire().await;
        post(sim, url, &body).await
    };
    record(
        sim,
        seq,
        Route::Replay,
        "replay",
        Some(job_id),
        &outcome,
        ok,
    );
    ok
}
