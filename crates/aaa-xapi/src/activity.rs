//! X Activity API subscriptions (`/2/activity/subscriptions`): one per
//! (event type, filter), app bearer token, and the plan that turns Account
//! Activity subscriptions into XAA ones (pure, so it is tested alone).
//!
//! X's docs disagree on the create/update response (`data` flat, an array,
//! or `data.subscription`): all three are read.

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::access::Access;
use crate::{XClient, XError};

/// What a subscription matches on. Unset keys are left out of requests:
/// X compares filters as given. The filter is open: `qualifiers` (X's
/// event-specific predicates, e.g. `post_id`, `conversation_type`) and keys
/// this version does not know are kept as X sent them and sent back
/// unchanged, never refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// `inbound` or `outbound` (likes, DMs); both when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Event-specific predicates (`filter.qualifiers`, X's spec v2.168).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub qualifiers: serde_json::Map<String, Value>,
    /// Every other key, as X sent it.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

impl ActivityFilter {
    /// The filter as one JSON text with its keys sorted: equal filters have
    /// equal texts (the order plans are listed in, and the default tag).
    pub fn canonical(&self) -> String {
        serde_json::to_value(self)
            .map(|v| v.to_string())
            .unwrap_or_default()
    }
}

impl PartialOrd for ActivityFilter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ActivityFilter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.canonical().cmp(&other.canonical())
    }
}

/// X's longest tag.
pub const MAX_TAG: usize = 200;

/// The tag a subscription gets when none is given: its event type and
/// filter, `like.create:direction=inbound,user_id=1` (qualifiers as
/// `qualifiers.post_id=5`). X allows one subscription per event type and
/// filter, so no two subscriptions of an app share it. Past X's 200
/// characters, the filter part is a digest of the whole.
pub fn default_tag(event_type: &str, filter: &ActivityFilter) -> String {
    let mut parts = Vec::new();
    if let Ok(Value::Object(map)) = serde_json::to_value(filter) {
        for (key, value) in map {
            match value {
                Value::Object(inner) => {
                    for (k, v) in inner {
                        parts.push(format!("{key}.{k}={}", plain(&v)));
                    }
                }
                other => parts.push(format!("{key}={}", plain(&other))),
            }
        }
    }
    let tag = format!("{event_type}:{}", parts.join(","));
    if tag.chars().count() <= MAX_TAG {
        return tag;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{event_type}\n{}", filter.canonical()));
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let head: String = event_type.chars().take(MAX_TAG - 40).collect();
    format!("{head}:sha256={hex}")
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivitySubscription {
    pub subscription_id: String,
    pub event_type: String,
    #[serde(default)]
    pub filter: ActivityFilter,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub webhook_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// A subscription to create.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NewActivitySubscription {
    pub event_type: String,
    pub filter: ActivityFilter,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
}

/// What a bulk delete did: X processes every id and reports failures per id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BulkDeleted {
    pub deleted: Vec<String>,
    /// (subscription id, X's reason, message)
    pub failed: Vec<(String, String, String)>,
}

/// The XAA event types that together carry what one account's Account
/// Activity subscription delivered (`aaa_events::xaa::account_event_types`:
/// the plan and the parser cannot drift apart). `oauth.revoke` is the
/// app's, planned once per webhook.
pub fn migrated_event_types() -> Vec<&'static str> {
    aaa_events::xaa::account_event_types()
}

