//! Where Postgres spends a scenario: statements by execution time
//! (`pg_stat_statements`, loaded by scripts/bench.sh) and write-ahead log by
//! record type (`pg_walinspect`). Either extension missing leaves its part
//! empty: the profile explains a ratio, it is not the measurement.

use aaa_testkit::TestDb;

use crate::Error;

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatementCost {
    /// The statement's first words, whitespace collapsed.
    pub statement: String,
    pub calls: i64,
    pub rows: i64,
    pub total_ms: f64,
    /// Of all statements' execution time in the scenario.
    pub share: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WalCost {
    /// `resource_manager/record_type`, e.g. `Heap/INSERT`, `Btree/INSERT_LEAF`
    /// (full-page images included in its bytes).
    pub record: String,
    pub count: i64,
    pub bytes: i64,
    /// Of all WAL bytes in the scenario.
    pub share: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgProfile {
    pub statements: Vec<StatementCost>,
    pub wal: Vec<WalCost>,
}

/// Starts a profile: clears the statement statistics (cluster-wide, so
/// only one scenario may profile at a time) and returns the WAL position.
pub async fn start(db: &TestDb) -> Result<String, Error> {
    for extension in ["pg_stat_statements", "pg_walinspect"] {
        let sql = format!("CREATE EXTENSION IF NOT EXISTS {extension}");
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db.pool)
            .await
        {
            eprintln!("  (no {extension}: {error})");
        }
    }
    let _ = sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&db.pool)
        .await;
    Ok(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.pool)
        .await?)
}

/// The `top` most expensive statements and WAL record types since `start`.
pub async fn finish(db: &TestDb, wal_from: &str, top: i64) -> PgProfile {
    let statements: Vec<(String, i64, i64, f64, f64)> = sqlx::query_as(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90), calls, rows, total_exec_time,
                total_exec_time / nullif(sum(total_exec_time) OVER (), 0)
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY total_exec_time DESC LIMIT $1",
    )
    .bind(top)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|error| {
        eprintln!("  (no statement profile: {error})");
        Vec::new()
    });
    let wal: Vec<(String, i64, i64, f64)> = sqlx::query_as(
        "SELECT \"resource_manager/record_type\", count::int8, combined_size::int8,
                combined_size_percentage / 100
         FROM pg_get_wal_stats($1::pg_lsn, pg_current_wal_lsn(), true)
         WHERE count > 0 ORDER BY combined_size DESC LIMIT $2",
    )
    .bind(wal_from)
    .bind(top)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|error| {
        eprintln!("  (no WAL profile: {error})");
        Vec::new()
    });
    PgProfile {
        statements: statements
            .into_iter()
            .map(|(statement, calls, rows, total_ms, share)| StatementCost {
                statement,
                calls,
                rows,
                total_ms,
                share,
            })
            .collect(),
        wal: wal
            .into_iter()
            .map(|(record, count, bytes, share)| WalCost {
                record,
                count,
                bytes,
                share,
            })
            .collect(),
    }
}

/// Markdown tables of a profile.
pub fn markdown(profile: &PgProfile, deliveries: usize) -> String {
    use std::fmt::Write;
    let mut md = String::new();
    if !profile.statements.is_empty() {
        let _ = writeln!(
            md,
            "\n| statement | calls | rows | total ms | share |\n|---|---|---|---|---|"
        );
        for s in &profile.statements {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {:.0} | {:.1} % |",
                s.statement.replace('|', "\\|"),
                s.calls,
                s.rows,
                s.total_ms,
                s.share * 100.0
            );
        }
    }
    if !profile.wal.is_empty() {
        let _ = writeln!(
            md,
            "\n| WAL record | count | bytes per delivery | share |\n|---|---|---|---|"
        );
        for w in &profile.wal {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.1} % |",
                w.record,
                w.count,
                w.bytes as f64 / deliveries.max(1) as f64,
                w.share * 100.0
            );
        }
    }
    md
}
