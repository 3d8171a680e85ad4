//! Turning gaps into replay windows X will accept (pure).
//!
//! X's rules (see `aaa-replay-window`): `from` within the last 24 h and at
//! least 31 min ago, `to` at least 10 min ago, minute granularity, at most
//! about 2 h per window. Oldest first, so what is about to age past 24 h goes
//! before anything else; what already aged out is reported as expired, never
//! silently dropped.

use chrono::{DateTime, TimeDelta, Utc};

use crate::coverage::{Interval, MINUTE, ceil_minute, floor_minute};

pub const MAX_SPAN: TimeDelta = TimeDelta::hours(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Replay this window now (half-open).
    Submit(Interval),
    /// Too old for X to replay: lost unless someone has it elsewhere.
    Expired(Interval),
    /// Not eligible yet; `until` is when it will be.
    Wait {
        window: Interval,
        until: DateTime<Utc>,
    },
}

/// What a replay window is for (`replay_windows.kind`, bound as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum WindowKind {
    /// Coverage found minutes nobody can prove were delivered.
    Gap,
    /// A covered slot replayed once to catch what X dropped.
    Audit,
}

/// The earliest `from` X accepts at `now` ("within the last 24 hours", strictly).
pub fn earliest_from(now: DateTime<Utc>) -> DateTime<Utc> {
    floor_minute(now - aaa_replay_window::MAX_AGE) + MINUTE
}

/// Plans every gap at `now`. Gaps must not overlap (they come from
/// [`crate::coverage::uncovered`]).
pub fn plan(now: DateTime<Utc>, gaps: &[Interval]) -> Vec<Step> {
    let mut steps = Vec::new();
    let earliest = earliest_from(now);
    let latest_from = floor_minute(now - aaa_replay_window::MIN_FROM_AGE);
    let latest_to = floor_minute(now - aaa_replay_window::MIN_TO_AGE);
    let mut gaps = gaps.to_vec();
    gaps.sort();
    for gap in gaps {
        let gap = Interval::new(floor_minute(gap.from), ceil_minute(gap.to));
        if gap.from < earliest {
            steps.push(Step::Expired(Interval::new(gap.from, gap.to.min(earliest))));
        }
        let from = gap.from.max(earliest);
        if from >= gap.to {
            continue;
        }
        if from > latest_from {
            steps.push(Step::Wait {
                window: Interval::new(from, gap.to),
                until: from + aaa_replay_window::MIN_FROM_AGE,
            });
            continue;
        }
        let eligible_to = gap.to.min(latest_to);
        let mut start = from;
        // Every window's own `from` must be old enough, not only the gap's.
        while start < eligible_to && start <= latest_from {
            let end = (start + MAX_SPAN).min(eligible_to);
            steps.push(Step::Submit(Interval::new(start, end)));
            start = end;
        }
        if start < gap.to {
            let rest = Interval::new(start, gap.to);
            // Its own `from` decides (31 min beats the 10 min rule for `to`).
            steps.push(Step::Wait {
                window: rest,
                until: rest.from + aaa_replay_window::MIN_FROM_AGE,
            });
        }
    }
    steps
}

