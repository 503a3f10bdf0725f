//! UserSig v2 (TLSSigAPIv2): signing and verifying the admin credential, as pure functions.
//!
//! The algorithm, pinned by the official libraries (`docs/api.md`, "UserSig"):
//!
//! 1. sign `TLS.identifier:{id}\nTLS.sdkappid:{appid}\nTLS.time:{t}\nTLS.expire:{exp}\n` with
//!    HMAC-SHA256, the key being the UTF-8 bytes of the console's hex string;
//! 2. put the standard-base64 MAC as `TLS.sig` into a JSON document with `TLS.ver`,
//!    `TLS.identifier`, `TLS.sdkappid`, `TLS.expire` and `TLS.time`;
//! 3. zlib-compress the JSON, standard-base64 it, and replace `+ / =` with `* - _`.
//!
//! The last step is *not* RFC 4648 base64url (there `-` stands for `+` and there is no padding),
//! which is why this module maps the three characters by hand instead of using a URL-safe engine.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::io::{Read as _, Write as _};

use super::secret::SecretKey;

type HmacSha256 = Hmac<Sha256>;

/// The only UserSig version this module understands.
pub const VERSION: &str = "2.0";

/// Upper bound on the inflated JSON document; real ones are about 200 bytes. Guards the
/// emulator against a zlib bomb in a query string.
const MAX_DOCUMENT_BYTES: u64 = 64 * 1024;

/// The JSON document inside a UserSig, in the field order of the official Go library.
///
/// Unknown fields are ignored when decoding: the official libraries differ in layout, and the
/// server only reads the fields it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Always [`VERSION`].
    #[serde(rename = "TLS.ver")]
    pub version: String,
    /// The account the UserSig is for (the App admin for REST calls).
    #[serde(rename = "TLS.identifier")]
    pub identifier: String,
    /// The application's SDKAppID.
    #[serde(rename = "TLS.sdkappid")]
    pub sdkappid: u64,
    /// Lifetime in seconds, counted from `time`.
    #[serde(rename = "TLS.expire")]
    pub expire: u64,
    /// Unix time (seconds) of signing.
    #[serde(rename = "TLS.time")]
    pub time: u64,
    /// Optional user buffer, standard base64 (never used for REST admin signatures).
    #[serde(
        rename = "TLS.userbuf",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub userbuf: Option<String>,
    /// Standard base64 of the HMAC-SHA256 over [`string_to_sign`].
    #[serde(rename = "TLS.sig")]
    pub sig: String,
}

impl Document {
    /// Unix time (seconds) after which the UserSig is expired.
    pub fn expires_at(&self) -> u64 {
        self.time.saturating_add(self.expire)
    }
}

/// Why a UserSig was rejected; each maps to one server error code (see the emulator).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not base64 in the UserSig alphabet, not zlib, not the JSON document, or not version 2.0.
    #[error(
        "the UserSig cannot be decoded ({reason}); check that it was not truncated or re-encoded"
    )]
    Undecodable {
        /// What failed, without the UserSig itself.
        reason: String,
    },
    /// The UserSig was made for another SDKAppID.
    #[error("the UserSig was made for SDKAppID {found}, not {expected}")]
    SdkAppIdMismatch {
        /// The SDKAppID of the request.
        expected: u64,
        /// The SDKAppID inside the UserSig.
        found: u64,
    },
    /// The UserSig was made for another account.
    #[error("the UserSig was made for identifier {found:?}, not {expected:?}")]
    IdentifierMismatch {
        /// The identifier of the request.
        expected: String,
        /// The identifier inside the UserSig.
        found: String,
    },
    /// The UserSig's lifetime is over.
    #[error("the UserSig expired at unix time {expired_at}; sign a new one")]
    Expired {
        /// `TLS.time + TLS.expire`.
        expired_at: u64,
    },
    /// The HMAC does not match: the UserSig was made with another key, or was tampered with.
    #[error(
        "the UserSig signature does not match; check that the secret key belongs to this SDKAppID"
    )]
    BadSignature,
}

/// The text that is signed, exactly as the official libraries build it (every line ends in LF).
pub fn string_to_sign(
    identifier: &str,
    sdkappid: u64,
    time: u64,
    expire: u64,
    userbuf: Option<&str>,
) -> String {
    let mut text = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    if let Some(userbuf) = userbuf {
        text.push_str(&format!("TLS.userbuf:{userbuf}\n"));
    }
    text
}

