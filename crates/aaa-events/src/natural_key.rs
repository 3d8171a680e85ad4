//! Natural keys: the identity of an activity, stable across X's retries,
//! replays and our own reprocessing. Where X gives an id we use it; where it
//! does not, the key is built from the fields that identify the activity.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::kind::ActivityKind;

/// Why no key could be derived: the JSON path of the field that is missing
/// or of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MissingField(pub String);

pub(crate) fn natural_key(kind: &ActivityKind, item: &Value) -> Result<String, MissingField> {
    use ActivityKind::*;
    match kind {
        TweetCreate => id(item, &["id_str"]).or_else(|_| id(item, &["id"])),
        Favorite | DirectMessage => id(item, &["id"]),
        Follow | Unfollow | Block | Unblock | Mute | Unmute => Ok(format!(
            "{}:{}:{}",
            id(item, &["created_timestamp"])?,
            user_id(item, "source")?,
            user_id(item, "target")?,
        )),
        DirectMessageTyping => Ok(format!(
            "{}:{}:{}",
            id(item, &["created_timestamp"])?,
            id(item, &["sender_id"])?,
            id(item, &["target", "recipient_id"])?,
        )),
        DirectMessageMarkRead => Ok(format!(
            "{}:{}:{}:{}",
            id(item, &["created_timestamp"])?,
            id(item, &["sender_id"])?,
            id(item, &["target", "recipient_id"])?,
            id(item, &["last_read_event_id"])?,
        )),
        TweetDelete => Ok(format!(
            "{}:{}",
            id(item, &["status", "id"])?,
            id(item, &["timestamp_ms"])?
        )),
        UserEvent => match item.get("revoke") {
            Some(_) => Ok(format!(
                "revoke:{}:{}:{}",
                id(item, &["revoke", "date_time"])?,
                id(item, &["revoke", "source", "user_id"])?,
                id(item, &["revoke", "target", "app_id"])?,
            )),
            // Other user events X may add: identity is the whole content.
            None => Ok(content_key(item)),
        },
        ReplayJobStatus => id(item, &["job_id"]),
        Unknown(_) | Xaa(_) => Ok(content_key(item)),
    }
}

/// A user reference: v1.1 objects carry `id_str`/`id`, some v2 shapes a bare id.
fn user_id(item: &Value, field: &str) -> Result<String, MissingField> {
    id(item, &[field, "id_str"])
        .or_else(|_| id(item, &[field, "id"]))
        .or_else(|_| id(item, &[field]))
        .map_err(|_| MissingField(format!("{field}.id")))
}

/// A non-empty string or an integer at `path`, as text. Integers are read
/// exactly (never through f64), which is why 64-bit ids survive.
fn id(item: &Value, path: &[&str]) -> Result<String, MissingField> {
    let missing = || MissingField(path.join("."));
    let value = path
        .iter()
        .try_fold(item, |value, key| value.get(key))
        .ok_or_else(missing)?;
    match value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        _ => Err(missing()),
    }
}

/// `sha256:<hex>` of the canonical JSON form: key order and whitespace do not
/// change it, so a re-serialized copy of the same activity maps to the same row.
pub(crate) fn content_key(item: &Value) -> String {
    let digest = Sha256::digest(canonical_json(item).as_bytes());
    format!("sha256:{}", hex::encode(digest))
}

/// JSON with object keys sorted at every depth and no whitespace. Written out
/// explicitly rather than relying on `serde_json::Map` ordering, which a
/// feature flag elsewhere in the build (`preserve_order`) could change.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(kind: &str, item: Value) -> Result<String, MissingField> {
        let kind = ActivityKind::from_envelope_key(kind).expect("an activity kind");
        natural_key(&kind, &item)
    }

    #[test]
    fn tweets_use_id_str_then_id() {
        assert_eq!(
            key(
                "tweet_create_events",
                json!({"id_str": "1050118621198921728", "id": 1})
            )
            .unwrap(),
            "1050118621198921728"
        );
        assert_eq!(
            key("tweet_create_events", json!({"id": 1050118621198921728u64})).unwrap(),
            "1050118621198921728"
        );
        assert_eq!(
            key("tweet_create_events", json!({"text": "x"})),
            Err(MissingField("id".into()))
        );
    }

    #[test]
    fn likes_and_dms_use_their_id() {
        assert_eq!(
            key(
                "favorite_events",
                json!({"id": "a7ba59eab0bfcba386f7acedac279542"})
            )
            .unwrap(),
            "a7ba59eab0bfcba386f7acedac279542"
        );
        assert_eq!(
            key(
                "direct_message_events",
                json!({"type": "message_create", "id": "1050129930183368709"})
            )
            .unwrap(),
            "1050129930183368709"
        );
    }

    #[test]
    fn relationship_events_derive_from_time_source_target() {
        let item = json!({"type": "follow", "created_timestamp": "1517588749178",
            "source": {"id": "3001", "screen_name": "a"}, "target": {"id_str": "3002"}});
        for kind in [
            "follow_events",
            "unfollow_events",
            "block_events",
            "unblock_events",
            "mute_events",
            "unmute_events",
        ] {
            assert_eq!(key(kind, item.clone()).unwrap(), "1517588749178:3001:3002");
        }
        assert_eq!(
            key(
                "follow_events",
                json!({"created_timestamp": "1", "source": {"id": "1"}})
            ),
            Err(MissingField("target.id".into()))
        );
    }

    #[test]
    fn typing_and_read_receipts_derive_keys() {
        let typing = json!({"created_timestamp": "1518127183443", "sender_id": "3001", "target": {"recipient_id": "3002"}});
        assert_eq!(
            key("direct_message_indicate_typing_events", typing).unwrap(),
            "1518127183443:3001:3002"
        );
        let read = json!({"created_timestamp": "1518452444662", "sender_id": "3001",
            "target": {"recipient_id": "3002"}, "last_read_event_id": "963085315333238788"});
        assert_eq!(
            key("direct_message_mark_read_events", read).unwrap(),
            "1518452444662:3001:3002:963085315333238788"
        );
    }

    #[test]
    fn deletes_combine_status_and_time() {
        let item = json!({"status": {"id": "601430178305220608", "user_id": "3198576760"}, "timestamp_ms": "1432228155593"});
        assert_eq!(
            key("tweet_delete_events", item).unwrap(),
            "601430178305220608:1432228155593"
        );
    }

    #[test]
    fn revokes_and_replay_status() {
        let revoke = json!({"revoke": {"date_time": "2018-05-24T09:48:12+00:00",
            "target": {"app_id": "13090192"}, "source": {"user_id": "63046977"}}});
        assert_eq!(
            key("user_event", revoke).unwrap(),
            "revoke:2018-05-24T09:48:12+00:00:63046977:13090192"
        );
        let status = json!({"webhook_id": "1", "job_state": "Complete", "job_id": "1582830389"});
        assert_eq!(key("replay_job_status", status).unwrap(), "1582830389");
    }

    #[test]
    fn unknown_kinds_key_on_canonical_content() {
        let a = key(
            "spaces_events",
            json!({"b": [1, {"y": 2, "x": 1}], "a": "s"}),
        )
        .unwrap();
        let b = key(
            "spaces_events",
            serde_json::from_str(r#"{ "a" : "s", "b" : [ 1, { "x":1, "y":2 } ] }"#).unwrap(),
        )
        .unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("sha256:"));
        assert_ne!(a, key("spaces_events", json!({"a": "t"})).unwrap());
    }

    #[test]
    fn canonical_json_sorts_and_escapes() {
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": "x\"y"})),
            r#"{"a":"x\"y","b":1}"#
        );
    }
}
