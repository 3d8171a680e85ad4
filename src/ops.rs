//! Operator commands: webhooks, subscriptions and replay, on top of
//! `aaa-xapi`. Tables for people, `--json` for scripts, and exit codes that
//! say whose fault it was.

use std::process::ExitCode;

use aaa_common::Clock;
use aaa_xapi::{Credentials, XApiArgs, XClient, XError};
use chrono::{DateTime, Utc};
use comfy_table::Table;
use serde_json::{Value, json};

/// Exit codes: 0 ok, 2 the request was wrong (usage, window, credentials),
/// 3 X refused it, 4 X could not be reached or failed.
pub(crate) fn exit_code(err: &XError) -> ExitCode {
    match err {
        XError::Invalid(_) => ExitCode::from(2),
        XError::Refused { .. } | XError::RateLimited { .. } | XError::Unauthorized { .. } => {
            ExitCode::from(3)
        }
        XError::Unavailable { .. }
        | XError::Transport(_)
        | XError::Timeout(_)
        | XError::Unexpected(_) => ExitCode::from(4),
    }
}

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

#[derive(Clone, clap::Subcommand)]
pub enum WebhooksCommand {
    /// Register a webhook URL (X runs a CRC against it first).
    Register {
        #[arg(long)]
        url: String,
    },
    /// List registered webhooks and whether each is valid.
    List,
    /// Ask X to re-run CRC; a webhook that failed CRC gets nothing until this succeeds.
    Validate { id: String },
    /// Delete a webhook.
    Delete { id: String },
}

