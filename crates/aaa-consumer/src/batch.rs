//! Pure planning of one batch: Kafka records in, rows to write out.
//! Every record ends up as event rows, dead-letter rows, or both; none is
//! skipped, so committing the batch's offsets afterwards loses nothing.

use std::collections::BTreeMap;

use aaa_common::kafka::control;
use aaa_events::{EnvelopeError, Record, normalize, parse_envelope};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Why a delivery (or one of its activities) became a dead letter
/// (`dead_letters.error_kind`, `aaa_consumer_dead_letters_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    NotJson,
    NotAnObject,
    NoActivity,
    BadForUserId,
    /// A record with no payload.
    Empty,
    InvalidActivity,
    Unnormalizable,
    BadControlRecord,
    TooLarge,
    RejectedByDatabase,
    NulCharacter,
}

impl DeadLetterKind {
    pub const ALL: [DeadLetterKind; 11] = [
        DeadLetterKind::NotJson,
        DeadLetterKind::NotAnObject,
        DeadLetterKind::NoActivity,
        DeadLetterKind::BadForUserId,
        DeadLetterKind::Empty,
        DeadLetterKind::InvalidActivity,
        DeadLetterKind::Unnormalizable,
        DeadLetterKind::BadControlRecord,
        DeadLetterKind::TooLarge,
        DeadLetterKind::RejectedByDatabase,
        DeadLetterKind::NulCharacter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::NotJson => "not_json",
            DeadLetterKind::NotAnObject => "not_an_object",
            DeadLetterKind::NoActivity => "no_activity",
            DeadLetterKind::BadForUserId => "bad_for_user_id",
            DeadLetterKind::Empty => "empty",
            DeadLetterKind::InvalidActivity => "invalid_activity",
            DeadLetterKind::Unnormalizable => "unnormalizable",
            DeadLetterKind::BadControlRecord => "bad_control_record",
            DeadLetterKind::TooLarge => "too_large",
            DeadLetterKind::RejectedByDatabase => "rejected_by_database",
            DeadLetterKind::NulCharacter => "nul_character",
        }
    }

    fn of(error: &EnvelopeError) -> DeadLetterKind {
        match error {
            EnvelopeError::NotJson(_) => DeadLetterKind::NotJson,
            EnvelopeError::NotAnObject => DeadLetterKind::NotAnObject,
            EnvelopeError::NoActivity(_) => DeadLetterKind::NoActivity,
            EnvelopeError::BadForUserId(_) => DeadLetterKind::BadForUserId,
        }
    }
}

/// One record as read from the raw topic.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    pub webhook_id: Option<String>,
    pub request_id: Option<String>,
    pub received_at: DateTime<Utc>,
    /// `heartbeat` or `fence` for control records; `None` for deliveries.
    pub record_type: Option<String>,
}

impl RawRecord {
    /// A fence of the watermark's (`aaa_common::kafka::control`).
    pub fn is_fence(&self) -> bool {
        self.record_type.as_deref() == Some(control::FENCE)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub webhook_id: Option<String>,
    pub for_user_id: Option<String>,
    pub kind: String,
    /// Bounded label for metrics.
    pub kind_label: &'static str,
    pub natural_key: String,
    pub event_time: Option<DateTime<Utc>>,
    pub payload: Value,
    /// `payload` as the JSON text X sent (what `events.payload` stores).
    pub payload_text: String,
    pub context: Value,
    pub activity_index: i32,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub request_id: Option<String>,
    pub received_at: DateTime<Utc>,
    /// X sent no time (XAA follows, blocks, mutes ...): `event_time` is
    /// `received_at`, and a replayed copy must not pass for a new change.
    pub dated_on_arrival: bool,
    /// Normalized rows, written only if this event is new.
    pub records: Vec<Record>,
    /// Every post the payload holds, at any depth (`event_posts`).
    pub posts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    pub webhook_id: Option<String>,
    /// -1: the whole body; otherwise the activity's position.
    pub activity_index: i32,
    pub error_kind: &'static str,
    pub reason: String,
    pub raw: Vec<u8>,
    pub raw_sha256: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub request_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Default, PartialEq)]
pub struct BatchPlan {
    pub events: Vec<EventRow>,
    pub dead_letters: Vec<DeadLetterRow>,
    /// Next offset to commit per (topic, partition): highest seen + 1.
    pub commit: BTreeMap<(String, i32), i64>,
    pub heartbeats: Vec<control::Heartbeat>,
    /// Latest fence per (topic, partition).
    pub fences: BTreeMap<(String, i32), DateTime<Utc>>,
}

