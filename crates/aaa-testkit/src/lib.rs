//! The test harness every end-to-end test stands on (after zero2prod): each
//! test gets a fresh database in the project's throwaway Postgres cluster, its
//! own real Kafka-protocol broker on a free loopback port, and the `aaa`
//! services as real processes that can be killed, paused and restarted.
//!
//! `scripts/test.sh` starts the cluster and exports `AAA_TEST_DATABASE_URL`
//! and `AAA_NISSHI_BIN`; outside it these tests explain what to run.

mod balancer;
mod broker;
mod postgres;
mod process;
mod sim;
mod stack;

use std::future::Future;
use std::time::{Duration, Instant};

pub use balancer::Balancer;
pub use broker::{Broker, KafkaProxy};
pub use postgres::PgServer;
pub use process::Service;
pub use sim::{
    Key, SIM_BEARER, SimProcess, Traffic, delivered_keys, delivered_keys_in, keys_in, keys_of,
    stored_keys,
};
pub use stack::{SECOND_WEBHOOK_ID, Stack, StackOptions};

/// Polls `probe` until it returns `Some`, or panics after `timeout` naming
/// `what`. The one way tests wait: on a condition, never on a bare sleep.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sum of the samples in Prometheus text whose lines `select` picks.
pub fn sum_samples(text: &str, select: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| select(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sum of the samples on `<admin>/metrics` (`admin`: `http://host:port`)
/// whose lines `select` picks.
pub async fn metric_where(admin: &str, select: impl Fn(&str) -> bool) -> f64 {
    let response = reqwest::get(format!("{admin}/metrics"))
        .await
        .expect("metrics endpoint");
    sum_samples(&response.text().await.expect("metrics text"), select)
}

/// Sum of the samples on `<admin>/metrics` whose line starts with `prefix`
/// (a metric name, or a name with labels).
pub async fn metric(admin: &str, prefix: &str) -> f64 {
    metric_where(admin, |line| line.starts_with(prefix)).await
}

/// Simulator arguments of the gap scenarios: 20 accounts, no interactions
/// and no revokes, so every delivery is one plain activity.
pub const SMALL_SIM_ARGS: &[&str] = &[
    "--accounts",
    "20",
    "--interaction-share",
    "0",
    "--revoke-share",
    "0",
];

/// A fresh, migrated (or empty) database for one test.
pub struct TestDb {
    /// The cluster superuser's URL of this database (tests' own queries).
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl TestDb {
    fn shared_cluster_url() -> String {
        std::env::var("AAA_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!("AAA_TEST_DATABASE_URL is not set: run the tests through scripts/test.sh")
        })
    }

    /// The cluster's superuser URL (of its `postgres` database).
    fn admin_url(&self) -> String {
        let (base, _) = self.url.rsplit_once('/').expect("URL has a database path");
        format!("{base}/postgres")
    }

    /// A new database with every migration applied.
    pub async fn migrated() -> TestDb {
        TestDb::migrated_on(&Self::shared_cluster_url()).await
    }

    /// A new migrated database on another cluster (e.g. a [`PgServer`]).
    pub async fn migrated_on(admin_url: &str) -> TestDb {
        let db = TestDb::empty_on(admin_url).await;
        aaa_db::migrate(&db.pool, std::time::Duration::from_secs(60))
            .await
            .expect("migrations apply");
        db
    }

    /// A new database with nothing in it.
    pub async fn empty() -> TestDb {
        TestDb::empty_on(&Self::shared_cluster_url()).await
    }

    async fn empty_on(admin_url: &str) -> TestDb {
        let admin_url = admin_url.to_owned();
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("connect to the test cluster");
        let name = format!("aaa_test_{}", uuid::Uuid::new_v4().simple());
        // The name is ours (a UUID), not input: safe to splice.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let (base, _) = admin_url.rsplit_once('/').expect("URL has a database path");
        let url = format!("{base}/{name}");
        let pool = sqlx::PgPool::connect(&url)
            .await
            .expect("connect to test database");
        TestDb { url, pool }
    }

    /// A login in `aaa_writer`, older releases' role for every service (now
    /// the union of `aaa_consumer` and `aaa_watermark`).
    pub async fn writer_url(&self) -> String {
        self.login_url("aaa_writer").await
    }

    /// What the consumer connects with: a member of `aaa_consumer` and
    /// nothing more, as in production (docs/deploy.md), so a missing grant
    /// fails the tests.
    pub async fn consumer_url(&self) -> String {
        self.login_url("aaa_consumer").await
    }

    /// What the watermark connects with: a member of `aaa_watermark` only.
    pub async fn watermark_url(&self) -> String {
        self.login_url("aaa_watermark").await
    }

    /// A pool logged in as the watermark (`watermark_url`).
    pub async fn watermark_pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.watermark_url().await)
            .await
            .expect("connect as the watermark")
    }

    /// An operator who may record requests to X: `aaa_operator`.
    pub async fn operator_url(&self) -> String {
        self.login_url("aaa_operator").await
    }

    /// This database's URL for operators and analysts: `aaa_reader` only.
    pub async fn reader_url(&self) -> String {
        self.login_url("aaa_reader").await
    }

    /// A login `<group>_test` that is a member of `group` (a role the
    /// migrations create), created on first use.
    async fn login_url(&self, group: &'static str) -> String {
        let login = format!("{group}_test");
        // Roles are cluster-wide and tests run in parallel: creating one that
        // another test just created is fine. Both names are ours, not input.
        let create = format!(
            "DO $$ BEGIN CREATE ROLE {login} LOGIN IN ROLE {group}; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        );
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&self.pool)
            .await
            .expect("create a test login");
        let mut url = reqwest::Url::parse(&self.url).expect("database URL");
        url.set_username(&login)
            .expect("database URL takes a user name");
        url.to_string()
    }

    fn name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or_default()
    }

    async fn set_allow_connections(&self, allow: bool) {
        let admin = sqlx::PgPool::connect(&self.admin_url())
            .await
            .expect("connect to the test cluster");
        // The name is ours (a UUID), not input: safe to splice.
        let alter = format!("ALTER DATABASE {} ALLOW_CONNECTIONS {allow}", self.name());
        sqlx::query(sqlx::AssertSqlSafe(alter))
            .execute(&admin)
            .await
            .expect("ALTER DATABASE");
        if !allow {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(self.name())
            .execute(&admin)
            .await
            .expect("terminate connections");
        }
        admin.close().await;
    }

    /// Makes this database unreachable, as if its server were down: new
    /// connections are refused and open ones are terminated.
    pub async fn go_down(&self) {
        self.set_allow_connections(false).await;
    }

    pub async fn come_back(&self) {
        self.set_allow_connections(true).await;
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// A free port on 127.0.0.1 (for processes that cannot report one they bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
