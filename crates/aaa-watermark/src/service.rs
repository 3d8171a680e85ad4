//! One round of the watermark, per webhook, under a lease (`watermark_leases`):
//! record validity, write fences, follow the job in flight, record new gaps,
//! submit the next window. Every decision is logged with its reason, by the
//! event types in `events`; the steps live in `at_x` (X's view of the
//! webhook), `jobs` (the job in flight), `judging` (gaps and audits) and
//! `submit` (the next window), each working on a [`Round`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use aaa_common::Clock;
use aaa_common::observe::InternalEvent;
use aaa_xapi::XClient;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::at_x::AtX;
use crate::events::{
    FencesFailing, JudgedUpTo, LeaseChecked, LeaseLostMidRound, RoundEnded, RoundFailed,
    TickSkipped, TrackingBegan, WindowsCounted,
};
use crate::fences::Fences;
use crate::liveness::RoundLiveness;
use crate::planner::earliest_from;
use crate::ports::{self, Fencer, RoundStore, XApi};
use crate::round::{Round, Settings};
use crate::store::{self, Progress};
use crate::{Error, WatermarkArgs, jobs, judging, submit};

pub struct Watermark {
    pool: PgPool,
    fences: Fences,
    at_x: AtX,
    clock: Clock,
    settings: Settings,
    replica: String,
    lease: Duration,
    /// Held while a round runs: the scheduler starts a tick whether or not
    /// the previous one finished, and a replica must never run two rounds
    /// at once (its lease renews for itself).
    round_running: tokio::sync::Mutex<()>,
    /// When the last round started, for /healthz and the stall gauge.
    liveness: Arc<RoundLiveness>,
}

impl Watermark {
    pub async fn new(
        args: &WatermarkArgs,
        pool: PgPool,
        x: XClient,
        clock: Clock,
    ) -> Result<Watermark, Error> {
        Ok(Watermark {
            pool,
            fences: Fences::connect(args).await?,
            at_x: AtX::new(args, x, clock),
            clock,
            settings: Settings::new(args, clock)?,
            replica: args.replica_id(),
            lease: Duration::from_secs(args.lease_secs.max(1)),
            round_running: tokio::sync::Mutex::new(()),
            liveness: Arc::new(RoundLiveness::new(
                Duration::from_secs(args.stall_secs),
                Instant::now(),
            )),
        })
    }

    pub fn liveness(&self) -> Arc<RoundLiveness> {
        self.liveness.clone()
    }

    pub fn fence_health(&self) -> &crate::fences::FenceHealth {
        self.fences.health()
    }

    /// One round over every webhook, unless the previous one still runs
    /// (then this tick is skipped and counted). Failures are logged and
    /// retried next round.
    pub async fn tick(&self) {
        let Ok(_running) = self.round_running.try_lock() else {
            TickSkipped.emit();
            return;
        };
        self.liveness.round_started(Instant::now());
        let now = self.clock.now();
        self.fences.write(now).await;
        if self.fences.health().failing() {
            // A holder that cannot fence reconciles no job: another
            // replica must take its webhooks over, now.
            FencesFailing {
                failures_in_a_row: self.fences.health().failures_in_a_row(),
            }
            .emit();
            self.release_leases().await;
            for webhook in &self.settings.webhooks {
                LeaseChecked {
                    webhook,
                    replica: &self.replica,
                    held: false,
                }
                .emit();
            }
            return;
        }
        for webhook in &self.settings.webhooks {
            match self.tick_webhook(webhook, now).await {
                Ok(()) => {}
                Err(Error::LeaseLost(_)) => LeaseLostMidRound { webhook }.emit(),
                Err(error) => RoundFailed {
                    webhook,
                    error: &error,
                }
                .emit(),
            }
        }
    }