pub fn plan(records: &[RawRecord]) -> BatchPlan {
    let mut plan = BatchPlan::default();
    for record in records {
        let next = plan
            .commit
            .entry((record.topic.clone(), record.partition))
            .or_insert(record.offset + 1);
        *next = (*next).max(record.offset + 1);
        match record.record_type.as_deref() {
            Some(control::HEARTBEAT) => plan_control(record, &mut plan, |plan, bytes| {
                let heartbeat: control::Heartbeat = serde_json::from_slice(bytes)?;
                plan.heartbeats.push(heartbeat);
                Ok(())
            }),
            Some(control::OVERSIZED) => plan_control(record, &mut plan, |plan, bytes| {
                let trace: control::Oversized = serde_json::from_slice(bytes)?;
                plan.dead_letters
                    .push(oversized_dead_letter(record, &trace));
                Ok(())
            }),
            Some(control::OVERSIZED_BODY) => plan.dead_letters.push(dead_letter(
                record,
                -1,
                DeadLetterKind::TooLarge,
                format!(
                    "body of {} bytes signed by X, over the receiver's body limit: kept whole, not parsed",
                    record.payload.as_deref().map_or(0, <[u8]>::len)
                ),
            )),
            Some(control::FENCE) => plan_control(record, &mut plan, |plan, bytes| {
                let fence: control::Fence = serde_json::from_slice(bytes)?;
                let latest = plan
                    .fences
                    .entry((record.topic.clone(), record.partition))
                    .or_insert(fence.at);
                *latest = (*latest).max(fence.at);
                Ok(())
            }),
            _ => plan_record(record, &mut plan),
        }
    }
    plan
}

/// Postgres text cannot hold NUL. Whatever a dead letter says must be
/// storable, or the record it describes could never leave the partition.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// The dead letter of `record` (or of its activity at `index`; -1: the body).
fn dead_letter(
    record: &RawRecord,
    index: i32,
    error_kind: DeadLetterKind,
    reason: String,
) -> DeadLetterRow {
    let raw = record.payload.as_deref().unwrap_or_default();
    DeadLetterRow {
        webhook_id: record.webhook_id.as_deref().map(storable),
        activity_index: index,
        error_kind: error_kind.as_str(),
        reason: storable(&reason),
        raw: raw.to_vec(),
        raw_sha256: hex::encode(Sha256::digest(raw)),
        topic: storable(&record.topic),
        partition: record.partition,
        offset: record.offset,
        request_id: record.request_id.as_deref().map(storable),
        received_at: record.received_at,
    }
}

/// Whether JSON text holds the escape of a NUL character (conservatively: a
/// literal backslash followed by `u0000` counts too; it only dead-letters).
fn has_nul_escape(json: &str) -> bool {
    json.as_bytes()
        .windows(6)
        .any(|w| w[0] == b'\\' && w[1] == b'u' && w[2..].iter().all(|b| *b == b'0'))
}

/// A record Postgres refused for good (`reason`: the error and its
/// SQLSTATE), kept whole with its raw bytes so nothing behind it waits.
pub fn rejected_dead_letter(record: &RawRecord, reason: &str) -> DeadLetterRow {
    dead_letter(
        record,
        -1,
        DeadLetterKind::RejectedByDatabase,
        reason.to_owned(),
    )
}

/// The trace of an authentic body the receiver refused as too large. Keyed
/// by the body's hash, so X's retries of it are one dead letter.
fn oversized_dead_letter(record: &RawRecord, trace: &control::Oversized) -> DeadLetterRow {
    let headers: Vec<String> = trace
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect();
    let reason = format!(
        "body of {} bytes (sha256 {}) over the {}-byte limit, signed by X; not stored. Headers: {}",
        trace.size,
        trace.sha256,
        trace.limit,
        headers.join("; ")
    );
    let mut row = dead_letter(record, -1, DeadLetterKind::TooLarge, reason);
    row.raw_sha256 = storable(&trace.sha256);
    row
}