#[derive(Clone, clap::Subcommand)]
pub enum SubscriptionsCommand {
    /// Subscribe the user whose access token is in AAA_X_ACCESS_TOKEN(_SECRET).
    Add {
        #[arg(long)]
        webhook: String,
    },
    /// Whether that user is subscribed.
    Check {
        #[arg(long)]
        webhook: String,
    },
    /// Every subscribed user id of a webhook.
    List {
        #[arg(long)]
        webhook: String,
    },
    /// Active subscriptions and the provisioned limit.
    Count,
    /// Remove a user's subscription.
    Remove {
        #[arg(long)]
        webhook: String,
        #[arg(long)]
        user: String,
    },
    /// X Activity API subscriptions: one per event type and filter.
    #[command(subcommand)]
    Activity(crate::activity_ops::ActivityCommand),
    /// Create the X Activity API subscriptions that cover every account
    /// subscribed to --webhook on the Account Activity API: for each account
    /// one per event type (posts, deletes, mentions, replies, quotes,
    /// reposts, likes, follows, blocks, mutes, DMs, typing, read receipts)
    /// with filter.user_id, plus one oauth.revoke for the app, all delivered
    /// to the same webhook and tagged `aaa:<user>:<event_type>`.
    ///
    /// Idempotent: what already exists on the webhook is skipped, so a run
    /// that stopped halfway is simply run again. --dry-run prints the plan
    /// and changes nothing. X needs the account's user context for private
    /// event types (likes, DMs, blocks, mutes); refusals are listed per
    /// subscription and the rest still created (exit code 3 if any).
    Migrate {
        /// The webhook the accounts are subscribed to; the new subscriptions
        /// deliver to it too.
        #[arg(long)]
        webhook: String,
        /// Print what would be created; create nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Before the Account Activity API ends (2027-01-01): every account on
    /// --webhook, which product it is on (aaa, aaa+xaa, xaa), and the event
    /// types its AAA subscription carries that no X Activity API
    /// subscription covers yet; then whether ending AAA now would lose
    /// anything. Changes nothing. With AAA_X_BUDGET_DATABASE_URL, also when
    /// each account's last event arrived in each envelope (24 h).
    MigrateCheck {
        #[arg(long)]
        webhook: String,
    },
}

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
pub(crate) async fn with_client(
    args: &OpsArgs,
    clock: Clock,
    command: impl AsyncFnOnce(&XClient) -> Result<(), XError>,
) -> Result<(), XError> {
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

pub async fn webhooks(args: &OpsArgs, x: &XClient, command: WebhooksCommand) -> Result<(), XError> {
    let hooks = match command {
        WebhooksCommand::Register { url } => vec![x.register_webhook(&url).await?],
        WebhooksCommand::List => x.list_webhooks().await?,
        WebhooksCommand::Validate { id } => {
            let valid = x.validate_webhook(&id).await?;
            print(args, json!({"id": id, "valid": valid}), || {
                table(&["id", "valid"], vec![vec![id.clone(), valid.to_string()]])
            });
            return Ok(());
        }
        WebhooksCommand::Delete { id } => {
            x.delete_webhook(&id).await?;
            print(args, json!({"id": id, "deleted": true}), || {
                table(&["id", "deleted"], vec![vec![id.clone(), "true".into()]])
            });
            return Ok(());
        }
    };
    let rows = hooks
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.url.clone(),
                w.valid.to_string(),
                w.created_at.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print(args, json!(hooks), || {
        table(&["id", "url", "valid", "created_at"], rows)
    });
    Ok(())
}

pub async fn subscriptions(
    args: &OpsArgs,
    x: &XClient,
    command: SubscriptionsCommand,
) -> Result<(), XError> {
    match command {
        SubscriptionsCommand::Add { webhook } => {
            x.subscribe(&webhook).await?;
            print(
                args,
                json!({"webhook_id": webhook, "subscribed": true}),
                || {
                    table(
                        &["webhook", "subscribed"],
                        vec![vec![webhook.clone(), "true".into()]],
                    )
                },
            );
        }
        SubscriptionsCommand::Check { webhook } => {
            let subscribed = x.check_subscription(&webhook).await?;
            print(
                args,
                json!({"webhook_id": webhook, "subscribed": subscribed}),
                || {
                    table(
                        &["webhook", "subscribed"],
                        vec![vec![webhook.clone(), subscribed.to_string()]],
                    )
                },
            );
        }
        SubscriptionsCommand::List { webhook } => {
            let users = x.list_subscriptions(&webhook).await?;
            let rows = users.iter().map(|u| vec![u.clone()]).collect();
            print(
                args,
                json!({"webhook_id": webhook, "user_ids": users}),
                || table(&["user_id"], rows),
            );
        }
        SubscriptionsCommand::Count => {
            let count = x.subscription_count().await?;
            print(args, json!(count), || {
                table(
                    &["subscriptions", "provisioned"],
                    vec![vec![
                        count.subscriptions_count_all.clone(),
                        count.provisioned_count.clone(),
                    ]],
                )
            });
        }
        SubscriptionsCommand::Activity(command) => {
            crate::activity_ops::activity(args, x, command).await?
        }
        SubscriptionsCommand::MigrateCheck { webhook } => {
            crate::activity_ops::migrate_check(args, x, &webhook).await?
        }
        SubscriptionsCommand::Migrate { webhook, dry_run } => {
            crate::activity_ops::migrate(args, x, &webhook, dry_run).await?
        }
        SubscriptionsCommand::Remove { webhook, user } => {
            x.unsubscribe(&webhook, &user).await?;
            print(
                args,
                json!({"webhook_id": webhook, "user_id": user, "subscribed": false}),
                || {
                    table(
                        &["webhook", "user_id", "subscribed"],
                        vec![vec![webhook.clone(), user.clone(), "false".into()]],
                    )
                },
            );
        }
    }
    Ok(())
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

    #[test]
    fn exit_codes_separate_user_x_and_transport() {
        assert_eq!(exit_code(&XError::Invalid("x".into())), ExitCode::from(2));
        assert_eq!(
            exit_code(&XError::from_response(
                409,
                None,
                r#"{"title":"ReplayConflictError"}"#.into()
            )),
            ExitCode::from(3)
        );
        assert_eq!(
            exit_code(&XError::Transport("refused".into())),
            ExitCode::from(4)
        );
    }
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
