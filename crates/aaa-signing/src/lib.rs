//! X webhook cryptography, shared by the receiver (which answers and verifies)
//! and the simulator (which challenges and signs).
//!
//! Both the CRC answer and the delivery signature are
//! `sha256=` + base64(HMAC-SHA256(key = consumer secret, msg)).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix X puts in front of every base64 HMAC it sends or expects.
pub const SIGNATURE_PREFIX: &str = "sha256=";

/// Name of the header X signs every delivery with.
pub const SIGNATURE_HEADER: &str = "x-twitter-webhooks-signature";

/// Why a delivery signature was refused. Variants are coarse on purpose: the
/// caller counts them, and a finer answer would only help an attacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header is missing")]
    Missing,
    #[error("signature header is not of the form sha256=<base64>")]
    Malformed,
    #[error("signature does not match any configured consumer secret")]
    Mismatch,
}

impl SignatureError {
    /// Low-cardinality label for metrics.
    pub fn as_label(&self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Malformed => "malformed",
            SignatureError::Mismatch => "mismatch",
        }
    }
}

fn mac(secret: &[u8], message: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(message);
    mac
}

/// `sha256=<base64 HMAC>` of `message` under `secret`.
pub fn sign(secret: &[u8], message: &[u8]) -> String {
    let tag = mac(secret, message).finalize().into_bytes();
    format!("{SIGNATURE_PREFIX}{}", BASE64.encode(tag))
}

/// The `response_token` value that answers a CRC challenge.
pub fn crc_response_token(secret: &[u8], crc_token: &str) -> String {
    sign(secret, crc_token.as_bytes())
}

/// Checks a delivery signature header against every secret (several during a
/// rotation). The comparison is constant-time per secret (`Mac::verify_slice`),
/// and every secret is tried so timing does not reveal which one matched.
pub fn verify(
    secrets: &[impl AsRef<[u8]>],
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let encoded = header
        .strip_prefix(SIGNATURE_PREFIX.as_bytes())
        .ok_or(SignatureError::Malformed)?;
    let expected = BASE64
        .decode(encoded)
        .map_err(|_| SignatureError::Malformed)?;
    let mut matched = false;
    for secret in secrets {
        matched |= mac(secret.as_ref(), body).verify_slice(&expected).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Independent known value: computed with
    //   printf %s 'challenge' | openssl dgst -sha256 -hmac 'secret' -binary | base64
    const SECRET: &[u8] = b"secret";
    const KNOWN_CRC: &str = "sha256=oeUF6Wxqoezggrue+wbIDxKRPSF6esKwizR2MHh9HaA=";

    #[test]
    fn crc_token_matches_independent_value() {
        assert_eq!(crc_response_token(SECRET, "challenge"), KNOWN_CRC);
    }

    #[test]
    fn accepts_its_own_signature() {
        let body = br#"{"for_user_id":"1"}"#;
        let header = sign(SECRET, body);
        assert_eq!(verify(&[SECRET], Some(header.as_bytes()), body), Ok(()));
    }

    #[test]
    fn accepts_any_of_several_secrets_during_rotation() {
        let body = b"payload";
        let header = sign(b"new", body);
        let secrets: [&[u8]; 2] = [b"old", b"new"];
        assert_eq!(verify(&secrets, Some(header.as_bytes()), body), Ok(()));
    }

    #[test]
    fn rejects_wrong_secret() {
        let body = b"payload";
        let header = sign(b"other", body);
        assert_eq!(
            verify(&[SECRET], Some(header.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rejects_other_body() {
        let header = sign(SECRET, b"payload");
        assert_eq!(
            verify(&[SECRET], Some(header.as_bytes()), b"payload!"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rejects_truncated_signature() {
        let body = b"payload";
        let header = sign(SECRET, body);
        // Drop the padding and the last characters: still valid base64, wrong length.
        let truncated = &header[..header.len() - 4];
        assert_eq!(
            verify(&[SECRET], Some(truncated.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rejects_missing_prefix() {
        let body = b"payload";
        let header = sign(SECRET, body);
        let bare = header.trim_start_matches(SIGNATURE_PREFIX);
        assert_eq!(
            verify(&[SECRET], Some(bare.as_bytes()), body),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn rejects_missing_header_and_garbage() {
        assert_eq!(verify(&[SECRET], None, b"x"), Err(SignatureError::Missing));
        assert_eq!(
            verify(&[SECRET], Some(b"sha256=!!not base64!!"), b"x"),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn rejects_when_no_secret_configured() {
        let header = sign(SECRET, b"x");
        let none: [&[u8]; 0] = [];
        assert_eq!(
            verify(&none, Some(header.as_bytes()), b"x"),
            Err(SignatureError::Mismatch)
        );
    }
}
