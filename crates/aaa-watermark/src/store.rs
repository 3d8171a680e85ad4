//! The watermark's state in Postgres: every statement a round runs, over
//! typed rows. Nothing here decides; [`crate::decisions`] and
//! [`crate::planner`] do, and `service` wires the two to X and Kafka.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgConnection, PgPool};

use crate::coverage::{Heartbeat, Interval, Life};
use crate::planner::WindowKind;

/// Where a replay window is in its life (`replay_windows.state`, bound as
/// text: no state is spelt in a statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum WindowState {
    /// Waiting for its turn (the webhook's job slot, X's budget, a backoff).
    Pending,
    /// X accepted it as a job; waiting for the completion and the consumer.
    Submitted,
    /// Its job completed and everything replayed before it is stored.
    Reconciled,
    /// Older than X replays: recorded (and alerted for gaps), never replayed.
    Expired,
}

impl WindowState {
    pub const ALL: [WindowState; 4] = [
        WindowState::Pending,
        WindowState::Submitted,
        WindowState::Reconciled,
        WindowState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WindowState::Pending => "pending",
            WindowState::Submitted => "submitted",
            WindowState::Reconciled => "reconciled",
            WindowState::Expired => "expired",
        }
    }
}

impl TryFrom<String> for WindowState {
    type Error = UnknownValue;
    fn try_from(value: String) -> std::result::Result<Self, Self::Error> {
        WindowState::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or(UnknownValue(value))
    }
}

impl WindowKind {
    pub const ALL: [WindowKind; 2] = [WindowKind::Gap, WindowKind::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Gap => "gap",
            WindowKind::Audit => "audit",
        }
    }
}

impl TryFrom<String> for WindowKind {
    type Error = UnknownValue;
    fn try_from(value: String) -> std::result::Result<Self, Self::Error> {
        WindowKind::ALL
            .into_iter()
            .find(|k| k.as_str() == value)
            .ok_or(UnknownValue(value))
    }
}

/// A value in a state or kind column this version does not know (a newer
/// version wrote it, or someone edited the table by hand).
#[derive(Debug)]
pub struct UnknownValue(String);

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown value `{}`", self.0)
    }
}

impl std::error::Error for UnknownValue {}

/// The window a webhook's job slot is busy with.
#[derive(Debug, sqlx::FromRow)]
pub struct InFlight {
    pub id: i64,
    pub job_id: Option<String>,
    pub submitted_at: Option<DateTime<Utc>>,
    /// When fences were written after the completion was observed.
    pub fence_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "String")]
    pub kind: WindowKind,
    /// Submissions so far.
    pub attempts: i32,
}

/// The next window waiting for the job slot.
#[derive(Debug, sqlx::FromRow)]
pub struct PendingWindow {
    pub id: i64,
    #[sqlx(rename = "window_from")]
    pub from: DateTime<Utc>,
    #[sqlx(rename = "window_to")]
    pub to: DateTime<Utc>,
    pub attempts: i32,
    pub conflicts: i32,
    #[sqlx(try_from = "String")]
    pub kind: WindowKind,
}

impl PendingWindow {
    pub fn interval(&self) -> Interval {
        Interval::new(self.from, self.to)
    }
}

/// How far a webhook's timeline was judged, and where tracking began.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub judged_to: Option<DateTime<Utc>>,
    pub tracked_from: Option<DateTime<Utc>>,
}

type Result<T> = std::result::Result<T, sqlx::Error>;

/// This replica's lease on a webhook as a round took it. Every state change
/// of the round is conditional on it (holder and generation, a fencing
/// token): once another replica took the lease over, a round that outlived
/// its lease (frozen, or slow) changes nothing.
#[derive(Debug, Clone)]
pub struct Lease {
    pub webhook: String,
    pub holder: String,
    pub generation: i64,
}

/// The condition that the round's lease is still held, for a statement on
/// `replay_windows` whose parameters `$holder` and `$generation` are the
/// lease's holder and generation.
macro_rules! still_held {
    ($holder:literal, $generation:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM watermark_leases l WHERE l.webhook_id = replay_windows.webhook_id AND l.holder = $",
            $holder,
            " AND l.generation = $",
            $generation,
            ")"
        )
    };
}