/// A control record that cannot be read is kept as a dead letter like any other.
fn plan_control(
    record: &RawRecord,
    plan: &mut BatchPlan,
    read: impl FnOnce(&mut BatchPlan, &[u8]) -> Result<(), serde_json::Error>,
) {
    let raw = record.payload.as_deref().unwrap_or_default();
    if let Err(err) = read(plan, raw) {
        let reason = format!(
            "{}: {err}",
            record.record_type.as_deref().unwrap_or_default()
        );
        plan.dead_letters.push(dead_letter(
            record,
            -1,
            DeadLetterKind::BadControlRecord,
            reason,
        ));
    }
}

fn plan_record(record: &RawRecord, plan: &mut BatchPlan) {
    let raw = record.payload.as_deref().unwrap_or_default();
    let dead = |index: i32, error_kind: DeadLetterKind, reason: String| {
        dead_letter(record, index, error_kind, reason)
    };
    let mut envelope = match parse_envelope(raw) {
        Ok(envelope) => envelope,
        Err(err) => {
            let (kind, reason) = match record.payload {
                None => (DeadLetterKind::Empty, "record has no payload".to_owned()),
                Some(_) => (DeadLetterKind::of(&err), err.to_string()),
            };
            plan.dead_letters.push(dead(-1, kind, reason));
            return;
        }
    };
    for (index, activity) in envelope.activities.iter_mut().enumerate() {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        match activity {
            Ok(activity) => {
                let dated_on_arrival = activity.event_time.is_none();
                activity.assume_received_at(record.received_at);
                // A row that cannot be normalized is still stored raw; the
                // dead letter tells an operator what the schema missed.
                let records =
                    match normalize(activity, envelope.for_user_id.as_deref(), &envelope.context) {
                        Ok(records) => records,
                        Err(err) => {
                            plan.dead_letters.push(dead(
                                index,
                                DeadLetterKind::Unnormalizable,
                                err.to_string(),
                            ));
                            Vec::new()
                        }
                    };
                let payload_text = activity
                    .raw
                    .clone()
                    .unwrap_or_else(|| activity.payload.to_string());
                // `json` keeps `\u0000` but every ->> over it fails: such an
                // activity would break analysts' queries, so it is kept only
                // as a dead letter (X does not send NUL in its JSON).
                if has_nul_escape(&payload_text) {
                    plan.dead_letters.push(dead(
                        index,
                        DeadLetterKind::NulCharacter,
                        "activity holds \\u0000, which Postgres text cannot hold".to_owned(),
                    ));
                    continue;
                }
                plan.events.push(EventRow {
                    webhook_id: record.webhook_id.clone(),
                    for_user_id: envelope.for_user_id.clone(),
                    kind: activity.kind.to_string(),
                    kind_label: activity.kind.as_str(),
                    natural_key: activity.natural_key.clone(),
                    event_time: activity.event_time,
                    posts: aaa_events::erase::posts_in(&activity.payload)
                        .into_iter()
                        .collect(),
                    payload: activity.payload.clone(),
                    payload_text,
                    context: Value::Object(envelope.context.clone()),
                    activity_index: index,
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    request_id: record.request_id.clone(),
                    received_at: record.received_at,
                    dated_on_arrival,
                    records,
                });
            }
            Err(err) => plan.dead_letters.push(dead(
                index,
                DeadLetterKind::InvalidActivity,
                err.to_string(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, partition: i32, body: Option<&str>) -> RawRecord {
        RawRecord {
            topic: "aaa.raw".into(),
            partition,
            offset,
            payload: body.map(|b| b.as_bytes().to_vec()),
            webhook_id: Some("w1".into()),
            request_id: Some(format!("r{offset}")),
            received_at: DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            record_type: None,
        }
    }

    #[test]
    fn every_record_becomes_rows_and_offsets_advance_per_partition() {
        let plan = plan(&[
            record(
                7,
                0,
                Some(r#"{"for_user_id":"1","favorite_events":[{"id":"a"},{"id":"b"}]}"#),
            ),
            record(3, 1, Some("not json")),
            record(
                8,
                0,
                Some(r#"{"for_user_id":"1","favorite_events":[{"nope":1}]}"#),
            ),
            record(4, 1, None),
        ]);
        assert_eq!(plan.events.len(), 2);
        assert_eq!(plan.events[1].natural_key, "b");
        assert_eq!(plan.events[1].activity_index, 1);
        assert_eq!(plan.events[0].for_user_id.as_deref(), Some("1"));

        let kinds: Vec<_> = plan
            .dead_letters
            .iter()
            .map(|d| (d.offset, d.activity_index, d.error_kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (3, -1, "not_json"),
                (8, 0, "invalid_activity"),
                (4, -1, "empty")
            ]
        );
        assert_eq!(plan.dead_letters[0].raw, b"not json");

        let commit: Vec<_> = plan.commit.into_iter().collect();
        assert_eq!(
            commit,
            [(("aaa.raw".into(), 0), 9), (("aaa.raw".into(), 1), 5)]
        );
    }

    #[test]
    fn an_oversized_body_is_a_dead_letter_whole_and_keyed_by_its_hash() {
        let body = format!(r#"{{"for_user_id":"1","pad":"{}"}}"#, "x".repeat(3000));
        let mut oversized = record(7, 1, Some(&body));
        oversized.record_type = Some(control::OVERSIZED_BODY.into());
        let plan = plan(&[oversized]);
        assert!(plan.events.is_empty(), "not parsed");
        let dead = &plan.dead_letters[0];
        assert_eq!(dead.error_kind, "too_large");
        assert_eq!(dead.raw, body.as_bytes(), "the bytes X sent");
        assert_eq!(
            dead.raw_sha256,
            hex::encode(Sha256::digest(body.as_bytes()))
        );
        assert_eq!(dead.activity_index, -1);
        assert!(
            dead.reason.contains(&format!("{} bytes", body.len())),
            "{}",
            dead.reason
        );
    }

    #[test]
    fn an_oversized_trace_is_a_dead_letter_keyed_by_the_body_hash() {
        let trace = control::Oversized {
            webhook_id: "w1".into(),
            size: 2_000_000,
            sha256: "ab".repeat(32),
            limit: 1_048_576,
            headers: [("user-agent".to_owned(), "X".to_owned())].into(),
        };
        let mut oversized = record(5, 2, Some(&serde_json::to_string(&trace).unwrap()));
        oversized.record_type = Some(control::OVERSIZED.into());
        let plan = plan(&[oversized.clone()]);
        assert!(plan.events.is_empty());
        let dead = &plan.dead_letters[0];
        assert_eq!(dead.error_kind, "too_large");
        assert_eq!(dead.raw_sha256, trace.sha256);
        assert!(dead.reason.contains("2000000 bytes"), "{}", dead.reason);
        assert!(dead.reason.contains("user-agent: X"), "{}", dead.reason);
        assert_eq!(dead.raw, oversized.payload.unwrap());
    }

    #[test]
    fn an_activity_with_a_nul_escape_is_a_dead_letter_and_its_siblings_land() {
        let plan = plan(&[record(
            1,
            0,
            Some(r#"{"for_user_id":"1","favorite_events":[{"id":"a"},{"id":"b","t":"x\u0000"}]}"#),
        )]);
        assert_eq!(plan.events.len(), 1);
        assert_eq!(plan.events[0].natural_key, "a");
        let dead: Vec<_> = plan
            .dead_letters
            .iter()
            .map(|d| (d.activity_index, d.error_kind))
            .collect();
        assert_eq!(dead, [(1, "nul_character")]);
    }

    #[test]
    fn dead_letters_never_hold_nul_in_text() {
        let mut poison = record(1, 0, Some(r#"{"a\u0000":1}"#));
        poison.request_id = Some("r\0".into());
        let dead = rejected_dead_letter(&poison, "bad \0 byte");
        assert!(!dead.reason.contains('\0'));
        assert!(!dead.request_id.unwrap().contains('\0'));
        assert_eq!(dead.raw, br#"{"a\u0000":1}"#);
    }

    #[test]
    fn identical_bodies_produce_identical_keys() {
        let body = r#"{"for_user_id":"9","follow_events":[{"created_timestamp":"1","source":{"id":"2"},"target":{"id":"3"}}]}"#;
        let plan = plan(&[record(1, 0, Some(body)), record(2, 0, Some(body))]);
        assert_eq!(plan.events[0].natural_key, plan.events[1].natural_key);
        assert_eq!(plan.events[0].kind, "follow_events");
    }

    #[test]
    fn dead_letter_kinds_have_one_label_each_and_agree_with_the_parser() {
        let labels: std::collections::BTreeSet<&str> =
            DeadLetterKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), DeadLetterKind::ALL.len());
        for error in [
            EnvelopeError::NotJson(String::new()),
            EnvelopeError::NotAnObject,
            EnvelopeError::NoActivity(String::new()),
            EnvelopeError::BadForUserId(String::new()),
        ] {
            assert_eq!(DeadLetterKind::of(&error).as_str(), error.as_label());
        }
    }
}
