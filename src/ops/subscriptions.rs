//! `aaa subscriptions ...`: Account Activity subscriptions, and the way to
//! the X Activity API's (`activity`, `migrate`, `migrate-check`).

use aaa_xapi::XClient;
use serde_json::json;

use crate::error::CliError;
use crate::ops::activity::{self, ActivityCommand};
use crate::ops::base::{OpsArgs, print, table};

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
    Activity(ActivityCommand),
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

pub async fn subscriptions(
    args: &OpsArgs,
    x: &XClient,
    command: SubscriptionsCommand,
) -> Result<(), CliError> {
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
        SubscriptionsCommand::Activity(command) => activity::activity(args, x, command).await?,
        SubscriptionsCommand::MigrateCheck { webhook } => {
            activity::migrate_check(args, x, &webhook).await?
        }
        SubscriptionsCommand::Migrate { webhook, dry_run } => {
            activity::migrate(args, x, &webhook, dry_run).await?
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