/// Whether an update changed its row: `false` when the row was no longer
/// in the state the round expected, or the lease changed hands.
fn applied(result: sqlx::postgres::PgQueryResult) -> bool {
    result.rows_affected() == 1
}

pub async fn progress(conn: &mut PgConnection, webhook: &str) -> Result<Progress> {
    let row: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT judged_to, tracked_from FROM watermark_progress WHERE webhook_id = $1",
    )
    .bind(webhook)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Progress {
        judged_to: row.map(|r| r.0),
        tracked_from: row.and_then(|r| r.1),
    })
}

/// The condition that the lease on webhook `$1` is held by holder `$2` at
/// generation `$3`.
macro_rules! lease_held {
    () => {
        "EXISTS (SELECT 1 FROM watermark_leases l WHERE l.webhook_id = $1 AND l.holder = $2 AND l.generation = $3)"
    };
}

/// Records where tracking began (and that nothing is judged yet) unless a
/// round of any replica did before, and only under the round's lease;
/// `true` when this call did.
pub async fn begin_tracking(
    conn: &mut PgConnection,
    lease: &Lease,
    from: DateTime<Utc>,
) -> Result<bool> {
    let began = sqlx::query(concat!(
        "INSERT INTO watermark_progress (webhook_id, judged_to, tracked_from) SELECT $1, $4, $4 WHERE ",
        lease_held!(),
        " ON CONFLICT (webhook_id) DO NOTHING"
    ))
    .bind(&lease.webhook)
    .bind(&lease.holder)
    .bind(lease.generation)
    .bind(from)
    .execute(&mut *conn)
    .await?;
    Ok(began.rows_affected() == 1)
}

/// Judging got to `to` (never moves back), under the round's lease;
/// `false` when the lease was lost.
pub async fn advance_judged(
    conn: &mut PgConnection,
    lease: &Lease,
    to: DateTime<Utc>,
) -> Result<bool> {
    let result = sqlx::query(concat!(
        "UPDATE watermark_progress SET judged_to = greatest(judged_to, $4) WHERE webhook_id = $1 AND ",
        lease_held!()
    ))
    .bind(&lease.webhook)
    .bind(&lease.holder)
    .bind(lease.generation)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Takes or renews `replica`'s lease on `webhook`: granted when free,
/// expired, or already ours. Postgres's clock decides, so replicas with
/// skewed clocks agree. The generation goes up whenever the lease changes
/// hands (and only then).
pub async fn take_lease(
    conn: &mut PgConnection,
    webhook: &str,
    replica: &str,
    lease: std::time::Duration,
) -> Result<Option<Lease>> {
    let generation: Option<i64> = sqlx::query_scalar(
        "INSERT INTO watermark_leases AS l (webhook_id, holder, acquired_at, renewed_at, expires_at)
         VALUES ($1, $2, now(), now(), now() + make_interval(secs => $3))
         ON CONFLICT (webhook_id) DO UPDATE
            SET holder = excluded.holder,
                acquired_at = CASE WHEN l.holder = excluded.holder THEN l.acquired_at ELSE now() END,
                generation = CASE WHEN l.holder = excluded.holder THEN l.generation ELSE l.generation + 1 END,
                renewed_at = now(),
                expires_at = excluded.expires_at
            WHERE l.holder = excluded.holder OR l.expires_at < now()
         RETURNING generation",
    )
    .bind(webhook)
    .bind(replica)
    .bind(lease.as_secs_f64())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(generation.map(|generation| Lease {
        webhook: webhook.to_owned(),
        holder: replica.to_owned(),
        generation,
    }))
}

/// Expires this replica's leases at once (rather than deleting them, which
/// would reset their generation).
pub async fn release_leases(pool: &PgPool, replica: &str) -> Result<()> {
    sqlx::query("UPDATE watermark_leases SET expires_at = now() WHERE holder = $1")
        .bind(replica)
        .execute(pool)
        .await?;
    Ok(())
}

/// The oldest of the newest fences the consumer stored per partition of
/// `topic`, and on how many partitions it stored one.
pub async fn fences(conn: &mut PgConnection, topic: &str) -> Result<(Option<DateTime<Utc>>, i64)> {
    sqlx::query_as("SELECT min(fence_time), count(*) FROM consumer_fences WHERE topic = $1")
        .bind(topic)
        .fetch_one(&mut *conn)
        .await
}

/// Requests to X's `endpoint` any replica made after `since`.
pub async fn x_requests_since(
    conn: &mut PgConnection,
    endpoint: &str,
    since: DateTime<Utc>,
) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM x_api_requests WHERE endpoint = $1 AND requested_at > $2",
    )
    .bind(endpoint)
    .bind(since)
    .fetch_one(&mut *conn)
    .await
}

