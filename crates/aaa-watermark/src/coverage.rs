//! Which minutes of a webhook's timeline are proven delivered (pure).
//!
//! A minute is covered when every instant of it lies inside some healthy
//! receiver heartbeat, no heartbeat overlapping it reports a refused
//! delivery, and the webhook was not invalid during it. Only minutes the
//! consumer has fully processed (before the horizon) are judged, so consumer
//! lag never looks like a delivery gap.

use chrono::{DateTime, TimeDelta, Utc};

/// A half-open interval `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Interval {
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Interval {
        Interval { from, to }
    }

    pub fn overlaps(&self, other: &Interval) -> bool {
        self.from < other.to && other.from < self.to
    }

    pub fn minutes(&self) -> i64 {
        (self.to - self.from).num_minutes()
    }
}

/// What one receiver replica reported for a stretch of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub covered: Interval,
    /// Nothing was answered non-2xx in it.
    pub healthy: bool,
}

pub const MINUTE: TimeDelta = TimeDelta::minutes(1);

pub use aaa_replay_window::floor_minute;

pub fn ceil_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = floor_minute(t);
    if floor == t { t } else { floor + MINUTE }
}

/// Merges overlapping or touching intervals.
pub fn merge(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.sort();
    let mut merged: Vec<Interval> = Vec::new();
    for interval in intervals {
        match merged.last_mut() {
            Some(last) if interval.from <= last.to => last.to = last.to.max(interval.to),
            _ => merged.push(interval),
        }
    }
    merged
}

/// The time healthy heartbeats cover, merged over replicas.
pub fn healthy_stretches(heartbeats: &[Heartbeat]) -> Vec<Interval> {
    merge(
        heartbeats
            .iter()
            .filter(|h| h.healthy)
            .map(|h| h.covered)
            .collect(),
    )
}

/// Uncovered stretches, in whole minutes, between `start` (rounded up) and
/// `horizon` (rounded down), leaving out `settled` time (already recovered,
/// or being replayed now). The minutes on either side of an uncovered one
/// count as uncovered too: a delivery in flight across a heartbeat boundary
/// (or an event time a little before its attempt) may belong to either, and
/// replaying a minute too many costs only duplicates.
pub fn uncovered(
    start: DateTime<Utc>,
    horizon: DateTime<Utc>,
    heartbeats: &[Heartbeat],
    invalid: &[Interval],
    settled: &[Interval],
) -> Vec<Interval> {
    let healthy = healthy_stretches(heartbeats);
    let hurt: Vec<Interval> = heartbeats
        .iter()
        .filter(|h| !h.healthy)
        .map(|h| h.covered)
        .chain(invalid.iter().copied())
        .collect();
    let first = ceil_minute(start);
    let end = floor_minute(horizon);
    let minutes: Vec<Interval> = std::iter::successors(Some(first), |m| Some(*m + MINUTE))
        .take_while(|m| *m < end)
        .map(|m| Interval::new(m, m + MINUTE))
        .collect();
    let bad: Vec<bool> = minutes
        .iter()
        .map(|m| {
            !healthy.iter().any(|h| h.from <= m.from && m.to <= h.to)
                || hurt.iter().any(|h| h.overlaps(m))
        })
        .collect();
    let gaps = minutes
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            bad[*i] || (*i > 0 && bad[i - 1]) || bad.get(i + 1).copied().unwrap_or(false)
        })
        .filter(|(_, m)| !settled.iter().any(|s| s.from <= m.from && m.to <= s.to))
        .map(|(_, m)| *m)
        .collect();
    merge(gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minute: i64, second: i64) -> DateTime<Utc> {
        "2026-11-25T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
            + TimeDelta::minutes(minute)
            + TimeDelta::seconds(second)
    }

    fn hb(from: (i64, i64), to: (i64, i64), healthy: bool) -> Heartbeat {
        Heartbeat {
            covered: Interval::new(t(from.0, from.1), t(to.0, to.1)),
            healthy,
        }
    }

    #[test]
    fn continuous_heartbeats_cover_everything() {
        let beats: Vec<Heartbeat> = (0..60)
            .map(|i| hb((0, i * 10), (0, i * 10 + 10), true))
            .collect();
        assert_eq!(uncovered(t(0, 0), t(10, 0), &beats, &[], &[]), vec![]);
    }

    #[test]
    fn a_hole_in_heartbeats_uncovers_every_minute_it_touches() {
        // Receiver down from 3:30 to 7:10.
        let beats = [hb((0, 0), (3, 30), true), hb((7, 10), (12, 0), true)];
        // Minutes 3 to 7 are touched; one more on each side for safety.
        assert_eq!(
            uncovered(t(0, 0), t(12, 0), &beats, &[], &[]),
            vec![Interval::new(t(2, 0), t(9, 0))]
        );
    }

    #[test]
    fn refused_deliveries_and_invalid_periods_uncover() {
        let beats = [
            hb((0, 0), (5, 0), true),
            hb((5, 0), (6, 0), false),
            hb((6, 0), (10, 0), true),
        ];
        let invalid = [Interval::new(t(8, 20), t(8, 40))];
        let beats_far = [
            hb((0, 0), (5, 0), true),
            hb((5, 0), (6, 0), false),
            hb((6, 0), (20, 0), true),
        ];
        let invalid_far = [Interval::new(t(12, 20), t(12, 40))];
        assert_eq!(
            uncovered(t(0, 0), t(20, 0), &beats_far, &invalid_far, &[]),
            vec![
                Interval::new(t(4, 0), t(7, 0)),
                Interval::new(t(11, 0), t(14, 0))
            ]
        );
        // Close together, the widened stretches merge.
        assert_eq!(
            uncovered(t(0, 0), t(10, 0), &beats, &invalid, &[]),
            vec![Interval::new(t(4, 0), t(10, 0))]
        );
    }

    #[test]
    fn nothing_past_the_horizon_is_judged_and_settled_time_is_skipped() {
        let beats = [hb((0, 0), (2, 0), true)];
        // Horizon at 5:30: minutes 2, 3, 4 are uncovered (and 1, their
        // neighbour); minute 5 is not judged yet.
        assert_eq!(
            uncovered(t(0, 0), t(5, 30), &beats, &[], &[]),
            vec![Interval::new(t(1, 0), t(5, 0))]
        );
        let settled = [Interval::new(t(1, 0), t(4, 0))];
        assert_eq!(
            uncovered(t(0, 0), t(5, 30), &beats, &[], &settled),
            vec![Interval::new(t(4, 0), t(5, 0))]
        );
    }

    #[test]
    fn tracking_starts_at_the_first_whole_minute() {
        let beats = [hb((0, 20), (3, 0), true)];
        assert_eq!(uncovered(t(0, 20), t(3, 0), &beats, &[], &[]), vec![]);
    }
}
