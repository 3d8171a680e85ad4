//! What a watermark round decides (pure, no I/O): how far back it judges,
//! which periods X's validity makes suspect, what to do with the job in
//! flight, what X's 24 h edge leaves of a window, and how long to wait
//! after X refused a submission. `service` feeds these from `store` and X.

use aaa_xapi::{Reason, XError};
use chrono::{DateTime, TimeDelta, Utc};

use crate::coverage::Interval;
use crate::planner::earliest_from;

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
    /// Fenced; the consumer has not stored the fences yet.
    AwaitConsumer,
    /// Everything replayed is stored: the window is done.
    Reconcile,
    /// X ended the job in another state (it does not retry replayed
    /// events): submit the same window again.
    Incomplete(String),
    /// No completion within the job timeout: submit again (a conflict tells
    /// whether it still runs).
    Lost,
}

/// Decides about the job in flight from what its completion message said
/// (`job_state`), when fences were written after it (`fence_at`), and how
/// far the consumer has stored everything (`horizon`).
pub fn follow_job(
    job_state: Option<&str>,
    fence_at: Option<DateTime<Utc>>,
    submitted_at: Option<DateTime<Utc>>,
    horizon: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    job_timeout: TimeDelta,
) -> JobStep {
    match (job_state, fence_at) {
        (Some("Complete"), None) => JobStep::FenceNow,
        (Some("Complete"), Some(fence_at)) if horizon.is_some_and(|h| h >= fence_at) => {
            JobStep::Reconcile
        }
        (Some("Complete"), Some(_)) => JobStep::AwaitConsumer,
        (Some(other), _) => JobStep::Incomplete(other.to_owned()),
        (None, _) if submitted_at.is_some_and(|at| at < now - job_timeout) => JobStep::Lost,
        (None, _) => JobStep::Running,
    }
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

    fn refused(reason: Reason) -> XError {
        XError::Refused {
            status: 400,
            reason,
            message: String::new(),
            body: String::new(),
        }
    }

    #[test]
    fn a_job_is_reconciled_only_after_fences_written_after_its_completion_are_stored() {
        let timeout = TimeDelta::minutes(30);
        let submitted = Some(t(0));
        // Complete, but no fence written since it was seen: fence now, even
        // if the consumer's horizon (from fences written before the
        // completion was read) is already past it.
        assert_eq!(
            follow_job(
                Some("Complete"),
                None,
                submitted,
                Some(t(10)),
                t(10),
                timeout
            ),
            JobStep::FenceNow
        );
        assert_eq!(
            follow_job(
                Some("Complete"),
                Some(t(10)),
                submitted,
                Some(t(9)),
                t(11),
                timeout
            ),
            JobStep::AwaitConsumer
        );
        assert_eq!(
            follow_job(
                Some("Complete"),
                Some(t(10)),
                submitted,
                None,
                t(11),
                timeout
            ),
            JobStep::AwaitConsumer
        );
        assert_eq!(
            follow_job(
                Some("Complete"),
                Some(t(10)),
                submitted,
                Some(t(10)),
                t(11),
                timeout
            ),
            JobStep::Reconcile
        );
    }

    #[test]
    fn an_unfinished_job_runs_until_it_is_overdue_and_another_state_resubmits() {
        let timeout = TimeDelta::minutes(30);
        assert_eq!(
            follow_job(None, None, Some(t(0)), Some(t(29)), t(29), timeout),
            JobStep::Running
        );
        assert_eq!(
            follow_job(None, None, Some(t(0)), Some(t(31)), t(31), timeout),
            JobStep::Lost
        );
        assert_eq!(
            follow_job(Some("Incomplete"), None, Some(t(0)), None, t(1), timeout),
            JobStep::Incomplete("Incomplete".into())
        );
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
}
