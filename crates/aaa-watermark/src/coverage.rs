//! Which minutes of a webhook's timeline are proven delivered (pure).
//!
//! A minute is proven only when every receiver replica that was live in it
//! proves it: each life (one run of a replica, from its opening heartbeat
//! to its closing one) must cover the minute with healthy heartbeats, and
//! some life must have served it at all. A life whose heartbeats stop
//! without a closing heartbeat leaves the time from its last heartbeat
//! until its absence was certain (its next heartbeat overdue at the
//! consumer's horizon, plus a margin) unproven, whatever the other replicas
//! say: it may have refused deliveries there and died with the tally. A
//! life that may still report is waited for: nothing after its last
//! heartbeat is judged yet. Minutes overlapping a refusal, or in which the
//! webhook was invalid, are unproven too. Only minutes the consumer has
//! fully processed (before the horizon) are judged, so consumer lag never
//! looks like a delivery gap.

use std::collections::BTreeMap;

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

    pub fn contains(&self, other: &Interval) -> bool {
        self.from <= other.from && other.to <= self.to
    }

    pub fn minutes(&self) -> i64 {
        (self.to - self.from).num_minutes()
    }
}

/// One run of a receiver replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Life {
    pub replica: String,
    /// `None` for heartbeats written before lives were named: each such
    /// replica reads as one life that never closed.
    pub started_at: Option<DateTime<Utc>>,
}

/// What one life of a receiver replica reported for a stretch of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub life: Life,
    pub covered: Interval,
    /// Nothing was answered non-2xx in it.
    pub healthy: bool,
    /// The life drained and ended with this heartbeat.
    pub closing: bool,
    /// By when the replica said its next heartbeat would be written.
    pub next_due: Option<DateTime<Utc>>,
}

impl Heartbeat {
    /// When the heartbeat after this one is overdue: as the replica said,
    /// or (heartbeats that did not say) one more stretch of the same length.
    fn next_due(&self) -> DateTime<Utc> {
        self.next_due
            .unwrap_or(self.covered.to + (self.covered.to - self.covered.from))
    }
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

/// `within` less the (merged, sorted) `covered` intervals.
fn holes(within: Interval, covered: &[Interval]) -> Vec<Interval> {
    let mut holes = Vec::new();
    let mut at = within.from;
    for c in covered {
        if c.to <= at || c.from >= within.to {
            continue;
        }
        if c.from > at {
            holes.push(Interval::new(at, c.from));
        }
        at = at.max(c.to);
    }
    if at < within.to {
        holes.push(Interval::new(at, within.to));
    }
    holes
}

/// What a webhook's heartbeats prove, as of a consumer horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Time some life served and reported healthy (merged).
    pub served: Vec<Interval>,
    /// Time at least one life live in it cannot prove: its refusals, holes
    /// between its heartbeats, and the stretch after it stopped without
    /// closing until its absence was certain.
    pub unproven: Vec<Interval>,
    /// Up to when every life has reported: no later than the horizon, nor
    /// than the last heartbeat of a life that may still report (its next
    /// heartbeat is not overdue at the horizon).
    pub known_to: DateTime<Utc>,
}

impl Proof {
    /// Whether every instant of `during` was served and every life live in
    /// it proves it. (Time after `known_to` is not known yet: false.)
    pub fn proves(&self, during: Interval) -> bool {
        during.to <= self.known_to
            && self.served.iter().any(|s| s.contains(&during))
            && !self.unproven.iter().any(|u| u.overlaps(&during))
    }
}