/// `TLS.sig`: standard base64 of HMAC-SHA256 keyed with the UTF-8 bytes of `key`.
pub fn tls_sig(key: &SecretKey, string_to_sign: &str) -> String {
    let mut mac = new_mac(key);
    mac.update(string_to_sign.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Builds the signed document for an admin UserSig (no userbuf).
pub fn document(
    sdkappid: u64,
    identifier: &str,
    key: &SecretKey,
    time: u64,
    expire: u64,
) -> Document {
    let sig = tls_sig(
        key,
        &string_to_sign(identifier, sdkappid, time, expire, None),
    );
    Document {
        version: VERSION.to_owned(),
        identifier: identifier.to_owned(),
        sdkappid,
        expire,
        time,
        userbuf: None,
        sig,
    }
}

/// Signs a UserSig valid from `time` (unix seconds) for `expire` seconds.
///
/// Compresses at zlib's default level, as the Python, Node and Java libraries do.
pub fn sign(sdkappid: u64, identifier: &str, key: &SecretKey, time: u64, expire: u64) -> String {
    encode(
        &document(sdkappid, identifier, key, time, expire),
        Compression::default(),
    )
}

/// Serialises `document` as compact JSON, zlib-compresses it at `level`, and applies the
/// UserSig alphabet. `Compression::none()` gives the deterministic "stored" form.
pub fn encode(document: &Document, level: Compression) -> String {
    let json = serde_json::to_vec(document).expect("a UserSig document always serialises");
    let mut encoder = ZlibEncoder::new(Vec::with_capacity(json.len() + 16), level);
    // No explicit flush: a sync flush would add an empty block and break the byte-exact
    // "stored" form that the official Go library also produces.
    encoder
        .write_all(&json)
        .expect("writing to a Vec cannot fail");
    let compressed = encoder.finish().expect("writing to a Vec cannot fail");
    STANDARD
        .encode(compressed)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            other => other,
        })
        .collect()
}

/// Decodes a UserSig into its document without checking anything but its shape.
pub fn decode(usersig: &str) -> Result<Document, VerifyError> {
    let undecodable = |reason: &str| VerifyError::Undecodable {
        reason: reason.to_owned(),
    };
    let standard: String = usersig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            other => other,
        })
        .collect();
    let compressed = STANDARD
        .decode(standard.as_bytes())
        .map_err(|_| undecodable("not base64 in the UserSig alphabet"))?;
    let mut json = Vec::new();
    ZlibDecoder::new(compressed.as_slice())
        .take(MAX_DOCUMENT_BYTES)
        .read_to_end(&mut json)
        .map_err(|_| undecodable("not a zlib stream"))?;
    let document: Document =
        serde_json::from_slice(&json).map_err(|_| undecodable("not a UserSig JSON document"))?;
    if document.version != VERSION {
        return Err(undecodable("not a version 2.0 UserSig"));
    }
    Ok(document)
}

/// Checks a UserSig the way the official Go `VerifyUserSig` does: SDKAppID, identifier, expiry
/// (expired iff `now > TLS.time + TLS.expire`), then the HMAC (compared in constant time).
pub fn verify(
    usersig: &str,
    sdkappid: u64,
    identifier: &str,
    key: &SecretKey,
    now: u64,
) -> Result<(), VerifyError> {
    let document = decode(usersig)?;
    if document.sdkappid != sdkappid {
        return Err(VerifyError::SdkAppIdMismatch {
            expected: sdkappid,
            found: document.sdkappid,
        });
    }
    if document.identifier != identifier {
        return Err(VerifyError::IdentifierMismatch {
            expected: identifier.to_owned(),
            found: document.identifier,
        });
    }
    if now > document.expires_at() {
        return Err(VerifyError::Expired {
            expired_at: document.expires_at(),
        });
    }
    let claimed = STANDARD
        .decode(document.sig.as_bytes())
        .map_err(|_| VerifyError::BadSignature)?;
    let mut mac = new_mac(key);
    mac.update(
        string_to_sign(
            &document.identifier,
            document.sdkappid,
            document.time,
            document.expire,
            document.userbuf.as_deref(),
        )
        .as_bytes(),
    );
    mac.verify_slice(&claimed)
        .map_err(|_| VerifyError::BadSignature)
}

fn new_mac(key: &SecretKey) -> HmacSha256 {
    HmacSha256::new_from_slice(key.expose().as_bytes()).expect("HMAC accepts keys of any length")
}
