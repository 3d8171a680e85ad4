//! Everything the consumer reports: each type logs and counts in one place.

use std::time::Duration;

use aaa_common::observe::InternalEvent;

use crate::batch::DeadLetterKind;
use crate::store::WriteStats;

pub const EVENTS: &str = "aaa_consumer_events_total";
pub const DEAD_LETTERS: &str = "aaa_consumer_dead_letters_total";
pub const RECORDS: &str = "aaa_consumer_records_total";
pub const BATCH_RECORDS: &str = "aaa_consumer_batch_records";
pub const WRITE_SECONDS: &str = "aaa_consumer_write_duration_seconds";
pub const WRITE_FAILURES: &str = "aaa_consumer_write_failures_total";
pub const COMMIT_FAILURES: &str = "aaa_consumer_commit_failures_total";
pub const KAFKA_ERRORS: &str = "aaa_consumer_kafka_errors_total";
pub const COMMITTED_OFFSET: &str = "aaa_consumer_committed_offset";
pub const LAG_RECORDS: &str = "aaa_consumer_lag_records";
pub const EVENT_TIME_LAG_SECONDS: &str = "aaa_consumer_event_time_lag_seconds";
pub const REJECTED_RECORDS: &str = "aaa_consumer_rejected_records_total";
pub const STALLED_SECONDS: &str = "aaa_consumer_stalled_seconds";
pub const SEEN_WRITE_FAILURES: &str = "aaa_consumer_seen_write_failures_total";

pub struct BatchStored<'a> {
    pub records: usize,
    pub stats: &'a WriteStats,
    pub dead_letter_kinds: Vec<&'static str>,
    pub elapsed: Duration,
}

impl InternalEvent for BatchStored<'_> {
    fn emit(self) {
        let inserted: u64 = self.stats.inserted.values().sum();
        let duplicates: u64 = self.stats.duplicates.values().sum();
        tracing::info!(
            message = "batch stored",
            records = self.records,
            inserted,
            duplicates,
            dead_letters = self.stats.dead_letters,
            write_ms = self.elapsed.as_millis() as u64
        );
        metrics::counter!(RECORDS).increment(self.records as u64);
        metrics::histogram!(BATCH_RECORDS).record(self.records as f64);
        metrics::histogram!(WRITE_SECONDS).record(self.elapsed.as_secs_f64());
        for (kind, n) in &self.stats.inserted {
            metrics::counter!(EVENTS, "kind" => *kind, "outcome" => "inserted").increment(*n);
        }
        for (kind, n) in &self.stats.duplicates {
            metrics::counter!(EVENTS, "kind" => *kind, "outcome" => "duplicate").increment(*n);
        }
        for kind in self.dead_letter_kinds {
            tracing::warn!(message = "delivery dead-lettered", error_kind = kind);
            metrics::counter!(DEAD_LETTERS, "error_kind" => kind).increment(1);
        }
    }
}

pub struct WriteFailed<'a> {
    pub error: &'a sqlx::Error,
    /// Records in the write that failed.
    pub records: usize,
    pub attempt: u32,
    /// `None`: the error is permanent, so the records are split instead.
    pub retry_in: Option<Duration>,
}

impl InternalEvent for WriteFailed<'_> {
    fn emit(self) {
        match self.retry_in {
            Some(retry_in) => tracing::error!(
                message = "writing batch to Postgres failed; retrying without committing offsets",
                error = %self.error,
                records = self.records,
                attempt = self.attempt,
                retry_in_ms = retry_in.as_millis() as u64
            ),
            None => tracing::error!(
                message = "Postgres refused the batch for good; splitting it to isolate the record",
                error = %self.error,
                records = self.records
            ),
        }
        metrics::counter!(WRITE_FAILURES).increment(1);
    }
}

/// One record Postgres refused on its own: stored as a dead letter with its
/// raw bytes so that the records behind it are not held up.
pub struct RecordRejected<'a> {
    pub partition: i32,
    pub offset: i64,
    pub reason: &'a str,
}

impl InternalEvent for RecordRejected<'_> {
    fn emit(self) {
        tracing::error!(
            message = "record refused by Postgres; kept as a dead letter with its raw bytes",
            partition = self.partition,
            offset = self.offset,
            reason = self.reason
        );
        metrics::counter!(REJECTED_RECORDS).increment(1);
    }
}

