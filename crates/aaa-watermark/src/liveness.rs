//! Whether this replica still starts rounds, for /healthz and the stall
//! gauge.
//!
//! Everything a replica exports about its webhooks (judged age, uncovered
//! minutes, the oldest gap's expiry) is set by its rounds. A replica that no
//! longer starts rounds (its scheduler stopped, or one round never ends)
//! keeps exporting its last, healthy-looking values, so those gauges cannot
//! tell. The time since the last round started can: rounds start every tick,
//! and a running round keeps the next ones from starting.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aaa_common::observe::InternalEvent;
use tokio_util::sync::CancellationToken;

use crate::events::Stalled;

#[derive(Debug)]
pub struct RoundLiveness {
    last_start: Mutex<Instant>,
    stall_after: Duration,
}

impl RoundLiveness {
    /// `since`: the process's start, which counts as a round started (the
    /// first one starts at once).
    pub fn new(stall_after: Duration, since: Instant) -> RoundLiveness {
        RoundLiveness {
            last_start: Mutex::new(since),
            stall_after,
        }
    }

    pub fn round_started(&self, now: Instant) {
        *self
            .last_start
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now;
    }

    pub fn stalled_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(
            *self
                .last_start
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// `Err` once no round has started for the stall limit.
    pub fn health(&self, now: Instant) -> Result<(), String> {
        let stalled = self.stalled_for(now);
        if stalled >= self.stall_after {
            return Err(format!(
                "no watermark round started for {} s",
                stalled.as_secs()
            ));
        }
        Ok(())
    }

    /// Keeps the stall gauge current: nothing else sets it while no round
    /// starts.
    pub async fn report(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            Stalled {
                for_: self.stalled_for(Instant::now()),
            }
            .emit();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_replica_is_healthy_until_no_round_started_for_the_limit() {
        let start = Instant::now();
        let liveness = RoundLiveness::new(300 * SECOND, start);
        assert_eq!(liveness.health(start + 299 * SECOND), Ok(()));
        assert_eq!(
            liveness.health(start + 300 * SECOND),
            Err("no watermark round started for 300 s".to_owned())
        );
    }

    #[test]
    fn a_round_started_makes_it_healthy_again() {
        let start = Instant::now();
        let liveness = RoundLiveness::new(10 * SECOND, start);
        assert!(liveness.health(start + 20 * SECOND).is_err());
        liveness.round_started(start + 20 * SECOND);
        assert_eq!(liveness.stalled_for(start + 21 * SECOND), SECOND);
        assert_eq!(liveness.health(start + 21 * SECOND), Ok(()));
    }

    /// A round that never ends starts no other: the stall counts from its
    /// start, however busy it looks.
    #[test]
    fn a_round_that_never_ends_is_a_stall_from_its_start() {
        let start = Instant::now();
        let liveness = RoundLiveness::new(10 * SECOND, start);
        liveness.round_started(start + SECOND);
        assert_eq!(liveness.stalled_for(start + 11 * SECOND), 10 * SECOND);
        assert!(liveness.health(start + 11 * SECOND).is_err());
    }
}
