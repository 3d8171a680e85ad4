//! What a watermark round decides (pure, no I/O): how far back it judges,
//! which periods X's validity makes suspect, what to do with the job in
//! flight, what X's 24 h edge leaves of a window, and how long to wait
//! after X refused a submission, what X's clock and answers mean, and when
//! an invalid webhook is re-validated. `service` feeds these from `store`
//! and X.

use aaa_xapi::{Reason, XError};
use chrono::{DateTime, TimeDelta, Utc};

use crate::coverage::{Heartbeat, Interval, prove};
use crate::planner::{WindowKind, earliest_from};

/// Longest wait between two submissions of the same window.
pub const MAX_BACKOFF: TimeDelta = TimeDelta::minutes(15);

/// `base` doubled per earlier attempt, at most [`MAX_BACKOFF`].
pub fn backoff(base: TimeDelta, attempt: i32) -> TimeDelta {
    (base * 2i32.saturating_pow(attempt.clamp(0, 10) as u32)).min(MAX_BACKOFF)
}

/// What the round does with the window whose job is in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStep {
    /// No completion message yet, and not overdue: the slot stays busy.
    Running,
    /// X said Complete: write fences now, after the completion was seen,
    /// so every replayed delivery X sent before it is behind them.
    FenceNow,
    /// Fenced; the consumer has not stored the fences yet, or a receiver
    /// life live while the job ran has not reported past the fence and the
    /// margin yet (nor closed, nor is certainly gone).
    AwaitConsumer,
    /// Everything replayed is stored, and the receivers kept every
    /// delivery while the job ran: the window is done.
    Reconcile,
    /// X said Complete, but while the job ran the receivers refused
    /// deliveries that may have been X's (shed, broker down) or did not
    /// report at all: X does not retry replayed deliveries, so what it
    /// replayed then may be lost. Submit the same window again.
    ReceiversMissedIt,
    /// X ended the job in another state (it does not retry replayed
    /// events): submit the same window again.
    Incomplete(String),
    /// No completion within the job timeout: submit again (a conflict tells
    /// whether it still runs).
    Lost,
}

/// What a replay job's completion message said (`replay_jobs.job_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState<'a> {
    /// X replayed the whole window.
    Complete,
    /// Any other end X reports (it does not retry replayed events).
    Other(&'a str),
}

impl<'a> JobState<'a> {
    /// X's spelling of the state.
    pub fn of(state: &'a str) -> JobState<'a> {
        match state {
            "Complete" => JobState::Complete,
            other => JobState::Other(other),
        }
    }
}

/// How a replay job in flight ended (`aaa_watermark_replay_jobs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Reconciled,
    /// X ended it in another state than Complete.
    Incomplete,
    /// No completion message within the job timeout.
    Lost,
    /// Complete at X, but the receivers refused deliveries while it ran.
    ReceiversMissed,
}

impl JobOutcome {
    pub const ALL: [JobOutcome; 4] = [
        JobOutcome::Reconciled,
        JobOutcome::Incomplete,
        JobOutcome::Lost,
        JobOutcome::ReceiversMissed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Reconciled => "reconciled",
            JobOutcome::Incomplete => "incomplete",
            JobOutcome::Lost => "lost",
            JobOutcome::ReceiversMissed => "receivers_missed",
        }
    }
}

/// What X answered a counted request (`x_api_requests.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XRequestOutcome {
    Ok,
    RateLimited,
    Refused,
    Failed,
}

impl XRequestOutcome {
    pub const ALL: [XRequestOutcome; 4] = [
        XRequestOutcome::Ok,
        XRequestOutcome::RateLimited,
        XRequestOutcome::Refused,
        XRequestOutcome::Failed,
    ];

    pub fn of<T>(answer: &Result<T, XError>) -> XRequestOutcome {
        match answer {
            Ok(_) => XRequestOutcome::Ok,
            Err(XError::RateLimited { .. }) => XRequestOutcome::RateLimited,
            Err(XError::Refused { .. }) => XRequestOutcome::Refused,
            Err(_) => XRequestOutcome::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            XRequestOutcome::Ok => "ok",
            XRequestOutcome::RateLimited => "rate_limited",
            XRequestOutcome::Refused => "refused",
            XRequestOutcome::Failed => "failed",
        }
    }
}

