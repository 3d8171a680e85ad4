//! `aaa subscriptions activity ...` and `aaa subscriptions migrate`: the X
//! Activity API's subscriptions, and the move of Account Activity accounts
//! onto them (`docs/xaa.md`).

use aaa_xapi::{ActivityFilter, ActivitySubscription, NewActivitySubscription, XClient, XError};
use serde_json::json;

use crate::error::CliError;
use crate::ops::base::{OpsArgs, print, table};

#[derive(Clone, clap::Subcommand)]
pub enum ActivityCommand {
    /// Create one subscription (event type + filter), delivered to --webhook.
    Create {
        /// e.g. post.create, like.create, follow.follow, dm.received, oauth.revoke.
        #[arg(long)]
        event_type: String,
        /// filter.user_id: the account whose activity to deliver.
        #[arg(long)]
        user: Option<String>,
        /// filter.keyword (news.new).
        #[arg(long)]
        keyword: Option<String>,
        /// filter.direction: inbound or outbound (likes, DMs); both if unset.
        #[arg(long, value_parser = ["inbound", "outbound"])]
        direction: Option<String>,
        /// filter.qualifiers: an event-specific predicate, KEY=VALUE (e.g.
        /// post_id=123, conversation_type=group); repeat for several.
        #[arg(long = "qualifier", value_parser = parse_qualifier)]
        qualifiers: Vec<(String, String)>,
        /// A label (1-200 characters) X puts on every event it delivers for
        /// this subscription: stored rows are routed back to it
        /// (`v_xaa_events`). Default: the event type and filter
        /// (`like.create:direction=inbound,user_id=1`), unique per
        /// subscription as X allows one per event type and filter.
        #[arg(long)]
        tag: Option<String>,
        /// The webhook to deliver to.
        #[arg(long)]
        webhook: Option<String>,
    },
    /// Every subscription of the app (all pages).
    List,
    /// Change a subscription's tag or webhook (X allows nothing else).
    Update {
        id: String,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        webhook: Option<String>,
    },
    /// Delete subscriptions by id (several at once in batches of 100).
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `KEY=VALUE` of `--qualifier`.
fn parse_qualifier(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("`{text}` is not KEY=VALUE (e.g. post_id=123)")),
    }
}