/// What `heartbeats` prove up to `horizon` (the consumer stored everything
/// written before it). `margin` covers clock skew between the receivers and
/// the watermark, and late heartbeats.
pub fn prove(heartbeats: &[Heartbeat], horizon: DateTime<Utc>, margin: TimeDelta) -> Proof {
    let mut lives: BTreeMap<&Life, Vec<&Heartbeat>> = BTreeMap::new();
    for beat in heartbeats {
        lives.entry(&beat.life).or_default().push(beat);
    }
    let mut served = Vec::new();
    let mut unproven = Vec::new();
    let mut known_to = horizon;
    for beats in lives.values() {
        let healthy = merge(
            beats
                .iter()
                .filter(|b| b.healthy)
                .map(|b| b.covered)
                .collect(),
        );
        served.extend(healthy.iter().copied());
        unproven.extend(beats.iter().filter(|b| !b.healthy).map(|b| b.covered));
        let Some(first) = beats.iter().map(|b| b.covered.from).min() else {
            continue;
        };
        let Some(last) = beats.iter().max_by_key(|b| (b.covered.to, b.closing)) else {
            continue;
        };
        let live_to = if beats.iter().any(|b| b.closing) {
            last.covered.to
        } else if last.next_due() + margin <= horizon {
            // Gone without a word: what it did after its last heartbeat is
            // unknown until its next one was overdue.
            last.next_due() + margin
        } else {
            // It may still report.
            known_to = known_to.min(last.covered.to);
            last.covered.to
        };
        unproven.extend(holes(Interval::new(first, live_to), &healthy));
    }
    Proof {
        served: merge(served),
        unproven: merge(unproven),
        known_to,
    }
}

