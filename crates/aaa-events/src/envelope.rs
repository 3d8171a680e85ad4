use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::kind::ActivityKind;
use crate::natural_key::natural_key;
use crate::time::parse_event_time;

/// One delivered body, split into its activities.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The subscribed account the delivery is for; absent on `user_event`
    /// and `replay_job_status`.
    pub for_user_id: Option<String>,
    /// Every top-level field that is not an activity (`for_user_id`, the
    /// `users`/`apps` side maps, block flags ...). Together with each
    /// activity's payload this reconstructs the delivery without loss.
    pub context: Map<String, Value>,
    /// One entry per activity, in delivery order. A bad activity does not
    /// hide its good siblings.
    pub activities: Vec<Result<Activity, ActivityError>>,
}

/// One activity, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub kind: ActivityKind,
    pub natural_key: String,
    pub event_time: Option<DateTime<Utc>>,
    /// The activity item as parsed (for XAA: the event's `payload`).
    pub payload: Value,
    /// The same item's JSON text exactly as X sent it: numbers, escapes and
    /// key order untouched (`Value` would turn `1e2` into `100.0` and a
    /// 30-digit integer into a float). This is what `events.payload` stores.
    pub raw: Option<String>,
    /// For an X Activity API event, the Account Activity shaped reading of
    /// `payload` that normalization works on; `None` for AAA activities.
    pub view: Option<Value>,
}

impl Activity {
    /// What normalization reads: the view of an XAA event, else the payload.
    pub fn item(&self) -> &Value {
        self.view.as_ref().unwrap_or(&self.payload)
    }

    /// XAA leaves the time out of follows, blocks, mutes, post deletions and
    /// profile updates: such an event is dated when it was received (its
    /// natural key does not depend on it, so a redelivery stays a duplicate).
    pub fn assume_received_at(&mut self, received_at: DateTime<Utc>) {
        if self.event_time.is_some() {
            return;
        }
        self.event_time = Some(received_at);
        let millis = Value::String(received_at.timestamp_millis().to_string());
        if let Some(Value::Object(view)) = &mut self.view {
            let field = match self.kind {
                ActivityKind::TweetDelete => "timestamp_ms",
                _ => "created_timestamp",
            };
            view.entry(field).or_insert(millis);
        }
    }
}

/// The body as a whole could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not an object")]
    NotAnObject,
    #[error("envelope holds no activity (keys: {0})")]
    NoActivity(String),
    /// Kept as a dead letter rather than stored under no account: a number
    /// past u64 has already lost digits, so no id can be trusted from it.
    #[error("for_user_id is not an account id: {0}")]
    BadForUserId(String),
}

impl EnvelopeError {
    pub fn as_label(&self) -> &'static str {
        match self {
            EnvelopeError::NotJson(_) => "not_json",
            EnvelopeError::NotAnObject => "not_an_object",
            EnvelopeError::NoActivity(_) => "no_activity",
            EnvelopeError::BadForUserId(_) => "bad_for_user_id",
        }
    }
}

/// One activity inside a readable envelope could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}[{index}]: missing or invalid field `{path}`")]
pub struct ActivityError {
    pub kind: String,
    /// Position among all activities of the envelope.
    pub index: usize,
    /// JSON path, inside the activity item, of the offending field.
    pub path: String,
}

/// Splits an Account Activity envelope (`object`, with `raw`: its members'
/// JSON text as sent) into its activities.
pub(crate) fn parse_aaa(
    object: Map<String, Value>,
    raw: &BTreeMap<String, &RawValue>,
) -> Result<Envelope, EnvelopeError> {
    let keys = object.keys().cloned().collect::<Vec<_>>().join(", ");

    let mut context = Map::new();
    let mut activities = Vec::new();
    for (key, value) in object {
        let kind = match ActivityKind::from_envelope_key(&key) {
            // Scalars under unknown keys are metadata, not activities.
            Some(ActivityKind::Unknown(_)) if !(value.is_array() || value.is_object()) => None,
            other => other,
        };
        let Some(kind) = kind else {
            context.insert(key, value);
            continue;
        };
        let raw_value = raw.get(&key).copied();
        let (items, raw_items) = match value {
            Value::Array(items) => {
                let raw_items: Vec<String> = raw_value
                    .and_then(|r| serde_json::from_str::<Vec<&RawValue>>(r.get()).ok())
                    .filter(|r| r.len() == items.len())
                    .map(|r| r.into_iter().map(|i| i.get().to_owned()).collect())
                    .unwrap_or_default();
                (items, raw_items)
            }
            single => (
                vec![single],
                raw_value.map(|r| r.get().to_owned()).into_iter().collect(),
            ),
        };
        let mut raw_items = raw_items.into_iter();
        for item in items {
            let index = activities.len();
            let mut parsed = activity(kind.clone(), item, index);
            if let Ok(activity) = &mut parsed {
                activity.raw = raw_items.next();
            }
            activities.push(parsed);
        }
    }
    if activities.is_empty() {
        return Err(EnvelopeError::NoActivity(keys));
    }
    let for_user_id = match context.get("for_user_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        // As sent, not as parsed: the parsed number may have lost digits.
        Some(_) => {
            let sent = raw
                .get("for_user_id")
                .map(|r| r.get().chars().take(64).collect())
                .unwrap_or_default();
            return Err(EnvelopeError::BadForUserId(sent));
        }
    };
    Ok(Envelope {
        for_user_id,
        context,
        activities,
    })
}

/// The top-level members of a JSON object as the text they were sent as.
pub(crate) fn raw_members(json: &[u8]) -> BTreeMap<String, &RawValue> {
    serde_json::from_slice(json).unwrap_or_default()
}