/// Reserves one request to X's `endpoint` if fewer than `limit` were made
/// (by any replica or operator) in the 15 minutes before `at`, and records
/// it: the check and the record are one transaction holding the endpoint's
/// budget row, so two replicas never both take the last request. Only
/// under the round's lease, checked in the same transaction: this is the
/// last step before the request goes to X.
pub async fn reserve_x_request(
    conn: &mut PgConnection,
    lease: &Lease,
    endpoint: &str,
    limit: i64,
    at: DateTime<Utc>,
) -> Result<Reservation> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO x_api_budgets (endpoint) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(endpoint)
        .execute(&mut *tx)
        .await?;
    // FOR UPDATE needs UPDATE on the row: readers cannot hold it.
    sqlx::query("SELECT 1 FROM x_api_budgets WHERE endpoint = $1 FOR UPDATE")
        .bind(endpoint)
        .execute(&mut *tx)
        .await?;
    // The last check before the request goes to X: a former holder (frozen,
    // then thawed) must not spend X's budget or take X's one job slot.
    let held: bool = sqlx::query_scalar(concat!("SELECT ", lease_held!()))
        .bind(&lease.webhook)
        .bind(&lease.holder)
        .bind(lease.generation)
        .fetch_one(&mut *tx)
        .await?;
    if !held {
        return Ok(Reservation::LeaseLost);
    }
    // A statement of its own, so it sees what the previous holder of the
    // row committed.
    let reserved: Option<i64> = sqlx::query_scalar(
        "INSERT INTO x_api_requests (endpoint, requested_at, outcome)
         SELECT $1, $2, 'sent'
         WHERE (SELECT count(*) FROM x_api_requests WHERE endpoint = $1 AND requested_at > $2 - interval '15 minutes') < $3
         RETURNING id",
    )
    .bind(endpoint)
    .bind(at)
    .bind(limit)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(reserved.map_or(Reservation::BudgetUsed, Reservation::Reserved))
}

/// What reserving a request to X came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Counted (the `x_api_requests` id): send it.
    Reserved(i64),
    /// X's limit for the endpoint is reached for now.
    BudgetUsed,
    /// The round's lease changed hands: send nothing.
    LeaseLost,
}

