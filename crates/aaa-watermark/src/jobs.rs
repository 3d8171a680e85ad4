//! The job in flight: fence once X reports it complete, reconcile once the
//! consumer stored everything before the fences and the receivers kept
//! every delivery while it ran, otherwise put the window back to pending.

use aaa_common::observe::InternalEvent;

use crate::Error;
use crate::decisions::{JobSeen, JobState, JobStep, backoff, follow_job};
use crate::events::{JobCompleteAtX, JobReconciled, JobRequeued, Requeue};
use crate::ports::{Fencer, RoundStore, XApi};
use crate::round::Round;

/// Follows the job in flight; `true` while one is still running.
pub(crate) async fn follow_in_flight<S: RoundStore, X: XApi, F: Fencer>(
    round: &mut Round<'_, S, X, F>,
    horizon: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<bool, Error> {
    let (webhook, lease, now) = (round.webhook, round.lease, round.now);
    let Some(job) = round.store.in_flight(webhook).await? else {
        return Ok(false);
    };
    let job_state = round.store.job_state(job.job_id.as_deref()).await?;
    let job_id = job.job_id.as_deref().unwrap_or_default();
    let heartbeats = match (job.fence_at, job.submitted_at) {
        (Some(_), Some(submitted_at)) => {
            // A life that stopped shortly before the submission still
            // answers for the stretch after its last heartbeat.
            let since = submitted_at - round.settings.receiver_margin;
            round.store.heartbeats_since(webhook, since).await?
        }
        _ => Vec::new(),
    };
    let seen = JobSeen {
        job_state: job_state.as_deref().map(JobState::of),
        fence_at: job.fence_at,
        submitted_at: job.submitted_at,
        horizon,
        heartbeats: &heartbeats,
        margin: round.settings.receiver_margin,
    };
    let requeued = |why| JobRequeued {
        webhook,
        job_id,
        why,
    };
    match follow_job(seen, now, round.settings.job_timeout) {
        JobStep::Running | JobStep::AwaitConsumer => Ok(true),
        JobStep::FenceNow => {
            // The round's own fences were written before the completion
            // was read; a delivery still in flight then would be missed.
            let fenced_at = round.clock.now();
            if round.fences.write(fenced_at).await {
                let applied = round.store.set_fence(lease, &job, fenced_at).await?;
                round.applied(applied)?;
                JobCompleteAtX { webhook, job_id }.emit();
            }
            Ok(true)
        }
        JobStep::Reconcile => {
            let Some((recovered, duplicates)) = round.store.reconcile(lease, &job, now).await?
            else {
                return Err(round.lease_lost());
            };
            JobReconciled {
                webhook,
                job_id,
                kind: job.kind,
                recovered,
                duplicates,
                took: now - job.created_at,
            }
            .emit();
            Ok(false)
        }
        JobStep::ReceiversMissedIt => {
            let why = "X reported Complete, but the receivers refused deliveries (or did not report) while the job ran";
            // Backed off: whatever made the receivers refuse (an
            // outsider holding their slots) may still be there, and
            // each submission spends X's budget.
            let again = now + backoff(round.settings.backoff, job.attempts);
            let applied = round.store.requeue(lease, &job, again, why).await?;
            round.applied(applied)?;
            requeued(Requeue::ReceiversMissed).emit();
            Ok(false)
        }
        JobStep::Incomplete(state) => {
            // X does not retry replayed events.
            let why = format!("X reported {state}");
            let applied = round.store.requeue(lease, &job, now, &why).await?;
            round.applied(applied)?;
            requeued(Requeue::Incomplete { state: &state }).emit();
            Ok(false)
        }
        JobStep::Lost => {
            let why = "no completion message in time";
            let applied = round.store.requeue(lease, &job, now, why).await?;
            round.applied(applied)?;
            requeued(Requeue::Lost).emit();
            Ok(false)
        }
    }
}
