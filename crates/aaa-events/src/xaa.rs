//! X Activity API (XAA) deliveries, the Account Activity API's successor:
//! `{"data": {"event_uuid", "event_type", "filter", "tag", "payload", "includes"}}`,
//! one event per body, the account in `filter.user_id` instead of
//! `for_user_id`.
//!
//! Each event that has an Account Activity equivalent is *read as* that
//! activity (a `view` in AAA shape), so one normalizer and one set of tables
//! serve both products, and the natural key is the one the AAA copy of the
//! same activity has wherever XAA carries the fields it is made of (posts,
//! likes, DMs, typing, read receipts, revokes). Where it does not (follows,
//! blocks, mutes and post deletions carry no timestamp), the key is X's
//! `event_uuid`, kept as an opaque string (X's examples show negative values).
//! Event types with no AAA equivalent (profile, chat, news, spaces, ...) are
//! kept raw under `xaa:<event_type>`, never dropped. The payload is stored
//! exactly as X sent it; `context.xaa` keeps which subscription matched
//! (`tag`, `filter`) and the event's identity.

use serde_json::{Map, Value, json};

use crate::envelope::{Activity, ActivityError, Envelope, EnvelopeError};
use crate::kind::ActivityKind;
use crate::natural_key::{content_key, natural_key};
use crate::time::parse_event_time;

/// True for a body in XAA's envelope: a sole `data` object naming an event type.
pub(crate) fn is_xaa(object: &Map<String, Value>) -> bool {
    object.len() == 1
        && object
            .get("data")
            .and_then(|data| data.get("event_type"))
            .is_some_and(Value::is_string)
}

/// The AAA kind an XAA event type corresponds to; [`ActivityKind::Xaa`] for
/// families AAA never had.
pub fn kind_of(event_type: &str) -> ActivityKind {
    use ActivityKind::*;
    match event_type {
        "post.create"
        | "post.mention.create"
        | "post.reply.create"
        | "post.quote.create"
        | "post.repost.create" => TweetCreate,
        "post.delete" => TweetDelete,
        "like.create" => Favorite,
        "follow.follow" => Follow,
        "follow.unfollow" => Unfollow,
        "block.block" => Block,
        "block.unblock" => Unblock,
        "mute.mute" => Mute,
        "mute.unmute" => Unmute,
        "dm.sent" | "dm.received" => DirectMessage,
        "dm.indicate_typing" => DirectMessageTyping,
        "dm.read" => DirectMessageMarkRead,
        "oauth.revoke" => UserEvent,
        other => Xaa(other.to_owned()),
    }
}

/// The event types that together carry what one account's Account Activity
/// subscription delivered: every type read as an AAA activity ([`kind_of`]).
/// `oauth.revoke` is the app's, subscribed once.
pub fn account_event_types() -> Vec<&'static str> {
    EVENT_TYPES
        .iter()
        .copied()
        .filter(|t| *t != "oauth.revoke" && !matches!(kind_of(t), ActivityKind::Xaa(_)))
        .collect()
}

/// Every event type of X's published enum (spec v2.167) plus `oauth.revoke`.
pub const EVENT_TYPES: &[&str] = &[
    "profile.update.bio",
    "profile.update.profile_picture",
    "profile.update.banner_picture",
    "profile.update.screenname",
    "profile.update.geo",
    "profile.update.url",
    "profile.update.verified_badge",
    "profile.update.affiliate_badge",
    "profile.update.handle",
    "news.new",
    "follow.follow",
    "follow.unfollow",
    "spaces.start",
    "spaces.end",
    "broadcast.start",
    "broadcast.end",
    "broadcast.chat",
    "chat.received",
    "chat.sent",
    "chat.conversation.join",
    "chat.conversation.member_added",
    "chat.conversation.member_removed",
    "chat.conversation.admin_added",
    "chat.conversation.admin_removed",
    "chat.update.group_name",
    "chat.update.restrictions",
    "dm.sent",
    "dm.received",
    "dm.indicate_typing",
    "dm.read",
    "post.create",
    "post.delete",
    "post.mention.create",
    "post.reply.create",
    "post.quote.create",
    "post.repost.create",
    "like.create",
    "mute.mute",
    "mute.unmute",
    "block.block",
    "block.unblock",
    "oauth.revoke",
];

