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

/// Whether a signature header has the shape of X's (`sha256=` and the
/// base64 of a 32-byte HMAC), without checking it against any secret. A
/// request the receiver never read (shed at its concurrency limit) is judged
/// by this alone: such a request may be X's, so refusing it must not go
/// unseen, while one without it cannot be.
pub fn is_well_formed_signature(header: Option<&[u8]>) -> bool {
    header
        .and_then(|h| h.strip_prefix(SIGNATURE_PREFIX.as_bytes()))
        .and_then(|encoded| BASE64.decode(encoded).ok())
        .is_some_and(|tag| tag.len() == 32)
}

/// Longest `crc_token` answered. X's tokens are short random strings; the
/// bound keeps the route from hashing whatever a client sends.
pub const CRC_TOKEN_MAX_LEN: usize = 256;

/// Why a `crc_token` is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CrcTokenError {
    #[error("crc_token is missing or empty")]
    Missing,
    #[error("crc_token is longer than {CRC_TOKEN_MAX_LEN} characters")]
    TooLong,
    #[error("crc_token holds a character outside A-Z a-z 0-9 + / = - _")]
    BadCharacter,
}

impl CrcTokenError {
    /// Low-cardinality label for metrics.
    pub fn as_label(&self) -> &'static str {
        match self {
            CrcTokenError::Missing => "missing",
            CrcTokenError::TooLong => "too_long",
            CrcTokenError::BadCharacter => "bad_character",
        }
    }
}

/// A byte X's tokens may hold: the standard and URL-safe base64 alphabets.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'=' | b'-' | b'_')
}

/// Whether `token` has the shape of an X challenge.
///
/// The CRC answer and a delivery signature are the same HMAC under the same
/// secret, so answering any token would sign any body: a client could ask
/// for the signature of a forged delivery. The allowed bytes exclude `{`,
/// `[`, quotes, whitespace, a BOM and every non-ASCII byte, so no token is a
/// JSON object or array in any encoding, and the receiver refuses as forged
/// every delivery that could be a token (`could_be_crc_token`).
pub fn check_crc_token(token: &str) -> Result<(), CrcTokenError> {
    if token.is_empty() {
        return Err(CrcTokenError::Missing);
    }
    if token.len() > CRC_TOKEN_MAX_LEN {
        return Err(CrcTokenError::TooLong);
    }
    if !token.bytes().all(is_token_byte) {
        return Err(CrcTokenError::BadCharacter);
    }
    Ok(())
}

/// Whether `body` is something the CRC route would have signed. X's bodies
/// are JSON objects, so such a body is never an authentic delivery.
pub fn could_be_crc_token(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|text| check_crc_token(text).is_ok())
}

/// The `response_token` value that answers a CRC challenge; refused for a
/// token that does not have X's shape (`check_crc_token`).
pub fn crc_response_token(secret: &[u8], crc_token: &str) -> Result<String, CrcTokenError> {
    check_crc_token(crc_token)?;
    Ok(sign(secret, crc_token.as_bytes()))
}

/// Checks a delivery signature header against every secret (several during a
/// rotation). The comparison is constant-time per secret (`Mac::verify_slice`),
/// and every secret is tried so timing does not reveal which one matched.
pub fn verify(
    secrets: &[impl AsRef<[u8]>],
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let mut stream = SignedStream::new(secrets);
    stream.update(body);
    stream.verify(header)
}

/// A body's signature check fed in chunks, for bodies too large to buffer:
/// the receiver still learns whether an oversized delivery was X's.
pub struct SignedStream {
    macs: Vec<HmacSha256>,
}