/// Differences under this between X's `Date` and our clock are noise:
/// `Date` has whole seconds.
pub const SKEW_NOISE: TimeDelta = TimeDelta::seconds(2);

/// How far X's clock is ahead of ours, from the `Date` of an answer
/// (`x_date`) read at `now`.
pub fn x_clock_skew(x_date: DateTime<Utc>, now: DateTime<Utc>) -> TimeDelta {
    let skew = x_date - now;
    if skew.abs() < SKEW_NOISE {
        TimeDelta::zero()
    } else {
        skew
    }
}

/// When X registered the webhook, from its `created_at` (RFC 3339); `None`
/// when X did not say, or said something else.
pub fn registered_at(created_at: Option<&str>) -> Option<DateTime<Utc>> {
    created_at
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Whether an invalid webhook is re-validated (PUT) this round: unless a
/// failed re-validation set a time before which it is not tried again.
pub fn revalidation_due(not_before: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    not_before.is_none_or(|t| t <= now)
}

/// What X's validity check means for the round: whether the webhook counts
/// as valid now, and which samples to record. X's own answer is recorded as
/// of when X gave it (`checked_at`, one sample per answer); a webhook this
/// round re-validated is recorded valid again just after `now`, so the
/// invalid period ends there.
pub fn validity_samples(
    listed_valid: bool,
    revalidated: bool,
    checked_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (bool, Vec<(DateTime<Utc>, bool)>) {
    let mut samples = vec![(checked_at, listed_valid)];
    if revalidated && !listed_valid {
        samples.push((now + TimeDelta::milliseconds(1), true));
    }
    (listed_valid || revalidated, samples)
}

/// What a pending window that aged past X's edge while it waited loses:
/// a gap's minutes are counted as expired; an audit's lose nothing coverage
/// did not judge.
pub fn aged_minutes_count(kind: WindowKind) -> bool {
    kind == WindowKind::Gap
}

/// What a round knows about the job in flight.
#[derive(Debug, Clone, Copy)]
pub struct JobSeen<'a> {
    /// What its completion message said (`replay_jobs.job_state`).
    pub job_state: Option<JobState<'a>>,
    /// When fences were written after the completion was seen.
    pub fence_at: Option<DateTime<Utc>>,
    pub submitted_at: Option<DateTime<Utc>>,
    /// How far the consumer has stored everything.
    pub horizon: Option<DateTime<Utc>>,
    /// The receivers' heartbeats from `submitted_at` on.
    pub heartbeats: &'a [Heartbeat],
    /// How late a receiver's report may come (`Settings::receiver_margin`).
    pub margin: TimeDelta,
}

impl JobSeen<'_> {
    /// The time whose deliveries the job's outcome depends on: from its
    /// submission to its fence, and a margin past it, since X's completion
    /// message can overtake the last replayed deliveries.
    pub fn answerable(&self, fence_at: DateTime<Utc>) -> Interval {
        Interval::new(
            self.submitted_at.unwrap_or(fence_at).min(fence_at),
            fence_at + self.margin,
        )
    }
}

/// Decides about the job in flight. Once everything before its fence is
/// stored, the job is judged by the coverage rule (`coverage::prove`):
/// every receiver life live while it ran must prove that time, and the
/// judgement waits until every such life has reported past the fence and
/// the margin (or closed, or is certainly gone).
pub fn follow_job(job: JobSeen<'_>, now: DateTime<Utc>, job_timeout: TimeDelta) -> JobStep {
    match (job.job_state, job.fence_at, job.horizon) {
        (Some(JobState::Complete), None, _) => JobStep::FenceNow,
        (Some(JobState::Complete), Some(fence_at), Some(horizon)) if horizon >= fence_at => {
            let during = job.answerable(fence_at);
            let proof = prove(job.heartbeats, horizon, job.margin);
            if proof.known_to < during.to {
                JobStep::AwaitConsumer
            } else if proof.proves(during) {
                JobStep::Reconcile
            } else {
                JobStep::ReceiversMissedIt
            }
        }
        (Some(JobState::Complete), Some(_), _) => JobStep::AwaitConsumer,
        (Some(JobState::Other(other)), _, _) => JobStep::Incomplete(other.to_owned()),
        (None, _, _) if job.submitted_at.is_some_and(|at| at < now - job_timeout) => JobStep::Lost,
        (None, _, _) => JobStep::Running,
    }
}