/// `event_uuid` as X sent it: a string's content, or a number's digits
/// (which may lie beyond what a u64 or an f64 holds, or be negative), never
/// rounded. `None` when absent, empty or neither.
fn uuid_as_sent(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let uuid = if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).ok()?
    } else if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        raw.to_owned()
    } else {
        return None;
    };
    (!uuid.is_empty()).then_some(uuid)
}

/// `raw_payload` and `raw_uuid`: the event's `payload` and `event_uuid` as
/// the text X sent.
pub(crate) fn parse(
    mut object: Map<String, Value>,
    raw_payload: Option<String>,
    raw_uuid: Option<String>,
) -> Result<Envelope, EnvelopeError> {
    let Some(Value::Object(mut data)) = object.remove("data") else {
        return Err(EnvelopeError::NotAnObject);
    };
    let payload = data.remove("payload").unwrap_or(Value::Null);
    let event_type = text(data.get("event_type")).unwrap_or_default();
    // X's deprecated alias; responses use the canonical name.
    let event_type = match event_type.as_str() {
        "chat.conversation_join" => "chat.conversation.join".to_owned(),
        _ => event_type,
    };
    let filter = data.get("filter").cloned().unwrap_or(json!({}));
    let includes = data.get("includes").cloned().unwrap_or(Value::Null);
    let event_uuid = raw_uuid.as_deref().and_then(uuid_as_sent);
    // Kept as a string end to end (context, views, keys).
    match &event_uuid {
        Some(uuid) => data.insert("event_uuid".into(), Value::String(uuid.clone())),
        None => data.remove("event_uuid"),
    };
    // X does not document how a replay job's completion reaches an XAA
    // webhook: an event whose payload names a job and its state is read as
    // AAA's `replay_job_status`, whatever its event type.
    let completion = payload.get("job_id").is_some() && payload.get("job_state").is_some();
    let kind = if completion {
        ActivityKind::ReplayJobStatus
    } else {
        kind_of(&event_type)
    };
    let for_user_id = match kind {
        // A revoke is the app's, not an account's (AAA has no for_user_id
        // either); so is a replay job.
        ActivityKind::UserEvent | ActivityKind::ReplayJobStatus => None,
        _ => text(filter.get("user_id")),
    };
    let mut context = Map::new();
    let mut meta = data;
    meta.insert("event_type".into(), Value::String(event_type.clone()));
    let views: Vec<Result<Value, String>> = match &kind {
        ActivityKind::DirectMessage => match payload.get("direct_message_events") {
            Some(Value::Array(items)) if !items.is_empty() => {
                if let Some(users) = payload.get("users").and_then(Value::as_object) {
                    let users: Map<String, Value> = users
                        .iter()
                        .map(|(id, user)| (id.clone(), v1_user(unwrap_data(user))))
                        .collect();
                    context.insert("users".into(), Value::Object(users));
                }
                items.iter().cloned().map(Ok).collect()
            }
            _ => vec![Err("payload.direct_message_events".to_owned())],
        },
        ActivityKind::DirectMessageTyping | ActivityKind::DirectMessageMarkRead => {
            vec![Ok(payload.clone())]
        }
        _ => vec![view(&kind, &payload, &filter, &includes)],
    };
    context.insert("xaa".into(), Value::Object(meta));
    let several = views.len() > 1;
    // Kinds whose AAA key XAA carries the fields for (so both formats share it).
    let shared = matches!(
        kind,
        ActivityKind::ReplayJobStatus
            | ActivityKind::TweetCreate
            | ActivityKind::Favorite
            | ActivityKind::DirectMessage
            | ActivityKind::DirectMessageTyping
            | ActivityKind::DirectMessageMarkRead
            | ActivityKind::UserEvent
    );
    let activities = views
        .into_iter()
        .enumerate()
        .map(|(index, view)| {
            let view = view.map_err(|path| ActivityError {
                kind: kind.to_string(),
                index,
                path,
            })?;
            let key = match (shared, natural_key(&kind, &view)) {
                (true, Ok(key)) => key,
                _ => match &event_uuid {
                    Some(uuid) if several => format!("xaa:{uuid}:{index}"),
                    Some(uuid) => format!("xaa:{uuid}"),
                    None => content_key(&json!({"event_type": event_type, "filter": filter, "payload": payload, "index": index})),
                },
            };
            Ok(Activity {
                event_time: parse_event_time(&view),
                kind: kind.clone(),
                natural_key: key,
                payload: payload.clone(),
                raw: raw_payload.clone(),
                view: Some(view),
            })
        })
        .collect();
    Ok(Envelope {
        for_user_id,
        context,
        activities,
    })
}

