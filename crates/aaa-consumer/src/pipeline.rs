//! From stored batches to committed offsets: which batches may be committed
//! (`CommitOrder`), the batches being written (`InFlight`), which partitions
//! this replica still owns (`Ownership`), and the committer, which commits
//! a batch's offsets only once what it saw of webhooks and subscriptions is
//! stored too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aaa_common::Clock;
use aaa_common::observe::InternalEvent;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::GroupConsumer;
use crate::batch::{BatchPlan, RawRecord};
use crate::events::{self, CommitFailed, SeenNotWritten};
use crate::seen::Seen;
use crate::writer::Writer;

/// A partition's next offset to commit, and the ownership epoch in which
/// the batch holding it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub offset: i64,
    pub epoch: u64,
}

pub type Offsets = BTreeMap<(String, i32), Next>;

/// A batch's partitions and next offsets, as planned.
pub type BatchOffsets = BTreeMap<(String, i32), i64>;

/// Which partitions this replica owns, as far as committing goes. A
/// rebalance that revokes a partition raises the epoch: offsets of batches
/// read before it are never committed for that partition, since its new
/// owner may have read further and committed past them already (an older
/// commit after it would rewind the group). Its records are read again by
/// their new owner: duplicates, never a loss.
#[derive(Debug, Default)]
pub struct Ownership {
    state: Mutex<OwnershipState>,
}

#[derive(Debug, Default)]
struct OwnershipState {
    epoch: u64,
    revoked_at: BTreeMap<(String, i32), u64>,
}

impl Ownership {
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Before the partitions go: from now on nothing read earlier is
    /// committed for them.
    pub fn revoke(&self, partitions: impl IntoIterator<Item = (String, i32)>) {
        let mut state = self.lock();
        state.epoch += 1;
        let epoch = state.epoch;
        for partition in partitions {
            state.revoked_at.insert(partition, epoch);
        }
    }

