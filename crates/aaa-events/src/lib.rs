//! The pure core of ingestion: turn one delivered body into activities, each
//! with a kind, a deterministic natural key and an event time.
//!
//! No I/O here. The receiver only calls [`probe_partition_key`]; the consumer
//! calls [`parse_envelope`]. Both must never panic on any input.

pub mod billing;
mod envelope;
pub mod erase;
mod kind;
mod natural_key;
pub mod normalize;
mod parse;
mod time;
pub mod xaa;

pub use envelope::{Activity, ActivityError, Envelope, EnvelopeError};
pub use kind::ActivityKind;
pub use natural_key::canonical_json;
pub use normalize::{NormalizeError, Record, normalize};
pub use parse::parse_envelope;
pub use time::parse_event_time;

/// Finds `for_user_id` (string or integer) without building the whole
/// document: the receiver needs only the Kafka key. `None` when the body is
/// not JSON or carries no `for_user_id` (e.g. `replay_job_status`).
pub fn probe_partition_key(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        for_user_id: Option<IdValue>,
        /// An X Activity API body names the account in `data.filter.user_id`.
        data: Option<XaaProbe>,
    }
    #[derive(serde::Deserialize)]
    struct XaaProbe {
        filter: Option<FilterProbe>,
    }
    #[derive(serde::Deserialize)]
    struct FilterProbe {
        user_id: Option<IdValue>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum IdValue {
        Text(String),
        Integer(u64),
    }
    let probe = serde_json::from_slice::<Probe>(body).ok()?;
    let id = probe.for_user_id.or_else(|| probe.data?.filter?.user_id)?;
    match id {
        IdValue::Text(id) if !id.is_empty() => Some(id),
        IdValue::Text(_) => None,
        IdValue::Integer(id) => Some(id.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_finds_string_and_numeric_ids() {
        assert_eq!(
            probe_partition_key(br#"{"for_user_id":"42","tweet_create_events":[]}"#).as_deref(),
            Some("42")
        );
        assert_eq!(
            probe_partition_key(
                br#"{"tweet_create_events":[{"a":1}],"for_user_id":1234567890123456789}"#
            )
            .as_deref(),
            Some("1234567890123456789")
        );
    }

    #[test]
    fn probe_reads_the_account_of_an_xaa_event() {
        assert_eq!(
            probe_partition_key(
                br#"{"data":{"event_uuid":"-1","filter":{"user_id":"111"},"event_type":"post.delete","payload":{}}}"#
            )
            .as_deref(),
            Some("111")
        );
        assert_eq!(
            probe_partition_key(br#"{"data":{"filter":{},"event_type":"oauth.revoke"}}"#),
            None
        );
    }

    #[test]
    fn probe_tolerates_missing_and_garbage() {
        assert_eq!(probe_partition_key(br#"{"replay_job_status":{}}"#), None);
        assert_eq!(probe_partition_key(b"not json"), None);
        assert_eq!(probe_partition_key(b"[1,2]"), None);
        assert_eq!(probe_partition_key(br#"{"for_user_id":""}"#), None);
        assert_eq!(probe_partition_key(br#"{"for_user_id":1.5}"#), None);
    }
}
