//! /healthz and /readyz of the consumer, and how long stored batches have
//! waited.

use aaa_common::observe::InternalEvent;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aaa_common::admin::Readiness;
use rdkafka::consumer::Consumer;
use rdkafka::util::Timeout;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::GroupConsumer;
use crate::events;

pub struct ConsumerReadiness {
    pub pool: PgPool,
    pub consumer: Arc<GroupConsumer>,
    pub progress: Arc<Progress>,
}
/// Per writer: since when the batch in hand has waited to be stored, from
/// the start of its write (`None`: no batch in hand). A write blocked
/// without an error (a lock held by a frozen replica, a network that
/// swallows packets) counts as much as one failing. Read by /healthz and
/// the stall gauge: the longest wait of any writer, so one stuck writer is
/// not hidden by the others moving.
pub struct Progress {
    waiting_since: std::sync::Mutex<Vec<Option<Instant>>>,
    stall_after: Duration,
}

impl Progress {
    pub fn new(writers: usize, stall_after: Duration) -> Progress {
        Progress {
            waiting_since: std::sync::Mutex::new(vec![None; writers]),
            stall_after,
        }
    }

    pub fn stalled_for(&self) -> Duration {
        self.waiting_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .map(Instant::elapsed)
            .max()
            .unwrap_or_default()
    }

    fn set(&self, writer: usize, since: Option<Instant>) {
        if let Some(slot) = self
            .waiting_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(writer)
        {
            // A waiting writer keeps the time it started waiting.
            *slot = since.map(|now| slot.unwrap_or(now));
        }
        events::Stalled {
            for_: self.stalled_for(),
        }
        .emit();
    }

    /// Writer `writer` started on a batch (or failed on it): the wait
    /// counts from the first of these.
    pub fn waiting(&self, writer: usize) {
        self.set(writer, Some(Instant::now()));
    }

    pub fn moved(&self, writer: usize) {
        self.set(writer, None);
    }

    /// Keeps the stall gauge current while a write is blocked (nothing
    /// else updates it then).
    pub async fn report(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            events::Stalled {
                for_: self.stalled_for(),
            }
            .emit();
        }
    }
}

impl Readiness for ConsumerReadiness {
    fn health(&self) -> Result<(), String> {
        let stalled = self.progress.stalled_for();
        if stalled >= self.progress.stall_after {
            return Err(format!(
                "no batch stored for {} s while records wait",
                stalled.as_secs()
            ));
        }
        Ok(())
    }

    fn check(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(|e| format!("database unreachable: {e}"))?;
            let consumer = self.consumer.clone();
            tokio::task::spawn_blocking(move || {
                consumer
                    .fetch_metadata(None, Timeout::After(Duration::from_secs(2)))
                    .map(|_| ())
                    .map_err(|e| format!("broker unreachable: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}
