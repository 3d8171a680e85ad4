//! Judging a webhook's timeline: which minutes no receiver can prove were
//! delivered (recorded as gap windows, or expired past X's 24 h), and which
//! closed slots an audit replays.

use aaa_common::observe::InternalEvent;
use chrono::{DateTime, TimeDelta, Utc};

use crate::coverage::{Interval, prove, uncovered};
use crate::decisions::{invalid_periods, judging_floor, unknown_periods};
use crate::events::{CoverageJudged, Expiry, GapNotReplayableYet, MinutesExpired, WindowPlanned};
use crate::planner::{Step, WindowKind, plan, plan_audits};
use crate::ports::{Fencer, RoundStore, XApi};
use crate::round::Round;
use crate::store::WindowState;
use crate::{Error, store::Progress};

/// The stretch of the webhook's timeline the watermark judges: from its
/// registration at X (or, when X did not say, the first heartbeat: a
/// receiver that died before its first heartbeat still leaves a gap) to
/// the time up to which the consumer has stored everything.
pub(crate) async fn tracked<S: RoundStore, X: XApi, F: Fencer>(
    round: &mut Round<'_, S, X, F>,
    registered_at: Option<DateTime<Utc>>,
    horizon: Option<DateTime<Utc>>,
    progress: Progress,
) -> Result<Option<Interval>, Error> {
    let Some(horizon) = horizon else {
        tracing::debug!(
            message = "consumer has not stored fences on every partition yet: nothing judged",
            webhook = round.webhook
        );
        return Ok(None);
    };
    let first_heartbeat = round.store.first_heartbeat(round.webhook).await?;
    let Some(origin) = [first_heartbeat, registered_at].into_iter().flatten().min() else {
        return Ok(None);
    };
    let floor = judging_floor(round.now, progress.judged_to, progress.tracked_from);
    Ok(Some(Interval::new(
        origin.max(floor),
        horizon.min(round.now),
    )))
}

/// What judging a stretch found: how far every receiver had reported, and
/// every window since the stretch's start, those just recorded included.
pub(crate) struct Judged {
    /// The stretch actually judged: it ends where the receiver that may
    /// still report has reported so far (`Proof::known_to`).
    pub judged: Interval,
    pub windows: Vec<Interval>,
}

/// Finds unproven minutes of `judged` not yet planned, and records them
/// as pending (or expired) windows.
pub(crate) async fn record_gaps<S: RoundStore, X: XApi, F: Fencer>(
    round: &mut Round<'_, S, X, F>,
    judged: Interval,
) -> Result<Judged, Error> {
    let (webhook, now, start) = (round.webhook, round.now, judged.from);
    let margin = round.settings.receiver_margin;
    // A life that stopped shortly before `start` still answers for the
    // stretch after its last heartbeat.
    let heartbeats = round
        .store
        .heartbeats_since(webhook, start - margin)
        .await?;
    let proof = prove(&heartbeats, judged.to, margin);
    let judged = Interval::new(judged.from, judged.to.min(proof.known_to).max(judged.from));
    let checks = round
        .store
        .validity_since(webhook, start - TimeDelta::hours(1))
        .await?;
    let mut invalid = invalid_periods(&checks, now);
    // Validity nobody could check (X unreachable, rate limited) is
    // suspect: X may have stopped delivering then.
    invalid.extend(unknown_periods(
        &checks,
        now,
        round.settings.validity_unknown_after,
    ));
    let mut settled = round.store.windows_since(webhook, start).await?;
    let gaps = uncovered(start, judged.to, &proof, &invalid, &settled);
    CoverageJudged {
        webhook,
        rows_read: heartbeats.len() + checks.len(),
        uncovered_minutes: gaps.iter().map(Interval::minutes).sum(),
    }
    .emit();
    // X judges windows by its own clock.
    for step in plan(round.x.now(now), &gaps) {
        match step {
            Step::Submit(window) => {
                WindowPlanned {
                    webhook,
                    kind: WindowKind::Gap,
                    window,
                }
                .emit();
                round
                    .plan(window, WindowKind::Gap, WindowState::Pending)
                    .await?;
                settled.push(window);
            }
            Step::Expired(window) => {
                let new = round
                    .plan(window, WindowKind::Gap, WindowState::Expired)
                    .await?;
                MinutesExpired {
                    webhook,
                    window,
                    why: Expiry::FoundTooOld,
                    counted: new,
                }
                .emit();
                settled.push(window);
            }
            Step::Wait { window, until } => GapNotReplayableYet {
                webhook,
                window,
                until,
            }
            .emit(),
        }
    }
    Ok(Judged {
        judged,
        windows: settled,
    })
}

/// Opens an audit window for every closed slot of `judged` no window (of
/// `windows`, all since its start) replayed yet.
pub(crate) async fn record_audits<S: RoundStore, X: XApi, F: Fencer>(
    round: &mut Round<'_, S, X, F>,
    judged: Interval,
    windows: &[Interval],
) -> Result<(), Error> {
    let webhook = round.webhook;
    let span = round.settings.audit_span(webhook);
    if span <= TimeDelta::zero() {
        return Ok(());
    }
    for window in plan_audits(round.now, judged.from, judged.to, span, windows) {
        WindowPlanned {
            webhook,
            kind: WindowKind::Audit,
            window,
        }
        .emit();
        round
            .plan(window, WindowKind::Audit, WindowState::Pending)
            .await?;
    }
    Ok(())
}