impl SignedStream {
    pub fn new(secrets: &[impl AsRef<[u8]>]) -> Self {
        SignedStream {
            macs: secrets.iter().map(|s| mac(s.as_ref(), b"")).collect(),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        for mac in &mut self.macs {
            mac.update(chunk);
        }
    }

    /// As [`verify`], over every chunk fed so far.
    pub fn verify(self, header: Option<&[u8]>) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let encoded = header
            .strip_prefix(SIGNATURE_PREFIX.as_bytes())
            .ok_or(SignatureError::Malformed)?;
        let expected = BASE64
            .decode(encoded)
            .map_err(|_| SignatureError::Malformed)?;
        let mut matched = false;
        for mac in self.macs {
            matched |= mac.verify_slice(&expected).is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
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
        assert_eq!(
            crc_response_token(SECRET, "challenge"),
            Ok(KNOWN_CRC.into())
        );
    }

    #[test]
    fn only_signatures_shaped_like_x_are_well_formed() {
        let real = sign(SECRET, b"{}");
        assert!(is_well_formed_signature(Some(real.as_bytes())));
        assert!(is_well_formed_signature(Some(KNOWN_CRC.as_bytes())));
        for bad in [
            "",
            "sha256=",
            "sha256=!!!",
            "md5=oeUF6Wxqoezggrue+wbIDxKRPSF6esKwizR2MHh9HaA=",
            "sha256=AAAA",
            "oeUF6Wxqoezggrue+wbIDxKRPSF6esKwizR2MHh9HaA=",
        ] {
            assert!(!is_well_formed_signature(Some(bad.as_bytes())), "{bad}");
        }
        assert!(!is_well_formed_signature(None));
    }

    #[test]
    fn x_shaped_tokens_are_answered() {
        for token in [
            "challenge",
            "0123456789abcdef0123456789abcdef",
            "QTZCQzk0RTAtMTVGMy00NzU5LUE5QjUtMkY2QUU3NjcwRTdE",
            "a+b/c==",
            "url-safe_token",
        ] {
            assert!(crc_response_token(SECRET, token).is_ok(), "{token}");
        }
        let longest = "a".repeat(CRC_TOKEN_MAX_LEN);
        assert!(crc_response_token(SECRET, &longest).is_ok());
    }

    #[test]
    fn tokens_of_other_shapes_are_refused() {
        assert_eq!(check_crc_token(""), Err(CrcTokenError::Missing));
        let too_long = "a".repeat(CRC_TOKEN_MAX_LEN + 1);
        assert_eq!(check_crc_token(&too_long), Err(CrcTokenError::TooLong));
        for token in ["a b", "a\nb", "é", "a%b", "a.b", "\u{feff}abc", "a\0"] {
            assert_eq!(
                check_crc_token(token),
                Err(CrcTokenError::BadCharacter),
                "{token:?}"
            );
        }
    }

    /// The oracle: whatever JSON body a client asks the CRC route to sign,
    /// the answer is never a valid signature of a body the receiver accepts.
    #[test]
    fn no_json_object_or_array_can_be_signed_through_crc() {
        let bodies: Vec<Vec<u8>> = vec![
            br#"{"for_user_id":"1","follow_events":[]}"#.to_vec(),
            b" {\"a\":1}".to_vec(),
            b"\t\r\n{}".to_vec(),
            b"\xef\xbb\xbf{}".to_vec(),
            b"[{}]".to_vec(),
            // UTF-16 (LE and BE) and UTF-32 encodings of "{}".
            b"\xff\xfe{\x00}\x00".to_vec(),
            b"\xfe\xff\x00{\x00}".to_vec(),
            b"{\x00\x00\x00}\x00\x00\x00".to_vec(),
        ];
        for body in bodies {
            let as_token = String::from_utf8_lossy(&body);
            assert!(
                crc_response_token(SECRET, &as_token).is_err(),
                "{as_token:?} was signed"
            );
            assert!(!could_be_crc_token(&body));
        }
        // Every printable ASCII byte that could open or continue JSON
        // structure is outside the alphabet.
        for byte in [
            b'{', b'[', b'"', b' ', b'\t', b'\n', b'\r', b':', b',', b'.',
        ] {
            assert!(!is_token_byte(byte), "{}", byte as char);
        }
        // What a token can be is refused as a delivery.
        assert!(could_be_crc_token(b"12345"));
        assert!(could_be_crc_token(b"true"));
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
    fn a_body_fed_in_chunks_verifies_like_the_whole() {
        let body = b"a body that arrives in three chunks";
        let header = sign(SECRET, body);
        let mut stream = SignedStream::new(&[SECRET]);
        for chunk in body.chunks(12) {
            stream.update(chunk);
        }
        assert_eq!(stream.verify(Some(header.as_bytes())), Ok(()));
        let mut partial = SignedStream::new(&[SECRET]);
        partial.update(&body[..12]);
        assert_eq!(
            partial.verify(Some(header.as_bytes())),
            Err(SignatureError::Mismatch)
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