/// Records how a request reserved with [`reserve_x_request`] ended.
pub async fn record_x_outcome(conn: &mut PgConnection, id: i64, outcome: &str) -> Result<()> {
    sqlx::query("UPDATE x_api_requests SET outcome = $2 WHERE id = $1")
        .bind(id)
        .bind(outcome)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records a request to X made outside a watermark round (an operator's
/// CLI command), so the watermark's budget counts it.
pub async fn record_x_request(
    conn: &mut PgConnection,
    endpoint: &str,
    at: DateTime<Utc>,
    outcome: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO x_api_requests (endpoint, requested_at, outcome) VALUES ($1, $2, $3)")
        .bind(endpoint)
        .bind(at)
        .bind(outcome)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One observation of the webhook's validity at X (one per answer).
pub async fn record_validity(
    conn: &mut PgConnection,
    webhook: &str,
    at: DateTime<Utc>,
    valid: bool,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_validity (webhook_id, checked_at, valid) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(webhook)
    .bind(at)
    .bind(valid)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Validity observations from `since` on, oldest first.
pub async fn validity_since(
    conn: &mut PgConnection,
    webhook: &str,
    since: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, bool)>> {
    sqlx::query_as(
        "SELECT checked_at, valid FROM webhook_validity WHERE webhook_id = $1 AND checked_at >= $2 ORDER BY checked_at",
    )
    .bind(webhook)
    .bind(since)
    .fetch_all(&mut *conn)
    .await
}

/// When the receivers' first heartbeat for `webhook` began.
pub async fn first_heartbeat(
    conn: &mut PgConnection,
    webhook: &str,
) -> Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(covered_from) FROM coverage_heartbeats WHERE webhook_id = $1")
        .bind(webhook)
        .fetch_one(&mut *conn)
        .await
}

/// Heartbeats that end at or after `since`, and those whose next one was
/// due then (a life that stopped just before `since` still answers for
/// the stretch after its last heartbeat).
pub async fn heartbeats_since(
    conn: &mut PgConnection,
    webhook: &str,
    since: DateTime<Utc>,
) -> Result<Vec<Heartbeat>> {
    type Row = (
        String,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
        DateTime<Utc>,
        i64,
        bool,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT replica_id, replica_started_at, covered_from, covered_to, refused, closing, next_due
         FROM coverage_heartbeats
         WHERE webhook_id = $1 AND (covered_to >= $2 OR next_due >= $2)",
    )
    .bind(webhook)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(replica, started_at, from, to, refused, closing, next_due)| Heartbeat {
                life: Life {
                    replica,
                    started_at,
                },
                covered: Interval::new(from, to),
                healthy: refused == 0,
                closing,
                next_due,
            },
        )
        .collect())
}

/// Windows (of either kind, any state) that end at or after `since`: time
/// already replayed, being replayed, or recorded as expired.
pub async fn windows_since(
    conn: &mut PgConnection,
    webhook: &str,
    since: DateTime<Utc>,
) -> Result<Vec<Interval>> {
    let rows: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT window_from, window_to FROM replay_windows WHERE webhook_id = $1 AND window_to >= $2",
    )
    .bind(webhook)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(from, to)| Interval::new(from, to))
        .collect())
}

/// What came of planning a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    Inserted,
    /// The same window was planned before (by any replica): left as it is.
    AlreadyPlanned,
    /// The lease changed hands: nothing written.
    LeaseLost,
}

pub async fn insert_window(
    conn: &mut PgConnection,
    lease: &Lease,
    window: Interval,
    kind: WindowKind,
    state: WindowState,
    now: DateTime<Utc>,
) -> Result<Planned> {
    let (held, inserted): (bool, bool) = sqlx::query_as(
        "WITH lease AS (
             SELECT 1 FROM watermark_leases WHERE webhook_id = $1 AND holder = $7 AND generation = $8
         ), planned AS (
             INSERT INTO replay_windows (webhook_id, window_from, window_to, kind, state, next_attempt_at, created_at)
             SELECT $1, $2, $3, $4, $5, $6, $6 FROM lease
             ON CONFLICT (webhook_id, kind, window_from, window_to) DO NOTHING
             RETURNING 1
         )
         SELECT EXISTS (SELECT 1 FROM lease), EXISTS (SELECT 1 FROM planned)",
    )
    .bind(&lease.webhook)
    .bind(window.from)
    .bind(window.to)
    .bind(kind)
    .bind(state)
    .bind(now)
    .bind(&lease.holder)
    .bind(lease.generation)
    .fetch_one(&mut *conn)
    .await?;
    Ok(match (held, inserted) {
        (_, true) => Planned::Inserted,
        (true, false) => Planned::AlreadyPlanned,
        (false, false) => Planned::LeaseLost,
    })
}

pub async fn in_flight(conn: &mut PgConnection, webhook: &str) -> Result<Option<InFlight>> {
    sqlx::query_as(
        "SELECT id, job_id, submitted_at, fence_at, created_at, kind, attempts FROM replay_windows WHERE webhook_id = $1 AND state = $2",
    )
    .bind(webhook)
    .bind(WindowState::Submitted)
    .fetch_optional(&mut *conn)
    .await
}

/// What the job's completion message said (`replay_jobs.job_state`), once
/// the consumer stored it.
pub async fn job_state(conn: &mut PgConnection, job_id: Option<&str>) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT job_state FROM replay_jobs WHERE job_id = $1")
        .bind(job_id)
        .fetch_optional(&mut *conn)
        .await
}

