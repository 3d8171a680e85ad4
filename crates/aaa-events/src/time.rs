use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

/// The event time of one activity item, from whichever of X's three styles
/// it carries (`timestamp_ms`, `created_timestamp`, `created_at`), or the
/// RFC 3339 `date_time` of a revoke. `None` when it carries none we can read.
pub fn parse_event_time(item: &Value) -> Option<DateTime<Utc>> {
    if let Some(ms) = item.get("timestamp_ms").and_then(millis) {
        return Utc.timestamp_millis_opt(ms).single();
    }
    if let Some(ms) = item.get("created_timestamp").and_then(millis) {
        return Utc.timestamp_millis_opt(ms).single();
    }
    if let Some(text) = item.get("created_at").and_then(Value::as_str) {
        return DateTime::parse_from_str(text, "%a %b %d %H:%M:%S %z %Y")
            .or_else(|_| DateTime::parse_from_rfc3339(text))
            .ok()
            .map(|t| t.with_timezone(&Utc));
    }
    // user_event: {"revoke": {"date_time": ...}}
    let nested = item
        .as_object()
        .and_then(|o| o.values().find_map(|v| v.get("date_time")))
        .or_else(|| item.get("date_time"));
    nested
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Milliseconds since the epoch, given as a number or a string of digits.
pub(crate) fn millis(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(ms: i64) -> Option<DateTime<Utc>> {
        Utc.timestamp_millis_opt(ms).single()
    }

    #[test]
    fn reads_all_three_styles() {
        assert_eq!(
            parse_event_time(&json!({"timestamp_ms": "1539202764000"})),
            at(1539202764000)
        );
        assert_eq!(
            parse_event_time(&json!({"timestamp_ms": 1539202764000u64})),
            at(1539202764000)
        );
        assert_eq!(
            parse_event_time(&json!({"created_timestamp": "1539202764123"})),
            at(1539202764123)
        );
        assert_eq!(
            parse_event_time(&json!({"created_at": "Wed Oct 10 20:19:24 +0000 2018"})),
            at(1539202764000)
        );
    }

    #[test]
    fn reads_revoke_date_time() {
        let item = json!({"revoke": {"date_time": "2018-10-10T20:19:24+00:00", "source": {"user_id": "1"}}});
        assert_eq!(parse_event_time(&item), at(1539202764000));
    }

    #[test]
    fn unreadable_times_are_none_not_errors() {
        assert_eq!(parse_event_time(&json!({"created_at": "yesterday"})), None);
        assert_eq!(parse_event_time(&json!({"timestamp_ms": "soon"})), None);
        assert_eq!(parse_event_time(&json!({})), None);
        assert_eq!(parse_event_time(&json!([1, 2])), None);
    }
}
