//! The X Activity API's envelope for what the simulator generates: the same
//! activity, as XAA would deliver it (`{"data": {event_uuid, event_type,
//! filter, tag, payload, includes}}`), following X's published examples
//! (see `../shared/reference/xaa.md`). Where X publishes no example
//! (`dm.indicate_typing`, `dm.read`), the payload is the AAA item.

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use crate::generate::Delivery;

/// Which product's envelope the simulator delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// As X does: each subscription delivers in its own product's envelope.
    Subscribed,
    /// Account Activity API envelopes only.
    Aaa,
    /// X Activity API envelopes only.
    Xaa,
    /// Every activity twice, once in each envelope, as during a migration
    /// when an account has both subscriptions.
    Both,
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn v2_user(user: &Value) -> Value {
    json!({"id": text(&user["id_str"]).or_else(|| text(&user["id"])), "username": user["screen_name"], "name": user["name"]})
}

fn rfc3339(ms: Option<i64>) -> Value {
    ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map(|t| json!(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()))
        .unwrap_or(Value::Null)
}

fn millis(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn v2_post(tweet: &Value) -> Value {
    let id = text(&tweet["id_str"]).or_else(|| text(&tweet["id"]));
    let full = tweet["extended_tweet"]["full_text"]
        .as_str()
        .or(tweet["text"].as_str())
        .unwrap_or_default();
    let mut referenced = Vec::new();
    if let Some(replied) = text(&tweet["in_reply_to_status_id_str"]) {
        referenced.push(json!({"type": "replied_to", "id": replied}));
    }
    if let Some(quoted) = text(&tweet["quoted_status"]["id_str"]) {
        referenced.push(json!({"type": "quoted", "id": quoted}));
    }
    if let Some(retweeted) = text(&tweet["retweeted_status"]["id_str"]) {
        referenced.push(json!({"type": "retweeted", "id": retweeted}));
    }
    let mentions: Vec<Value> = tweet["entities"]["user_mentions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| json!({"id": text(&m["id_str"]), "username": m["screen_name"]}))
        .collect();
    let mut post = json!({
        "id": id, "text": full, "author_id": text(&tweet["user"]["id_str"]),
        "created_at": rfc3339(millis(&tweet["timestamp_ms"])), "conversation_id": id,
        "edit_history_tweet_ids": [id], "lang": "en",
        "public_metrics": {"like_count": 0, "retweet_count": 0, "reply_count": 0, "quote_count": 0},
        "entities": {"mentions": mentions},
    });
    if !referenced.is_empty() {
        post["referenced_tweets"] = json!(referenced);
    }
    if let Some(user) = text(&tweet["in_reply_to_user_id_str"]) {
        post["in_reply_to_user_id"] = json!(user);
    }
    post
}

/// The XAA envelope of one AAA delivery; `event_uuid` is X's opaque id.
pub fn envelope(delivery: &Delivery, event_uuid: i64) -> Value {
    let body = &delivery.body;
    let me = delivery.for_user_id.clone().unwrap_or_default();
    let item = match &body[delivery.kind] {
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    let mut filter = json!({"user_id": me});
    let mut includes = Value::Null;
    let mut uuid = event_uuid.to_string();
    let (event_type, payload) = match delivery.kind {
        "tweet_create_events" => {
            let author = text(&item["user"]["id_str"]).unwrap_or_default();
            let of_mine =
                |field: &str| text(&item[field]["user"]["id_str"]).as_deref() == Some(me.as_str());
            let event_type = if author == me {
                "post.create"
            } else if text(&item["in_reply_to_user_id_str"]).as_deref() == Some(me.as_str()) {
                "post.reply.create"
            } else if of_mine("quoted_status") {
                "post.quote.create"
            } else if of_mine("retweeted_status") {
                "post.repost.create"
            } else {
                "post.mention.create"
            };
            includes = json!({"users": [v2_user(&item["user"])]});
            let post = v2_post(&item);
            // X's examples: a post event's uuid is the post id.
            uuid = text(&post["id"]).unwrap_or(uuid);
            (event_type, post)
        }
        "favorite_events" => {
            let liker = text(&item["user"]["id_str"]);
            filter["direction"] = json!(if liker.as_deref() == Some(me.as_str()) {
                "outbound"
            } else {
                "inbound"
            });
            includes = json!({"users": [v2_user(&item["user"])]});
            let status = &item["favorited_status"];
            (
                "like.create",
                json!({"id": item["id"], "liked_tweet_id": text(&status["id_str"]),
                       "liked_tweet_author_id": text(&status["user"]["id_str"]),
                       "created_at": rfc3339(millis(&status["timestamp_ms"])),
                       "timestamp_ms": millis(&item["timestamp_ms"]).map(|m| m.to_string())}),
            )
        }
        "follow_events" | "unfollow_events" | "block_events" | "unblock_events" | "mute_events"
        | "unmute_events" => {
            let event_type = match delivery.kind {
                "follow_events" => "follow.follow",
                "unfollow_events" => "follow.unfollow",
                "block_events" => "block.block",
                "unblock_events" => "block.unblock",
                "mute_events" => "mute.mute",
                _ => "mute.unmute",
            };
            (
                event_type,
                json!({"source": {"data": v2_user(&item["source"])}, "target": {"data": v2_user(&item["target"])}}),
            )
        }
        "direct_message_events" => {
            let sender = text(&item["message_create"]["sender_id"]);
            let users: serde_json::Map<String, Value> = body["users"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(id, user)| (id.clone(), json!({"data": v2_user(user)})))
                .collect();
            let event_type = if sender.as_deref() == Some(me.as_str()) {
                "dm.sent"
            } else {
                "dm.received"
            };
            (
                event_type,
                json!({"direct_message_events": [item], "users": users}),
            )
        }
        "direct_message_indicate_typing_events" => ("dm.indicate_typing", item),
        "direct_message_mark_read_events" => ("dm.read", item),
        "tweet_delete_events" => (
            "post.delete",
            json!({"id": text(&item["status"]["id"]), "author_id": text(&item["status"]["user_id"])}),
        ),
        "user_event" => {
            filter = json!({});
            let revoke = &item["revoke"];
            (
                "oauth.revoke",
                json!({"date_time": revoke["date_time"], "user_id": text(&revoke["source"]["user_id"]),
                       "app_id": text(&revoke["target"]["app_id"])}),
            )
        }
        // Kinds AAA never documented (spaces): XAA has them as their own family.
        _ => (
            "spaces.start",
            json!({"user": {"id": me}, "broadcast_id": format!("1Y{event_uuid:x}"), "event_type": "spaces_start"}),
        ),
    };
    let tag = event_type.replace('.', "-");
    let mut data =
        json!({"event_uuid": uuid, "filter": filter, "event_type": event_type, "payload": payload});
    if event_type != "oauth.revoke" {
        data["tag"] = json!(tag);
    }
    if !includes.is_null() {
        data["includes"] = includes;
    }
    json!({"data": data})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{Generator, Mix, account_id};

    /// Every delivery the generator makes, read back by the pipeline's own
    /// parser in both envelopes: the same account and kind, and the same key
    /// wherever XAA carries what the key is made of.
    #[test]
    fn both_envelopes_of_every_generated_delivery_read_as_the_same_activity() {
        let accounts: Vec<String> = (0..5).map(account_id).collect();
        let start = Utc.timestamp_millis_opt(1_795_000_000_000).unwrap();
        let mut generator = Generator::with_mix(
            9,
            5,
            start,
            Mix {
                interaction_share: 0.5,
                revoke_share: 0.05,
                ..Mix::default()
            },
        );
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..2000 {
            let at = start + chrono::TimeDelta::seconds(i);
            let Some(activity) = generator.next_activity(&accounts, at) else {
                break;
            };
            for delivery in &activity.deliveries {
                let aaa = aaa_events::parse_envelope(&delivery.to_bytes()).expect("AAA reads");
                let xaa_body = envelope(delivery, -(i + 1)).to_string();
                let xaa = aaa_events::parse_envelope(xaa_body.as_bytes()).expect("XAA reads");
                let a = aaa.activities[0].as_ref().expect("AAA identifiable");
                let x = xaa.activities[0].as_ref().expect("XAA identifiable");
                assert_eq!(aaa.for_user_id, xaa.for_user_id, "{xaa_body}");
                let shared = matches!(
                    delivery.kind,
                    "tweet_create_events"
                        | "favorite_events"
                        | "direct_message_events"
                        | "direct_message_indicate_typing_events"
                        | "direct_message_mark_read_events"
                        | "user_event"
                );
                if shared {
                    assert_eq!(
                        (&a.kind, &a.natural_key),
                        (&x.kind, &x.natural_key),
                        "{xaa_body}"
                    );
                } else if a.kind.as_str() != "unknown" {
                    assert_eq!(a.kind, x.kind, "{xaa_body}");
                    assert!(x.natural_key.starts_with("xaa:"), "{xaa_body}");
                } else {
                    assert_eq!(x.kind.to_string(), "xaa:spaces.start");
                }
                let mut x = x.clone();
                x.assume_received_at(at);
                aaa_events::normalize(&x, xaa.for_user_id.as_deref(), &xaa.context)
                    .unwrap_or_else(|e| panic!("{e}: {xaa_body}"));
                seen.insert(delivery.kind);
            }
        }
        assert!(seen.len() >= 13, "every family generated: {seen:?}");
    }
}
