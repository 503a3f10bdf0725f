//! UserSig v2 against the test vectors of `docs/api.md` ("UserSig") and the official libraries' output.

use attrsync::api::usersig::{self, decode, sign, string_to_sign, tls_sig, verify, VerifyError};
use attrsync::api::SecretKey;
use flate2::Compression;
use proptest::prelude::*;

/// The sample key from the official READMEs.
const K1: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
const K2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// `TLS.time` of every vector.
const T: u64 = 1_700_000_000;

const A_SIG: &str = "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4=";
const B_SIG: &str = "8xvI/XKsADe9GCw3F9R4Z+qbORTcb/Av6xzb3eS5rM8=";
const C_SIG: &str = "QjT201xPkXk/aM1e+y0vakZb0K2iPrFue++0s5y6bFM=";

const A_PYPI: &str = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkKjIT87NK82CSxSnZiQUFmSlAKUMTAyiAyqVWFGQWpYJkTE1NjRDiJZm5YFFzNPXFmekgG3zKHM1T9D3LzdODi-OKs8vCqpxcAvydnV2SSv2cy03cPcpDnA2SMgu0nUxslWoBHdYzUg__";
const A_NPM: &str = "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwhWZiflZpXlQqeKU7MSCgswUJStDEwMogMiUZOamKlkZmqOKplYUZBaBxE1NTY3gosWZ6UpWSj5ljuYp*p7l5unBxXnF2WVhVU4uAf7Ozi5JpX7O5SbuHuUhzgZJmQXaTia2SrUAohcx8g__";
const A_GO: &str = "eAEArABT-3siVExTLnZlciI6IjIuMCIsIlRMUy5pZGVudGlmaWVyIjoieGlhb2p1biIsIlRMUy5zZGthcHBpZCI6MTQwMDAwMDAwMCwiVExTLmV4cGlyZSI6MTU1NTIwMDAsIlRMUy50aW1lIjoxNzAwMDAwMDAwLCJUTFMuc2lnIjoiTHZBN2QvSXc3Z1NzbnNrdlZ6QkRQT0NDRGJ1TkN3NEdId1RDMGJpcCtCND0ifQoBAAD--9-DMfw_";
const A_STORED: &str = "eAEBqwBU-3siVExTLnZlciI6IjIuMCIsIlRMUy5pZGVudGlmaWVyIjoieGlhb2p1biIsIlRMUy5zZGthcHBpZCI6MTQwMDAwMDAwMCwiVExTLmV4cGlyZSI6MTU1NTIwMDAsIlRMUy50aW1lIjoxNzAwMDAwMDAwLCJUTFMuc2lnIjoiTHZBN2QvSXc3Z1NzbnNrdlZ6QkRQT0NDRGJ1TkN3NEdId1RDMGJpcCtCND0ifa3HMfI_";
const B_PYPI: &str = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkElNyM-Myi0uKEkvyi2BKilOyEwsKMlOACiygACqTWlGQWZQKEjczMTCACpZk5oKEDM0NoABmTGY6yAqLijJP-QjvYkeXVEt353JjN8sgkyjtwiT-oJDkJH3HMrOKqiTj1GDTIl8LW6VaAPODNJs_";
const B_NPM: &str = "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwokpuZl5mcUlRYkl*UVQBcUp2YkFBZkpSlYWUAARL8nMTVWyMjQ3gAKIaGpFQWZRqpKVhZkJTKg4M13JSsmiosxTP8K72NEl1dLdudzYzTLIJEq7MMk-KCQ5Sd*xzKyiKsk4Ndi0yNfCVqkWAGSzMzs_";
const B_GO: &str = "eAEArQBS-3siVExTLnZlciI6IjIuMCIsIlRMUy5pZGVudGlmaWVyIjoiYWRtaW5pc3RyYXRvciIsIlRMUy5zZGthcHBpZCI6ODg4ODg4ODgsIlRMUy5leHBpcmUiOjg2NDAwLCJUTFMudGltZSI6MTcwMDAwMDAwMCwiVExTLnNpZyI6Ijh4dkkvWEtzQURlOUdDdzNGOVI0WitxYk9SVGNiL0F2Nnh6YjNlUzVyTTg9In0KAQAA--*nbjNF";
const B_STORED: &str = "eAEBrABT-3siVExTLnZlciI6IjIuMCIsIlRMUy5pZGVudGlmaWVyIjoiYWRtaW5pc3RyYXRvciIsIlRMUy5zZGthcHBpZCI6ODg4ODg4ODgsIlRMUy5leHBpcmUiOjg2NDAwLCJUTFMudGltZSI6MTcwMDAwMDAwMCwiVExTLnNpZyI6Ijh4dkkvWEtzQURlOUdDdzNGOVI0WitxYk9SVGNiL0F2Nnh6YjNlUzVyTTg9In10KTM7";
const C_PYPI: &str = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkKjIT87NK82CSxSnZiQUFmSlAKUMTAyiAyqVWFGQWpYJkTE1NjRDiJZm5YFFzNPWlxalFSaVpIFsiw72y4FZkpoOEArNCjAwMKwKyI7L1E30NU7UrDcoSs6OSDLyNMgOK3EpTtbUNik0rzZLcfG2VagHdkjl6";