/// Unproven stretches, in whole minutes, between `start` (rounded up) and
/// `end` (rounded down; at most the proof's `known_to`), leaving out
/// `settled` time (already recovered, or being replayed now), and periods
/// the webhook was `invalid`. The minutes on either side of an unproven one
/// count as unproven too: a delivery in flight across a heartbeat boundary
/// (or an event time a little before its attempt) may belong to either,
/// and replaying a minute too many costs only duplicates.
pub fn uncovered(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    proof: &Proof,
    invalid: &[Interval],
    settled: &[Interval],
) -> Vec<Interval> {
    let first = ceil_minute(start);
    let end = floor_minute(end.min(proof.known_to));
    let minutes: Vec<Interval> = std::iter::successors(Some(first), |m| Some(*m + MINUTE))
        .take_while(|m| *m < end)
        .map(|m| Interval::new(m, m + MINUTE))
        .collect();
    let bad: Vec<bool> = minutes
        .iter()
        .map(|m| !proof.proves(*m) || invalid.iter().any(|i| i.overlaps(m)))
        .collect();
    let gaps = minutes
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            bad[*i] || (*i > 0 && bad[i - 1]) || bad.get(i + 1).copied().unwrap_or(false)
        })
        .filter(|(_, m)| !settled.iter().any(|s| s.contains(m)))
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

    /// Heartbeats every 10 s, due 5 s after their interval, judged with a
    /// 10 s margin: a replica is certainly gone 25 s after its last
    /// heartbeat.
    const INTERVAL: TimeDelta = TimeDelta::seconds(10);
    const DUE_AFTER: TimeDelta = TimeDelta::seconds(15);
    const MARGIN: TimeDelta = TimeDelta::seconds(10);

    fn beat_of(life: &Life, from: DateTime<Utc>, to: DateTime<Utc>, healthy: bool) -> Heartbeat {
        Heartbeat {
            life: life.clone(),
            covered: Interval::new(from, to),
            healthy,
            closing: false,
            next_due: Some(to + DUE_AFTER),
        }
    }

    /// A life's heartbeats every 10 s over `[from, to)`: an opening one,
    /// then healthy ones, the last closing if `closes`.
    fn life_from(
        replica: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        closes: bool,
    ) -> Vec<Heartbeat> {
        let life = Life {
            replica: replica.into(),
            started_at: Some(from),
        };
        let mut beats = vec![beat_of(&life, from, from, true)];
        let mut at = from;
        while at < to {
            let end = (at + INTERVAL).min(to);
            beats.push(beat_of(&life, at, end, true));
            at = end;
        }
        if closes && let Some(last) = beats.last_mut() {
            last.closing = true;
            last.next_due = None;
        }
        beats
    }

    fn judge(beats: &[Heartbeat], horizon: DateTime<Utc>) -> Vec<Interval> {
        let proof = prove(beats, horizon, MARGIN);
        uncovered(t(0, 0), horizon, &proof, &[], &[])
    }

    #[test]
    fn continuous_heartbeats_cover_everything() {
        let beats = life_from("r1", t(0, 0), t(10, 0), false);
        assert_eq!(judge(&beats, t(10, 0)), vec![]);
    }

    #[test]
    fn a_hole_in_heartbeats_uncovers_every_minute_it_touches() {
        // One replica, down from 3:30 to 7:10 (killed, then a new life).
        let mut beats = life_from("r1", t(0, 0), t(3, 30), false);
        beats.extend(life_from("r1", t(7, 10), t(12, 0), false));
        // The first life is gone 25 s after 3:30; the time until the second
        // began nobody served. Minutes 3 to 7 are touched; one more on
        // each side for safety.
        assert_eq!(
            judge(&beats, t(12, 0)),
            vec![Interval::new(t(2, 0), t(9, 0))]
        );
    }

    #[test]
    fn refused_deliveries_and_invalid_periods_uncover() {
        let mut beats = life_from("r1", t(0, 0), t(20, 0), false);
        for beat in &mut beats {
            if beat.covered.from >= t(5, 0) && beat.covered.to <= t(6, 0) {
                beat.healthy = false;
            }
        }
        let proof = prove(&beats, t(20, 0), MARGIN);
        let invalid = [Interval::new(t(12, 20), t(12, 40))];
        assert_eq!(
            uncovered(t(0, 0), t(20, 0), &proof, &invalid, &[]),
            vec![
                Interval::new(t(4, 0), t(7, 0)),
                Interval::new(t(11, 0), t(14, 0))
            ]
        );
    }

    #[test]
    fn nothing_past_the_horizon_is_judged_and_settled_time_is_skipped() {
        // Closed at 2:00: nobody served after it.
        let beats = life_from("r1", t(0, 0), t(2, 0), true);
        // Horizon at 5:30: minutes 2, 3, 4 are uncovered (and 1, their
        // neighbour); minute 5 is not judged yet.
        assert_eq!(
            judge(&beats, t(5, 30)),
            vec![Interval::new(t(1, 0), t(5, 0))]
        );
        let proof = prove(&beats, t(5, 30), MARGIN);
        let settled = [Interval::new(t(1, 0), t(4, 0))];
        assert_eq!(
            uncovered(t(0, 0), t(5, 30), &proof, &[], &settled),
            vec![Interval::new(t(4, 0), t(5, 0))]
        );
    }

    #[test]
    fn tracking_starts_at_the_first_whole_minute() {
        let beats = life_from("r1", t(0, 20), t(3, 0), false);
        let proof = prove(&beats, t(3, 0), MARGIN);
        assert_eq!(uncovered(t(0, 20), t(3, 0), &proof, &[], &[]), vec![]);
    }

    /// The rule that replaced "two replicas together cover it": r2 serves
    /// all along, r1 is SIGKILLed at 4:35 with refusals in its last tally.
    /// r2's heartbeats prove nothing for r1: from r1's last heartbeat (4:30)
    /// until its next was overdue (4:55) is unproven.
    #[test]
    fn a_replica_killed_mid_minute_leaves_its_last_stretch_unproven_whatever_the_others_say() {
        let mut beats = life_from("r2", t(0, 0), t(10, 0), false);
        beats.extend(life_from("r1", t(0, 0), t(4, 30), false));
        let proof = prove(&beats, t(10, 0), MARGIN);
        assert_eq!(
            proof.unproven,
            vec![Interval::new(t(4, 30), t(4, 55))],
            "{proof:?}"
        );
        assert_eq!(
            uncovered(t(0, 0), t(10, 0), &proof, &[], &[]),
            vec![Interval::new(t(3, 0), t(6, 0))]
        );
    }

    /// A replica whose heartbeats stop without a closing one may still
    /// report (a lagging replica): nothing after its last heartbeat is
    /// judged until its next one is overdue at the horizon. Then the
    /// stretch counts as unproven.
    #[test]
    fn a_replica_that_never_closes_is_waited_for_then_counted_unproven() {
        let mut beats = life_from("r2", t(0, 0), t(10, 0), false);
        beats.extend(life_from("r1", t(0, 0), t(8, 0), false));
        // Horizon 8:20: r1's next heartbeat is due 8:15, gone at 8:25.
        let waiting = prove(&beats, t(8, 20), MARGIN);
        assert_eq!(waiting.known_to, t(8, 0));
        assert_eq!(
            uncovered(t(0, 0), t(8, 20), &waiting, &[], &[]),
            vec![],
            "judged only up to 8:00"
        );
        let gone = prove(&beats, t(10, 0), MARGIN);
        assert_eq!(gone.known_to, t(10, 0));
        assert_eq!(gone.unproven, vec![Interval::new(t(8, 0), t(8, 25))]);
        assert_eq!(
            uncovered(t(0, 0), t(10, 0), &gone, &[], &[]),
            vec![Interval::new(t(7, 0), t(10, 0))]
        );
    }

    /// A replica started at 3:20 answers for nothing before it began; from
    /// its opening heartbeat on, it must prove every stretch.
    #[test]
    fn a_replica_started_mid_minute_answers_from_its_opening_heartbeat() {
        let mut beats = life_from("r1", t(0, 0), t(10, 0), false);
        beats.extend(life_from("r2", t(3, 20), t(10, 0), false));
        assert_eq!(judge(&beats, t(10, 0)), vec![]);
        // Its first heartbeat never written (the broker refused it): the
        // opening heartbeat says it was live, so that stretch is unproven.
        beats.retain(|b| {
            !(b.life.replica == "r2" && b.covered == Interval::new(t(3, 20), t(3, 30)))
        });
        let proof = prove(&beats, t(10, 0), MARGIN);
        assert_eq!(proof.unproven, vec![Interval::new(t(3, 20), t(3, 30))]);
        assert_eq!(
            uncovered(t(0, 0), t(10, 0), &proof, &[], &[]),
            vec![Interval::new(t(2, 0), t(5, 0))]
        );
    }

    /// A replica that drained and wrote its closing heartbeat (with the
    /// drain's tally) leaves nothing unproven: the other replica serves on.
    /// Its drain refused a delivery: that stretch is unproven.
    #[test]
    fn a_closing_heartbeat_ends_a_life_cleanly_and_carries_the_drain() {
        let mut beats = life_from("r2", t(0, 0), t(10, 0), false);
        beats.extend(life_from("r1", t(0, 0), t(4, 37), true));
        assert_eq!(judge(&beats, t(10, 0)), vec![]);
        let closing = beats
            .iter_mut()
            .find(|b| b.closing)
            .expect("a closing heartbeat");
        closing.healthy = false;
        assert_eq!(
            judge(&beats, t(10, 0)),
            vec![Interval::new(t(3, 0), t(6, 0))]
        );
    }

    /// A replica whose heartbeats lag behind the horizon (a slow producer)
    /// is not a gap: the judgement waits for it, and its late heartbeats
    /// prove the time.
    #[test]
    fn a_replica_whose_heartbeats_lag_is_waited_for_not_counted() {
        let mut beats = life_from("r2", t(0, 0), t(10, 0), false);
        let lagging = life_from("r1", t(0, 0), t(10, 0), false);
        // Only what r1 wrote up to 9:40 is stored yet; next due 9:55.
        beats.extend(lagging.iter().filter(|b| b.covered.to <= t(9, 40)).cloned());
        let proof = prove(&beats, t(9, 50), MARGIN);
        assert_eq!(proof.known_to, t(9, 40));
        assert_eq!(uncovered(t(0, 0), t(9, 50), &proof, &[], &[]), vec![]);
        beats.extend(lagging.into_iter().filter(|b| b.covered.to > t(9, 40)));
        assert_eq!(judge(&beats, t(10, 0)), vec![]);
    }

    /// Heartbeats written before lives were named: one unclosed life per
    /// replica, its next heartbeat due one stretch after the last.
    #[test]
    fn heartbeats_without_a_life_read_as_one_unclosed_life_per_replica() {
        let legacy = Life {
            replica: "old".into(),
            started_at: None,
        };
        let mut beats: Vec<Heartbeat> = (0..24)
            .map(|i| Heartbeat {
                next_due: None,
                ..beat_of(&legacy, t(0, i * 10), t(0, i * 10 + 10), true)
            })
            .collect();
        beats.extend(life_from("new", t(3, 55), t(10, 0), false));
        let proof = prove(&beats, t(10, 0), MARGIN);
        assert_eq!(proof.unproven, vec![Interval::new(t(4, 0), t(4, 20))]);
    }
}
