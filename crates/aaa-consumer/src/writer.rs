//! Stores batches in Postgres: retries what may pass later, isolates what
//! never will.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aaa_common::observe::InternalEvent;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, BatchPlan, RawRecord};
use crate::events::{BatchStored, RecordRejected, WriteFailed};
use crate::health::Progress;
use crate::seen::Seen;
use crate::store;

/// How long a write in progress may still take once shutdown is asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Stores batches: transient errors are retried with capped exponential
/// backoff (nothing is lost by waiting), permanent ones are isolated.
pub struct Writer {
    pub pool: PgPool,
    /// What stored batches saw, written by the committer before it commits
    /// their offsets.
    pub seen: Arc<Mutex<Seen>>,
    pub live_horizon: chrono::TimeDelta,
    pub backoff_max: Duration,
    /// Interrupts a write even while it waits on Postgres: the transaction
    /// is rolled back and its records are read again.
    pub shutdown: CancellationToken,
    pub progress: Arc<Progress>,
}

/// How one write ended.
enum Written {
    Stored,
    /// Postgres refuses these rows for good: retrying cannot help.
    Refused(String),
    ShuttingDown,
}

impl Writer {
    /// Stores `records` (planned as `plan`). A record Postgres refuses for
    /// good is found by bisection and kept as a dead letter with its raw
    /// bytes, so one poison record never holds up a partition; every other
    /// record is stored as usual. `false` if shutdown interrupted.
    pub async fn store(&self, slot: usize, records: &[RawRecord], plan: BatchPlan) -> bool {
        self.progress.waiting(slot);
        let stored = self.store_parts(slot, records, plan).await;
        if stored {
            self.progress.moved(slot);
        }
        stored
    }

    async fn store_parts(&self, slot: usize, records: &[RawRecord], plan: BatchPlan) -> bool {
        // Ranges still to write, the next one last: a batch, then halves.
        let mut pending: Vec<(std::ops::Range<usize>, Option<BatchPlan>)> =
            vec![(0..records.len(), Some(plan))];
        while let Some((range, plan)) = pending.pop() {
            let part = &records[range.clone()];
            let plan = plan.unwrap_or_else(|| batch::plan(part));
            match self.write(slot, &plan, part.len()).await {
                Written::Stored => {}
                Written::ShuttingDown => return false,
                Written::Refused(reason) if part.len() == 1 => {
                    let record = &part[0];
                    RecordRejected {
                        partition: record.partition,
                        offset: record.offset,
                        reason: &reason,
                    }
                    .emit();
                    let rejected = BatchPlan {
                        dead_letters: vec![batch::rejected_dead_letter(record, &reason)],
                        ..BatchPlan::default()
                    };
                    // A dead letter holds only bytes and cleaned text; if
                    // even that is refused, the database is at fault: wait
                    // for it rather than drop the record.
                    if !self.write_until_stored(slot, &rejected).await {
                        return false;
                    }
                }
                Written::Refused(_) => {
                    let middle = range.start + range.len() / 2;
                    pending.push((middle..range.end, None));
                    pending.push((range.start..middle, None));
                }
            }
        }
        true
    }

    /// One write, retried while its errors are transient.
    async fn write(&self, slot: usize, plan: &BatchPlan, records: usize) -> Written {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            // On shutdown a write in progress gets a few seconds to finish
            // (its records are then not read twice); one blocked longer is
            // dropped, which rolls its transaction back.
            let interrupted = async {
                self.shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            let result = tokio::select! {
                _ = interrupted => return Written::ShuttingDown,
                result = store::write(&self.pool, plan, self.live_horizon) => result,
            };
            match result {
                Ok(mut stats) => {
                    self.seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .merge(std::mem::take(&mut stats.seen));
                    BatchStored {
                        records,
                        stats: &stats,
                        dead_letter_kinds: plan.dead_letters.iter().map(|d| d.error_kind).collect(),
                        elapsed: started.elapsed(),
                    }
                    .emit();
                    return Written::Stored;
                }
                Err(error) if store::is_permanent(&error) => {
                    WriteFailed {
                        error: &error,
                        records,
                        attempt,
                        retry_in: None,
                    }
                    .emit();
                    return Written::Refused(describe(&error));
                }
                Err(error) => {
                    self.progress.waiting(slot);
                    WriteFailed {
                        error: &error,
                        records,
                        attempt,
                        retry_in: Some(delay),
                    }
                    .emit();
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Written::ShuttingDown,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.backoff_max);
                    attempt += 1;
                }
            }
        }
    }

    /// Retries even "permanent" errors: for a write that must not be dropped.
    async fn write_until_stored(&self, slot: usize, plan: &BatchPlan) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.write(slot, plan, 1).await {
                Written::Stored => return true,
                Written::ShuttingDown => return false,
                Written::Refused(_) => {
                    self.progress.waiting(slot);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.backoff_max);
                }
            }
        }
    }
}

/// The error with its SQLSTATE, for the dead letter's reason.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("SQLSTATE {code}: {}", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}