/// The XAA subscriptions that cover what `accounts` (subscribed to
/// `webhook_id` on the Account Activity API) receive, minus those that
/// already exist on that webhook: running it again plans nothing. Tags say
/// where a subscription came from, and a stored event's tag says which one
/// matched.
pub fn plan_migration(
    webhook_id: &str,
    accounts: &[String],
    existing: &[ActivitySubscription],
) -> Vec<NewActivitySubscription> {
    let exists = |event_type: &str, filter: &ActivityFilter| {
        existing.iter().any(|s| {
            s.event_type == event_type
                && &s.filter == filter
                && s.webhook_id.as_deref() == Some(webhook_id)
        })
    };
    let mut accounts = accounts.to_vec();
    accounts.sort();
    accounts.dedup();
    let types = migrated_event_types();
    let per_account = accounts.iter().flat_map(|user| {
        types.iter().map(move |event_type| {
            (
                *event_type,
                ActivityFilter {
                    user_id: Some(user.clone()),
                    ..ActivityFilter::default()
                },
                format!("aaa:{user}:{event_type}"),
            )
        })
    });
    let app = (!accounts.is_empty()).then(|| {
        (
            "oauth.revoke",
            ActivityFilter::default(),
            "aaa:revoke".to_owned(),
        )
    });
    per_account
        .chain(app)
        .filter(|(event_type, filter, _)| !exists(event_type, filter))
        .map(|(event_type, filter, tag)| NewActivitySubscription {
            event_type: event_type.to_owned(),
            filter,
            tag: Some(tag),
            webhook_id: Some(webhook_id.to_owned()),
        })
        .collect()
}

/// Where one account stands before Account Activity ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountStatus {
    pub user_id: String,
    /// Subscribed on the Account Activity API (to the webhook).
    pub on_aaa: bool,
    /// Of the event types its AAA subscription carried, how many an XAA
    /// subscription to the webhook covers.
    pub xaa_covered: usize,
    /// Those no XAA subscription covers yet.
    pub missing: Vec<String>,
    /// The scopes of the account's own OAuth 2.0 token that creating the
    /// missing private subscriptions takes (X refuses them with the app's
    /// bearer token; [`crate::Access`]); empty when none is missing.
    pub needs_user_scopes: Vec<&'static str>,
}

impl AccountStatus {
    /// `aaa`, `aaa+xaa` or `xaa`.
    pub fn product(&self) -> &'static str {
        match (self.on_aaa, self.xaa_covered > 0) {
            (true, false) => "aaa",
            (true, true) => "aaa+xaa",
            _ => "xaa",
        }
    }
}

/// Before the cut-over: every account on the webhook, AAA or XAA, and what
/// the X Activity API does not carry yet of what Account Activity did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationStatus {
    pub accounts: Vec<AccountStatus>,
    /// The app's `oauth.revoke` subscription delivers to the webhook.
    pub revoke_covered: bool,
}

impl MigrationStatus {
    /// Nothing would be lost if the AAA subscriptions ended now: every AAA
    /// account is fully covered on XAA (an XAA-only account that is not
    /// loses nothing by it).
    pub fn ready(&self) -> bool {
        self.revoke_covered
            && self
                .accounts
                .iter()
                .filter(|a| a.on_aaa)
                .all(|a| a.missing.is_empty())
    }
}

/// Compares the webhook's AAA accounts with the app's XAA subscriptions
/// (the same rule as [`plan_migration`]: what it would create is missing).
pub fn migration_status(
    webhook_id: &str,
    aaa_accounts: &[String],
    existing: &[ActivitySubscription],
) -> MigrationStatus {
    let on_webhook = |s: &&ActivitySubscription| s.webhook_id.as_deref() == Some(webhook_id);
    let mut users: Vec<String> = aaa_accounts
        .iter()
        .cloned()
        .chain(
            existing
                .iter()
                .filter(on_webhook)
                .filter_map(|s| s.filter.user_id.clone()),
        )
        .collect();
    users.sort();
    users.dedup();
    let plan = plan_migration(webhook_id, &users, existing);
    let types = migrated_event_types().len();
    let accounts = users
        .into_iter()
        .map(|user| {
            let missing: Vec<String> = plan
                .iter()
                .filter(|n| n.filter.user_id.as_deref() == Some(user.as_str()))
                .map(|n| n.event_type.clone())
                .collect();
            let mut needs_user_scopes: Vec<&'static str> = missing
                .iter()
                .map(|t| Access::of(t))
                .filter(|a| a.needs_user())
                .map(Access::scope)
                .collect();
            needs_user_scopes.sort();
            needs_user_scopes.dedup();
            AccountStatus {
                on_aaa: aaa_accounts.contains(&user),
                xaa_covered: types - missing.len(),
                missing,
                needs_user_scopes,
                user_id: user,
            }
        })
        .collect();
    MigrationStatus {
        accounts,
        revoke_covered: !plan.iter().any(|n| n.event_type == "oauth.revoke")
            && existing
                .iter()
                .filter(on_webhook)
                .any(|s| s.event_type == "oauth.revoke"),
    }
}