pub struct CommitFailed<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl InternalEvent for CommitFailed<'_> {
    fn emit(self) {
        // Safe: the rows are in Postgres, and whoever reads these records
        // again writes nothing new.
        tracing::warn!(message = "offset commit failed; records will be re-read and deduplicated", error = %self.error);
        metrics::counter!(COMMIT_FAILURES).increment(1);
    }
}

/// What the stored batches saw of webhooks and subscriptions could not be
/// written: their offsets wait (a crash re-reads the records, which see it
/// again).
pub struct SeenNotWritten<'a> {
    pub error: &'a sqlx::Error,
}

impl InternalEvent for SeenNotWritten<'_> {
    fn emit(self) {
        tracing::warn!(message = "last-seen times not written; offsets wait and both are retried", error = %self.error);
        metrics::counter!(SEEN_WRITE_FAILURES).increment(1);
    }
}

/// A batch was given up (its writer failed) while later ones went on: the
/// replica stops, so that it is restarted and reads the records again.
pub struct BatchGivenUp;

impl InternalEvent for BatchGivenUp {
    fn emit(self) {
        tracing::error!(
            message = "a batch was given up; nothing read after it can be committed: stopping so the replica is restarted"
        );
    }
}

pub struct KafkaReadFailed<'a> {
    pub error: &'a rdkafka::error::KafkaError,
}

impl InternalEvent for KafkaReadFailed<'_> {
    fn emit(self) {
        tracing::warn!(message = "reading from Kafka failed", error = %self.error);
        metrics::counter!(KAFKA_ERRORS).increment(1);
    }
}

/// How long the longest-waiting writer has waited (0 when none waits).
pub struct Stalled {
    pub for_: Duration,
}

impl InternalEvent for Stalled {
    fn emit(self) {
        metrics::gauge!(STALLED_SECONDS).set(self.for_.as_secs_f64());
    }
}

/// The group's committed offset to the high watermark for a partition
/// assigned to this replica (0: given up).
pub struct PartitionLag {
    pub partition: i32,
    pub records: i64,
}

impl InternalEvent for PartitionLag {
    fn emit(self) {
        metrics::gauge!(LAG_RECORDS, "partition" => self.partition.to_string())
            .set(self.records as f64);
    }
}

/// A partition this replica no longer owns: its gauges read 0, so no
/// replica reports a lag or offset it cannot change.
pub struct PartitionRevoked {
    pub partition: i32,
}

impl InternalEvent for PartitionRevoked {
    fn emit(self) {
        for gauge in [COMMITTED_OFFSET, LAG_RECORDS] {
            metrics::gauge!(gauge, "partition" => self.partition.to_string()).set(0.0);
        }
    }
}

/// How far behind X's event time the newest event of a stored batch is.
pub struct EventTimeLag {
    pub seconds: f64,
}

impl InternalEvent for EventTimeLag {
    fn emit(self) {
        metrics::gauge!(EVENT_TIME_LAG_SECONDS).set(self.seconds);
    }
}

/// Offsets committed to the group.
pub struct OffsetCommitted {
    pub partition: i32,
    /// The next offset to read.
    pub next: i64,
}

impl InternalEvent for OffsetCommitted {
    fn emit(self) {
        metrics::gauge!(COMMITTED_OFFSET, "partition" => self.partition.to_string())
            .set(self.next as f64);
    }
}

/// Every counter at zero from the start, so dashboards and alerts see the
/// series before the first failure (an absent series is not a zero).
pub fn register() {
    for counter in [
        RECORDS,
        WRITE_FAILURES,
        COMMIT_FAILURES,
        KAFKA_ERRORS,
        REJECTED_RECORDS,
        SEEN_WRITE_FAILURES,
    ] {
        metrics::counter!(counter).increment(0);
    }
    metrics::gauge!(STALLED_SECONDS).set(0.0);
    for kind in DeadLetterKind::ALL {
        metrics::counter!(DEAD_LETTERS, "error_kind" => kind.as_str()).increment(0);
    }
}
