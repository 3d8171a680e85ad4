//! The round's edges as traits: the state in Postgres ([`RoundStore`]),
//! X ([`XApi`]) and the fences ([`Fencer`]). The service plugs in Postgres,
//! X's client and Kafka (`fences.rs`); the round's unit tests plug in fakes in memory.

use std::future::Future;

use aaa_replay_window::Window;
use aaa_xapi::{ReplayJob, Webhook, XClient, XError};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::coverage::{Heartbeat, Interval};
use crate::planner::WindowKind;
use crate::store::{
    self, InFlight, Lease, PendingWindow, Planned, Progress, Reservation, WindowState,
};

type Result<T> = std::result::Result<T, sqlx::Error>;

/// Every statement a round runs on the watermark's state ([`crate::store`]).
pub trait RoundStore: Send {
    /// How far the webhook's timeline was judged, and where tracking began.
    fn progress(&mut self, webhook: &str) -> impl Future<Output = Result<Progress>> + Send;

    /// Marks where tracking began, under the lease; `false` when another
    /// replica did first or the lease was lost.
    fn begin_tracking(
        &mut self,
        lease: &Lease,
        from: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Judging got to `to` (never moves back), under the lease; `false`
    /// when the lease was lost.
    fn advance_judged(
        &mut self,
        lease: &Lease,
        to: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The oldest of the newest fences the consumer stored, and on how many partitions.
    fn fences(
        &mut self,
        topic: &str,
    ) -> impl Future<Output = Result<(Option<DateTime<Utc>>, i64)>> + Send;

    /// Counts one request to X if it stays within `limit` per 15 minutes
    /// and the lease is still held.
    fn reserve_x_request(
        &mut self,
        lease: &Lease,
        endpoint: &str,
        limit: i64,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Reservation>> + Send;

    /// What X answered a reserved request.
    fn record_x_outcome(
        &mut self,
        id: i64,
        outcome: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// One validity sample.
    fn record_validity(
        &mut self,
        webhook: &str,
        at: DateTime<Utc>,
        valid: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Validity samples from `since` on, oldest first.
    fn validity_since(
        &mut self,
        webhook: &str,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<(DateTime<Utc>, bool)>>> + Send;

    /// Where the receivers' first heartbeat begins.
    fn first_heartbeat(
        &mut self,
        webhook: &str,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>>> + Send;

    /// The receivers' heartbeats that end at or after `since`.
    fn heartbeats_since(
        &mut self,
        webhook: &str,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Heartbeat>>> + Send;

    /// Windows of any kind and state that end at or after `since`.
    fn windows_since(
        &mut self,
        webhook: &str,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Interval>>> + Send;

    /// Plans a window under the lease.
    fn insert_window(
        &mut self,
        lease: &Lease,
        window: Interval,
        kind: WindowKind,
        state: WindowState,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Planned>> + Send;

    /// The window whose job is in flight.
    fn in_flight(&mut self, webhook: &str)
    -> impl Future<Output = Result<Option<InFlight>>> + Send;

    /// What the job's completion message said, once stored.
    fn job_state(
        &mut self,
        job_id: Option<&str>,
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Fences were written after the job's completion.
    fn set_fence(
        &mut self,
        lease: &Lease,
        job: &InFlight,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The job's window is reconciled: what it recovered and how many duplicates.
    fn reconcile(
        &mut self,
        lease: &Lease,
        job: &InFlight,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<(i64, i64)>>> + Send;

    /// The job's window goes back in line.
    fn requeue(
        &mut self,
        lease: &Lease,
        job: &InFlight,
        at: DateTime<Utc>,
        why: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The next window due: gaps before audits, oldest first.
    fn next_pending(
        &mut self,
        webhook: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<PendingWindow>>> + Send;

    /// Webhooks with a gap window waiting.
    fn gaps_waiting(&mut self) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// A pending window aged past what X replays.
    fn expire(
        &mut self,
        lease: &Lease,
        id: i64,
        why: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// A pending window's oldest minutes aged out.
    fn trim_start(
        &mut self,
        lease: &Lease,
        window: &PendingWindow,
        from: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// X accepted the window as `job_id` (not conditional on the lease).
    fn mark_submitted(
        &mut self,
        id: i64,
        job_id: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// X refused the window; it is tried again at `at`.
    fn retry_later(
        &mut self,
        lease: &Lease,
        id: i64,
        at: DateTime<Utc>,
        error: &str,
        conflict: bool,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Windows per kind and state.
    fn window_counts(
        &mut self,
        webhook: &str,
    ) -> impl Future<Output = Result<Vec<(WindowKind, WindowState, i64)>>> + Send;

    /// Where the oldest gap waiting or replaying begins.
    fn oldest_open_gap(
        &mut self,
        webhook: &str,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>>> + Send;
}

impl RoundStore for PgConnection {
    async fn progress(&mut self, webhook: &str) -> Result<Progress> {
        store::progress(self, webhook).await
    }

    async fn begin_tracking(&mut self, lease: &Lease, from: DateTime<Utc>) -> Result<bool> {
        store::begin_tracking(self, lease, from).await
    }

    async fn advance_judged(&mut self, lease: &Lease, to: DateTime<Utc>) -> Result<bool> {
        store::advance_judged(self, lease, to).await
    }

    async fn fences(&mut self, topic: &str) -> Result<(Option<DateTime<Utc>>, i64)> {
        store::fences(self, topic).await
    }

    async fn reserve_x_request(
        &mut self,
        lease: &Lease,
        endpoint: &str,
        limit: i64,
        at: DateTime<Utc>,
    ) -> Result<Reservation> {
        store::reserve_x_request(self, lease, endpoint, limit, at).await
    }

    async fn record_x_outcome(&mut self, id: i64, outcome: &str) -> Result<()> {
        store::record_x_outcome(self, id, outcome).await
    }

    async fn record_validity(
        &mut self,
        webhook: &str,
        at: DateTime<Utc>,
        valid: bool,
    ) -> Result<()> {
        store::record_validity(self, webhook, at, valid).await
    }

    async fn validity_since(
        &mut self,
        webhook: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, bool)>> {
        store::validity_since(self, webhook, since).await
    }

    async fn first_heartbeat(&mut self, webhook: &str) -> Result<Option<DateTime<Utc>>> {
        store::first_heartbeat(self, webhook).await
    }

    async fn heartbeats_since(
        &mut self,
        webhook: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Heartbeat>> {
        store::heartbeats_since(self, webhook, since).await
    }

    async fn windows_since(
        &mut self,
        webhook: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Interval>> {
        store::windows_since(self, webhook, since).await
    }

    async fn insert_window(
        &mut self,
        lease: &Lease,
        window: Interval,
        kind: WindowKind,
        state: WindowState,
        now: DateTime<Utc>,
    ) -> Result<Planned> {
        store::insert_window(self, lease, window, kind, state, now).await
    }

    async fn in_flight(&mut self, webhook: &str) -> Result<Option<InFlight>> {
        store::in_flight(self, webhook).await
    }

    async fn job_state(&mut self, job_id: Option<&str>) -> Result<Option<String>> {
        store::job_state(self, job_id).await
    }

    async fn set_fence(
        &mut self,
        lease: &Lease,
        job: &InFlight,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        store::set_fence(self, lease, job, at).await
    }

    async fn reconcile(
        &mut self,
        lease: &Lease,
        job: &InFlight,
        at: DateTime<Utc>,
    ) -> Result<Option<(i64, i64)>> {
        store::reconcile(self, lease, job, at).await
    }

    async fn requeue(
        &mut self,
        lease: &Lease,
        job: &InFlight,
        at: DateTime<Utc>,
        why: &str,
    ) -> Result<bool> {
        store::requeue(self, lease, job, at, why).await
    }

    async fn next_pending(
        &mut self,
        webhook: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PendingWindow>> {
        store::next_pending(self, webhook, now).await
    }

    async fn gaps_waiting(&mut self) -> Result<Vec<String>> {
        store::gaps_waiting(self).await
    }

    async fn expire(&mut self, lease: &Lease, id: i64, why: &str) -> Result<bool> {
        store::expire(self, lease, id, why).await
    }

    async fn trim_start(
        &mut self,
        lease: &Lease,
        window: &PendingWindow,
        from: DateTime<Utc>,
    ) -> Result<bool> {
        store::trim_start(self, lease, window, from).await
    }

    async fn mark_submitted(&mut self, id: i64, job_id: &str, at: DateTime<Utc>) -> Result<bool> {
        store::mark_submitted(self, id, job_id, at).await
    }

    async fn retry_later(
        &mut self,
        lease: &Lease,
        id: i64,
        at: DateTime<Utc>,
        error: &str,
        conflict: bool,
    ) -> Result<bool> {
        store::retry_later(self, lease, id, at, error, conflict).await
    }

    async fn window_counts(
        &mut self,
        webhook: &str,
    ) -> Result<Vec<(WindowKind, WindowState, i64)>> {
        store::window_counts(self, webhook).await
    }

    async fn oldest_open_gap(&mut self, webhook: &str) -> Result<Option<DateTime<Utc>>> {
        store::oldest_open_gap(self, webhook).await
    }
}

/// What a round asks X.
pub trait XApi: Sync {
    fn list_webhooks(
        &self,
    ) -> impl Future<Output = std::result::Result<Vec<Webhook>, XError>> + Send;
    fn validate_webhook(
        &self,
        id: &str,
    ) -> impl Future<Output = std::result::Result<bool, XError>> + Send;
    fn submit_replay(
        &self,
        webhook_id: &str,
        window: Window,
        now: DateTime<Utc>,
    ) -> impl Future<Output = std::result::Result<ReplayJob, XError>> + Send;
    /// The `Date` of X's last answer.
    fn last_x_date(&self) -> Option<DateTime<Utc>>;
}

impl XApi for XClient {
    async fn list_webhooks(&self) -> std::result::Result<Vec<Webhook>, XError> {
        XClient::list_webhooks(self).await
    }
    async fn validate_webhook(&self, id: &str) -> std::result::Result<bool, XError> {
        XClient::validate_webhook(self, id).await
    }
    async fn submit_replay(
        &self,
        webhook_id: &str,
        window: Window,
        now: DateTime<Utc>,
    ) -> std::result::Result<ReplayJob, XError> {
        XClient::submit_replay(self, webhook_id, window, now).await
    }
    fn last_x_date(&self) -> Option<DateTime<Utc>> {
        XClient::last_x_date(self)
    }
}

/// Fences on every partition of the raw topic.
pub trait Fencer: Sync {
    /// A fence on every partition, stamped `now`; `true` when all were taken.
    fn write(&self, now: DateTime<Utc>) -> impl Future<Output = bool> + Send;
    fn topic(&self) -> &str;
    fn partitions(&self) -> usize;
}

/// The time up to which the consumer has stored everything: the oldest of
/// the newest fences on every partition.
pub async fn horizon<S: RoundStore, F: Fencer>(
    store: &mut S,
    fences: &F,
) -> Result<Option<DateTime<Utc>>> {
    let (oldest, partitions) = store.fences(fences.topic()).await?;
    Ok(oldest.filter(|_| partitions as usize >= fences.partitions()))
}