/// X's largest page.
const PAGE: &str = "1000";
/// X's largest bulk delete.
const BULK: usize = 100;

fn subscription_of(value: Value) -> Result<ActivitySubscription, XError> {
    let data = XClient::data::<Value>(value)?;
    let inner = match data {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        Value::Object(ref object) if object.contains_key("subscription") => {
            data["subscription"].clone()
        }
        other => other,
    };
    serde_json::from_value(inner.clone()).map_err(|e| XError::Unexpected(format!("{e}: {inner}")))
}

impl XClient {
    pub async fn create_activity_subscription(
        &self,
        new: &NewActivitySubscription,
    ) -> Result<ActivitySubscription, XError> {
        let value = self
            .call("activity_subscriptions_create", false, || {
                Ok(self
                    .bearer(Method::POST, "/2/activity/subscriptions")?
                    .json(new))
            })
            .await?;
        subscription_of(value)
    }

    /// Every subscription of the app, all pages.
    pub async fn list_activity_subscriptions(&self) -> Result<Vec<ActivitySubscription>, XError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let value = self
                .call("activity_subscriptions_list", true, || {
                    let mut query = vec![("max_results", PAGE.to_owned())];
                    if let Some(token) = &token {
                        query.push(("pagination_token", token.clone()));
                    }
                    Ok(self
                        .bearer(Method::GET, "/2/activity/subscriptions")?
                        .query(&query))
                })
                .await?;
            let next = value["meta"]["next_token"].as_str().map(str::to_owned);
            let page: Vec<ActivitySubscription> = match value.get("data") {
                None | Some(Value::Null) => Vec::new(),
                Some(data) => serde_json::from_value(data.clone())
                    .map_err(|e| XError::Unexpected(format!("{e}: {data}")))?,
            };
            let empty = page.is_empty();
            all.extend(page);
            match next {
                // A page without progress would loop forever.
                Some(next) if !empty && token.as_deref() != Some(next.as_str()) => {
                    token = Some(next)
                }
                _ => return Ok(all),
            }
        }
    }

    /// Only `tag` and `webhook_id` can change (X: delete and create to
    /// change the event type or the filter).
    pub async fn update_activity_subscription(
        &self,
        id: &str,
        tag: Option<&str>,
        webhook_id: Option<&str>,
    ) -> Result<ActivitySubscription, XError> {
        if tag.is_none() && webhook_id.is_none() {
            return Err(XError::Invalid(
                "nothing to update: give a tag or a webhook id".into(),
            ));
        }
        let mut body = json!({});
        if let Some(tag) = tag {
            body["tag"] = json!(tag);
        }
        if let Some(webhook_id) = webhook_id {
            body["webhook_id"] = json!(webhook_id);
        }
        let path = format!("/2/activity/subscriptions/{id}");
        let value = self
            .call("activity_subscriptions_update", false, || {
                Ok(self.bearer(Method::PUT, &path)?.json(&body))
            })
            .await?;
        subscription_of(value)
    }

    pub async fn delete_activity_subscription(&self, id: &str) -> Result<(), XError> {
        let path = format!("/2/activity/subscriptions/{id}");
        self.call("activity_subscriptions_delete", false, || {
            self.bearer(Method::DELETE, &path)
        })
        .await
        .map(|_| ())
    }

    /// Deletes in batches of X's limit (100); a failure of one id does not
    /// stop the others.
    pub async fn delete_activity_subscriptions(
        &self,
        ids: &[String],
    ) -> Result<BulkDeleted, XError> {
        let mut result = BulkDeleted::default();
        for chunk in ids.chunks(BULK) {
            let joined = chunk.join(",");
            let value = self
                .call("activity_subscriptions_delete_many", false, || {
                    Ok(self
                        .bearer(Method::DELETE, "/2/activity/subscriptions")?
                        .query(&[("ids", joined.as_str())]))
                })
                .await?;
            let failed: Vec<(String, String, String)> = value["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                    (text("subscription_id"), text("reason"), text("message"))
                })
                .collect();
            result.deleted.extend(
                chunk
                    .iter()
                    .filter(|id| !failed.iter().any(|(f, _, _)| f == *id))
                    .cloned(),
            );
            result.failed.extend(failed);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(event_type: &str, user: Option<&str>, webhook: &str) -> ActivitySubscription {
        ActivitySubscription {
            subscription_id: format!("s-{event_type}"),
            event_type: event_type.into(),
            filter: ActivityFilter {
                user_id: user.map(str::to_owned),
                ..ActivityFilter::default()
            },
            tag: None,
            webhook_id: Some(webhook.into()),
            created_at: None,
            updated_at: None,
        }
    }

    #[test]
    fn every_account_gets_every_family_once_and_the_app_one_revoke() {
        let accounts = vec!["2".to_owned(), "1".to_owned(), "2".to_owned()];
        let plan = plan_migration("w", &accounts, &[]);
        assert_eq!(plan.len(), 2 * migrated_event_types().len() + 1);
        assert_eq!(
            migrated_event_types().len(),
            17,
            "{:?}",
            migrated_event_types()
        );
        let revokes: Vec<_> = plan
            .iter()
            .filter(|s| s.event_type == "oauth.revoke")
            .collect();
        assert_eq!(revokes.len(), 1);
        assert_eq!(revokes[0].filter, ActivityFilter::default());
        assert!(plan.iter().all(|s| s.webhook_id.as_deref() == Some("w")));
        assert!(
            plan.iter()
                .all(|s| s.tag.as_ref().is_some_and(|t| t.len() <= 200))
        );
        let mut keys: Vec<_> = plan.iter().map(|s| (&s.event_type, &s.filter)).collect();
        keys.dedup();
        assert_eq!(keys.len(), plan.len(), "no pair planned twice");
    }

    #[test]
    fn what_exists_on_the_webhook_is_not_planned_again() {
        let accounts = vec!["1".to_owned()];
        let first = plan_migration("w", &accounts, &[]);
        let created: Vec<ActivitySubscription> = first
            .iter()
            .enumerate()
            .map(|(i, n)| ActivitySubscription {
                subscription_id: i.to_string(),
                event_type: n.event_type.clone(),
                filter: n.filter.clone(),
                tag: n.tag.clone(),
                webhook_id: n.webhook_id.clone(),
                created_at: None,
                updated_at: None,
            })
            .collect();
        assert_eq!(plan_migration("w", &accounts, &created), vec![]);
        // On another webhook it does not count.
        let elsewhere = [existing("post.create", Some("1"), "other")];
        assert_eq!(
            plan_migration("w", &accounts, &elsewhere).len(),
            first.len()
        );
        let partial = [
            existing("post.create", Some("1"), "w"),
            existing("oauth.revoke", None, "w"),
        ];
        assert_eq!(
            plan_migration("w", &accounts, &partial).len(),
            first.len() - 2
        );
        assert_eq!(plan_migration("w", &[], &[]), vec![]);
    }

    #[test]
    fn every_response_shape_of_create_is_read() {
        let sub = json!({"subscription_id": "9", "event_type": "post.create", "filter": {"user_id": "1"}});
        for shape in [
            json!({"data": {"subscription": sub}}),
            json!({"data": sub}),
            json!({"data": [sub]}),
        ] {
            assert_eq!(subscription_of(shape).unwrap().subscription_id, "9");
        }
    }

    #[test]
    fn a_filter_round_trips_qualifiers_and_keys_this_version_does_not_know() {
        let sent = json!({"user_id": "1", "direction": "inbound",
                          "qualifiers": {"post_id": "5", "conversation_type": "group"},
                          "future_key": {"nested": [1, 2]}});
        let filter: ActivityFilter = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(filter.qualifiers["post_id"], "5");
        assert_eq!(filter.other["future_key"], json!({"nested": [1, 2]}));
        assert_eq!(serde_json::to_value(&filter).unwrap(), sent);
        let sub: ActivitySubscription = serde_json::from_value(
            json!({"subscription_id": "9", "event_type": "post.reply.create", "filter": sent}),
        )
        .unwrap();
        assert_eq!(sub.filter, filter);
        // Equal filters order equally whatever order X sent their keys in.
        let reordered: ActivityFilter = serde_json::from_str(
            r#"{"future_key":{"nested":[1,2]},"qualifiers":{"conversation_type":"group","post_id":"5"},"direction":"inbound","user_id":"1"}"#,
        )
        .unwrap();
        assert_eq!(reordered.cmp(&filter), std::cmp::Ordering::Equal);
    }

    #[test]
    fn the_default_tag_names_the_event_type_and_filter_within_200_characters() {
        let filter: ActivityFilter = serde_json::from_value(
            json!({"user_id": "1", "direction": "inbound", "qualifiers": {"post_id": "5"}}),
        )
        .unwrap();
        assert_eq!(
            default_tag("like.create", &filter),
            "like.create:direction=inbound,qualifiers.post_id=5,user_id=1"
        );
        assert_eq!(
            default_tag("oauth.revoke", &ActivityFilter::default()),
            "oauth.revoke:"
        );
        let long = ActivityFilter {
            keyword: Some("k".repeat(300)),
            ..ActivityFilter::default()
        };
        let other = ActivityFilter {
            keyword: Some("j".repeat(300)),
            ..ActivityFilter::default()
        };
        let tag = default_tag("news.new", &long);
        assert!(
            tag.chars().count() <= MAX_TAG && tag.starts_with("news.new:sha256="),
            "{tag}"
        );
        assert_ne!(tag, default_tag("news.new", &other));
    }

    #[test]
    fn the_migration_status_names_each_accounts_product_and_what_is_not_covered() {
        let types = migrated_event_types();
        let mut subs: Vec<ActivitySubscription> =
            types.iter().map(|t| existing(t, Some("1"), "w")).collect();
        subs.push(existing_revoke("w"));
        // Account 2: half its types; account 3: XAA only, on another webhook too.
        subs.extend(types.iter().take(3).map(|t| existing(t, Some("2"), "w")));
        subs.extend(types.iter().map(|t| existing(t, Some("3"), "w")));
        subs.push(existing("post.create", Some("4"), "elsewhere"));
        let status = migration_status("w", &["1".into(), "2".into(), "5".into()], &subs);
        let of = |u: &str| {
            status
                .accounts
                .iter()
                .find(|a| a.user_id == u)
                .cloned()
                .unwrap()
        };
        assert_eq!(of("1").product(), "aaa+xaa");
        assert!(of("1").missing.is_empty());
        assert_eq!(of("2").xaa_covered, 3);
        assert_eq!(of("2").missing.len(), types.len() - 3);
        assert_eq!(of("3").product(), "xaa");
        assert_eq!(of("5").product(), "aaa");
        assert_eq!(of("5").missing.len(), types.len());
        assert!(
            status.accounts.iter().all(|a| a.user_id != "4"),
            "another webhook's"
        );
        assert!(status.revoke_covered);
        assert!(!status.ready());
        let covered: Vec<String> = vec!["1".into(), "3".into()];
        assert!(migration_status("w", &covered, &subs).ready());
        let without_revoke: Vec<ActivitySubscription> = subs
            .iter()
            .filter(|s| s.event_type != "oauth.revoke")
            .cloned()
            .collect();
        assert!(!migration_status("w", &covered, &without_revoke).ready());
    }

    fn existing_revoke(webhook: &str) -> ActivitySubscription {
        existing("oauth.revoke", None, webhook)
    }
}