/// One official (or re-computed) UserSig with the inputs it was made from.
struct Vector {
    name: &'static str,
    usersig: &'static str,
    sdkappid: u64,
    identifier: &'static str,
    key: &'static str,
    expire: u64,
    sig: &'static str,
}

fn vectors() -> Vec<Vector> {
    let a = |name, usersig| Vector {
        name,
        usersig,
        sdkappid: 1_400_000_000,
        identifier: "xiaojun",
        key: K1,
        expire: 15_552_000,
        sig: A_SIG,
    };
    let b = |name, usersig| Vector {
        name,
        usersig,
        sdkappid: 88_888_888,
        identifier: "administrator",
        key: K2,
        expire: 86_400,
        sig: B_SIG,
    };
    vec![
        a("A PyPI", A_PYPI),
        a("A npm", A_NPM),
        a("A Go", A_GO),
        a("A stored", A_STORED),
        b("B PyPI", B_PYPI),
        b("B npm", B_NPM),
        b("B Go", B_GO),
        b("B stored", B_STORED),
        Vector {
            sig: C_SIG,
            ..a("C PyPI (userbuf)", C_PYPI)
        },
    ]
}

#[test]
fn string_to_sign_and_tls_sig_match_vector_a() {
    let text = string_to_sign("xiaojun", 1_400_000_000, T, 15_552_000, None);
    assert_eq!(
        text,
        "TLS.identifier:xiaojun\nTLS.sdkappid:1400000000\nTLS.time:1700000000\nTLS.expire:15552000\n"
    );
    assert_eq!(tls_sig(&SecretKey::new(K1), &text), A_SIG);
}

#[test]
fn string_to_sign_and_tls_sig_match_vector_b() {
    let text = string_to_sign("administrator", 88_888_888, T, 86_400, None);
    assert_eq!(
        text,
        "TLS.identifier:administrator\nTLS.sdkappid:88888888\nTLS.time:1700000000\nTLS.expire:86400\n"
    );
    assert_eq!(tls_sig(&SecretKey::new(K2), &text), B_SIG);
}

#[test]
fn string_to_sign_and_tls_sig_match_vector_c_with_userbuf() {
    let text = string_to_sign("xiaojun", 1_400_000_000, T, 15_552_000, Some("YWJj"));
    assert!(text.ends_with("TLS.expire:15552000\nTLS.userbuf:YWJj\n"));
    assert_eq!(tls_sig(&SecretKey::new(K1), &text), C_SIG);
}

#[test]
fn stored_encoding_reproduces_a_stored_byte_for_byte() {
    let document = usersig::document(1_400_000_000, "xiaojun", &SecretKey::new(K1), T, 15_552_000);
    assert_eq!(
        serde_json::to_string(&document).unwrap(),
        r#"{"TLS.ver":"2.0","TLS.identifier":"xiaojun","TLS.sdkappid":1400000000,"TLS.expire":15552000,"TLS.time":1700000000,"TLS.sig":"LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4="}"#
    );
    assert_eq!(usersig::encode(&document, Compression::none()), A_STORED);
}

#[test]
fn stored_encoding_reproduces_b_stored_byte_for_byte() {
    let document = usersig::document(88_888_888, "administrator", &SecretKey::new(K2), T, 86_400);
    assert_eq!(usersig::encode(&document, Compression::none()), B_STORED);
}

#[test]
fn official_usersigs_decode_to_the_documented_fields() {
    for vector in vectors() {
        let document =
            decode(vector.usersig).unwrap_or_else(|err| panic!("{}: {err}", vector.name));
        assert_eq!(document.sdkappid, vector.sdkappid, "{}", vector.name);
        assert_eq!(document.identifier, vector.identifier, "{}", vector.name);
        assert_eq!(document.time, T, "{}", vector.name);
        assert_eq!(document.expire, vector.expire, "{}", vector.name);
        assert_eq!(document.sig, vector.sig, "{}", vector.name);
    }
}

#[test]
fn official_usersigs_verify_at_their_time_and_until_the_last_second() {
    for vector in vectors() {
        let key = SecretKey::new(vector.key);
        for now in [T, T + vector.expire] {
            assert_eq!(
                verify(
                    vector.usersig,
                    vector.sdkappid,
                    vector.identifier,
                    &key,
                    now
                ),
                Ok(()),
                "{} at {now}",
                vector.name
            );
        }
    }
}