/// The AAA-shaped reading of one XAA payload.
fn view(
    kind: &ActivityKind,
    payload: &Value,
    filter: &Value,
    includes: &Value,
) -> Result<Value, String> {
    use ActivityKind::*;
    let required = |field: &str| text(payload.get(field)).ok_or_else(|| format!("payload.{field}"));
    Ok(match kind {
        TweetCreate => {
            let id = required("id")?;
            let author_id = text(payload.get("author_id"));
            let author = author_id
                .as_deref()
                .and_then(|a| included_user(includes, a))
                .unwrap_or_else(|| json!({"id_str": author_id}));
            let referenced = |kind: &str| {
                payload["referenced_tweets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["type"] == kind)
                    .and_then(|r| text(r.get("id")))
            };
            let mentions: Vec<Value> = payload["entities"]["mentions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| json!({"id_str": text(m.get("id")), "screen_name": m["username"]}))
                .collect();
            let mut tweet = json!({
                "id_str": id,
                "text": payload["text"],
                "created_at": payload["created_at"],
                "user": author,
                "entities": {"user_mentions": mentions},
                "in_reply_to_status_id_str": referenced("replied_to"),
                "in_reply_to_user_id_str": text(payload.get("in_reply_to_user_id")),
                "quoted_status_id_str": referenced("quoted"),
            });
            if let Some(original) = referenced("retweeted") {
                tweet["retweeted_status"] = json!({"id_str": original, "text": ""});
                tweet["retweeted_status_id_str"] = json!(original);
            }
            tweet
        }
        TweetDelete => {
            json!({"status": {"id": required("id")?, "user_id": text(payload.get("author_id"))}})
        }
        Favorite => {
            let author = text(payload.get("liked_tweet_author_id"));
            // Outbound: the subscribed account liked; inbound: someone liked
            // its post, named (when X says) among the included users.
            let liker = match filter["direction"].as_str() {
                Some("outbound") => text(filter.get("user_id")),
                _ => includes["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(unwrap_data)
                    .filter_map(|u| text(u.get("id")))
                    .find(|id| Some(id) != author.as_ref()),
            };
            json!({
                "id": required("id")?,
                "timestamp_ms": payload["timestamp_ms"],
                "user": {"id_str": liker},
                "favorited_status_id_str": text(payload.get("liked_tweet_id")),
            })
        }
        Follow | Unfollow | Block | Unblock | Mute | Unmute => {
            let party = |field: &str| {
                let user = unwrap_data(&payload[field]);
                if text(user.get("id")).is_none() {
                    return Err(format!("payload.{field}.id"));
                }
                Ok(v1_user(user))
            };
            json!({"source": party("source")?, "target": party("target")?})
        }
        UserEvent => json!({"revoke": {
            "date_time": required("date_time")?,
            "source": {"user_id": required("user_id")?},
            "target": {"app_id": text(payload.get("app_id"))},
        }}),
        _ => payload.clone(),
    })
}

/// XAA sometimes wraps a user as `{"data": {...}}`, sometimes not.
fn unwrap_data(user: &Value) -> &Value {
    match user.get("data") {
        Some(inner) if inner.is_object() => inner,
        _ => user,
    }
}

/// A v2 user (`id`, `username`, `name`) in v1.1 shape.
fn v1_user(user: &Value) -> Value {
    json!({"id_str": text(user.get("id")), "screen_name": user["username"], "name": user["name"], "v2": user})
}

fn included_user(includes: &Value, id: &str) -> Option<Value> {
    includes["users"]
        .as_array()?
        .iter()
        .map(unwrap_data)
        .find(|u| text(u.get("id")).as_deref() == Some(id))
        .map(v1_user)
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::parse_envelope;
    use serde_json::json;

    fn keys(body: serde_json::Value) -> Vec<(Option<String>, String, String)> {
        let envelope = parse_envelope(body.to_string().as_bytes()).expect("readable");
        envelope
            .activities
            .into_iter()
            .map(|a| {
                let a = a.expect("identifiable");
                (
                    envelope.for_user_id.clone(),
                    a.kind.to_string(),
                    a.natural_key,
                )
            })
            .collect()
    }

    #[test]
    fn the_same_activity_has_one_key_in_both_formats() {
        let aaa = json!({"for_user_id": "111", "tweet_create_events": [
            {"id_str": "5", "text": "hi", "user": {"id_str": "111"}, "created_at": "Wed Oct 10 20:19:24 +0000 2018"}]});
        let xaa = json!({"data": {"event_uuid": "5", "filter": {"user_id": "111"}, "event_type": "post.create",
            "payload": {"id": "5", "text": "hi", "author_id": "111", "created_at": "2018-10-10T20:19:24.000Z"}}});
        assert_eq!(keys(aaa), keys(xaa));
        let aaa =
            json!({"for_user_id": "111", "favorite_events": [{"id": "abc", "timestamp_ms": "1"}]});
        let xaa = json!({"data": {"event_uuid": "-9", "filter": {"user_id": "111", "direction": "outbound"},
            "event_type": "like.create", "payload": {"id": "abc", "liked_tweet_id": "7", "timestamp_ms": "1"}}});
        assert_eq!(keys(aaa), keys(xaa));
    }

    #[test]
    fn events_without_a_shared_identity_are_keyed_by_their_opaque_uuid() {
        let follow = json!({"data": {"event_uuid": "-2781149976877970683", "filter": {"user_id": "1"},
            "event_type": "follow.follow", "payload": {"source": {"id": "1"}, "target": {"data": {"id": "2"}}}}});
        assert_eq!(
            keys(follow),
            vec![(
                Some("1".into()),
                "follow_events".into(),
                "xaa:-2781149976877970683".into()
            )]
        );
        // No uuid at all (X's older examples): a content hash, stable across redeliveries.
        let bio = json!({"data": {"filter": {"user_id": "1"}, "event_type": "profile.update.bio",
            "payload": {"before": "a", "after": "b"}}});
        let first = keys(bio.clone());
        assert_eq!(first, keys(bio));
        assert!(first[0].2.starts_with("sha256:"), "{first:?}");
        assert_eq!(first[0].1, "xaa:profile.update.bio");
    }

    #[test]
    fn an_event_uuid_stays_the_text_x_sent_however_large_or_negative() {
        let follow = |uuid: &str| {
            let body = format!(
                r#"{{"data":{{"event_uuid":{uuid},"filter":{{"user_id":"1"}},"event_type":"follow.follow","payload":{{"source":{{"id":"1"}},"target":{{"data":{{"id":"2"}}}}}}}}}}"#
            );
            let envelope = parse_envelope(body.as_bytes()).expect("readable");
            let activity = envelope.activities[0].clone().expect("identifiable");
            (
                activity.natural_key,
                envelope.context["xaa"]["event_uuid"].clone(),
            )
        };
        // Past u64 and f64 precision: two uuids an f64 cannot tell apart.
        let a = follow("123456789012345678901234567890");
        let b = follow("123456789012345678901234567891");
        assert_eq!(a.0, "xaa:123456789012345678901234567890");
        assert_ne!(a.0, b.0);
        assert_eq!(a.1, json!("123456789012345678901234567890"));
        assert_eq!(follow("-2781149976877970683").0, "xaa:-2781149976877970683");
        assert_eq!(follow(r#""-7""#), ("xaa:-7".into(), json!("-7")));
        // Not an id: keyed by content, not by a uuid.
        assert!(follow("null").0.starts_with("sha256:"));
    }

    #[test]
    fn an_event_missing_what_identifies_it_is_an_activity_error() {
        let envelope = parse_envelope(
            br#"{"data":{"event_uuid":"1","filter":{"user_id":"1"},"event_type":"follow.follow","payload":{"source":{}}}}"#,
        )
        .expect("readable");
        let error = envelope.activities[0].as_ref().expect_err("no source id");
        assert_eq!(error.path, "payload.source.id");
        let envelope = parse_envelope(
            br#"{"data":{"event_uuid":"1","filter":{"user_id":"1"},"event_type":"dm.sent","payload":{}}}"#,
        )
        .expect("readable");
        assert!(envelope.activities[0].is_err());
    }
}