    async fn tick_webhook(&self, webhook: &str, now: DateTime<Utc>) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        // Every replica reports how far judging got, holder or not: a holder
        // that is frozen or failing cannot report its own stall.
        let progress = store::progress(&mut conn, webhook).await?;
        if let Some(judged_to) = progress.judged_to {
            JudgedUpTo {
                webhook,
                age: now - judged_to,
            }
            .emit();
        }
        // A round longer than the lease may overlap the next holder's; X
        // still gets one job per webhook (a unique index).
        let lease = store::take_lease(&mut conn, webhook, &self.replica, self.lease).await?;
        LeaseChecked {
            webhook,
            replica: &self.replica,
            held: lease.is_some(),
        }
        .emit();
        let Some(lease) = lease else {
            return Ok(());
        };
        let started = Instant::now();
        let mut round = Round {
            store: &mut *conn,
            lease: &lease,
            webhook,
            now,
            settings: &self.settings,
            x: &self.at_x,
            fences: &self.fences,
            clock: self.clock,
        };
        let result = run(&mut round, progress).await;
        RoundEnded {
            webhook,
            elapsed: started.elapsed(),
        }
        .emit();
        result
    }

    /// Gives up this replica's leases (on shutdown), so another takes over
    /// at once instead of after the lease ran out.
    pub async fn release_leases(&self) {
        if let Err(error) = store::release_leases(&self.pool, &self.replica).await {
            tracing::warn!(message = "leases not released; they expire on their own", error = %error);
        }
    }
}

/// The round's story. `progress`: as read at the start of this tick (only
/// the lease holder changes it).
pub(crate) async fn run<S: RoundStore, X: XApi, F: Fencer>(
    round: &mut Round<'_, S, X, F>,
    progress: Progress,
) -> Result<(), Error> {
    let progress = begin_tracking(round, progress).await?;
    let registered_at = round
        .x
        .check_validity(round.store, round.lease, round.now)
        .await?;
    // Read once: the job in flight and the judging both wait for it.
    let horizon = ports::horizon(round.store, round.fences).await?;
    let busy = jobs::follow_in_flight(round, horizon).await?;
    if let Some(judged) = judging::tracked(round, registered_at, horizon, progress).await? {
        let found = judging::record_gaps(round, judged).await?;
        let applied = round
            .store
            .advance_judged(round.lease, found.judged.to)
            .await?;
        round.applied(applied)?;
        judging::record_audits(round, found.judged, &found.windows).await?;
    }
    if !busy {
        submit::submit_next(round).await?;
    }
    report(round).await
}

/// The very first round of any replica marks where tracking began: what X
/// can still replay then. No round ever judges before it (a webhook
/// registered long before the watermark was installed has no heartbeats
/// from then, which is no gap), and every round judges from it on, even
/// when the first rounds could judge nothing yet (no fences stored) and the
/// next comes only after a long stop: an outage seen in the heartbeats
/// since then is expired and counted, not skipped. Nothing is judged yet,
/// so it is also how far judging got. Returns the progress the round goes
/// on with.
async fn begin_tracking<S: RoundStore, X: XApi, F: Fencer>(
    round: &mut Round<'_, S, X, F>,
    progress: Progress,
) -> Result<Progress, Error> {
    if progress.judged_to.is_some() {
        return Ok(progress);
    }
    let from = earliest_from(round.now);
    if !round.store.begin_tracking(round.lease, from).await? {
        // Another replica's first round came first, or this one lost the
        // lease (then nothing marks tracking in its name).
        let progress = round.store.progress(round.webhook).await?;
        if progress.judged_to.is_none() {
            return Err(round.lease_lost());
        }
        return Ok(progress);
    }
    TrackingBegan {
        webhook: round.webhook,
        from,
    }
    .emit();
    Ok(Progress {
        judged_to: Some(from),
        tracked_from: Some(from),
    })
}

/// The webhook's windows by kind and state, and how long its oldest open
/// gap can still be replayed (only gaps: an audit that ages out loses
/// nothing coverage did not judge).
async fn report<S: RoundStore, X: XApi, F: Fencer>(
    round: &mut Round<'_, S, X, F>,
) -> Result<(), Error> {
    let counts = round.store.window_counts(round.webhook).await?;
    let oldest = round.store.oldest_open_gap(round.webhook).await?;
    WindowsCounted {
        webhook: round.webhook,
        counts: &counts,
        oldest_gap_expires_in: oldest.map(|from| from + aaa_replay_window::MAX_AGE - round.now),
    }
    .emit();
    Ok(())
}
