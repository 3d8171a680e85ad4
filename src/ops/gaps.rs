//! `aaa gaps list`: the watermark's replay windows.

use chrono::{DateTime, Utc};

use crate::ops::base::table;

/// `aaa gaps list`: the watermark's replay windows.
pub async fn gaps_list(
    json_output: bool,
    database: &aaa_db::DatabaseArgs,
    webhook: Option<String>,
) -> anyhow::Result<()> {
    let pool = database.pool()?;
    let rows: Vec<GapRow> = sqlx::query_as(
        "SELECT webhook_id, kind, window_from, window_to, state, job_id, attempts, conflicts, recovered, duplicates, last_error
         FROM v_gaps WHERE ($1::text IS NULL OR webhook_id = $1) ORDER BY window_from DESC LIMIT 500",
    )
    .bind(webhook)
    .fetch_all(&pool)
    .await?;
    if json_output {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        let cells = rows
            .iter()
            .map(|g| {
                vec![
                    g.webhook_id.clone(),
                    g.kind.clone(),
                    g.window_from.to_rfc3339(),
                    g.window_to.to_rfc3339(),
                    g.state.clone(),
                    g.job_id.clone().unwrap_or_default(),
                    g.attempts.to_string(),
                    g.recovered.to_string(),
                    g.duplicates.to_string(),
                    g.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &[
                    "webhook",
                    "kind",
                    "from",
                    "to",
                    "state",
                    "job_id",
                    "attempts",
                    "recovered",
                    "duplicates",
                    "last_error"
                ],
                cells
            )
        );
    }
    Ok(())
}

/// One replay window as operators see it (`v_gaps`): a gap coverage found,
/// or an audit of a closed slot.
#[derive(Debug, sqlx::FromRow, serde::Serialize)]
struct GapRow {
    webhook_id: String,
    kind: String,
    #[serde(rename = "from")]
    window_from: DateTime<Utc>,
    #[serde(rename = "to")]
    window_to: DateTime<Utc>,
    state: String,
    job_id: Option<String>,
    attempts: i32,
    conflicts: i32,
    recovered: i64,
    duplicates: i64,
    last_error: Option<String>,
}