#[test]
fn official_usersigs_fail_for_the_wrong_identifier() {
    for vector in vectors() {
        let err = verify(
            vector.usersig,
            vector.sdkappid,
            "admin",
            &SecretKey::new(vector.key),
            T,
        )
        .unwrap_err();
        assert!(
            matches!(err, VerifyError::IdentifierMismatch { ref found, .. } if found == vector.identifier),
            "{}: {err:?}",
            vector.name
        );
    }
}

#[test]
fn official_usersigs_fail_for_the_wrong_sdkappid() {
    for vector in vectors() {
        let err = verify(
            vector.usersig,
            1_400_000_001,
            vector.identifier,
            &SecretKey::new(vector.key),
            T,
        )
        .unwrap_err();
        assert_eq!(
            err,
            VerifyError::SdkAppIdMismatch {
                expected: 1_400_000_001,
                found: vector.sdkappid
            },
            "{}",
            vector.name
        );
    }
}

#[test]
fn official_usersigs_fail_for_the_wrong_key() {
    for vector in vectors() {
        // The Go reference test's tamper: upper-case the key's last character.
        let mut wrong_key = vector.key.to_owned();
        let last = wrong_key.pop().unwrap().to_ascii_uppercase();
        wrong_key.push(last);
        let err = verify(
            vector.usersig,
            vector.sdkappid,
            vector.identifier,
            &SecretKey::new(wrong_key),
            T,
        )
        .unwrap_err();
        assert_eq!(err, VerifyError::BadSignature, "{}", vector.name);
    }
}

#[test]
fn official_usersigs_fail_one_second_after_expiry() {
    for vector in vectors() {
        let err = verify(
            vector.usersig,
            vector.sdkappid,
            vector.identifier,
            &SecretKey::new(vector.key),
            T + vector.expire + 1,
        )
        .unwrap_err();
        assert_eq!(
            err,
            VerifyError::Expired {
                expired_at: T + vector.expire
            },
            "{}",
            vector.name
        );
    }
}

#[test]
fn tampered_usersigs_are_rejected() {
    let key = SecretKey::new(K2);
    // A character flipped inside the stored JSON changes `TLS.time`, so the HMAC no longer fits;
    // zlib's Adler-32 catches the same flip in a compressed stream.
    let flipped_time = B_STORED.replacen("MTcwMDAwMDAwMC", "MTcwMDAwMDAwMS", 1);
    assert_ne!(flipped_time, B_STORED);
    assert!(verify(&flipped_time, 88_888_888, "administrator", &key, T + 1).is_err());
    let truncated = &B_PYPI[..B_PYPI.len() / 2];
    assert!(matches!(
        verify(truncated, 88_888_888, "administrator", &key, T),
        Err(VerifyError::Undecodable { .. })
    ));
    assert!(matches!(
        verify("not a usersig!", 88_888_888, "administrator", &key, T),
        Err(VerifyError::Undecodable { .. })
    ));
}

#[test]
fn our_signature_is_compressed_and_verifies() {
    let key = SecretKey::new(K1);
    let usersig = sign(1_400_000_000, "xiaojun", &key, T, 15_552_000);
    // zlib at the default level starts with 0x78 0x9c, like the Python and Node libraries.
    assert!(usersig.starts_with("eJ"), "{usersig}");
    assert!(!usersig.contains(['+', '/', '=']));
    assert_eq!(verify(&usersig, 1_400_000_000, "xiaojun", &key, T), Ok(()));
    assert_eq!(decode(&usersig).unwrap().sig, A_SIG);
}

proptest! {
    #[test]
    fn sign_then_verify_round_trips(
        identifier in "\\PC{1,32}",
        key in "\\PC{0,80}",
        sdkappid in any::<u64>(),
        time in 0u64..4_000_000_000,
        expire in 1u64..2_000_000_000,
    ) {
        let key = SecretKey::new(key);
        let usersig = sign(sdkappid, &identifier, &key, time, expire);
        prop_assert_eq!(verify(&usersig, sdkappid, &identifier, &key, time), Ok(()));
        prop_assert_eq!(verify(&usersig, sdkappid, &identifier, &key, time + expire), Ok(()));
        let after_expiry = verify(&usersig, sdkappid, &identifier, &key, time + expire + 1);
        prop_assert_eq!(after_expiry, Err(VerifyError::Expired { expired_at: time + expire }));
        let other_key = SecretKey::new(format!("{}x", key.expose()));
        prop_assert_eq!(
            verify(&usersig, sdkappid, &identifier, &other_key, time),
            Err(VerifyError::BadSignature)
        );
        let document = decode(&usersig).unwrap();
        prop_assert_eq!(document.identifier, identifier);
        prop_assert_eq!(document.sdkappid, sdkappid);
    }
}