/// Why a pending window is not submitted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// X's replay budget (requests per 15 minutes, of every outcome, by
    /// every replica and operator) has no request left for this kind.
    Budget { limit: i64 },
    /// An audit waits while a gap waits on a watched webhook: an audit holds
    /// its webhook's job slot and the shared budget for hours of duplicates.
    GapWaiting,
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::Budget { limit } => {
                write!(f, "replay budget used: {limit} requests in 15 minutes")
            }
            Hold::GapWaiting => write!(f, "a gap waits for replay; audits go after gaps"),
        }
    }
}

/// Whether a pending window of `kind` must wait for a gap: audits go after
/// every gap waiting on a webhook this watermark watches (`watched`). A gap
/// of a webhook no longer watched will never be submitted, so it must not
/// hold audits back for good.
pub fn gap_hold(kind: WindowKind, gaps_waiting: &[String], watched: &[String]) -> Option<Hold> {
    (kind == WindowKind::Audit && gaps_waiting.iter().any(|w| watched.contains(w)))
        .then_some(Hold::GapWaiting)
}

/// How many replay requests per 15 minutes a window of `kind` may count up
/// to, of X's `limit`: audits leave the last one to gaps (unless the
/// budget is a single request).
pub fn replay_budget(kind: WindowKind, limit: i64) -> i64 {
    limit - i64::from(kind == WindowKind::Audit && limit > 1)
}

/// What X's 24 h edge leaves of a pending window, `earliest` being the
/// first minute it still accepts (with the safety margin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// All of it is too old.
    Expired,
    /// Its oldest minutes (`aged`) are too old; the rest can be replayed.
    Trimmed { aged: Interval, rest: Interval },
    /// All of it can be replayed.
    Fits,
}

pub fn at_the_edge(window: Interval, earliest: DateTime<Utc>) -> Edge {
    if window.to <= earliest {
        Edge::Expired
    } else if window.from < earliest {
        Edge::Trimmed {
            aged: Interval::new(window.from, earliest),
            rest: Interval::new(earliest, window.to),
        }
    } else {
        Edge::Fits
    }
}

/// How a replay submission ended (`aaa_watermark_replay_submissions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submission {
    Accepted,
    /// X runs another job for this webhook (`ReplayConflictError`).
    Conflict,
    RateLimited,
    /// X refuses replays for the webhook (failed CRC, unknown id).
    WebhookRefused,
    /// X (or the client) refuses the window itself.
    WindowRefused,
    Failed,
}

impl Submission {
    pub const ALL: [Submission; 6] = [
        Submission::Accepted,
        Submission::Conflict,
        Submission::RateLimited,
        Submission::WebhookRefused,
        Submission::WindowRefused,
        Submission::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Submission::Accepted => "accepted",
            Submission::Conflict => "conflict",
            Submission::RateLimited => "rate_limited",
            Submission::WebhookRefused => "webhook_refused",
            Submission::WindowRefused => "window_refused",
            Submission::Failed => "failed",
        }
    }
}

/// When a refused submission is tried again, and what the refusal means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub outcome: Submission,
    pub delay: TimeDelta,
    /// Counts as a conflict (the window's `conflicts` column).
    pub conflict: bool,
    /// The webhook must be re-validated at X before replays can work.
    pub revalidate: bool,
}