/// Records when fences were written after the job's completion; only for
/// the job in flight, once, under the lease.
pub async fn set_fence(
    conn: &mut PgConnection,
    lease: &Lease,
    job: &InFlight,
    at: DateTime<Utc>,
) -> Result<bool> {
    const SQL: &str = concat!(
        "UPDATE replay_windows SET fence_at = $2 WHERE id = $1 AND state = $6 AND job_id = $3 AND fence_at IS NULL AND ",
        still_held!("4", "5")
    );
    let result = sqlx::query(SQL)
        .bind(job.id)
        .bind(at)
        .bind(&job.job_id)
        .bind(&lease.holder)
        .bind(lease.generation)
        .bind(WindowState::Submitted)
        .execute(&mut *conn)
        .await?;
    Ok(applied(result))
}

/// Marks the job in flight reconciled; returns what its replay recovered
/// and how many duplicates it brought (`None`: not changed, see [`applied`]).
pub async fn reconcile(
    conn: &mut PgConnection,
    lease: &Lease,
    job: &InFlight,
    at: DateTime<Utc>,
) -> Result<Option<(i64, i64)>> {
    const SQL: &str = concat!(
        "UPDATE replay_windows SET state = $6, reconciled_at = $2
         WHERE id = $1 AND state = $7 AND job_id = $3 AND ",
        still_held!("4", "5"),
        "
         RETURNING recovered, duplicates"
    );
    sqlx::query_as(SQL)
        .bind(job.id)
        .bind(at)
        .bind(&job.job_id)
        .bind(&lease.holder)
        .bind(lease.generation)
        .bind(WindowState::Reconciled)
        .bind(WindowState::Submitted)
        .fetch_optional(&mut *conn)
        .await
}

/// Puts the job in flight's window back in line, to be submitted again.
pub async fn requeue(
    conn: &mut PgConnection,
    lease: &Lease,
    job: &InFlight,
    at: DateTime<Utc>,
    why: &str,
) -> Result<bool> {
    const SQL: &str = concat!(
        "UPDATE replay_windows SET state = $7, job_id = NULL, fence_at = NULL, next_attempt_at = $2, last_error = $3
         WHERE id = $1 AND state = $8 AND job_id = $4 AND ",
        still_held!("5", "6")
    );
    let result = sqlx::query(SQL)
        .bind(job.id)
        .bind(at)
        .bind(why)
        .bind(&job.job_id)
        .bind(&lease.holder)
        .bind(lease.generation)
        .bind(WindowState::Pending)
        .bind(WindowState::Submitted)
        .execute(&mut *conn)
        .await?;
    Ok(applied(result))
}

/// The next window due for submission: gaps before audits (a gap is known
/// to have lost something), oldest first.
pub async fn next_pending(
    conn: &mut PgConnection,
    webhook: &str,
    now: DateTime<Utc>,
) -> Result<Option<PendingWindow>> {
    sqlx::query_as(
        "SELECT id, window_from, window_to, attempts, conflicts, kind FROM replay_windows
         WHERE webhook_id = $1 AND state = $3 AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
         ORDER BY kind = $4, window_from LIMIT 1",
    )
    .bind(webhook)
    .bind(now)
    .bind(WindowState::Pending)
    .bind(WindowKind::Audit)
    .fetch_optional(&mut *conn)
    .await
}

/// The webhooks that have a gap window waiting (watched or not: which
/// count is [`crate::decisions::gap_hold`]'s rule).
pub async fn gaps_waiting(conn: &mut PgConnection) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT DISTINCT webhook_id FROM replay_windows WHERE kind = $1 AND state = $2",
    )
    .bind(WindowKind::Gap)
    .bind(WindowState::Pending)
    .fetch_all(&mut *conn)
    .await
}

/// Expires a pending window (it aged past what X replays).
pub async fn expire(conn: &mut PgConnection, lease: &Lease, id: i64, why: &str) -> Result<bool> {
    const SQL: &str = concat!(
        "UPDATE replay_windows SET state = $5, last_error = $2 WHERE id = $1 AND state = $6 AND ",
        still_held!("3", "4")
    );
    let result = sqlx::query(SQL)
        .bind(id)
        .bind(why)
        .bind(&lease.holder)
        .bind(lease.generation)
        .bind(WindowState::Expired)
        .bind(WindowState::Pending)
        .execute(&mut *conn)
        .await?;
    Ok(applied(result))
}

