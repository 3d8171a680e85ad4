//! Reading a delivered body: an X Activity API event or an Account Activity
//! envelope, told apart by shape, each parsed by its own module.

use serde_json::Value;

use crate::envelope::{Envelope, EnvelopeError, parse_aaa, raw_members};
use crate::xaa;

pub fn parse_envelope(body: &[u8]) -> Result<Envelope, EnvelopeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(EnvelopeError::NotAnObject);
    };
    let raw = raw_members(body);
    if xaa::is_xaa(&object) {
        let data = raw
            .get("data")
            .map(|data| raw_members(data.get().as_bytes()))
            .unwrap_or_default();
        let raw_payload = data.get("payload").map(|p| p.get().to_owned());
        let raw_uuid = data.get("event_uuid").map(|u| u.get().to_owned());
        return xaa::parse(object, raw_payload, raw_uuid);
    }
    parse_aaa(object, &raw)
}
