//! Property: a natural key depends on what the activity *is*, never on how
//! it was serialized. Key order, whitespace and (for known kinds) extra
//! fields X may add tomorrow leave every key unchanged.
//! Unknown kinds are keyed by their whole content, so for them only order
//! and whitespace are neutral; a new field there is a different activity.

use std::path::PathBuf;

use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn fixtures() -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().ends_with(".json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// Writes `value` with shuffled keys, random whitespace and, if `extra`,
/// new scalar fields sprinkled into objects.
fn render(value: &Value, rng: &mut ChaCha8Rng, extra: bool, out: &mut String) {
    let space = |rng: &mut ChaCha8Rng| [" ", "", "\n  ", "\t"][rng.random_range(0..4)];
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> =
                map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if extra && rng.random_bool(0.3) {
                entries.push((
                    format!("x_future_field_{}", rng.random::<u16>()),
                    Value::from(rng.random::<u32>()),
                ));
            }
            entries.shuffle(rng);
            out.push('{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(space(rng));
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(space(rng));
                out.push(':');
                render(value, rng, extra, out);
            }
            out.push_str(space(rng));
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(space(rng));
                render(item, rng, extra, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn keys(body: &[u8]) -> Vec<(String, String)> {
    let envelope = aaa_events::parse_envelope(body).expect("parses");
    envelope
        .activities
        .iter()
        .map(|a| {
            let a = a.as_ref().expect("keyed");
            (a.kind.to_string(), a.natural_key.clone())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn serialization_never_changes_a_key(index in 0usize..19, seed: u64, extra: bool) {
        let all = fixtures();
        let fixture = &all[index % all.len()];
        let expected = keys(fixture.to_string().as_bytes());
        let unknown_kind = expected.iter().any(|(kind, _)| kind.starts_with("unknown:"));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut text = String::new();
        render(fixture, &mut rng, extra && !unknown_kind, &mut text);
        prop_assert_eq!(keys(text.as_bytes()), expected, "{}", text);
    }
}