/// Audit windows to open at `now`: every closed slot of `span` (aligned to
/// the Unix epoch) between `start` and `horizon` that X will replay and that
/// no window (gap or audit) has replayed yet, as one window spanning its
/// unreplayed minutes. A slot is closed once the consumer has stored
/// everything up to its end; slots that aged past X's 24 h are skipped, not
/// expired: coverage already judged them.
pub fn plan_audits(
    now: DateTime<Utc>,
    start: DateTime<Utc>,
    horizon: DateTime<Utc>,
    span: TimeDelta,
    windows: &[Interval],
) -> Vec<Interval> {
    let span_secs = span.num_seconds();
    if span_secs < 60 {
        return Vec::new();
    }
    let earliest = earliest_from(now);
    let latest_from = floor_minute(now - aaa_replay_window::MIN_FROM_AGE);
    let end = floor_minute(horizon).min(floor_minute(now - aaa_replay_window::MIN_TO_AGE));
    let first = start.max(earliest);
    let Some(mut slot) =
        DateTime::from_timestamp(first.timestamp().div_euclid(span_secs) * span_secs, 0)
    else {
        return Vec::new();
    };
    let mut audits = Vec::new();
    while slot + span <= end {
        let from = ceil_minute(slot.max(first));
        let slot_end = slot + span;
        let unreplayed: Vec<DateTime<Utc>> =
            std::iter::successors(Some(from), |m| Some(*m + MINUTE))
                .take_while(|m| *m < slot_end)
                .filter(|m| !windows.iter().any(|w| w.from <= *m && *m + MINUTE <= w.to))
                .collect();
        if let (Some(first_minute), Some(last_minute)) = (unreplayed.first(), unreplayed.last())
            && *first_minute <= latest_from
        {
            audits.push(Interval::new(*first_minute, *last_minute + MINUTE));
        }
        slot = slot_end;
    }
    audits
}

