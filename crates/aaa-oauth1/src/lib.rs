//! OAuth 1.0a user-context signatures (RFC 5849 section 3, HMAC-SHA1), as X
//! requires for subscribing accounts. The client side signs; the simulator
//! verifies. Primitives come from RustCrypto and `percent-encoding`; only
//! the protocol's assembly rules live here.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// RFC 3986 unreserved characters stay; everything else is encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn encode(value: &str) -> String {
    utf8_percent_encode(value, UNRESERVED).to_string()
}

/// The four secrets of a user-context request.
#[derive(Clone)]
pub struct Credentials {
    pub consumer_key: String,
    pub consumer_secret: String,
    pub token: String,
    pub token_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("consumer_key", &self.consumer_key)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("no OAuth Authorization header")]
    MissingHeader,
    #[error("malformed OAuth Authorization header: {0}")]
    Malformed(String),
    #[error("unsupported signature method {0} (only HMAC-SHA1)")]
    UnsupportedMethod(String),
    #[error("unknown consumer key")]
    UnknownConsumer,
    #[error("unknown or revoked token")]
    UnknownToken,
    #[error("timestamp outside the accepted window")]
    StaleTimestamp,
    #[error("nonce already used")]
    ReplayedNonce,
    #[error("signature does not match")]
    BadSignature,
}

/// RFC 5849 3.4.1: METHOD & encode(base URL) & encode(normalized parameters).
/// `params` are every query, form-body and `oauth_*` parameter (decoded),
/// without `oauth_signature`.
pub fn signature_base_string(method: &str, base_url: &str, params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> =
        params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    encoded.sort();
    let normalized = encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        encode(base_url),
        encode(&normalized)
    )
}

fn signing_mac(consumer_secret: &str, token_secret: &str) -> HmacSha1 {
    let key = format!("{}&{}", encode(consumer_secret), encode(token_secret));
    <HmacSha1 as KeyInit>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length")
}

/// base64 HMAC-SHA1 of the base string.
pub fn signature(base_string: &str, consumer_secret: &str, token_secret: &str) -> String {
    let mut mac = signing_mac(consumer_secret, token_secret);
    mac.update(base_string.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// The `Authorization: OAuth ...` header for a request. `request_params` are
/// the query and form-body parameters (decoded).
pub fn authorization_header(
    method: &str,
    base_url: &str,
    request_params: &[(String, String)],
    credentials: &Credentials,
    nonce: &str,
    timestamp: u64,
) -> String {
    let mut oauth = vec![
        (
            "oauth_consumer_key".to_owned(),
            credentials.consumer_key.clone(),
        ),
        ("oauth_nonce".to_owned(), nonce.to_owned()),
        ("oauth_signature_method".to_owned(), "HMAC-SHA1".to_owned()),
        ("oauth_timestamp".to_owned(), timestamp.to_string()),
        ("oauth_token".to_owned(), credentials.token.clone()),
        ("oauth_version".to_owned(), "1.0".to_owned()),
    ];
    let all: Vec<_> = request_params
        .iter()
        .cloned()
        .chain(oauth.iter().cloned())
        .collect();
    let base = signature_base_string(method, base_url, &all);
    oauth.push((
        "oauth_signature".to_owned(),
        signature(
            &base,
            &credentials.consumer_secret,
            &credentials.token_secret,
        ),
    ));
    oauth.sort();
    let fields: Vec<String> = oauth
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", encode(k), encode(v)))
        .collect();
    format!("OAuth {}", fields.join(", "))
}

/// Parses `OAuth k="v", ...` into decoded pairs.
pub fn parse_authorization_header(header: &str) -> Result<BTreeMap<String, String>, OAuthError> {
    let rest = header
        .trim()
        .strip_prefix("OAuth ")
        .ok_or_else(|| OAuthError::Malformed("does not start with `OAuth `".into()))?;
    let mut fields = BTreeMap::new();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| OAuthError::Malformed(format!("`{part}` is not key=\"value\"")))?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| OAuthError::Malformed(format!("value of {key} is not quoted")))?;
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| OAuthError::Malformed(format!("{key} is not UTF-8")))
        };
        fields.insert(decode(key)?, decode(value)?);
    }
    Ok(fields)
}

/// What a verified request proved: who signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub consumer_key: String,
    pub token: String,
    pub nonce: String,
    pub timestamp: u64,
}

