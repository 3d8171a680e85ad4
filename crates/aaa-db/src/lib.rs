//! Postgres plumbing shared by every service that touches the database.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Every migration in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid database URL: {0}")]
    Url(#[source] sqlx::Error),
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "database schema is at version {applied} but this build needs {required}: run `aaa migrate` first"
    )]
    SchemaBehind { applied: i64, required: i64 },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error(
        "migrations waited {waited_secs} s for a lock and gave up; held by: {holders} (any role can take the migrator's advisory lock: end that session, then run `aaa migrate` again)"
    )]
    LockWait { waited_secs: u64, holders: String },
}

/// Connection settings. The URL holds a password, so it is a secret: it comes
/// from the environment (or a file via the shell), never from logs.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Postgres URL, e.g. postgres://aaa_writer@db:5432/aaa. Read from the
    /// environment only, so the password never shows in a process list.
    #[arg(
        long = "database-url",
        env = "AAA_DATABASE_URL",
        hide_env_values = true
    )]
    pub url: SecretString,
    /// Maximum pool size.
    #[arg(
        long = "database-max-connections",
        env = "AAA_DATABASE_MAX_CONNECTIONS",
        default_value_t = 8
    )]
    pub max_connections: u32,
    /// Longest a statement may run (Postgres `statement_timeout`); past it
    /// the statement fails and is retried like any transient error.
    #[arg(
        long = "database-statement-timeout-ms",
        env = "AAA_DATABASE_STATEMENT_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub statement_timeout_ms: u64,
    /// Longest wait for a lock (`lock_timeout`): a write behind a lock that
    /// is not released (another replica frozen mid-transaction, a reader's
    /// open transaction) fails and is retried instead of waiting forever.
    #[arg(
        long = "database-lock-timeout-ms",
        env = "AAA_DATABASE_LOCK_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub lock_timeout_ms: u64,
    /// Postgres ends a session of this process that has sat this long in an
    /// open transaction without sending anything
    /// (`idle_in_transaction_session_timeout`): a replica frozen
    /// mid-transaction (paused, swapped out, stopped in a debugger) then
    /// releases its locks, and the other replicas go on.
    #[arg(
        long = "database-idle-in-transaction-timeout-ms",
        env = "AAA_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub idle_in_transaction_timeout_ms: u64,
}

impl DatabaseArgs {
    /// A lazily connecting pool: services start (and report not-ready) while
    /// Postgres is down, instead of crash-looping.
    pub fn pool(&self) -> Result<PgPool, Error> {
        let options: PgConnectOptions = self.url.expose_secret().parse().map_err(Error::Url)?;
        // A name set in the URL wins: it tells replicas apart in
        // pg_stat_activity.
        let name = options.get_application_name().unwrap_or("aaa").to_owned();
        let options = options.application_name(&name).options([
            (
                "statement_timeout",
                format!("{}ms", self.statement_timeout_ms),
            ),
            ("lock_timeout", format!("{}ms", self.lock_timeout_ms)),
            (
                "idle_in_transaction_session_timeout",
                format!("{}ms", self.idle_in_transaction_timeout_ms),
            ),
        ]);
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options))
    }
}

/// The newest migration this build carries.
pub fn required_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Applies pending migrations; returns the schema version afterwards.
///
/// Every lock the migrations wait for is waited for at most `lock_wait`:
/// the advisory lock that keeps two migrations apart is one any role can
/// take (a reader's session holding it would otherwise hang `aaa migrate`
/// for good), and a DDL statement behind a long transaction would too.
/// Past it the migration stops with who holds advisory locks here.
pub async fn migrate(pool: &PgPool, lock_wait: std::time::Duration) -> Result<i64, Error> {
    let mut conn = pool.acquire().await.map_err(Error::Connect)?;
    sqlx::query("SELECT set_config('lock_timeout', $1, false)")
        .bind(format!("{}ms", lock_wait.as_millis().max(1)))
        .execute(&mut *conn)
        .await?;
    // A migration may rewrite a large table: the services' statement and
    // idle limits do not apply to it.
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET idle_in_transaction_session_timeout = 0")
        .execute(&mut *conn)
        .await?;
    let result = MIGRATOR.run(&mut *conn).await;
    let timed_out = match &result {
        Err(
            sqlx::migrate::MigrateError::Execute(error)
            | sqlx::migrate::MigrateError::ExecuteMigration(error, _),
        ) => error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "55P03"),
        _ => false,
    };
    if timed_out {
        let holders: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT format('%s (pid %s, %s)', a.usename, a.pid, coalesce(nullif(a.application_name, ''), 'no application name'))
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_default();
        let holders = if holders.is_empty() {
            "a session holding a table lock (a long transaction?)".to_owned()
        } else {
            holders.join(", ")
        };
        return Err(Error::LockWait {
            waited_secs: lock_wait.as_secs(),
            holders,
        });
    }
    result?;
    sqlx::query("RESET lock_timeout")
        .execute(&mut *conn)
        .await?;
    drop(conn);
    applied_version(pool).await
}

/// Highest successfully applied migration, 0 on an empty database.
pub async fn applied_version(pool: &PgPool) -> Result<i64, Error> {
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await
        .map_err(Error::Connect)?;
    if table.is_none() {
        return Ok(0);
    }
    let version: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(version.unwrap_or(0))
}

/// Refuses a schema that is behind this build, with a message that says what
/// to do. A newer schema is allowed (migrations are additive, and during a
/// rolling upgrade old replicas run against it) but logged.
pub async fn ensure_schema_current(pool: &PgPool) -> Result<(), Error> {
    let applied = applied_version(pool).await?;
    let required = required_version();
    if applied < required {
        return Err(Error::SchemaBehind { applied, required });
    }
    if applied > required {
        tracing::warn!(
            message = "database schema is newer than this build",
            applied,
            required
        );
    }
    Ok(())
}