#[cfg(test)]
mod tests {
    use super::*;
    use aaa_replay_window::{Rules, format_minute, validate};
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        "2026-11-25T12:00:30Z".parse().unwrap()
    }

    fn ago(minutes: i64) -> DateTime<Utc> {
        floor_minute(now()) - TimeDelta::minutes(minutes)
    }

    fn gap(from_ago: i64, to_ago: i64) -> Interval {
        Interval::new(ago(from_ago), ago(to_ago))
    }

    #[test]
    fn boundaries() {
        use Step::*;
        let cases: Vec<(&str, Vec<Interval>, Vec<Step>)> = vec![
            ("eligible gap", vec![gap(90, 60)], vec![Submit(gap(90, 60))]),
            (
                "from 31 min ago is eligible",
                vec![gap(31, 20)],
                vec![Submit(gap(31, 20))],
            ),
            (
                "from 30 min ago waits",
                vec![gap(30, 20)],
                vec![Wait {
                    window: gap(30, 20),
                    until: ago(30) + TimeDelta::minutes(31),
                }],
            ),
            (
                "to within 10 min: submit what is eligible, the rest waits",
                vec![gap(40, 5)],
                vec![
                    Submit(gap(40, 10)),
                    Wait {
                        window: gap(10, 5),
                        until: ago(10) + TimeDelta::minutes(31),
                    },
                ],
            ),
            (
                "longer than 2 h is split",
                vec![gap(300, 60)],
                vec![Submit(gap(300, 180)), Submit(gap(180, 60))],
            ),
            (
                "aged past 24 h: expired part reported, rest submitted",
                vec![gap(24 * 60 + 30, 23 * 60)],
                vec![
                    Expired(gap(24 * 60 + 30, 24 * 60 - 1)),
                    Submit(gap(24 * 60 - 1, 23 * 60)),
                ],
            ),
            (
                "wholly expired",
                vec![gap(26 * 60, 25 * 60)],
                vec![Expired(gap(26 * 60, 25 * 60))],
            ),
            (
                "oldest first",
                vec![gap(60, 50), gap(200, 190)],
                vec![Submit(gap(200, 190)), Submit(gap(60, 50))],
            ),
        ];
        for (name, gaps, expected) in cases {
            assert_eq!(plan(now(), &gaps), expected, "{name}");
        }
    }

    #[test]
    fn audits_cover_each_closed_slot_once() {
        let hour = TimeDelta::hours(1);
        // now = 12:00:30; horizon 11:55. Slots of 1 h from 08:20 (tracking start).
        let start = ago(220);
        let horizon = ago(5);
        let audits = plan_audits(now(), start, horizon, hour, &[]);
        // 08:20-09:00 (partial first slot), 09-10, 10-11; 11-12 is not closed
        // (its end is not 10 minutes old).
        assert_eq!(
            audits,
            vec![
                Interval::new(ago(220), ago(180)),
                Interval::new(ago(180), ago(120)),
                Interval::new(ago(120), ago(60)),
            ]
        );
        // What a window already replayed is not audited again; a slot partly
        // replayed is audited over the hull of its unreplayed minutes.
        let windows = [
            Interval::new(ago(220), ago(180)),
            Interval::new(ago(170), ago(160)),
            Interval::new(ago(120), ago(60)),
        ];
        assert_eq!(
            plan_audits(now(), start, horizon, hour, &windows),
            vec![Interval::new(ago(180), ago(120))]
        );
        // The consumer's horizon closes slots too.
        assert_eq!(
            plan_audits(now(), start, ago(90), hour, &[]),
            vec![
                Interval::new(ago(220), ago(180)),
                Interval::new(ago(180), ago(120))
            ]
        );
        // Disabled, or nothing older than X's 24 h.
        assert_eq!(
            plan_audits(now(), start, horizon, TimeDelta::zero(), &[]),
            vec![]
        );
        let old = plan_audits(now(), ago(30 * 60), ago(23 * 60), hour, &[]);
        assert!(
            old.iter().all(|w| w.from >= earliest_from(now())),
            "{old:?}"
        );
        assert_eq!(old.first().map(|w| w.from), Some(earliest_from(now())));
    }

    #[test]
    fn an_audit_waits_until_x_accepts_its_from() {
        // 10-minute slots: 11:30-11:40 ends 20 min ago but starts 30 min ago
        // (X wants 31); 11:20-11:30 is fine.
        let audits = plan_audits(now(), ago(40), ago(1), TimeDelta::minutes(10), &[]);
        assert_eq!(audits, vec![Interval::new(ago(40), ago(30))]);
    }

    proptest! {
        /// Every submitted window is valid under X's rules; windows never
        /// overlap; every minute of a gap younger than 24 h is submitted now
        /// or waits for a known time no later than 31 minutes from now.
        #[test]
        fn every_plan_is_acceptable_to_x(
            starts in proptest::collection::vec(0i64..(26 * 60), 1..6),
            lens in proptest::collection::vec(1i64..300, 6),
            offset in 0i64..3600,
        ) {
            let now = now() + TimeDelta::seconds(offset);
            let mut gaps: Vec<Interval> = starts.iter().zip(&lens).map(|(s, l)| {
                let from = floor_minute(now) - TimeDelta::minutes(*s);
                Interval::new(from, (from + TimeDelta::minutes(*l)).min(floor_minute(now)))
            }).filter(|g| g.from < g.to).collect();
            gaps = crate::coverage::merge(gaps);
            let steps = plan(now, &gaps);
            let mut submitted: Vec<Interval> = Vec::new();
            for step in &steps {
                match step {
                    Step::Submit(w) => {
                        prop_assert!(validate(now, &format_minute(w.from), &format_minute(w.to), Rules::TO_EXCLUSIVE).is_ok(), "{w:?} at {now}");
                        prop_assert!(w.to - w.from <= MAX_SPAN);
                        prop_assert!(!submitted.iter().any(|s| s.overlaps(w)));
                        submitted.push(*w);
                    }
                    Step::Wait { until, .. } => prop_assert!(*until <= now + TimeDelta::minutes(31)),
                    Step::Expired(w) => prop_assert!(w.from < earliest_from(now)),
                }
            }
            // Nothing younger than 24 h is forgotten.
            for g in &gaps {
                let mut minute = g.from.max(earliest_from(now));
                while minute < g.to {
                    let m = Interval::new(minute, minute + MINUTE);
                    let planned = steps.iter().any(|s| match s {
                        Step::Submit(w) | Step::Wait { window: w, .. } => w.from <= m.from && m.to <= w.to,
                        Step::Expired(_) => false,
                    });
                    prop_assert!(planned, "minute {minute} of {g:?} unplanned: {steps:?}");
                    minute += MINUTE;
                }
            }
        }
    }
}