fn rows(subscriptions: &[ActivitySubscription]) -> Vec<Vec<String>> {
    subscriptions
        .iter()
        .map(|s| {
            vec![
                s.subscription_id.clone(),
                s.event_type.clone(),
                serde_json::to_string(&s.filter).unwrap_or_default(),
                s.tag.clone().unwrap_or_default(),
                s.webhook_id.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

const HEADER: &[&str] = &["subscription_id", "event_type", "filter", "tag", "webhook"];

/// What an operator command learnt of the app's subscriptions, for the
/// record in Postgres (`xaa_subscriptions`, which routes stored events back
/// to their subscription by tag: `v_xaa_events`).
enum Learnt<'a> {
    /// Every subscription there is (a full listing).
    All(&'a [ActivitySubscription]),
    /// One created or updated.
    One(&'a ActivitySubscription),
    /// Deleted at X.
    Deleted(&'a [String]),
}

/// Events stored per tag in the last 24 h, and the newest one's arrival.
type StoredPerTag = std::collections::HashMap<String, (i64, chrono::DateTime<chrono::Utc>)>;

/// Runs `work` on the operator's database when one was given
/// (`--x-budget-database-url`). A database that cannot be reached is a
/// warning (`failed` says what did not happen), never a failure: X has
/// answered already.
async fn on_database<T>(
    args: &OpsArgs,
    failed: &str,
    work: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
) -> Option<T> {
    use sqlx::Connection as _;
    let url = args.budget_database_url.as_deref()?;
    let result = match sqlx::PgConnection::connect(url).await {
        Ok(mut conn) => work(&mut conn).await,
        Err(error) => Err(error),
    };
    result
        .inspect_err(|error| eprintln!("warning: {failed}: {error}"))
        .ok()
}

/// Records what was learnt in `xaa_subscriptions`, when the operator gave
/// the database.
async fn record(args: &OpsArgs, learnt: Learnt<'_>) {
    on_database(
        args,
        "the subscriptions were not recorded in Postgres",
        async |conn| record_in(conn, learnt).await,
    )
    .await;
}

async fn record_in(conn: &mut sqlx::PgConnection, learnt: Learnt<'_>) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    let mut tx = conn.begin().await?;
    let upsert = |s: &ActivitySubscription| {
        sqlx::query(
            "INSERT INTO xaa_subscriptions (subscription_id, event_type, filter, tag, webhook_id, created_at, listed_at)
             VALUES ($1, $2, $3, $4, $5, $6::timestamptz, now())
             ON CONFLICT (subscription_id) DO UPDATE SET event_type = EXCLUDED.event_type,
                 filter = EXCLUDED.filter, tag = EXCLUDED.tag, webhook_id = EXCLUDED.webhook_id,
                 created_at = coalesce(EXCLUDED.created_at, xaa_subscriptions.created_at),
                 listed_at = now()",
        )
        .bind(s.subscription_id.clone())
        .bind(s.event_type.clone())
        .bind(serde_json::to_value(&s.filter).unwrap_or_default())
        .bind(s.tag.clone())
        .bind(s.webhook_id.clone())
        .bind(
            s.created_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        )
    };
    match learnt {
        Learnt::All(all) => {
            let ids: Vec<&str> = all.iter().map(|s| s.subscription_id.as_str()).collect();
            sqlx::query("DELETE FROM xaa_subscriptions WHERE NOT subscription_id = ANY($1)")
                .bind(ids)
                .execute(&mut *tx)
                .await?;
            for s in all {
                upsert(s).execute(&mut *tx).await?;
            }
        }
        Learnt::One(s) => {
            upsert(s).execute(&mut *tx).await?;
        }
        Learnt::Deleted(ids) => {
            sqlx::query("DELETE FROM xaa_subscriptions WHERE subscription_id = ANY($1)")
                .bind(ids)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}

/// Events stored per subscription tag in the last 24 h (read from `events`
/// directly: `v_xaa_events` would look each row's subscription up).
async fn stored_per_tag(conn: &mut sqlx::PgConnection) -> Result<StoredPerTag, sqlx::Error> {
    let stored: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT context->'xaa'->>'tag', count(*), max(received_at) FROM events
         WHERE received_at > now() - interval '24 hours' AND context ? 'xaa'
           AND context->'xaa'->>'tag' IS NOT NULL
         GROUP BY 1",
    )
    .fetch_all(conn)
    .await?;
    Ok(stored
        .into_iter()
        .map(|(tag, n, last)| (tag, (n, last)))
        .collect())
}

/// The listing, with what Postgres stored per subscription when known.
fn listing(args: &OpsArgs, subscriptions: &[ActivitySubscription], stored: Option<&StoredPerTag>) {
    let Some(stored) = stored else {
        print(args, json!(subscriptions), || {
            table(HEADER, rows(subscriptions))
        });
        return;
    };
    let of = |s: &ActivitySubscription| s.tag.as_ref().and_then(|t| stored.get(t)).copied();
    let items: Vec<serde_json::Value> = subscriptions
        .iter()
        .map(|s| {
            let mut item = json!(s);
            let (n, last) = of(s).map_or((0, None), |(n, last)| (n, Some(last)));
            item["stored_events_24h"] = json!(n);
            item["last_event_at"] = json!(last);
            item
        })
        .collect();
    print(args, json!(items), || {
        let mut header = HEADER.to_vec();
        header.extend(["events_24h", "last_event_at"]);
        let lines = subscriptions
            .iter()
            .zip(rows(subscriptions))
            .map(|(s, mut line)| {
                let (n, last) = of(s).map_or((0, String::new()), |(n, l)| (n, l.to_rfc3339()));
                line.extend([n.to_string(), last]);
                line
            })
            .collect();
        table(&header, lines)
    });
}

pub async fn activity(
    args: &OpsArgs,
    x: &XClient,
    command: ActivityCommand,
) -> Result<(), CliError> {
    match command {
        ActivityCommand::Create {
            event_type,
            user,
            keyword,
            direction,
            qualifiers,
            tag,
            webhook,
        } => {
            let filter = ActivityFilter {
                user_id: user,
                keyword,
                direction,
                qualifiers: qualifiers
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
                ..ActivityFilter::default()
            };
            let tag = tag.unwrap_or_else(|| aaa_xapi::default_tag(&event_type, &filter));
            let new = NewActivitySubscription {
                event_type,
                filter,
                tag: Some(tag),
                webhook_id: webhook,
            };
            let created = x.create_activity_subscription(&new).await?;
            record(args, Learnt::One(&created)).await;
            print(args, json!(created), || {
                table(HEADER, rows(std::slice::from_ref(&created)))
            });
        }
        ActivityCommand::List => {
            let all = x.list_activity_subscriptions().await?;
            record(args, Learnt::All(&all)).await;
            let stored =
                on_database(args, "what Postgres stored was not read", stored_per_tag).await;
            listing(args, &all, stored.as_ref());
        }
        ActivityCommand::Update { id, tag, webhook } => {
            let updated = x
                .update_activity_subscription(&id, tag.as_deref(), webhook.as_deref())
                .await?;
            record(args, Learnt::One(&updated)).await;
            print(args, json!(updated), || {
                table(HEADER, rows(std::slice::from_ref(&updated)))
            });
        }
        ActivityCommand::Delete { ids } => {
            let result = if let [id] = ids.as_slice() {
                x.delete_activity_subscription(id).await?;
                aaa_xapi::BulkDeleted {
                    deleted: vec![id.clone()],
                    failed: Vec::new(),
                }
            } else {
                x.delete_activity_subscriptions(&ids).await?
            };
            record(args, Learnt::Deleted(&result.deleted)).await;
            let mut lines: Vec<Vec<String>> = result
                .deleted
                .iter()
                .map(|id| vec![id.clone(), "deleted".into(), String::new()])
                .collect();
            lines.extend(
                result
                    .failed
                    .iter()
                    .map(|(id, reason, message)| vec![id.clone(), reason.clone(), message.clone()]),
            );
            print(
                args,
                json!({"deleted": result.deleted, "failed": result.failed}),
                || table(&["subscription_id", "result", "message"], lines),
            );
            if !result.failed.is_empty() {
                return Err(CliError::PartlyRefused {
                    what: "subscriptions not deleted",
                    refused: result.failed.len(),
                    of: ids.len(),
                });
            }
        }
    }
    Ok(())
}

type Arrival = Option<chrono::DateTime<chrono::Utc>>;

/// Per account, when its last event arrived in each envelope (AAA, XAA; 24 h).
type LastSeen = std::collections::HashMap<String, (Arrival, Arrival)>;

async fn last_seen(conn: &mut sqlx::PgConnection, webhook: &str) -> Result<LastSeen, sqlx::Error> {
    let rows: Vec<(String, Arrival, Arrival)> = sqlx::query_as(
        "SELECT for_user_id, max(received_at) FILTER (WHERE NOT context ? 'xaa'),
                max(received_at) FILTER (WHERE context ? 'xaa')
         FROM events
         WHERE received_at > now() - interval '24 hours' AND webhook_id = $1
           AND for_user_id IS NOT NULL
         GROUP BY 1",
    )
    .bind(webhook)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(u, aaa, xaa)| (u, (aaa, xaa)))
        .collect())
}

/// `aaa subscriptions migrate-check`: where every account stands before the
/// cut-over, and whether ending Account Activity now would lose anything.
pub async fn migrate_check(args: &OpsArgs, x: &XClient, webhook: &str) -> Result<(), XError> {
    let aaa = x.list_subscriptions(webhook).await?;
    let existing = x.list_activity_subscriptions().await?;
    let status = aaa_xapi::migration_status(webhook, &aaa, &existing);
    let seen = on_database(args, "what Postgres stored was not read", async |conn| {
        last_seen(conn, webhook).await
    })
    .await;
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
    let total = aaa_xapi::migrated_event_types().len();
    let items: Vec<serde_json::Value> = status
        .accounts
        .iter()
        .map(|a| {
            let mut item = json!({"user_id": a.user_id, "product": a.product(), "on_aaa": a.on_aaa,
                                  "xaa_covered": a.xaa_covered, "event_types": total, "missing": a.missing,
                                  "needs_user_scopes": a.needs_user_scopes});
            if let Some(seen) = &seen {
                let (aaa, xaa) = seen.get(&a.user_id).copied().unwrap_or_default();
                item["last_aaa_event_at"] = json!(aaa);
                item["last_xaa_event_at"] = json!(xaa);
            }
            item
        })
        .collect();
    let on = |p: &str| status.accounts.iter().filter(|a| a.product() == p).count();
    let uncovered = status
        .accounts
        .iter()
        .filter(|a| a.on_aaa && !a.missing.is_empty())
        .count();
    let need_user = status
        .accounts
        .iter()
        .filter(|a| !a.needs_user_scopes.is_empty())
        .count();
    if need_user > 0 {
        eprintln!(
            "{need_user} accounts miss private event types (DMs, likes, mutes, blocks): X creates those \
             only with the account's own OAuth 2.0 token holding the scopes listed (needs_user_scopes), \
             never with the app's bearer token; X's managed migration (enterprise) carries them over."
        );
    }
    eprintln!(
        "webhook {webhook}: {} accounts; {} on Account Activity only, {} on both, {} on the X Activity API only; \
         {uncovered} AAA accounts not fully covered on XAA; the app's oauth.revoke subscription: {}. \
         Ending Account Activity now would {}.",
        status.accounts.len(),
        on("aaa"),
        on("aaa+xaa"),
        on("xaa"),
        if status.revoke_covered {
            "present"
        } else {
            "missing"
        },
        if status.ready() {
            "lose nothing"
        } else {
            "lose activity: run `aaa subscriptions migrate --webhook ID` (or ask X for the managed migration), then check again"
        }
    );
    print(
        args,
        json!({"webhook_id": webhook, "ready": status.ready(), "revoke_covered": status.revoke_covered,
               "accounts": items}),
        || {
            let mut header = vec![
                "user_id",
                "product",
                "xaa_covered",
                "missing",
                "needs_user_scopes",
            ];
            if seen.is_some() {
                header.extend(["last_aaa_event_at", "last_xaa_event_at"]);
            }
            let lines = status
                .accounts
                .iter()
                .map(|a| {
                    let mut line = vec![
                        a.user_id.clone(),
                        a.product().to_owned(),
                        format!("{}/{total}", a.xaa_covered),
                        a.missing.join(","),
                        a.needs_user_scopes.join(","),
                    ];
                    if let Some(seen) = &seen {
                        let (aaa, xaa) = seen.get(&a.user_id).copied().unwrap_or_default();
                        line.extend([time(aaa), time(xaa)]);
                    }
                    line
                })
                .collect();
            table(&header, lines)
        },
    );
    Ok(())
}

pub async fn migrate(
    args: &OpsArgs,
    x: &XClient,
    webhook: &str,
    dry_run: bool,
) -> Result<(), CliError> {
    let accounts = x.list_subscriptions(webhook).await?;
    let existing = x.list_activity_subscriptions().await?;
    let plan = aaa_xapi::plan_migration(webhook, &accounts, &existing);
    eprintln!(
        "{} accounts subscribed to webhook {webhook}; {} XAA subscriptions exist; {} to create{}",
        accounts.len(),
        existing.len(),
        plan.len(),
        if dry_run {
            " (dry run: nothing is created)"
        } else {
            ""
        }
    );
    let private = plan
        .iter()
        .filter(|n| aaa_xapi::Access::of(&n.event_type).needs_user())
        .count();
    if private > 0 {
        eprintln!(
            "{private} of them are private event types (DMs, likes, mutes, blocks) created with the app's \
             bearer token: X refuses those without the account's own OAuth 2.0 token (see \
             `aaa subscriptions migrate-check`, needs_user_scopes), and they are reported as failed"
        );
    }
    let mut created = Vec::new();
    let mut failed = Vec::new();
    if !dry_run {
        for (i, new) in plan.iter().enumerate() {
            match x.create_activity_subscription(new).await {
                Ok(subscription) => created.push(subscription),
                // Someone (or an earlier run) created it meanwhile: covered.
                Err(XError::Refused {
                    reason: aaa_xapi::Reason::DuplicateSubscriptionFailed,
                    ..
                }) => {}
                // Transport trouble and rate limits stop the run: it resumes where it stopped.
                Err(
                    error
                    @ (XError::RateLimited { .. } | XError::Transport(_) | XError::Timeout(_)),
                ) => {
                    eprintln!(
                        "stopped after {} of {}: {error}; run again to continue",
                        i,
                        plan.len()
                    );
                    return Err(error.into());
                }
                Err(error) => failed.push((new.clone(), error.to_string())),
            }
            if (i + 1) % 50 == 0 || i + 1 == plan.len() {
                eprintln!("created {} of {}", i + 1, plan.len());
            }
        }
    }
    let lines: Vec<Vec<String>> = plan
        .iter()
        .map(|new| {
            let state = if dry_run {
                "planned".to_owned()
            } else if let Some((_, error)) = failed.iter().find(|(f, _)| f == new) {
                format!("failed: {error}")
            } else {
                "created".to_owned()
            };
            vec![
                new.event_type.clone(),
                serde_json::to_string(&new.filter).unwrap_or_default(),
                new.tag.clone().unwrap_or_default(),
                state,
            ]
        })
        .collect();
    print(
        args,
        json!({"webhook_id": webhook, "accounts": accounts.len(), "dry_run": dry_run, "plan": plan,
               "created": created.len(), "failed": failed.iter().map(|(n, e)| json!({"subscription": n, "error": e})).collect::<Vec<_>>()}),
        || table(&["event_type", "filter", "tag", "result"], lines),
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::PartlyRefused {
            what: "subscriptions refused (see the table); run again after fixing the cause",
            refused: failed.len(),
            of: plan.len(),
        })
    }
}