/// Decides about a refused submission of a window tried `attempts` times
/// (`conflicts` of them refused as conflicts). Every refusal backs off,
/// doubling: a window X keeps refusing is not retried every minute until it
/// ages out. A rate limit waits until X's reset.
pub fn after_refusal(
    error: &XError,
    attempts: i32,
    conflicts: i32,
    base: TimeDelta,
    now: DateTime<Utc>,
) -> Retry {
    let retry = |outcome, delay| Retry {
        outcome,
        delay,
        conflict: outcome == Submission::Conflict,
        revalidate: outcome == Submission::WebhookRefused,
    };
    match error {
        XError::Refused {
            reason: Reason::ReplayConflict,
            ..
        } => retry(Submission::Conflict, backoff(base, conflicts)),
        XError::RateLimited { reset, .. } => retry(
            Submission::RateLimited,
            reset
                .map(|r| r - now)
                .unwrap_or(base)
                .max(TimeDelta::seconds(1)),
        ),
        XError::Refused {
            reason: Reason::CrcValidationFailed | Reason::WebhookIdInvalid,
            ..
        } => retry(Submission::WebhookRefused, backoff(base, attempts)),
        // Clock skew or a boundary: planned again next time with fresh limits.
        XError::Refused {
            reason: Reason::QueryParamInvalid,
            ..
        }
        | XError::Invalid(_) => retry(Submission::WindowRefused, backoff(base, attempts)),
        _ => retry(Submission::Failed, backoff(base, attempts)),
    }
}

/// Stretches longer than `max_silence` in which nobody learnt whether the
/// webhook was valid: between two checks, and from the last one to `now`.
/// (Before the first check ever, nothing was tracked: not suspect.)
pub fn unknown_periods(
    checks: &[(DateTime<Utc>, bool)],
    now: DateTime<Utc>,
    max_silence: TimeDelta,
) -> Vec<Interval> {
    let times: Vec<DateTime<Utc>> = checks
        .iter()
        .map(|(at, _)| *at)
        .chain(checks.last().map(|_| now))
        .collect();
    times
        .windows(2)
        .filter(|pair| pair[1] - pair[0] > max_silence)
        .map(|pair| Interval::new(pair[0], pair[1]))
        .collect()
}

/// The earliest time a round judges. Normally the last 25 h are judged
/// again each round (cheap, and late heartbeats count). After a long stop,
/// judging resumes where it stopped (less a margin for the widened
/// neighbour minutes). On the very first round, what X can still replay is
/// the past that matters, and no later round judges before where tracking
/// began: a webhook registered long ago has no heartbeats from before the
/// watermark was installed, which is not an expired gap.
pub fn judging_floor(
    now: DateTime<Utc>,
    judged_to: Option<DateTime<Utc>>,
    tracked_from: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let floor = match judged_to {
        Some(judged_to) => judged_to.min(now - TimeDelta::hours(25)) - TimeDelta::minutes(2),
        None => earliest_from(now),
    };
    tracked_from.map_or(floor, |tracked_from| floor.max(tracked_from))
}

