//! `aaa webhooks ...`: register, list, validate and delete webhooks at X.

use aaa_xapi::{XClient, XError};
use serde_json::json;

use crate::ops::base::{OpsArgs, print, table};

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
