//! Types that hold credentials and refuse to print them.

use std::fmt;

/// What every credential prints as in `Debug` and `Display` output.
pub const REDACTED: &str = "***";

/// The application's secret key (the console's "key", a hex string used as HMAC key bytes).
///
/// `Debug` and `Display` print `***`, so the key can sit inside configs and errors that get
/// logged without leaking; [`SecretKey::expose`] is the one way to read it, meant for signing.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a key as read from the environment or a config.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself. Only UserSig signing and verification should call this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the key is the empty string (an unset environment variable, usually).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A signed UserSig: a bearer credential for the admin account, so it is redacted like the key.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSig(String);

impl UserSig {
    /// Wraps a UserSig string produced by [`crate::api::usersig::sign`].
    pub fn new(usersig: impl Into<String>) -> Self {
        Self(usersig.into())
    }

    /// The UserSig itself, for the request's query string.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for UserSig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Replaces every occurrence of the given secrets in `text` with `***`.
///
/// Used on text that comes from outside (a server's `ErrorInfo`, a transport error chain) before
/// it is put into an error message: we cannot prove such text never echoes the request.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut scrubbed = text.to_owned();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        if scrubbed.contains(secret) {
            scrubbed = scrubbed.replace(secret, REDACTED);
        }
    }
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_never_prints_itself() {
        let key =
            SecretKey::new("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e");
        assert_eq!(format!("{key}"), "***");
        assert_eq!(format!("{key:?}"), "***");
        assert_eq!(format!("{:?}", Some(&key)), "Some(***)");
    }

    #[test]
    fn usersig_never_prints_itself() {
        let sig = UserSig::new("eJyrVgrxCdYrSy1SslJQMtIzUNJRAItk");
        assert_eq!(format!("{sig} {sig:?}"), "*** ***");
    }

    #[test]
    fn scrub_replaces_every_secret_and_ignores_empty_ones() {
        let text = "bad sig eJxyz for key abc, again eJxyz";
        assert_eq!(
            scrub(text, &["eJxyz", "abc", ""]),
            "bad sig *** for key ***, again ***"
        );
    }
}