    /// The offsets still this replica's to commit.
    fn retain_owned(state: &OwnershipState, offsets: &mut Offsets) {
        offsets.retain(|partition, next| {
            state
                .revoked_at
                .get(partition)
                .is_none_or(|revoked| *revoked <= next.epoch)
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OwnershipState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A batch was given up while others went on: nothing read after it may be
/// committed, so no further batch (and no fence) may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GivenUp;

/// How a batch ended: stored (its offsets, read in `epoch`) or given up.
type Outcome = Option<(BatchOffsets, u64)>;

/// Which stored batches' offsets may be committed: the pure bookkeeping of
/// `InFlight`. Offsets are committed in the order the batches were read: a
/// batch's offsets only once it and every batch read before it are stored,
/// so a crash never skips a record of a batch still being written.
#[derive(Default)]
pub struct CommitOrder {
    next_seq: u64,
    /// By reading order: the writer slot (for stall accounting), and `None`
    /// while being written, then `Some(Some(..))` once stored or
    /// `Some(None)` if given up (shutdown mid-retry, a failed task).
    batches: BTreeMap<u64, (usize, Option<Outcome>)>,
    /// A batch was given up: nothing read after it may be committed.
    stopped: bool,
}

impl CommitOrder {
    /// A new batch: its sequence number and a slot no batch being written
    /// holds. Refused once a batch was given up.
    pub fn begin(&mut self, slots: usize) -> Result<(u64, usize), GivenUp> {
        if self.stopped {
            return Err(GivenUp);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = (0..slots.max(1))
            .find(|slot| self.batches.values().all(|(taken, _)| taken != slot))
            .unwrap_or(0);
        self.batches.insert(seq, (slot, None));
        Ok((seq, slot))
    }

    /// Records how batch `seq` ended; returns the offsets that may now be
    /// committed (empty while an earlier batch is still being written).
    pub fn finished(&mut self, seq: u64, outcome: Outcome) -> Offsets {
        if let Some((_, state)) = self.batches.get_mut(&seq) {
            *state = Some(outcome);
        }
        let mut ready = Offsets::new();
        while let Some(entry) = self.batches.first_entry() {
            match &entry.get().1 {
                None => break,
                Some(Some((offsets, epoch))) if !self.stopped => {
                    ready.extend(offsets.iter().map(|(partition, offset)| {
                        (
                            partition.clone(),
                            Next {
                                offset: *offset,
                                epoch: *epoch,
                            },
                        )
                    }))
                }
                Some(_) => self.stopped = true,
            }
            entry.remove();
        }
        ready
    }

    pub fn given_up(&self) -> bool {
        self.stopped
    }
}

/// Batches being written, each in its own task and transaction, at most
/// `capacity` at once: while one waits on Postgres (statements, the
/// commit's fsync), the next is read, planned and written. Batches of one
/// partition may be written at the same time; every write is idempotent
/// and state rows keep the newest change by event time, so the order in
/// which they commit does not matter. Fences are the exception (`run`
/// writes a batch holding one only after all before it). Offsets follow
/// `CommitOrder`.
pub struct InFlight {
    capacity: usize,
    order: CommitOrder,
    done_tx: tokio::sync::mpsc::UnboundedSender<(u64, Outcome)>,
    pub done_rx: tokio::sync::mpsc::UnboundedReceiver<(u64, Outcome)>,
    /// To `run_committer`.
    commits: tokio::sync::mpsc::UnboundedSender<Offsets>,
}

impl InFlight {
    pub fn new(capacity: usize, commits: tokio::sync::mpsc::UnboundedSender<Offsets>) -> InFlight {
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        InFlight {
            capacity: capacity.max(1),
            order: CommitOrder::default(),
            done_tx,
            done_rx,
            commits,
        }
    }

    pub fn is_full(&self) -> bool {
        self.order.batches.len() >= self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.order.batches.is_empty()
    }

    pub fn given_up(&self) -> bool {
        self.order.given_up()
    }

    /// Starts writing `records`, read in ownership `epoch`.
    pub fn start(
        &mut self,
        writer: Arc<Writer>,
        records: Vec<RawRecord>,
        plan: BatchPlan,
        epoch: u64,
        clock: Clock,
    ) -> Result<(), GivenUp> {
        let (seq, slot) = self.order.begin(self.capacity)?;
        let write = tokio::spawn(async move {
            let offsets = plan.commit.clone();
            let newest = plan.events.iter().filter_map(|e| e.event_time).max();
            if !writer.store(slot, &records, plan).await {
                return None; // shutting down mid-retry: records are re-read
            }
            if let Some(newest) = newest {
                let seconds = (clock.now() - newest).as_seconds_f64().max(0.0);
                events::EventTimeLag { seconds }.emit();
            }
            Some((offsets, epoch))
        });
        // Reports even a writer that panicked (as not stored), so that its
        // place never blocks the batches behind it.
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let outcome = write.await.unwrap_or_else(|error| {
                tracing::error!(message = "a batch writer failed; its records will be re-read", error = %error);
                None
            });
            let _ = done.send((seq, outcome));
        });
        Ok(())
    }

    /// Waits for one batch to finish, and commits what is now stored in
    /// reading order.
    pub async fn collect_one(&mut self) {
        if let Some(done) = self.done_rx.recv().await {
            self.finished(done);
        }
    }

    pub fn finished(&mut self, (seq, outcome): (u64, Outcome)) {
        let ready = self.order.finished(seq, outcome);
        if !ready.is_empty() {
            // The committer outlives every batch: it ends after `run` drops
            // this sender.
            let _ = self.commits.send(ready);
        }
    }
}

/// Where the committer commits offsets: the consumer group
/// (`GroupOffsets`), or a fake in tests.
pub trait OffsetSink: Send + Sync + 'static {
    /// Commits `offsets` (those of partitions still owned), blocking until
    /// the broker answered; `false` if it failed.
    fn commit(&self, offsets: Offsets) -> bool;
}

/// The consumer group's committed offsets.
pub struct GroupOffsets {
    pub consumer: Arc<GroupConsumer>,
    pub ownership: Arc<Ownership>,
}

impl OffsetSink for GroupOffsets {
    fn commit(&self, offsets: Offsets) -> bool {
        // Held through the commit: a revocation waits for it, so a
        // partition is never committed after it was revoked.
        let state = self.ownership.lock();
        let mut owned = offsets;
        Ownership::retain_owned(&state, &mut owned);
        commit(&self.consumer, &owned)
    }
}

/// What the committer needs.
pub struct Committer<O> {
    pub offsets: Arc<O>,
    pub pool: PgPool,
    /// What stored batches saw of webhooks and subscriptions.
    pub seen: Arc<Mutex<Seen>>,
    pub backoff_max: Duration,
}

/// Commits offsets one commit at a time, in the order they are handed
/// over, off the runtime's threads: a synchronous commit waits a broker
/// round trip, which held up reading and writing when done inline. Offsets
/// queued meanwhile are merged into the next commit.
///
/// Before each commit, what the stored batches saw (`last_seen_at`,
/// `last_event_at`: state, not precision) is written: once offsets are
/// committed their records are never read again, so it must be stored by
/// then. A failed write or commit is retried with the offsets that arrived
/// meanwhile; until it succeeds nothing is committed, and a crash re-reads
/// the records (and sees them again). Ends when every sender is gone and
/// the last offsets are committed, or `final_attempts` more attempts failed.
pub async fn run_committer<O: OffsetSink>(
    committer: Committer<O>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Offsets>,
    final_attempts: u32,
) {
    let mut pending = Offsets::new();
    let mut delay = Duration::from_millis(100);
    let mut closed = false;
    let mut failures_after_close = 0;
    loop {
        if pending.is_empty() {
            if closed {
                return;
            }
            match queue.recv().await {
                Some(offsets) => pending = offsets,
                None => return,
            }
        }
        while let Ok(more) = queue.try_recv() {
            pending.extend(more);
        }
        if committer.commit_once(&pending).await {
            pending.clear();
            delay = Duration::from_millis(100);
            continue;
        }
        if closed {
            failures_after_close += 1;
            if failures_after_close >= final_attempts {
                tracing::warn!(
                    message = "last offsets not committed; their records will be read again",
                    partitions = pending.len()
                );
                return;
            }
        }
        // Meanwhile, later offsets may arrive: they replace these.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                more = queue.recv(), if !closed => match more {
                    Some(more) => pending.extend(more),
                    None => closed = true,
                },
            }
        }
        delay = (delay * 2).min(committer.backoff_max);
    }
}