/// Moves a pending window's start later (its oldest minutes aged out).
pub async fn trim_start(
    conn: &mut PgConnection,
    lease: &Lease,
    window: &PendingWindow,
    from: DateTime<Utc>,
) -> Result<bool> {
    const SQL: &str = concat!(
        "UPDATE replay_windows SET window_from = $2 WHERE id = $1 AND state = $6 AND window_from = $3 AND ",
        still_held!("4", "5")
    );
    let result = sqlx::query(SQL)
        .bind(window.id)
        .bind(from)
        .bind(window.from)
        .bind(&lease.holder)
        .bind(lease.generation)
        .bind(WindowState::Pending)
        .execute(&mut *conn)
        .await?;
    Ok(applied(result))
}

/// Records that X accepted the window as `job_id`. Not conditional on the
/// lease: X runs the job whoever holds it now, and forgetting an accepted
/// job would submit its window again. Only a pending window is marked.
pub async fn mark_submitted(
    conn: &mut PgConnection,
    id: i64,
    job_id: &str,
    at: DateTime<Utc>,
) -> Result<bool> {
    let result = sqlx::query(
        "UPDATE replay_windows SET state = $4, job_id = $2, submitted_at = $3, fence_at = NULL, attempts = attempts + 1, last_error = NULL
         WHERE id = $1 AND state = $5",
    )
    .bind(id)
    .bind(job_id)
    .bind(at)
    .bind(WindowState::Submitted)
    .bind(WindowState::Pending)
    .execute(&mut *conn)
    .await?;
    Ok(applied(result))
}

pub async fn retry_later(
    conn: &mut PgConnection,
    lease: &Lease,
    id: i64,
    at: DateTime<Utc>,
    error: &str,
    conflict: bool,
) -> Result<bool> {
    const SQL: &str = concat!(
        "UPDATE replay_windows SET attempts = attempts + 1, conflicts = conflicts + $4, next_attempt_at = $2, last_error = $3
         WHERE id = $1 AND state = $7 AND ",
        still_held!("5", "6")
    );
    let result = sqlx::query(SQL)
        .bind(id)
        .bind(at)
        .bind(error)
        .bind(i32::from(conflict))
        .bind(&lease.holder)
        .bind(lease.generation)
        .bind(WindowState::Pending)
        .execute(&mut *conn)
        .await?;
    Ok(applied(result))
}

/// How many windows of `webhook` are in each kind and state.
pub async fn window_counts(
    conn: &mut PgConnection,
    webhook: &str,
) -> Result<Vec<(WindowKind, WindowState, i64)>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT kind, state, count(*) FROM replay_windows WHERE webhook_id = $1 GROUP BY kind, state",
    )
    .bind(webhook)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(kind, state, n)| {
            Some((
                WindowKind::try_from(kind).ok()?,
                WindowState::try_from(state).ok()?,
                n,
            ))
        })
        .collect())
}

/// Where the oldest gap still waiting or replaying begins.
pub async fn oldest_open_gap(
    conn: &mut PgConnection,
    webhook: &str,
) -> Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT min(window_from) FROM replay_windows WHERE webhook_id = $1 AND kind = $2 AND state = ANY($3)",
    )
    .bind(webhook)
    .bind(WindowKind::Gap)
    .bind([WindowState::Pending, WindowState::Submitted])
    .fetch_one(&mut *conn)
    .await
}

/// The 15 minutes X counts requests over.
pub const RATE_WINDOW: TimeDelta = TimeDelta::minutes(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_kinds_read_back_what_they_write() {
        for state in WindowState::ALL {
            assert_eq!(
                WindowState::try_from(state.as_str().to_owned()).ok(),
                Some(state)
            );
        }
        for kind in WindowKind::ALL {
            assert_eq!(
                WindowKind::try_from(kind.as_str().to_owned()).ok(),
                Some(kind)
            );
        }
        let unknown = WindowState::try_from("Pending".to_owned()).unwrap_err();
        assert_eq!(unknown.to_string(), "unknown value `Pending`");
    }
}
