//! Submitting the next pending window: held while a gap waits (for an
//! audit) or X's budget is used up, trimmed or expired at X's 24 h edge,
//! reserved against the budget, then sent; a refusal backs off.

use aaa_common::observe::InternalEvent;
use aaa_replay_window::Window;

use crate::Error;
use crate::at_x::REPLAY_SUBMIT;
use crate::coverage::ceil_minute;
use crate::decisions::{
    Edge, Hold, after_refusal, aged_minutes_count, at_the_edge, gap_hold, replay_budget,
};
use crate::events::{Expiry, MinutesExpired, ReplayHeld, ReplayRefused, ReplaySubmitted};
use crate::planner::{WindowKind, earliest_from};
use crate::ports::{Fencer, RoundStore, XApi};
use crate::round::Round;
use crate::store::WindowState;

pub(crate) async fn submit_next<S: RoundStore, X: XApi, F: Fencer>(
    round: &mut Round<'_, S, X, F>,
) -> Result<(), Error> {
    let (webhook, lease, now) = (round.webhook, round.lease, round.now);
    let Some(next) = round.store.next_pending(webhook, now).await? else {
        return Ok(());
    };
    let gaps_waiting = round.store.gaps_waiting().await?;
    if let Some(hold) = gap_hold(next.kind, &gaps_waiting, &round.settings.webhooks) {
        ReplayHeld {
            webhook,
            window: next.interval(),
            hold: &hold,
        }
        .emit();
        return Ok(());
    }
    // A margin inside X's 24 h: the request reaches X a little later.
    let earliest = ceil_minute(earliest_from(round.x.now(now)) + round.settings.edge_margin);
    let window = match at_the_edge(next.interval(), earliest) {
        Edge::Fits => next.interval(),
        Edge::Expired => {
            let why = "aged past 24 h before it could be replayed";
            let applied = round.store.expire(lease, next.id, why).await?;
            round.applied(applied)?;
            MinutesExpired {
                webhook,
                window: next.interval(),
                why: Expiry::AgedWaiting(next.kind),
                counted: aged_minutes_count(next.kind),
            }
            .emit();
            return Ok(());
        }
        Edge::Trimmed { aged, rest } => {
            // The oldest minutes aged out while the window waited:
            // recorded (and, for a gap, counted) as expired, never
            // dropped silently.
            let applied = round.store.trim_start(lease, &next, rest.from).await?;
            round.applied(applied)?;
            if aged_minutes_count(next.kind)
                && round
                    .plan(aged, WindowKind::Gap, WindowState::Expired)
                    .await?
            {
                MinutesExpired {
                    webhook,
                    window: aged,
                    why: Expiry::OldestAgedWaiting,
                    counted: true,
                }
                .emit();
            }
            rest
        }
    };
    // Every replay request counts, whatever X answered: a conflict or a
    // 5xx spends X's budget as much as an accepted job. Reserved before
    // it is sent, atomically across replicas.
    let limit = replay_budget(next.kind, round.settings.replay_limit);
    let Some(reserved) = round
        .x
        .reserve(round.store, lease, REPLAY_SUBMIT, limit, now)
        .await?
    else {
        ReplayHeld {
            webhook,
            window: next.interval(),
            hold: &Hold::Budget { limit },
        }
        .emit();
        return Ok(());
    };
    let answer = round
        .x
        .submit_replay(
            webhook,
            Window {
                from: window.from,
                to_exclusive: window.to,
            },
            now,
        )
        .await;
    match &answer {
        Ok(job) => {
            // First, before anything else can fail: X runs this job
            // now, and a window not marked would be submitted again.
            let marked = round
                .store
                .mark_submitted(next.id, &job.job_id, now)
                .await?;
            ReplaySubmitted {
                webhook,
                job,
                attempt: next.attempts + 1,
                marked,
            }
            .emit();
        }
        Err(error) => {
            let retry = after_refusal(
                error,
                next.attempts,
                next.conflicts,
                round.settings.backoff,
                now,
            );
            if retry.revalidate {
                round.x.revalidate_next_round(webhook);
            }
            ReplayRefused {
                webhook,
                retry: &retry,
                error,
            }
            .emit();
            let again = now + retry.delay;
            let why = error.to_string();
            let applied = round
                .store
                .retry_later(lease, next.id, again, &why, retry.conflict)
                .await?;
            round.applied(applied)?;
        }
    }
    round.x.record(round.store, reserved, &answer).await;
    Ok(())
}
