//! How far this replica's partitions are behind.

use aaa_common::observe::InternalEvent;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::GroupConsumer;
use crate::events;

/// Records of a partition the group has not consumed: from its committed
/// offset (or, with none yet, the oldest record the broker keeps) to the
/// high watermark.
pub fn partition_lag(committed: Offset, low: i64, high: i64) -> i64 {
    let from = match committed {
        Offset::Offset(next) => next.max(low),
        _ => low,
    };
    (high - from).max(0)
}

/// Every 5 s: the lag of each partition assigned to this replica now, from
/// the group's committed offsets (whoever committed them) and the broker's
/// high watermark. A partition stuck since start-up shows its whole
/// backlog; one revoked in a rebalance is reported as 0 here (its new owner
/// reports it), so `sum` and `max` over replicas stay true.
pub async fn report_lag(consumer: Arc<GroupConsumer>, shutdown: CancellationToken) {
    let mut reported: std::collections::BTreeSet<i32> = Default::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let consumer = consumer.clone();
        let lags = tokio::task::spawn_blocking(move || {
            let timeout = Timeout::After(Duration::from_secs(2));
            let assignment = consumer.assignment().ok()?;
            let committed = consumer.committed_offsets(assignment, timeout).ok()?;
            committed
                .elements()
                .iter()
                .map(|e| {
                    let (low, high) = consumer
                        .fetch_watermarks(e.topic(), e.partition(), timeout)
                        .ok()?;
                    Some((e.partition(), partition_lag(e.offset(), low, high)))
                })
                .collect::<Option<Vec<_>>>()
        })
        .await
        .ok()
        .flatten();
        // Unknown this time (broker unreachable): keep the last values.
        let Some(lags) = lags else { continue };
        let assigned: std::collections::BTreeSet<i32> = lags.iter().map(|(p, _)| *p).collect();
        for revoked in reported.difference(&assigned) {
            events::PartitionLag {
                partition: *revoked,
                records: 0,
            }
            .emit();
        }
        for (partition, records) in lags {
            events::PartitionLag { partition, records }.emit();
        }
        reported = assigned;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_group_commit_or_the_oldest_kept_record() {
        assert_eq!(partition_lag(Offset::Offset(90), 0, 100), 10);
        assert_eq!(partition_lag(Offset::Offset(100), 0, 100), 0);
        // Nothing committed yet: everything the broker keeps is behind.
        assert_eq!(partition_lag(Offset::Invalid, 40, 100), 60);
        // A commit older than what retention kept counts from what is left.
        assert_eq!(partition_lag(Offset::Offset(10), 40, 100), 60);
        assert_eq!(partition_lag(Offset::Offset(120), 0, 100), 0);
    }
}