impl<O: OffsetSink> Committer<O> {
    /// Writes what was seen, then commits `offsets`. `false` if either
    /// failed: nothing is lost, both are tried again.
    async fn commit_once(&self, offsets: &Offsets) -> bool {
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        if !seen.is_empty()
            && let Err(error) = seen.write(&self.pool).await
        {
            SeenNotWritten { error: &error }.emit();
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .merge(seen);
            return false;
        }
        let sink = self.offsets.clone();
        let offsets = offsets.clone();
        tokio::task::spawn_blocking(move || sink.commit(offsets))
            .await
            .unwrap_or_else(|error| {
                tracing::error!(message = "offset commit task failed", error = %error);
                false
            })
    }
}

fn commit(consumer: &GroupConsumer, next_offsets: &Offsets) -> bool {
    if next_offsets.is_empty() {
        return true;
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in next_offsets {
        if let Err(error) =
            offsets.add_partition_offset(topic, *partition, Offset::Offset(next.offset))
        {
            CommitFailed { error: &error }.emit();
            return false;
        }
    }
    match consumer.commit(&offsets, CommitMode::Sync) {
        Ok(()) => {
            for ((_, partition), next) in next_offsets {
                events::OffsetCommitted {
                    partition: *partition,
                    next: next.offset,
                }
                .emit();
            }
            true
        }
        Err(error) => {
            CommitFailed { error: &error }.emit();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(partition_next: &[(i32, i64)]) -> BatchOffsets {
        partition_next
            .iter()
            .map(|(p, next)| (("aaa.raw".to_owned(), *p), *next))
            .collect()
    }

    fn ready(partition_next: &[(i32, i64)], epoch: u64) -> Offsets {
        offsets(partition_next)
            .into_iter()
            .map(|(k, offset)| (k, Next { offset, epoch }))
            .collect()
    }

    #[test]
    fn offsets_are_committed_only_once_every_batch_read_before_is_stored() {
        let mut order = CommitOrder::default();
        let (first, _) = order.begin(2).unwrap();
        let (second, _) = order.begin(2).unwrap();
        // The second batch (later records of partition 0) is stored first:
        // committing it would skip the first batch's records after a crash.
        assert!(
            order
                .finished(second, Some((offsets(&[(0, 20), (1, 7)]), 0)))
                .is_empty()
        );
        let (third, _) = order.begin(2).unwrap();
        // Now the first: both are committed, the later offsets winning.
        assert_eq!(
            order.finished(first, Some((offsets(&[(0, 10), (2, 3)]), 0))),
            ready(&[(0, 20), (1, 7), (2, 3)], 0)
        );
        assert_eq!(
            order.finished(third, Some((offsets(&[(0, 30)]), 0))),
            ready(&[(0, 30)], 0)
        );
        assert!(order.batches.is_empty());
    }

    #[test]
    fn once_a_batch_is_given_up_nothing_more_is_committed_or_started() {
        let mut order = CommitOrder::default();
        let (first, _) = order.begin(2).unwrap();
        let (second, _) = order.begin(2).unwrap();
        assert!(
            order
                .finished(second, Some((offsets(&[(0, 20)]), 0)))
                .is_empty()
        );
        // The first batch's writer failed: its records must be read again,
        // so the second's offsets (past them) are not committed.
        assert!(order.finished(first, None).is_empty());
        assert!(order.given_up());
        // And no batch starts after it: a fence stored now would tell the
        // watermark that records not stored are.
        assert_eq!(order.begin(2), Err(GivenUp));
    }

    #[test]
    fn batches_being_written_hold_distinct_stall_slots() {
        let mut order = CommitOrder::default();
        let (first, a) = order.begin(2).unwrap();
        let (_, b) = order.begin(2).unwrap();
        assert_ne!(a, b);
        order.finished(first, Some((offsets(&[(0, 1)]), 0)));
        // The first slot is free again; the second is still taken.
        let (_, c) = order.begin(2).unwrap();
        assert_eq!(c, a);
    }

    #[test]
    fn offsets_read_before_a_partition_was_revoked_are_never_committed() {
        let ownership = Ownership::default();
        let before = ownership.epoch();
        ownership.revoke([("aaa.raw".to_owned(), 1)]);
        let after = ownership.epoch();
        assert!(after > before);
        // A batch read before the revocation, stored after it: partition 1
        // is someone else's now; partition 0 is still ours.
        let mut offsets = ready(&[(0, 20), (1, 7)], before);
        Ownership::retain_owned(&ownership.lock(), &mut offsets);
        assert_eq!(offsets, ready(&[(0, 20)], before));
        // Assigned back later: batches read since are committed again.
        let mut offsets = ready(&[(1, 9)], after);
        Ownership::retain_owned(&ownership.lock(), &mut offsets);
        assert_eq!(offsets, ready(&[(1, 9)], after));
    }

    /// Fails the first `failures` commits; records the ones that succeeded.
    #[derive(Default)]
    struct FlakyGroup {
        failures: Mutex<u32>,
        attempts: Mutex<u32>,
        committed: Mutex<Vec<Offsets>>,
        attempted: tokio::sync::Notify,
    }

    impl OffsetSink for FlakyGroup {
        fn commit(&self, offsets: Offsets) -> bool {
            *self.attempts.lock().unwrap() += 1;
            self.attempted.notify_one();
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return false;
            }
            self.committed.lock().unwrap().push(offsets);
            true
        }
    }

    fn committer(group: &Arc<FlakyGroup>) -> Committer<FlakyGroup> {
        Committer {
            offsets: group.clone(),
            // Never connected: nothing was seen, so nothing is written.
            pool: sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://nobody@127.0.0.1:1/none")
                .unwrap(),
            seen: Default::default(),
            backoff_max: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn a_failed_offset_commit_is_retried_with_the_offsets_that_arrived_meanwhile() {
        let group = Arc::new(FlakyGroup {
            failures: Mutex::new(1),
            ..FlakyGroup::default()
        });
        let (queue, offsets) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(run_committer(committer(&group), offsets, 3));
        queue.send(ready(&[(0, 10), (2, 3)], 0)).unwrap();
        // The first commit fails; later offsets arrive while it waits.
        group.attempted.notified().await;
        queue.send(ready(&[(0, 20), (1, 5)], 0)).unwrap();
        drop(queue);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the committer ends once its queue is closed and committed")
            .unwrap();
        // Partition 2's offset from the failed commit is not dropped, and
        // partition 0 takes the later offset.
        assert_eq!(
            *group.committed.lock().unwrap(),
            vec![ready(&[(0, 20), (1, 5), (2, 3)], 0)]
        );
        assert_eq!(*group.attempts.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_committer_that_keeps_failing_gives_up_after_its_queue_closed() {
        let group = Arc::new(FlakyGroup {
            failures: Mutex::new(u32::MAX),
            ..FlakyGroup::default()
        });
        let (queue, offsets) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(run_committer(committer(&group), offsets, 3));
        queue.send(ready(&[(0, 10)], 0)).unwrap();
        group.attempted.notified().await;
        drop(queue);
        // Shutdown is not held up forever by a broker that refuses commits:
        // the records are read again after the restart.
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the committer gives up after its final attempts")
            .unwrap();
        assert!(group.committed.lock().unwrap().is_empty());
        assert_eq!(*group.attempts.lock().unwrap(), 1 + 3);
    }
}
