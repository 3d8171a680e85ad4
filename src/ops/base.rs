//! What every operator command shares: X's client (every request it sent
//! recorded in the watermark's budget), and output as tables for people or
//! JSON for scripts.

use aaa_common::Clock;
use aaa_xapi::{Credentials, XApiArgs, XClient, XError};
use chrono::{DateTime, Utc};
use comfy_table::Table;
use serde_json::Value;

#[derive(clap::Args)]
pub struct OpsArgs {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The watermark's database, as a role that may record requests to X
    /// (aaa_operator): every request this command sends (retries included) is
    /// recorded there, so the watermark's X budget (15 webhook reads, 100
    /// replays per 15 minutes, shared with the operators) counts it. The
    /// X Activity API subscriptions commands also record the subscriptions
    /// there (`xaa_subscriptions`: stored events are routed back to theirs
    /// by tag in `v_xaa_events`), and the listing shows what was stored per
    /// subscription in the last 24 h.
    #[arg(
        long = "x-budget-database-url",
        env = "AAA_X_BUDGET_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub budget_database_url: Option<String>,
    #[command(flatten)]
    pub x: XApiArgs,
}

/// RFC 3339 or X's `yyyymmddhhmm`.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    aaa_replay_window::parse_minute("time", text).map_err(|_| {
        format!("`{text}` is neither RFC 3339 (2026-11-25T10:00:00Z) nor yyyymmddhhmm")
    })
}

pub(crate) fn client(args: &OpsArgs) -> Result<XClient, XError> {
    XClient::new(&args.x, Credentials::from_env()?)
}

/// Runs an operator command against X, then records every request it sent
/// in the watermark's X budget (`--x-budget-database-url`), whether the
/// command succeeded or not: a refused or failed request costs the same.
pub(crate) async fn with_client<E: From<XError>>(
    args: &OpsArgs,
    clock: Clock,
    command: impl AsyncFnOnce(&XClient) -> Result<(), E>,
) -> Result<(), E> {
    let x = client(args)?;
    let result = command(&x).await;
    if let Some(url) = &args.budget_database_url
        && let Err(error) = record_requests(url, &x, clock).await
    {
        eprintln!(
            "warning: the requests to X were not recorded in the watermark's budget: {error}"
        );
    }
    result
}

async fn record_requests(url: &str, x: &XClient, clock: Clock) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    let sent = x.requests_sent();
    if sent.is_empty() {
        return Ok(());
    }
    let mut conn = sqlx::PgConnection::connect(url).await?;
    for (endpoint, n) in sent {
        for _ in 0..n {
            aaa_watermark::store::record_x_request(&mut conn, endpoint, clock.now(), "operator")
                .await?;
        }
    }
    Ok(())
}

pub(crate) fn print(args: &OpsArgs, value: Value, table: impl FnOnce() -> Table) {
    if args.json {
        println!("{value}");
    } else {
        println!("{}", table());
    }
}

pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_both_forms() {
        let t: DateTime<Utc> = "2026-11-25T10:05:00Z".parse().unwrap();
        assert_eq!(parse_time("2026-11-25T10:05:00Z"), Ok(t));
        assert_eq!(parse_time("202611251005"), Ok(t));
        assert_eq!(parse_time("2026-11-25T11:05:00+01:00"), Ok(t));
        assert!(
            parse_time("yesterday")
                .unwrap_err()
                .contains("yyyymmddhhmm")
        );
    }
}
