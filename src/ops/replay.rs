//! `aaa replay ...`: submit a replay of a window, and see the jobs'
//! outcomes as the pipeline stored them.

use aaa_common::Clock;
use aaa_xapi::{XClient, XError};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::ops::base::{OpsArgs, parse_time, print, table};

#[derive(Clone, clap::Subcommand)]
pub enum ReplayCommand {
    /// Ask X to re-deliver a window of past activity (one job per webhook at a time).
    ///
    /// X's rules, checked here before anything is sent: --from within the last
    /// 24 hours and at least 31 minutes ago, --to at least 10 minutes ago and
    /// after --from. Times are RFC 3339 (2026-11-25T10:00:00Z) or yyyymmddhhmm
    /// UTC. Both are rounded down to X's whole minutes (X checks the minute it
    /// receives); the minutes sent are printed with the job.
    Submit {
        #[arg(long)]
        webhook: String,
        /// Start of the window (inclusive).
        #[arg(long, value_parser = parse_time)]
        from: DateTime<Utc>,
        /// End of the window: the minute holding it is the `to_date` sent
        /// (replayed whole where X's `to_date` is inclusive).
        #[arg(long, value_parser = parse_time)]
        to: DateTime<Utc>,
    },
}

pub async fn replay(
    args: &OpsArgs,
    x: &XClient,
    command: ReplayCommand,
    clock: Clock,
) -> Result<(), XError> {
    let ReplayCommand::Submit { webhook, from, to } = command;
    let rules = x.replay_rules();
    let window = aaa_replay_window::operator_window(from, to, rules);
    let job = x.submit_replay(&webhook, window, clock.now()).await?;
    print(
        args,
        json!({"webhook_id": webhook, "job_id": job.job_id, "created_at": job.created_at, "from_date": job.from_date, "to_date": job.to_date}),
        || {
            table(
                &["job_id", "webhook", "from_date", "to_date", "created_at"],
                vec![vec![
                    job.job_id.clone(),
                    webhook.clone(),
                    job.from_date.clone(),
                    job.to_date.clone(),
                    job.created_at.clone().unwrap_or_default(),
                ]],
            )
        },
    );
    eprintln!(
        "X replays from_date={} to_date={} ({}){}; the job's outcome arrives as a replay_job_status delivery: `aaa replay status` shows it",
        job.from_date,
        job.to_date,
        if rules.to_inclusive {
            "to_date inclusive"
        } else {
            "to_date exclusive"
        },
        if !rules.to_inclusive && window.to_exclusive < to {
            format!(", so the seconds of {to} past that minute are not replayed")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `aaa replay status`: replay jobs as their completion messages left them
/// (`replay_jobs`), with the window the watermark submitted, if it did.
pub async fn replay_status(
    args: &OpsArgs,
    database: &aaa_db::DatabaseArgs,
    webhook: Option<String>,
) -> anyhow::Result<()> {
    let pool = database.pool()?;
    type JobRow = (
        String,
        Option<String>,
        String,
        Option<String>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<String>,
    );
    let rows: Vec<JobRow> = sqlx::query_as(
        "SELECT j.job_id, j.webhook_id, j.job_state, j.description, j.reported_at,
                w.window_from, w.window_to, w.kind
         FROM replay_jobs j LEFT JOIN replay_windows w ON w.job_id = j.job_id
         WHERE $1::text IS NULL OR j.webhook_id = $1
         ORDER BY j.reported_at DESC LIMIT 100",
    )
    .bind(webhook)
    .fetch_all(&pool)
    .await?;
    let jobs: Vec<Value> = rows
        .iter()
        .map(|(job_id, webhook_id, state, description, at, from, to, kind)| {
            json!({"job_id": job_id, "webhook_id": webhook_id, "job_state": state,
                   "description": description, "reported_at": at,
                   "window_from": from, "window_to": to, "window_kind": kind.as_deref().unwrap_or("operator")})
        })
        .collect();
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let table_rows = jobs
        .iter()
        .map(|j| {
            [
                "job_id",
                "webhook_id",
                "job_state",
                "description",
                "reported_at",
                "window_from",
                "window_to",
                "window_kind",
            ]
            .iter()
            .map(|k| text(&j[*k]))
            .collect()
        })
        .collect();
    print(args, json!(jobs), || {
        table(
            &[
                "job_id",
                "webhook",
                "state",
                "description",
                "reported_at",
                "from",
                "to",
                "kind",
            ],
            table_rows,
        )
    });
    Ok(())
}
