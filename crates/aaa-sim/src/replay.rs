//! Replay jobs: one per webhook at a time; every event of the window is
//! re-delivered once (no retries), then `replay_job_status` says Complete or
//! Incomplete and the webhook is free again.

use aaa_common::observe::InternalEvent;
use aaa_replay_window::Window;
use chrono::TimeDelta;
use futures::StreamExt as _;
use serde_json::json;

use crate::context::Sim;
use crate::delivery;
use crate::faults::ReplayFault;
use crate::state::{Envelope, Job};

/// X replays an event only once it is 10 minutes old.
const REPLAYABLE_AFTER: TimeDelta = TimeDelta::minutes(10);

/// Registers a running job for `webhook_id`, unless one is running already
/// (then `Err(ReplayConflictError)`). Checked under the same lock as the
/// insert, so two requests can never both start a job.
pub fn open_job(
    sim: &Sim,
    webhook_id: &str,
    window: Window,
    endpoint: &'static str,
) -> Result<Job, ()> {
    let now = sim.clock.now();
    let mut world = sim.world();
    if world.running_job(webhook_id).is_some() {
        return Err(());
    }
    let job = Job {
        job_id: world.new_job_id(),
        webhook_id: webhook_id.to_owned(),
        from: window.from,
        to_exclusive: window.to_exclusive,
        created_at: now,
        state: "running".into(),
        finished_at: None,
        endpoint,
    };
    world.jobs.push(job.clone());
    crate::events::ReplayJobState { state: "started" }.emit();
    Ok(job)
}

/// Replayed deliveries in flight at once.
const REPLAY_CONCURRENCY: usize = 4;

pub fn spawn(sim: Sim, job: Job) {
    tokio::spawn(async move { run(sim, job).await });
}

async fn run(sim: Sim, job: Job) {
    let window = Window {
        from: job.from,
        to_exclusive: job.to_exclusive,
    };
    let (url, seqs, fault, delay_ms) = {
        let cutoff = sim.clock.now() - REPLAYABLE_AFTER;
        let mut world = sim.world();
        let url = world.webhooks.get(&job.webhook_id).map(|w| w.url.clone());
        let seqs: Vec<u64> = world
            .owed
            .iter()
            .filter(|o| o.webhook_id == job.webhook_id && o.kind != "replay_job_status")
            .filter(|o| window.contains(o.created_at) && o.created_at <= cutoff)
            .map(|o| o.seq)
            .collect();
        let delay_ms = world.faults.replay_delay_ms;
        (url, seqs, world.faults.next_replay.take(), delay_ms)
    };
    if fault == Some(ReplayFault::Hold) {
        tracing::info!(message = "replay job held until POST /sim/jobs/release", job_id = %job.job_id);
        sim.release_jobs.notified().await;
    }
    let Some(url) = url else {
        finish(&sim, &job, "Incomplete", "webhook was deleted");
        return;
    };
    let to_send = match fault {
        Some(ReplayFault::Incomplete) => &seqs[..seqs.len() / 2],
        _ => &seqs[..],
    };
    // A few at a time, as a sender that does not want to flood its
    // receiver would (X does not document its replay rate).
    let (sim_ref, url_ref, job_ref) = (&sim, &url, &job);
    let results: Vec<bool> = futures::stream::iter(to_send.to_vec())
        .map(move |seq| async move {
            if delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            }
            delivery::replay_once(sim_ref, seq, url_ref, &job_ref.job_id).await
        })
        .buffer_unordered(REPLAY_CONCURRENCY)
        .collect()
        .await;
    let delivered = results.iter().filter(|ok| **ok).count();
    tracing::info!(message = "replay job delivered", job_id = %job.job_id, events = seqs.len(), delivered);
    let reports_failures = !sim.world().faults.complete_despite_failures;
    match fault {
        Some(ReplayFault::NeverFinish) => {
            tracing::warn!(message = "replay job will never finish (fault)", job_id = %job.job_id);
        }
        Some(ReplayFault::Incomplete) => {
            finish(&sim, &job, "Incomplete", "job failed partway (fault)")
        }
        None | Some(ReplayFault::Hold) if delivered < seqs.len() && reports_failures => finish(
            &sim,
            &job,
            "Incomplete",
            "some events could not be delivered",
        ),
        None | Some(ReplayFault::Hold) => {
            finish(&sim, &job, "Complete", "Job completed successfully")
        }
    }
}

/// Frees the webhook and sends `replay_job_status`, like any other delivery.
fn finish(sim: &Sim, job: &Job, state: &'static str, description: &str) {
    let now = sim.clock.now();
    let status = json!({
        "webhook_id": job.webhook_id, "job_state": state, "job_state_description": description, "job_id": job.job_id,
    });
    // X does not document the completion message for XAA webhooks; in XAA
    // mode the simulator sends it in the XAA envelope (one guess at it), so
    // the pipeline's defensive reading is exercised.
    let (envelope, body) = if sim.args.format == crate::xaa::Format::Xaa {
        (
            Envelope::Xaa,
            json!({"data": {"event_uuid": job.job_id, "filter": {}, "event_type": "webhooks.replay.job_status", "payload": status}}),
        )
    } else {
        (Envelope::Aaa, json!({"replay_job_status": status}))
    };
    let seq = {
        let mut world = sim.world();
        if let Some(j) = world.jobs.iter_mut().find(|j| j.job_id == job.job_id) {
            j.state = state.to_owned();
            j.finished_at = Some(now);
        }
        world.owe(
            0,
            &job.webhook_id,
            None,
            "replay_job_status",
            now,
            envelope,
            body.to_string().into_bytes(),
        )
    };
    crate::events::ReplayJobState { state }.emit();
    delivery::spawn_live(sim.clone(), seq, 0);
}