/// The server's side: secrets by key, the clock, and nonce memory.
pub trait Verifier {
    fn consumer_secret(&self, consumer_key: &str) -> Option<String>;
    fn token_secret(&self, token: &str) -> Option<String>;
    /// Seconds since the epoch, on the server's clock.
    fn now(&self) -> u64;
    /// Largest accepted distance between the request's timestamp and now.
    fn max_skew_secs(&self) -> u64 {
        300
    }
    /// Records a nonce; `false` if it was seen before (a replayed request).
    fn remember_nonce(&self, consumer_key: &str, nonce: &str, timestamp: u64) -> bool;
}

/// Verifies a request: header shape, method, consumer, token, timestamp
/// window, signature (constant-time), and only then the nonce, so a forged
/// request cannot burn a legitimate client's nonce.
pub fn verify(
    verifier: &impl Verifier,
    method: &str,
    base_url: &str,
    request_params: &[(String, String)],
    header: Option<&str>,
) -> Result<Verified, OAuthError> {
    let fields = parse_authorization_header(header.ok_or(OAuthError::MissingHeader)?)?;
    let field = |name: &str| {
        fields
            .get(name)
            .cloned()
            .ok_or_else(|| OAuthError::Malformed(format!("{name} is missing")))
    };
    let method_name = field("oauth_signature_method")?;
    if method_name != "HMAC-SHA1" {
        return Err(OAuthError::UnsupportedMethod(method_name));
    }
    if let Some(version) = fields.get("oauth_version")
        && version != "1.0"
    {
        return Err(OAuthError::Malformed(format!("oauth_version {version}")));
    }
    let consumer_key = field("oauth_consumer_key")?;
    let token = field("oauth_token")?;
    let nonce = field("oauth_nonce")?;
    let timestamp: u64 = field("oauth_timestamp")?
        .parse()
        .map_err(|_| OAuthError::Malformed("oauth_timestamp is not a number".into()))?;
    let claimed = BASE64
        .decode(field("oauth_signature")?)
        .map_err(|_| OAuthError::Malformed("oauth_signature is not base64".into()))?;

    let consumer_secret = verifier
        .consumer_secret(&consumer_key)
        .ok_or(OAuthError::UnknownConsumer)?;
    let token_secret = verifier
        .token_secret(&token)
        .ok_or(OAuthError::UnknownToken)?;
    if verifier.now().abs_diff(timestamp) > verifier.max_skew_secs() {
        return Err(OAuthError::StaleTimestamp);
    }

    let params: Vec<(String, String)> = request_params
        .iter()
        .cloned()
        .chain(
            fields
                .iter()
                .filter(|(k, _)| *k != "oauth_signature" && *k != "realm")
                .map(|(k, v)| (k.clone(), v.clone())),
        )
        .collect();
    let base = signature_base_string(method, base_url, &params);
    let mut mac = signing_mac(&consumer_secret, &token_secret);
    mac.update(base.as_bytes());
    mac.verify_slice(&claimed)
        .map_err(|_| OAuthError::BadSignature)?;

    if !verifier.remember_nonce(&consumer_key, &nonce, timestamp) {
        return Err(OAuthError::ReplayedNonce);
    }
    Ok(Verified {
        consumer_key,
        token,
        nonce,
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// X's "Creating a signature" page, byte for byte.
    #[test]
    fn reproduces_x_creating_a_signature_example() {
        let params = p(&[
            (
                "status",
                "Hello Ladies + Gentlemen, a signed OAuth request!",
            ),
            ("include_entities", "true"),
            ("oauth_consumer_key", "xvz1evFS4wEEPTGEFPHBog"),
            ("oauth_nonce", "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", "1318622958"),
            (
                "oauth_token",
                "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
            ),
            ("oauth_version", "1.0"),
        ]);
        let base = signature_base_string(
            "POST",
            "https://api.twitter.com/1.1/statuses/update.json",
            &params,
        );
        assert_eq!(
            base,
            "POST&https%3A%2F%2Fapi.twitter.com%2F1.1%2Fstatuses%2Fupdate.json&include_entities%3Dtrue%26oauth_consumer_key%3Dxvz1evFS4wEEPTGEFPHBog%26oauth_nonce%3DkYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1318622958%26oauth_token%3D370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb%26oauth_version%3D1.0%26status%3DHello%2520Ladies%2520%252B%2520Gentlemen%252C%2520a%2520signed%2520OAuth%2520request%2521"
        );
        assert_eq!(
            signature(
                &base,
                "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
                "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE"
            ),
            "hCtSmYh+iHYCEqBWrE7C7hYmtUk="
        );
    }

    /// The OAuth Core 1.0 / RFC 5849 photos example.
    #[test]
    fn reproduces_rfc_photos_example() {
        let params = p(&[
            ("file", "vacation.jpg"),
            ("size", "original"),
            ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
            ("oauth_token", "nnch734d00sl2jdk"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", "1191242096"),
            ("oauth_nonce", "kllo9940pd9333jh"),
            ("oauth_version", "1.0"),
        ]);
        let base = signature_base_string("GET", "http://photos.example.net/photos", &params);
        assert_eq!(
            signature(&base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00"),
            "tR3+Ty81lMeYAr/Fid0kMTYa/WM="
        );
    }

    struct Server {
        now: u64,
        nonces: RefCell<HashSet<String>>,
    }

    impl Verifier for Server {
        fn consumer_secret(&self, key: &str) -> Option<String> {
            (key == "ck").then(|| "cs".to_owned())
        }
        fn token_secret(&self, token: &str) -> Option<String> {
            (token == "tok").then(|| "ts".to_owned())
        }
        fn now(&self) -> u64 {
            self.now
        }
        fn remember_nonce(&self, _: &str, nonce: &str, _: u64) -> bool {
            self.nonces.borrow_mut().insert(nonce.to_owned())
        }
    }

    fn creds() -> Credentials {
        Credentials {
            consumer_key: "ck".into(),
            consumer_secret: "cs".into(),
            token: "tok".into(),
            token_secret: "ts".into(),
        }
    }

    const URL: &str = "http://127.0.0.1:9/2/account_activity/webhooks/1/subscriptions/all";

    #[test]
    fn accepts_a_correctly_signed_request_once() {
        let server = Server {
            now: 1_000_000,
            nonces: RefCell::default(),
        };
        let header = authorization_header("POST", URL, &[], &creds(), "n1", 1_000_000);
        let verified = verify(&server, "POST", URL, &[], Some(&header)).unwrap();
        assert_eq!(
            (verified.consumer_key.as_str(), verified.token.as_str()),
            ("ck", "tok")
        );
        assert_eq!(
            verify(&server, "POST", URL, &[], Some(&header)),
            Err(OAuthError::ReplayedNonce)
        );
    }

    #[test]
    fn rejects_tampering() {
        let server = Server {
            now: 1_000_000,
            nonces: RefCell::default(),
        };
        let params = p(&[("a", "1")]);
        let header = authorization_header("POST", URL, &params, &creds(), "n2", 1_000_000);
        // A parameter changed after signing.
        assert_eq!(
            verify(&server, "POST", URL, &p(&[("a", "2")]), Some(&header)),
            Err(OAuthError::BadSignature)
        );
        // Another method or URL.
        assert_eq!(
            verify(&server, "GET", URL, &params, Some(&header)),
            Err(OAuthError::BadSignature)
        );
        // The timestamp edited in the header.
        let edited = header.replace("oauth_timestamp=\"1000000\"", "oauth_timestamp=\"1000001\"");
        assert_eq!(
            verify(&server, "POST", URL, &params, Some(&edited)),
            Err(OAuthError::BadSignature)
        );
        // The signature itself changed.
        let sig_start = header.find("oauth_signature=\"").unwrap() + 17;
        let mut forged = header.clone();
        let c = if &header[sig_start..sig_start + 1] == "A" {
            "B"
        } else {
            "A"
        };
        forged.replace_range(sig_start..sig_start + 1, c);
        assert_eq!(
            verify(&server, "POST", URL, &params, Some(&forged)),
            Err(OAuthError::BadSignature)
        );
        // None of the failures used up the nonce.
        assert!(verify(&server, "POST", URL, &params, Some(&header)).is_ok());
    }

    #[test]
    fn rejects_stale_timestamps_unknown_keys_and_garbage() {
        let server = Server {
            now: 1_000_000,
            nonces: RefCell::default(),
        };
        let old = authorization_header("POST", URL, &[], &creds(), "n3", 1_000_000 - 301);
        assert_eq!(
            verify(&server, "POST", URL, &[], Some(&old)),
            Err(OAuthError::StaleTimestamp)
        );
        let other = Credentials {
            token: "nope".into(),
            ..creds()
        };
        let header = authorization_header("POST", URL, &[], &other, "n4", 1_000_000);
        assert_eq!(
            verify(&server, "POST", URL, &[], Some(&header)),
            Err(OAuthError::UnknownToken)
        );
        assert_eq!(
            verify(&server, "POST", URL, &[], None),
            Err(OAuthError::MissingHeader)
        );
        assert!(matches!(
            verify(&server, "POST", URL, &[], Some("Bearer x")),
            Err(OAuthError::Malformed(_))
        ));
    }

    #[test]
    fn encodes_per_rfc_3986() {
        assert_eq!(encode("Ladies + Gentlemen"), "Ladies%20%2B%20Gentlemen");
        assert_eq!(encode("-._~"), "-._~");
        assert_eq!(encode("☃"), "%E2%98%83");
    }
}