fn activity(kind: ActivityKind, payload: Value, index: usize) -> Result<Activity, ActivityError> {
    match natural_key(&kind, &payload) {
        Ok(natural_key) => Ok(Activity {
            event_time: parse_event_time(&payload),
            kind,
            natural_key,
            payload,
            raw: None,
            view: None,
        }),
        Err(missing) => Err(ActivityError {
            kind: kind.to_string(),
            index,
            path: missing.0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_envelope;
    use serde_json::json;

    fn parse(value: Value) -> Envelope {
        parse_envelope(value.to_string().as_bytes()).expect("a readable envelope")
    }

    #[test]
    fn splits_several_activities_and_keeps_context() {
        let env = parse(json!({
            "for_user_id": "2244994945",
            "users": {"3001": {"id": "3001"}},
            "direct_message_events": [
                {"type": "message_create", "id": "11", "created_timestamp": "1000"},
                {"type": "message_create", "id": "12", "created_timestamp": "2000"}
            ]
        }));
        assert_eq!(env.for_user_id.as_deref(), Some("2244994945"));
        assert!(env.context.contains_key("users"));
        let keys: Vec<_> = env
            .activities
            .iter()
            .map(|a| a.as_ref().unwrap().natural_key.clone())
            .collect();
        assert_eq!(keys, ["11", "12"]);
    }

    #[test]
    fn a_bad_item_does_not_hide_its_siblings() {
        let env = parse(json!({
            "for_user_id": "1",
            "favorite_events": [{"id": "a"}, {"no_id": true}, {"id": "c"}]
        }));
        assert_eq!(env.activities.len(), 3);
        assert!(env.activities[0].is_ok());
        let err = env.activities[1].as_ref().unwrap_err();
        assert_eq!((err.index, err.path.as_str()), (1, "id"));
        assert!(env.activities[2].is_ok());
    }

    #[test]
    fn object_valued_activities_and_unknown_kinds() {
        let env = parse(json!({"replay_job_status": {"job_id": "9", "job_state": "Complete"}}));
        assert_eq!(env.for_user_id, None);
        assert_eq!(
            env.activities[0].as_ref().unwrap().kind,
            ActivityKind::ReplayJobStatus
        );

        let env = parse(json!({"for_user_id": "1", "spaces_events": [{"x": 1}], "new_flag": true}));
        let activity = env.activities[0].as_ref().unwrap();
        assert_eq!(activity.kind.to_string(), "unknown:spaces_events");
        assert_eq!(env.context.get("new_flag"), Some(&json!(true)));
        assert_eq!(env.activities.len(), 1);
    }

    #[test]
    fn unreadable_bodies_are_typed_errors() {
        assert!(matches!(
            parse_envelope(b"{not json"),
            Err(EnvelopeError::NotJson(_))
        ));
        assert_eq!(parse_envelope(b"[1]"), Err(EnvelopeError::NotAnObject));
        assert!(matches!(
            parse_envelope(br#"{"for_user_id":"1"}"#),
            Err(EnvelopeError::NoActivity(keys)) if keys == "for_user_id"
        ));
        assert!(matches!(
            parse_envelope(b""),
            Err(EnvelopeError::NotJson(_))
        ));
    }

    #[test]
    fn each_item_keeps_the_text_x_sent() {
        let body = br#"{"for_user_id":"1","favorite_events":[ {"id":"a","n":1e2,"big":123456789012345678901234567890,"z":-0,"s":"\u00e9"} ,{"id":"b"}],"replay_job_status":{"job_id":"9", "job_state":"Complete"}}"#;
        let env = parse_envelope(body).unwrap();
        let raws: Vec<_> = env
            .activities
            .iter()
            .map(|a| a.as_ref().unwrap().raw.clone().unwrap())
            .collect();
        assert_eq!(
            raws,
            [
                r#"{"id":"a","n":1e2,"big":123456789012345678901234567890,"z":-0,"s":"\u00e9"}"#,
                r#"{"id":"b"}"#,
                r#"{"job_id":"9", "job_state":"Complete"}"#,
            ]
        );
    }

    #[test]
    fn a_for_user_id_that_is_no_id_is_an_error_not_a_null() {
        for (body, sent) in [
            (
                &br#"{"for_user_id":123456789012345678901,"favorite_events":[{"id":"a"}]}"#[..],
                "123456789012345678901",
            ),
            (
                br#"{"for_user_id":1.5,"favorite_events":[{"id":"a"}]}"#,
                "1.5",
            ),
            (
                br#"{"for_user_id":{"id":"1"},"favorite_events":[{"id":"a"}]}"#,
                r#"{"id":"1"}"#,
            ),
        ] {
            assert_eq!(
                parse_envelope(body),
                Err(EnvelopeError::BadForUserId(sent.into()))
            );
        }
        // A long id sent as a string is kept as text.
        let env = parse_envelope(
            br#"{"for_user_id":"123456789012345678901","favorite_events":[{"id":"a"}]}"#,
        )
        .unwrap();
        assert_eq!(env.for_user_id.as_deref(), Some("123456789012345678901"));
    }

    #[test]
    fn event_time_comes_with_the_activity() {
        let env = parse(json!({"for_user_id": "1", "tweet_create_events": [
            {"id_str": "5", "created_at": "Wed Oct 10 20:19:24 +0000 2018", "timestamp_ms": "1539202764662"}
        ]}));
        let activity = env.activities[0].as_ref().unwrap();
        assert_eq!(
            activity.event_time.map(|t| t.timestamp_millis()),
            Some(1539202764662)
        );
    }
}
