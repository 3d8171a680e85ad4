//! Golden tests: every fixture in `tests/fixtures/` (realistic X payloads)
//! against the exact rows it must become, kept beside it as
//! `<name>.expected.json`. After an intended change, regenerate with
//! `AAA_BLESS=1 cargo test -p aaa-events --test golden` and review the diff.

use std::path::PathBuf;

use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn rows_of(body: &[u8]) -> Value {
    let envelope = aaa_events::parse_envelope(body).expect("fixture parses");
    // XAA events without a time of their own are dated on receipt.
    let received_at = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
        .unwrap()
        .to_utc();
    let activities: Vec<Value> = envelope
        .activities
        .iter()
        .map(|activity| {
            let mut activity = activity.clone().expect("fixture activity has a key");
            activity.assume_received_at(received_at);
            let activity = &activity;
            let records =
                aaa_events::normalize(activity, envelope.for_user_id.as_deref(), &envelope.context)
                    .expect("fixture normalizes");
            json!({
                "kind": activity.kind.to_string(),
                "natural_key": activity.natural_key,
                "event_time": activity.event_time,
                "rows": records,
            })
        })
        .collect();
    json!({"for_user_id": envelope.for_user_id, "activities": activities})
}

#[test]
fn every_fixture_becomes_exactly_its_expected_rows() {
    let bless = std::env::var_os("AAA_BLESS").is_some();
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.ends_with(".json") || name.ends_with(".expected.json") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        let actual = rows_of(&body);
        let expected_path = path.with_extension("expected.json");
        if bless {
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&actual).unwrap() + "\n",
            )
            .unwrap();
        }
        let expected: Value =
            serde_json::from_slice(&std::fs::read(&expected_path).unwrap_or_else(|_| {
                panic!(
                    "{} is missing: run with AAA_BLESS=1 and review it",
                    expected_path.display()
                )
            }))
            .unwrap();
        assert_eq!(actual, expected, "{name}");
        checked += 1;
    }
    assert!(checked >= 19, "every kind has a fixture ({checked})");
}

#[test]
fn fixtures_cover_every_known_kind() {
    for kind in aaa_events::ActivityKind::known() {
        let path = fixtures().join(format!("{}.json", kind.as_str()));
        assert!(path.exists(), "no fixture for {kind}");
    }
}
