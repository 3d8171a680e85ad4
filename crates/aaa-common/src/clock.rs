//! One notion of "now" for every component.
//!
//! Production reads the wall clock. Tests and the demo run a scaled clock:
//! every process gets the same (real epoch, simulated epoch, speed) through
//! configuration, so they agree on simulated time without talking to each
//! other, and X's 10 min / 31 min / 24 h rules play out in seconds.

use chrono::{DateTime, TimeDelta, Utc};

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clock {
    Wall,
    Scaled {
        /// The real instant at which simulated time was `sim_epoch`.
        real_epoch: DateTime<Utc>,
        sim_epoch: DateTime<Utc>,
        /// Simulated seconds per real second.
        speed: f64,
    },
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        self.at(Utc::now())
    }

    /// Simulated time at the real instant `real`.
    pub fn at(&self, real: DateTime<Utc>) -> DateTime<Utc> {
        match *self {
            Clock::Wall => real,
            Clock::Scaled {
                real_epoch,
                sim_epoch,
                speed,
            } => {
                let real_elapsed = (real - real_epoch).as_seconds_f64();
                let micros = (real_elapsed * speed * 1e6).round() as i64;
                sim_epoch + TimeDelta::microseconds(micros)
            }
        }
    }

    /// Real time to wait for `simulated` to pass.
    pub fn real_duration(&self, simulated: std::time::Duration) -> std::time::Duration {
        match *self {
            Clock::Wall => simulated,
            Clock::Scaled { speed, .. } => simulated.div_f64(speed),
        }
    }
}

/// Clock settings shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ClockArgs {
    /// Speed of simulated time relative to real time (e.g. 60: one real
    /// second is one simulated minute). Omit for the wall clock.
    #[arg(long = "clock-speed", env = "AAA_CLOCK_SPEED", global = true)]
    pub speed: Option<f64>,
    /// Real instant (RFC 3339) at which the scaled clock read --clock-sim-epoch.
    /// All processes of one run must share it.
    #[arg(long = "clock-real-epoch", env = "AAA_CLOCK_REAL_EPOCH", global = true)]
    pub real_epoch: Option<DateTime<Utc>>,
    /// Simulated time (RFC 3339) at --clock-real-epoch; defaults to the real epoch.
    #[arg(long = "clock-sim-epoch", env = "AAA_CLOCK_SIM_EPOCH", global = true)]
    pub sim_epoch: Option<DateTime<Utc>>,
}

impl ClockArgs {
    pub fn clock(&self) -> Result<Clock, Error> {
        match (self.speed, self.real_epoch) {
            (None, None) => Ok(Clock::Wall),
            (Some(speed), Some(real_epoch)) => {
                if !(speed.is_finite() && speed > 0.0) {
                    return Err(Error::Clock(format!(
                        "speed must be a positive number, got {speed}"
                    )));
                }
                Ok(Clock::Scaled {
                    real_epoch,
                    sim_epoch: self.sim_epoch.unwrap_or(real_epoch),
                    speed,
                })
            }
            _ => Err(Error::Clock(
                "--clock-speed and --clock-real-epoch go together".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn scaled_clock_runs_faster_from_its_epoch() {
        let clock = Clock::Scaled {
            real_epoch: t("2026-01-01T00:00:00Z"),
            sim_epoch: t("2025-06-01T12:00:00Z"),
            speed: 60.0,
        };
        assert_eq!(
            clock.at(t("2026-01-01T00:00:10Z")),
            t("2025-06-01T12:10:00Z")
        );
        assert_eq!(
            clock.real_duration(std::time::Duration::from_secs(600)),
            std::time::Duration::from_secs(10)
        );
    }

    #[test]
    fn wall_clock_is_identity() {
        assert_eq!(
            Clock::Wall.at(t("2026-01-01T00:00:00Z")),
            t("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn args_must_come_together_and_be_positive() {
        let args = |speed, real_epoch| ClockArgs {
            speed,
            real_epoch,
            sim_epoch: None,
        };
        assert_eq!(args(None, None).clock().unwrap(), Clock::Wall);
        assert!(args(Some(60.0), None).clock().is_err());
        assert!(
            args(Some(0.0), Some(t("2026-01-01T00:00:00Z")))
                .clock()
                .is_err()
        );
        assert!(
            args(Some(60.0), Some(t("2026-01-01T00:00:00Z")))
                .clock()
                .is_ok()
        );
    }
}