/// Periods the webhook was (or may have been) invalid: from the last check
/// that saw it valid to the first check that sees it valid again.
pub fn invalid_periods(checks: &[(DateTime<Utc>, bool)], now: DateTime<Utc>) -> Vec<Interval> {
    let mut periods = Vec::new();
    let mut last_valid: Option<DateTime<Utc>> = None;
    let mut invalid_since: Option<DateTime<Utc>> = None;
    for (at, valid) in checks {
        match (valid, invalid_since) {
            // With no valid check before it, nobody knows since when the
            // webhook was invalid: since before anything judged.
            (false, None) => invalid_since = Some(last_valid.unwrap_or(DateTime::<Utc>::MIN_UTC)),
            (true, Some(since)) => {
                periods.push(Interval::new(since, *at));
                invalid_since = None;
                last_valid = Some(*at);
            }
            (true, None) => last_valid = Some(*at),
            (false, Some(_)) => {}
        }
    }
    if let Some(since) = invalid_since {
        periods.push(Interval::new(since, now));
    }
    periods
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coverage::Life;

    fn refused(reason: Reason) -> XError {
        XError::Refused {
            status: 400,
            reason,
            message: String::new(),
            body: String::new(),
        }
    }

    /// How late a receiver's report may come, in these tests.
    const MARGIN: TimeDelta = TimeDelta::minutes(1);

    /// A heartbeat of replica `replica`'s one life over `[from, to)`
    /// (minutes), its next one due a minute after it.
    fn beat_of(replica: &str, from: DateTime<Utc>, to: DateTime<Utc>, healthy: bool) -> Heartbeat {
        Heartbeat {
            life: Life {
                replica: replica.into(),
                started_at: Some(t(-60)),
            },
            covered: Interval::new(from, to),
            healthy,
            closing: false,
            next_due: Some(to + TimeDelta::minutes(1)),
        }
    }

    fn beat(from: i64, to: i64, healthy: bool) -> Heartbeat {
        beat_of("r1", t(from), t(to), healthy)
    }

    fn closing(mut beat: Heartbeat) -> Heartbeat {
        beat.closing = true;
        beat.next_due = None;
        beat
    }

    /// A job seen with receivers that kept up from its submission (t0) to
    /// well past any fence.
    fn seen<'a>(
        job_state: Option<&'a str>,
        fence_at: Option<DateTime<Utc>>,
        horizon: Option<DateTime<Utc>>,
        heartbeats: &'a [Heartbeat],
    ) -> JobSeen<'a> {
        JobSeen {
            job_state: job_state.map(JobState::of),
            fence_at,
            submitted_at: Some(t(0)),
            horizon,
            heartbeats,
            margin: MARGIN,
        }
    }

    #[test]
    fn a_job_is_reconciled_only_after_fences_written_after_its_completion_are_stored() {
        let timeout = TimeDelta::minutes(30);
        let kept_up = [beat(-5, 20, true)];
        let complete = Some("Complete");
        // Complete, but no fence written since it was seen: fence now, even
        // if the consumer's horizon (from fences written before the
        // completion was read) is already past it.
        assert_eq!(
            follow_job(seen(complete, None, Some(t(10)), &kept_up), t(10), timeout),
            JobStep::FenceNow
        );
        assert_eq!(
            follow_job(
                seen(complete, Some(t(10)), Some(t(9)), &kept_up),
                t(11),
                timeout
            ),
            JobStep::AwaitConsumer
        );
        assert_eq!(
            follow_job(seen(complete, Some(t(10)), None, &kept_up), t(11), timeout),
            JobStep::AwaitConsumer
        );
        // Stored up to the fence, but a delivery answered within the
        // margin after it may still be refused: not yet.
        assert_eq!(
            follow_job(
                seen(complete, Some(t(10)), Some(t(10)), &kept_up),
                t(11),
                timeout
            ),
            JobStep::AwaitConsumer
        );
        assert_eq!(
            follow_job(
                seen(complete, Some(t(10)), Some(t(11)), &kept_up),
                t(12),
                timeout
            ),
            JobStep::Reconcile
        );
    }

    #[test]
    fn a_complete_job_is_replayed_again_when_any_live_receiver_refused_or_missed_deliveries() {
        let timeout = TimeDelta::minutes(30);
        let complete = Some("Complete");
        let fenced = |heartbeats| seen(complete, Some(t(10)), Some(t(12)), heartbeats);
        // Deliveries shed (or the broker down) while the job ran: X said
        // Complete, but what it replayed then may be lost.
        let shed = [beat(-5, 4, true), beat(4, 5, false), beat(5, 20, true)];
        assert_eq!(
            follow_job(fenced(&shed), t(12), timeout),
            JobStep::ReceiversMissedIt
        );
        // A hole in the one receiver's heartbeats (its broker down).
        let hole = [beat(-5, 3, true), beat(6, 20, true)];
        assert_eq!(
            follow_job(fenced(&hole), t(12), timeout),
            JobStep::ReceiversMissedIt
        );
        // r1 stopped at 6 without a closing heartbeat (SIGKILL): r2's
        // heartbeats do not prove what r1 may have refused until it was
        // certainly gone (8).
        let killed = [beat(-5, 6, true), beat_of("r2", t(-5), t(20), true)];
        assert_eq!(
            follow_job(fenced(&killed), t(12), timeout),
            JobStep::ReceiversMissedIt
        );
        // The same replica drained and closed at 6: fine.
        let closed = [
            closing(beat(-5, 6, true)),
            beat_of("r2", t(-5), t(20), true),
        ];
        assert_eq!(
            follow_job(fenced(&closed), t(12), timeout),
            JobStep::Reconcile
        );
        // Its drain refused a delivery (the closing heartbeat says so).
        let drain_refused = [
            beat(-5, 5, true),
            closing(beat(5, 6, false)),
            beat_of("r2", t(-5), t(20), true),
        ];
        assert_eq!(
            follow_job(fenced(&drain_refused), t(12), timeout),
            JobStep::ReceiversMissedIt
        );
        // A refusal before the job was submitted is another window's gap.
        let before = [beat(-5, -1, false), beat(-1, 20, true)];
        assert_eq!(
            follow_job(fenced(&before), t(12), timeout),
            JobStep::Reconcile
        );
        // X's completion message overtook a replayed delivery that was
        // refused just after the fence: it counts against the job. One
        // past the margin does not.
        let after_fence = [beat(-5, 10, true), beat(10, 11, false), beat(11, 20, true)];
        assert_eq!(
            follow_job(fenced(&after_fence), t(12), timeout),
            JobStep::ReceiversMissedIt
        );
        let later = [beat(-5, 11, true), beat(11, 12, false), beat(12, 20, true)];
        assert_eq!(
            follow_job(fenced(&later), t(12), timeout),
            JobStep::Reconcile
        );
    }

    /// Every live replica must report past the fence and the margin, not
    /// the fastest: a lagging one is waited for, however long, and one that
    /// stopped is waited for until it is certainly gone.
    #[test]
    fn the_judgement_waits_for_every_live_replica_not_the_fastest() {
        let timeout = TimeDelta::minutes(30);
        let complete = Some("Complete");
        let at = |horizon, heartbeats| seen(complete, Some(t(10)), Some(horizon), heartbeats);
        let lagging_at = t(10) + TimeDelta::seconds(30);
        let lagging = [
            beat_of("r1", t(-5), lagging_at, true),
            beat_of("r2", t(-5), t(20), true),
        ];
        // r1's next heartbeat is due 11:30, overdue only at 12:30.
        assert_eq!(
            follow_job(at(t(12), &lagging), t(40), timeout),
            JobStep::AwaitConsumer
        );
        // It came: fine.
        let reported = [
            beat_of("r1", t(-5), lagging_at, true),
            beat_of("r1", lagging_at, t(20), true),
            beat_of("r2", t(-5), t(20), true),
        ];
        assert_eq!(
            follow_job(at(t(12), &reported), t(40), timeout),
            JobStep::Reconcile
        );
        // It never came: once overdue, r1 is gone and its stretch unproven.
        assert_eq!(
            follow_job(at(t(13), &lagging), t(40), timeout),
            JobStep::ReceiversMissedIt
        );
    }

    #[test]
    fn an_unfinished_job_runs_until_it_is_overdue_and_another_state_resubmits() {
        let timeout = TimeDelta::minutes(30);
        assert_eq!(
            follow_job(seen(None, None, Some(t(29)), &[]), t(29), timeout),
            JobStep::Running
        );
        assert_eq!(
            follow_job(seen(None, None, Some(t(31)), &[]), t(31), timeout),
            JobStep::Lost
        );
        assert_eq!(
            follow_job(seen(Some("Incomplete"), None, None, &[]), t(1), timeout),
            JobStep::Incomplete("Incomplete".into())
        );
    }

    #[test]
    fn audits_wait_only_for_gaps_of_watched_webhooks_and_leave_the_last_request_to_gaps() {
        use WindowKind::{Audit, Gap};
        let watched = ["a".to_owned(), "b".to_owned()];
        let waiting = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(gap_hold(Gap, &waiting(&["a"]), &watched), None);
        assert_eq!(
            gap_hold(Audit, &waiting(&["b"]), &watched),
            Some(Hold::GapWaiting)
        );
        assert_eq!(gap_hold(Audit, &waiting(&[]), &watched), None);
        // A gap of a webhook removed from configuration is never submitted:
        // it must not hold audits back for good.
        assert_eq!(gap_hold(Audit, &waiting(&["removed"]), &watched), None);
        assert_eq!(replay_budget(Gap, 100), 100);
        assert_eq!(replay_budget(Audit, 100), 99);
        // With a budget of one, audits may use it.
        assert_eq!(replay_budget(Audit, 1), 1);
    }

    #[test]
    fn the_24_hour_edge_expires_or_trims_a_window() {
        let window = Interval::new(t(10), t(20));
        assert_eq!(at_the_edge(window, t(20)), Edge::Expired);
        assert_eq!(at_the_edge(window, t(25)), Edge::Expired);
        assert_eq!(
            at_the_edge(window, t(15)),
            Edge::Trimmed {
                aged: Interval::new(t(10), t(15)),
                rest: Interval::new(t(15), t(20))
            }
        );
        assert_eq!(at_the_edge(window, t(10)), Edge::Fits);
    }

    #[test]
    fn refusals_back_off_by_kind() {
        let base = TimeDelta::seconds(60);
        let now = t(0);
        let conflict = after_refusal(&refused(Reason::ReplayConflict), 5, 1, base, now);
        assert_eq!(
            conflict,
            Retry {
                outcome: Submission::Conflict,
                delay: TimeDelta::seconds(120),
                conflict: true,
                revalidate: false
            }
        );
        let limited = XError::RateLimited {
            reset: Some(now + TimeDelta::minutes(7)),
            body: String::new(),
        };
        assert_eq!(
            after_refusal(&limited, 3, 0, base, now).delay,
            TimeDelta::minutes(7)
        );
        let past_reset = XError::RateLimited {
            reset: Some(now - TimeDelta::minutes(1)),
            body: String::new(),
        };
        assert_eq!(
            after_refusal(&past_reset, 0, 0, base, now).delay,
            TimeDelta::seconds(1)
        );
        let crc = after_refusal(&refused(Reason::CrcValidationFailed), 0, 0, base, now);
        assert!(crc.revalidate && crc.outcome == Submission::WebhookRefused);
        // A window X refuses is retried later and later, not every minute.
        let window =
            |attempts| after_refusal(&refused(Reason::QueryParamInvalid), attempts, 0, base, now);
        assert_eq!(window(0).outcome, Submission::WindowRefused);
        assert!(window(3).delay > window(2).delay);
        let down = XError::Unavailable {
            status: 503,
            body: String::new(),
        };
        assert_eq!(
            after_refusal(&down, 0, 0, base, now).outcome,
            Submission::Failed
        );
    }

    fn t(minute: i64) -> DateTime<Utc> {
        "2026-11-25T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::minutes(minute)
    }

    #[test]
    fn invalid_periods_run_from_the_last_valid_check_to_the_next_valid_one() {
        let checks = [
            (t(0), true),
            (t(5), true),
            (t(10), false),
            (t(15), false),
            (t(20), true),
            (t(25), false),
        ];
        assert_eq!(
            invalid_periods(&checks, t(30)),
            vec![Interval::new(t(5), t(20)), Interval::new(t(20), t(30))]
        );
        // Invalid at the first check ever: since when is unknown.
        assert_eq!(
            invalid_periods(&[(t(3), false)], t(9)),
            vec![Interval::new(DateTime::<Utc>::MIN_UTC, t(9))]
        );
        assert_eq!(invalid_periods(&[(t(3), true)], t(9)), vec![]);
    }

    #[test]
    fn validity_nobody_checked_for_too_long_is_suspect() {
        let checks = [(t(0), true), (t(1), true), (t(30), true), (t(31), true)];
        let ten = TimeDelta::minutes(10);
        assert_eq!(
            unknown_periods(&checks, t(32), ten),
            vec![Interval::new(t(1), t(30))]
        );
        // Silent since the last check.
        assert_eq!(
            unknown_periods(&checks, t(50), ten),
            vec![Interval::new(t(1), t(30)), Interval::new(t(31), t(50))]
        );
        assert_eq!(unknown_periods(&[], t(50), ten), vec![]);
    }

    #[test]
    fn no_round_judges_before_tracking_began() {
        let now = t(60 * 30);
        // First round: what X can still replay.
        assert_eq!(judging_floor(now, None, None), earliest_from(now));
        // Second round of a watermark installed against an old webhook:
        // without `tracked_from` it would judge the hour before X's 24 h,
        // where nothing was ever tracked (and mark it expired).
        let tracked_from = earliest_from(now - TimeDelta::minutes(1));
        let floor = judging_floor(now, Some(now - TimeDelta::seconds(30)), Some(tracked_from));
        assert_eq!(floor, tracked_from);
        assert!(judging_floor(now, Some(now), None) < tracked_from);
        // A watermark stopped for 30 h resumes where it stopped.
        let stopped = now - TimeDelta::hours(30);
        assert_eq!(
            judging_floor(now, Some(stopped), Some(stopped - TimeDelta::hours(5))),
            stopped - TimeDelta::minutes(2)
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(TimeDelta::seconds(60), 0), TimeDelta::seconds(60));
        assert_eq!(backoff(TimeDelta::seconds(60), 2), TimeDelta::seconds(240));
        assert_eq!(backoff(TimeDelta::seconds(60), 9), MAX_BACKOFF);
    }

    #[test]
    fn x_clock_skew_ignores_less_than_the_date_headers_precision() {
        assert_eq!(
            x_clock_skew(t(0) + TimeDelta::milliseconds(1_900), t(0)),
            TimeDelta::zero()
        );
        assert_eq!(
            x_clock_skew(t(0) - TimeDelta::milliseconds(1_900), t(0)),
            TimeDelta::zero()
        );
        assert_eq!(
            x_clock_skew(t(0) + TimeDelta::seconds(2), t(0)),
            TimeDelta::seconds(2)
        );
        assert_eq!(
            x_clock_skew(t(0) - TimeDelta::seconds(90), t(0)),
            TimeDelta::seconds(-90)
        );
    }

    #[test]
    fn registration_time_is_read_only_from_rfc3339() {
        assert_eq!(
            registered_at(Some("2026-12-05T10:00:00.000Z")),
            Some("2026-12-05T10:00:00Z".parse().unwrap())
        );
        assert_eq!(
            registered_at(Some("2026-12-05T11:00:00+01:00")),
            Some("2026-12-05T10:00:00Z".parse().unwrap())
        );
        assert_eq!(registered_at(Some("yesterday")), None);
        assert_eq!(registered_at(None), None);
    }

    #[test]
    fn an_invalid_webhook_is_revalidated_unless_a_failure_backed_it_off() {
        assert!(revalidation_due(None, t(0)));
        assert!(revalidation_due(Some(t(0)), t(0)));
        assert!(!revalidation_due(Some(t(1)), t(0)));
    }

    #[test]
    fn a_revalidated_webhook_ends_its_invalid_period_just_after_now() {
        let (checked, now) = (t(0), t(5));
        assert_eq!(
            validity_samples(true, false, checked, now),
            (true, vec![(checked, true)])
        );
        assert_eq!(
            validity_samples(false, false, checked, now),
            (false, vec![(checked, false)])
        );
        assert_eq!(
            validity_samples(false, true, checked, now),
            (
                true,
                vec![(checked, false), (now + TimeDelta::milliseconds(1), true)]
            )
        );
    }

    #[test]
    fn only_a_gaps_aged_minutes_count_as_expired() {
        assert!(aged_minutes_count(WindowKind::Gap));
        assert!(!aged_minutes_count(WindowKind::Audit));
    }

    #[test]
    fn job_states_and_x_answers_have_one_spelling_each() {
        assert_eq!(JobState::of("Complete"), JobState::Complete);
        assert_eq!(JobState::of("complete"), JobState::Other("complete"));
        assert_eq!(
            XRequestOutcome::of(&Ok::<(), XError>(())),
            XRequestOutcome::Ok
        );
        assert_eq!(
            XRequestOutcome::of(&Err::<(), _>(XError::Invalid("x".into()))),
            XRequestOutcome::Failed
        );
        let outcomes: std::collections::BTreeSet<_> =
            XRequestOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(outcomes.len(), XRequestOutcome::ALL.len());
        let jobs: std::collections::BTreeSet<_> =
            JobOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(jobs.len(), JobOutcome::ALL.len());
    }
}
