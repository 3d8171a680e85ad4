#![no_main]
//! Any bytes an authentic sender could post: parsing and normalizing must
//! never panic, and every activity either gets a key or a typed error.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = aaa_events::probe_partition_key(body);
    if let Ok(envelope) = aaa_events::parse_envelope(body) {
        for activity in envelope.activities.iter().flatten() {
            assert!(!activity.natural_key.is_empty());
            let _ = aaa_events::normalize(activity, envelope.for_user_id.as_deref(), &envelope.context);
        }
    }
});
