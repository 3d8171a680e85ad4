//! Repeating work (rounds, maintenance) on tokio-cron-scheduler, without its
//! fixed-interval jobs.
//!
//! A repeated job of tokio-cron-scheduler 0.15 plans its next run as the
//! previous *planned* run plus the interval, and starts a run only while its
//! last run is not after the next planned one. So once a run starts more than
//! one interval late (the process was paused, or its scheduler loop starved
//! on a busy machine) that never holds again, and the job stops for good,
//! silently, while /healthz stays green (mvniekerk/tokio-cron-scheduler#113;
//! the fix, PR #114, is not released). A cron job plans its next run from the
//! time it actually ran, so it cannot fall behind for ever: every repeating
//! job here is a cron job firing each second, and a [`Cadence`] lets one
//! firing per interval through.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_cron_scheduler::{Job, JobSchedulerError};

/// Every second (the scheduler's cron syntax has a seconds field).
const EVERY_SECOND: &str = "* * * * * *";

/// The scheduler looks for due jobs every 500 ms, so a firing may come up
/// to that much late; a run is due this much before its interval is over,
/// or a 15 s cadence would often run every 16 s.
const SLACK: Duration = Duration::from_millis(500);

/// Lets through at most one firing per interval (less the slack), the first
/// one interval after `since`, as the scheduler's fixed-interval jobs did.
#[derive(Debug)]
pub struct Cadence {
    every: Duration,
    last_start: Instant,
}

impl Cadence {
    pub fn new(every: Duration, since: Instant) -> Cadence {
        Cadence {
            every,
            last_start: since,
        }
    }

    /// Whether a firing at `now` starts the work; if so, it is the last
    /// start from now on.
    pub fn due(&mut self, now: Instant) -> bool {
        let due = now.saturating_duration_since(self.last_start) + SLACK >= self.every;
        if due {
            self.last_start = now;
        }
        due
    }
}

/// A scheduler job that starts `work` every `every` (to the second), however
/// late any one start was. The scheduler calls a job's closure one firing at
/// a time, so the closure owns its cadence.
pub fn every<W, F>(every: Duration, mut work: W) -> Result<Job, JobSchedulerError>
where
    W: FnMut() -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let mut cadence = Cadence::new(every, Instant::now());
    Job::new_async(EVERY_SECOND, move |_id, _scheduler| {
        if cadence.due(Instant::now()) {
            Box::pin(work())
        } else {
            Box::pin(std::future::ready(()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_run_is_one_interval_after_the_start() {
        let start = Instant::now();
        let mut cadence = Cadence::new(15 * SECOND, start);
        assert!(!cadence.due(start));
        assert!(!cadence.due(start + SECOND));
        assert!(cadence.due(start + 15 * SECOND));
    }

    #[test]
    fn one_firing_per_interval_gets_through() {
        let start = Instant::now();
        let mut cadence = Cadence::new(15 * SECOND, start);
        let through: Vec<u32> = (1..=45)
            .filter(|s| cadence.due(start + *s * SECOND))
            .collect();
        assert_eq!(through, [15, 30, 45]);
    }

    #[test]
    fn a_firing_up_to_half_a_second_early_counts() {
        let start = Instant::now();
        let mut cadence = Cadence::new(15 * SECOND, start);
        assert!(!cadence.due(start + Duration::from_millis(14_400)));
        assert!(cadence.due(start + Duration::from_millis(14_500)));
    }

    /// The failure of the scheduler's own fixed-interval jobs: after a pause
    /// of many intervals, work goes on at its interval from the first late
    /// start, and does not try to catch up on what the pause skipped.
    #[test]
    fn after_a_long_pause_the_work_goes_on_at_its_interval() {
        let start = Instant::now();
        let mut cadence = Cadence::new(SECOND, start);
        let resumed = start + 3_600 * SECOND;
        assert!(cadence.due(resumed));
        assert!(!cadence.due(resumed + Duration::from_millis(100)));
        assert!(cadence.due(resumed + SECOND));
        assert!(cadence.due(resumed + 2 * SECOND));
    }
}
