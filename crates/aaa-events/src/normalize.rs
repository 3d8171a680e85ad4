//! From one activity to the rows analysts query: tweets (full longform
//! text), users (latest profile by event time), likes, DMs and their apps,
//! read receipts, relationship changes, deletions, revokes, replay jobs.
//!
//! Pure: the consumer writes these rows in the same transaction as the raw
//! event. A missing field that a row cannot exist without is an error with
//! its path; optional fields are just absent.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::envelope::Activity;
use crate::kind::ActivityKind;
use crate::time::parse_event_time;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserRow {
    pub user_id: String,
    pub screen_name: Option<String>,
    pub name: Option<String>,
    pub profile: Value,
    /// Event time of the activity the snapshot came with: the newest wins.
    pub observed_at: DateTime<Utc>,
}

impl UserRow {
    /// One account's snapshot from two: the newer one's fields win, and a
    /// field it lacks (an X Activity API stub carries only the id) keeps
    /// the other's. A partial snapshot never erases what is known.
    pub fn merged(&self, other: &UserRow) -> UserRow {
        let (older, newer) = if other.observed_at > self.observed_at {
            (self, other)
        } else {
            (other, self)
        };
        let profile = match (&older.profile, &newer.profile) {
            (Value::Object(old), Value::Object(new)) => {
                let mut profile = old.clone();
                profile.extend(
                    new.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                Value::Object(profile)
            }
            (old, Value::Null) => old.clone(),
            (_, new) => new.clone(),
        };
        UserRow {
            user_id: newer.user_id.clone(),
            screen_name: newer
                .screen_name
                .clone()
                .or_else(|| older.screen_name.clone()),
            name: newer.name.clone().or_else(|| older.name.clone()),
            profile,
            observed_at: newer.observed_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TweetRow {
    pub tweet_id: String,
    pub author_id: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    /// The full text: `extended_tweet.full_text` for longform posts.
    pub text: String,
    pub is_longform: bool,
    pub entities: Value,
    pub display_text_range: Option<Value>,
    pub in_reply_to_status_id: Option<String>,
    pub in_reply_to_user_id: Option<String>,
    pub quoted_status_id: Option<String>,
    pub retweeted_status_id: Option<String>,
}

impl TweetRow {
    /// Only what a repost says of the post it reposts (an X Activity API
    /// `post.repost.create` names the original by id): no author, time or
    /// text. The real post replaces it whichever arrives first.
    pub fn is_stub(&self) -> bool {
        self.author_id.is_none() && self.created_at.is_none() && self.text.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MentionRow {
    pub tweet_id: String,
    /// The subscribed account that was mentioned.
    pub user_id: String,
    /// Whether that account blocks the author (`user_has_blocked` / `is_blocked_by`).
    pub blocked: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FavoriteRow {
    pub favorite_id: String,
    pub user_id: Option<String>,
    pub tweet_id: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectMessageRow {
    pub dm_id: String,
    pub sender_id: String,
    pub recipient_id: String,
    pub source_app_id: Option<String>,
    pub text: Option<String>,
    pub entities: Value,
    pub attachment: Option<Value>,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppRow {
    pub app_id: String,
    pub name: Option<String>,
    pub url: Option<String>,
    /// When X showed it so: the time of the message that carried it. The
    /// newest observation wins, whichever batch commits last.
    pub observed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadReceiptRow {
    pub sender_id: String,
    pub recipient_id: String,
    pub last_read_event_id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relationship {
    Follow,
    Block,
    Mute,
}

impl Relationship {
    pub fn as_str(self) -> &'static str {
        match self {
            Relationship::Follow => "follow",
            Relationship::Block => "block",
            Relationship::Mute => "mute",
        }
    }
}

/// One change of a relationship: follow/unfollow, block/unblock, mute/unmute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelationshipRow {
    pub relationship: Relationship,
    pub source_id: String,
    pub target_id: String,
    pub active: bool,
    pub event_time: DateTime<Utc>,
}

impl RelationshipRow {
    /// Total order deciding the current state: later event time wins; at the
    /// same millisecond the removal wins, so a replayed "follow" can never
    /// resurrect a relationship that ended at the same instant.
    pub fn precedence(&self) -> (DateTime<Utc>, bool) {
        (self.event_time, !self.active)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeletionRow {
    pub tweet_id: String,
    pub user_id: Option<String>,
    pub deleted_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevokeRow {
    pub user_id: String,
    pub app_id: Option<String>,
    pub revoked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayJobRow {
    pub job_id: String,
    pub webhook_id: Option<String>,
    pub job_state: String,
    pub description: Option<String>,
}

/// Every row one activity becomes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "table", rename_all = "snake_case")]
pub enum Record {
    User(UserRow),
    Tweet(TweetRow),
    Mention(MentionRow),
    Favorite(FavoriteRow),
    DirectMessage(DirectMessageRow),
    App(AppRow),
    DmReadReceipt(ReadReceiptRow),
    Relationship(RelationshipRow),
    TweetDeletion(DeletionRow),
    Revoke(RevokeRow),
    ReplayJob(ReplayJobRow),
}

/// A row could not be built: the JSON path of what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot normalize {kind}: missing or invalid `{path}`")]
pub struct NormalizeError {
    pub kind: String,
    pub path: String,
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter()
        .fold(value, |v, key| v.get(key).unwrap_or(&Value::Null))
}

struct Builder<'a> {
    kind: &'a ActivityKind,
    observed_at: Option<DateTime<Utc>>,
    out: Vec<Record>,
}

impl Builder<'_> {
    fn required(&self, value: &Value, path: &[&str]) -> Result<String, NormalizeError> {
        text(at(value, path)).ok_or_else(|| NormalizeError {
            kind: self.kind.to_string(),
            path: path.join("."),
        })
    }

    fn required_time(&self, value: &Value, field: &str) -> Result<DateTime<Utc>, NormalizeError> {
        parse_event_time(value).ok_or_else(|| NormalizeError {
            kind: self.kind.to_string(),
            path: field.to_owned(),
        })
    }

    /// A user object (v1.1 `id_str`/`id`) as a profile snapshot.
    fn user(&mut self, user: &Value) -> Option<String> {
        let user_id = text(&user["id_str"]).or_else(|| text(&user["id"]))?;
        if let Some(observed_at) = self.observed_at {
            self.out.push(Record::User(UserRow {
                user_id: user_id.clone(),
                screen_name: text(&user["screen_name"]),
                name: text(&user["name"]),
                profile: user.clone(),
                observed_at,
            }));
        }
        Some(user_id)
    }

    fn tweet(&mut self, tweet: &Value) -> Option<String> {
        let tweet_id = text(&tweet["id_str"]).or_else(|| text(&tweet["id"]))?;
        let author_id = self.user(&tweet["user"]);
        let extended = &tweet["extended_tweet"];
        let is_longform = extended.is_object();
        let (text_value, entities) = if is_longform {
            (&extended["full_text"], &extended["entities"])
        } else {
            (
                tweet.get("full_text").unwrap_or(&tweet["text"]),
                &tweet["entities"],
            )
        };
        let quoted_status_id = if tweet["quoted_status"].is_object() {
            self.tweet(&tweet["quoted_status"])
        } else {
            text(&tweet["quoted_status_id_str"])
        };
        let retweeted_status_id = if tweet["retweeted_status"].is_object() {
            self.tweet(&tweet["retweeted_status"])
        } else {
            None
        };
        self.out.push(Record::Tweet(TweetRow {
            tweet_id: tweet_id.clone(),
            author_id,
            created_at: parse_event_time(tweet),
            text: text_value.as_str().unwrap_or_default().to_owned(),
            is_longform,
            entities: if entities.is_null() {
                Value::Object(Map::new())
            } else {
                entities.clone()
            },
            display_text_range: extended
                .get("display_text_range")
                .or_else(|| tweet.get("display_text_range"))
                .cloned(),
            in_reply_to_status_id: text(&tweet["in_reply_to_status_id_str"])
                .or_else(|| text(&tweet["in_reply_to_status_id"])),
            in_reply_to_user_id: text(&tweet["in_reply_to_user_id_str"])
                .or_else(|| text(&tweet["in_reply_to_user_id"])),
            quoted_status_id,
            retweeted_status_id,
        }));
        Some(tweet_id)
    }
}

/// The rows of one activity. `for_user_id` and `context` come from its
/// envelope (side maps, block flags).
pub fn normalize(
    activity: &Activity,
    for_user_id: Option<&str>,
    context: &Map<String, Value>,
) -> Result<Vec<Record>, NormalizeError> {
    use ActivityKind::*;
    let item = activity.item();
    let mut b = Builder {
        kind: &activity.kind,
        observed_at: activity.event_time,
        out: Vec::new(),
    };
    match &activity.kind {
        TweetCreate => {
            let tweet_id = b.tweet(item).ok_or_else(|| NormalizeError {
                kind: activity.kind.to_string(),
                path: "id_str".into(),
            })?;
            // The subscribed account's copy of a tweet that mentions it.
            let author =
                text(at(item, &["user", "id_str"])).or_else(|| text(at(item, &["user", "id"])));
            let mentioned = item["entities"]["user_mentions"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(
                    item["extended_tweet"]["entities"]["user_mentions"]
                        .as_array()
                        .into_iter()
                        .flatten(),
                )
                .any(|m| {
                    for_user_id.is_some()
                        && text(&m["id_str"]).or_else(|| text(&m["id"])).as_deref() == for_user_id
                });
            if let Some(user_id) =
                for_user_id.filter(|u| mentioned && author.as_deref() != Some(*u))
            {
                let blocked = context
                    .get("is_blocked_by")
                    .or_else(|| context.get("user_has_blocked"))
                    .and_then(Value::as_bool);
                b.out.push(Record::Mention(MentionRow {
                    tweet_id,
                    user_id: user_id.to_owned(),
                    blocked,
                }));
            }
        }
        Favorite => {
            let favorite_id = b.required(item, &["id"])?;
            let tweet_id = if item["favorited_status"].is_object() {
                b.tweet(&item["favorited_status"])
            } else {
                // An XAA like names the post without its content.
                text(&item["favorited_status_id_str"])
            };
            let user_id = b.user(&item["user"]);
            b.out.push(Record::Favorite(FavoriteRow {
                favorite_id,
                user_id,
                tweet_id,
                created_at: activity.event_time,
            }));
        }
        Follow | Unfollow | Block | Unblock | Mute | Unmute => {
            let (relationship, active) = match &activity.kind {
                Follow => (Relationship::Follow, true),
                Unfollow => (Relationship::Follow, false),
                Block => (Relationship::Block, true),
                Unblock => (Relationship::Block, false),
                Mute => (Relationship::Mute, true),
                _ => (Relationship::Mute, false),
            };
            let event_time = b.required_time(item, "created_timestamp")?;
            let source_id = b.user(&item["source"]).ok_or_else(|| NormalizeError {
                kind: activity.kind.to_string(),
                path: "source.id".into(),
            })?;
            let target_id = b.user(&item["target"]).ok_or_else(|| NormalizeError {
                kind: activity.kind.to_string(),
                path: "target.id".into(),
            })?;
            b.out.push(Record::Relationship(RelationshipRow {
                relationship,
                source_id,
                target_id,
                active,
                event_time,
            }));
        }
        DirectMessage => {
            let dm_id = b.required(item, &["id"])?;
            let create = &item["message_create"];
            let sender_id = b.required(item, &["message_create", "sender_id"])?;
            let recipient_id = b.required(item, &["message_create", "target", "recipient_id"])?;
            let data = &create["message_data"];
            if let Some(users) = context.get("users").and_then(Value::as_object) {
                for user in users.values() {
                    b.user(user);
                }
            }
            if let Some(apps) = context.get("apps").and_then(Value::as_object) {
                for (id, app) in apps {
                    b.out.push(Record::App(AppRow {
                        app_id: text(&app["id"]).unwrap_or_else(|| id.clone()),
                        name: text(&app["name"]),
                        url: text(&app["url"]),
                        observed_at: activity.event_time,
                    }));
                }
            }
            b.out.push(Record::DirectMessage(DirectMessageRow {
                dm_id,
                sender_id,
                recipient_id,
                source_app_id: text(&create["source_app_id"]),
                text: data["text"].as_str().map(str::to_owned),
                entities: if data["entities"].is_null() {
                    Value::Object(Map::new())
                } else {
                    data["entities"].clone()
                },
                attachment: data.get("attachment").cloned(),
                created_at: activity.event_time,
            }));
        }
        DirectMessageMarkRead => {
            let created_at = b.required_time(item, "created_timestamp")?;
            b.out.push(Record::DmReadReceipt(ReadReceiptRow {
                sender_id: b.required(item, &["sender_id"])?,
                recipient_id: b.required(item, &["target", "recipient_id"])?,
                last_read_event_id: b.required(item, &["last_read_event_id"])?,
                created_at,
            }));
        }
        TweetDelete => {
            let deleted_at = b.required_time(item, "timestamp_ms")?;
            b.out.push(Record::TweetDeletion(DeletionRow {
                tweet_id: b.required(item, &["status", "id"])?,
                user_id: text(at(item, &["status", "user_id"])),
                deleted_at,
            }));
        }
        UserEvent => {
            if item.get("revoke").is_some() {
                let revoked_at = b.required_time(item, "revoke.date_time")?;
                b.out.push(Record::Revoke(RevokeRow {
                    user_id: b.required(item, &["revoke", "source", "user_id"])?,
                    app_id: text(at(item, &["revoke", "target", "app_id"])),
                    revoked_at,
                }));
            }
        }
        ReplayJobStatus => b.out.push(Record::ReplayJob(ReplayJobRow {
            job_id: b.required(item, &["job_id"])?,
            webhook_id: text(&item["webhook_id"]),
            job_state: b.required(item, &["job_state"])?,
            description: text(&item["job_state_description"]),
        })),
        // Typing indicators and unknown kinds live in `events` only.
        DirectMessageTyping | Unknown(_) | Xaa(_) => {}
    }
    Ok(b.out)
}

/// The current state a set of relationship changes leads to, per
/// (relationship, source, target): the change with the highest
/// [`RelationshipRow::precedence`]. Independent of the order of `changes`;
/// `row` finds the change inside each item (items may carry more, e.g. ids).
pub fn current_relationships<T>(
    changes: impl IntoIterator<Item = T>,
    row: impl Fn(&T) -> &RelationshipRow,
) -> Vec<T> {
    let mut current: std::collections::BTreeMap<(Relationship, String, String), T> =
        std::collections::BTreeMap::new();
    for change in changes {
        let r = row(&change);
        let key = (r.relationship, r.source_id.clone(), r.target_id.clone());
        let wins = current
            .get(&key)
            .is_none_or(|existing| row(existing).precedence() < r.precedence());
        if wins {
            current.insert(key, change);
        }
    }
    current.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn a_partial_snapshot_never_erases_known_fields() {
        let at = |h: u32| Utc.with_ymd_and_hms(2026, 7, 1, h, 0, 0).unwrap();
        let full = UserRow {
            user_id: "444".into(),
            screen_name: Some("dan".into()),
            name: Some("Dan".into()),
            profile: json!({"id_str": "444", "name": "Dan", "location": "Berlin"}),
            observed_at: at(10),
        };
        let stub = UserRow {
            user_id: "444".into(),
            screen_name: None,
            name: None,
            profile: json!({"id_str": "444"}),
            observed_at: at(12),
        };
        let merged = full.merged(&stub);
        assert_eq!(merged, stub.merged(&full), "order does not matter");
        assert_eq!(merged.screen_name.as_deref(), Some("dan"));
        assert_eq!(merged.name.as_deref(), Some("Dan"));
        assert_eq!(merged.profile["location"], "Berlin");
        assert_eq!(merged.observed_at, at(12));
        // A newer full snapshot wins field by field.
        let renamed = UserRow {
            name: Some("Daniel".into()),
            profile: json!({"id_str": "444", "name": "Daniel", "location": null}),
            observed_at: at(13),
            ..full.clone()
        };
        let merged = merged.merged(&renamed);
        assert_eq!(merged.name.as_deref(), Some("Daniel"));
        assert_eq!(merged.profile["location"], "Berlin", "null is no value");
    }
    use crate::parse_envelope;

    fn rel(active: bool, ms: i64) -> RelationshipRow {
        RelationshipRow {
            relationship: Relationship::Follow,
            source_id: "1".into(),
            target_id: "2".into(),
            active,
            event_time: DateTime::from_timestamp_millis(ms).unwrap(),
        }
    }

    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first.clone());
                out.push(tail);
            }
        }
        out
    }

    #[test]
    fn every_order_of_changes_reaches_the_same_state() {
        // follow, unfollow, follow again, a replay of the first follow, and a
        // follow + unfollow at the same millisecond.
        let changes = vec![
            rel(true, 1_000),
            rel(false, 2_000),
            rel(true, 3_000),
            rel(true, 1_000),
            rel(true, 4_000),
            rel(false, 4_000),
        ];
        let orders = permutations(&changes);
        assert_eq!(orders.len(), 720);
        for order in orders {
            // Applied one at a time (each a separate batch)...
            let mut state: Option<RelationshipRow> = None;
            for change in &order {
                let candidates: Vec<&RelationshipRow> =
                    state.iter().chain(std::iter::once(change)).collect();
                state = current_relationships(candidates, |r| r)
                    .first()
                    .map(|r| (*r).clone());
            }
            // ... or all at once: the removal at 4 000 ms wins either way.
            assert_eq!(state, Some(rel(false, 4_000)));
            assert_eq!(
                current_relationships(&order, |r| r),
                vec![&rel(false, 4_000)]
            );
        }
    }

    #[test]
    fn a_late_replayed_follow_never_overrides_a_newer_unfollow() {
        let unfollow = rel(false, 5_000);
        let replayed_follow = rel(true, 1_000);
        assert_eq!(
            current_relationships([&unfollow, &replayed_follow], |r| r),
            vec![&unfollow]
        );
        assert_eq!(
            current_relationships([&replayed_follow, &unfollow], |r| r),
            vec![&unfollow]
        );
    }

    #[test]
    fn longform_text_and_embedded_tweets() {
        let body = serde_json::json!({"for_user_id": "9", "tweet_create_events": [{
            "id_str": "100", "created_at": "Wed Oct 10 20:19:24 +0000 2018", "text": "short…", "truncated": true,
            "user": {"id_str": "7", "screen_name": "seven"},
            "extended_tweet": {"full_text": "the whole long text", "entities": {"hashtags": [{"text": "x"}]}, "display_text_range": [0, 19]},
            "quoted_status": {"id_str": "50", "text": "quoted", "user": {"id_str": "8"}}
        }]});
        let env = parse_envelope(body.to_string().as_bytes()).unwrap();
        let activity = env.activities[0].as_ref().unwrap();
        let records = normalize(activity, Some("9"), &env.context).unwrap();
        let tweets: Vec<&TweetRow> = records
            .iter()
            .filter_map(|r| match r {
                Record::Tweet(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(tweets.len(), 2);
        let main = tweets.iter().find(|t| t.tweet_id == "100").unwrap();
        assert_eq!(main.text, "the whole long text");
        assert!(main.is_longform);
        assert_eq!(main.quoted_status_id.as_deref(), Some("50"));
        assert_eq!(main.entities["hashtags"][0]["text"], "x");
    }

    #[test]
    fn missing_required_fields_are_errors_with_a_path() {
        let body = serde_json::json!({"for_user_id": "9", "direct_message_events": [{"type": "message_create", "id": "5", "message_create": {"target": {}}}]});
        let env = parse_envelope(body.to_string().as_bytes()).unwrap();
        let err =
            normalize(env.activities[0].as_ref().unwrap(), Some("9"), &env.context).unwrap_err();
        assert_eq!(err.path, "message_create.sender_id");
    }
}
