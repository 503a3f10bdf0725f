//! Connecting to PostgreSQL: the URL (with `sslmode` as libpq reads it), the password from the
//! URL, `PGPASSWORD` or `~/.pgpass`, TLS through rustls, and the keepalive and timeout
//! settings that let a dead peer be noticed in seconds rather than hours.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};

use crate::model::PostgresUrl;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The kind of session: the lock session must notice a dead peer quickly, on both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// Reads and migrations.
    Reader,
    /// The session that holds the app's lock and makes every write.
    Writer,
}

/// A URL that cannot be used, with what to fix. Never holds the password.
#[derive(Debug, thiserror::Error)]
#[error("the PostgreSQL URL {url} cannot be used: {reason}")]
pub struct BadUrl {
    /// The URL without its password.
    pub url: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// How TLS is used, as libpq's `sslmode` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    /// `disable`: never.
    Off,
    /// `prefer` (libpq's default) or `require`: encrypt, without checking the certificate.
    Unverified(SslMode),
    /// `verify-ca` or `verify-full`: encrypt, and check the certificate and the host name
    /// against the platform's trust store.
    Verified,
}

/// A parsed URL, ready to connect.
#[derive(Clone)]
pub(super) struct Target {
    config: tokio_postgres::Config,
    tls: Tls,
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.shown).finish()
    }
}

impl Target {
    /// Reads `url`. `sslmode` accepts libpq's values; the password comes from the URL, else
    /// `PGPASSWORD`, else the password file (`PGPASSFILE` or `~/.pgpass`).
    pub(super) fn parse(url: &PostgresUrl) -> Result<Self, BadUrl> {
        let shown = url.redacted();
        let bad = |reason: String| BadUrl {
            url: shown.clone(),
            reason,
        };
        let (base, query) = match url.expose().split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url.expose(), None),
        };
        let mut sslmode = None;
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("sslmode", value)) => sslmode = Some(value.to_owned()),
                // rustls checks certificates against the platform's store.
                Some(("sslrootcert", _)) => {}
                _ => kept.push(pair),
            }
        }
        let tls = match sslmode.as_deref().unwrap_or("prefer") {
            "disable" => Tls::Off,
            "allow" | "prefer" => Tls::Unverified(SslMode::Prefer),
            "require" => Tls::Unverified(SslMode::Require),
            "verify-ca" | "verify-full" => Tls::Verified,
            other => {
                return Err(bad(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        };
        let plain = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config =
            plain.parse().map_err(|e: tokio_postgres::Error| {
                // The parser may quote what it could not read: never the password.
                let reason =
                    crate::api::secret::scrub(&e.to_string(), &url_passwords(url.expose()));
                bad(format!(
                    "{reason}; write it as postgres://USER@HOST:PORT/DATABASE"
                ))
            })?;
        config.ssl_mode(match tls {
            Tls::Off => SslMode::Disable,
            Tls::Unverified(mode) => mode,
            Tls::Verified => SslMode::Require,
        });
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".to_owned());
            config.user(user);
        }
        if config.get_dbname().is_none() {
            let user = config.get_user().unwrap_or_default().to_owned();
            config.dbname(user);
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if config.get_password().is_none() {
            if let Some(password) = password_from_environment(&config) {
                config.password(password);
            }
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        Ok(Self { config, tls, shown })
    }

    /// The URL without its password, for messages.
    pub(super) fn shown(&self) -> &str {
        &self.shown
    }

    /// Connects a session for `role`, and starts the task that drives it.
    pub(super) async fn connect(
        &self,
        role: Role,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = self.config.clone();
        if role == Role::Writer {
            // A half-open TCP connection fails the session's next call within seconds.
            config
                .keepalives(true)
                .keepalives_idle(Duration::from_secs(3))
                .keepalives_interval(Duration::from_secs(1))
                .keepalives_retries(3)
                .tcp_user_timeout(Duration::from_secs(5));
        }
        let client = match self.tls {
            Tls::Off => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(drive(connection));
                client
            }
            Tls::Unverified(_) | Tls::Verified => {
                let (client, connection) = config.connect(self.tls_connector()).await?;
                tokio::spawn(drive(connection));
                client
            }
        };
        Ok(client)
    }

    fn tls_connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("aws-lc-rs supports the default TLS versions"));
        let config = match self.tls {
            Tls::Verified => {
                use rustls_platform_verifier::BuilderVerifierExt as _;
                match builder.clone().with_platform_verifier() {
                    Ok(builder) => builder.with_no_client_auth(),
                    // Without a platform store nothing can be verified: refuse every
                    // certificate rather than accept any.
                    Err(_) => builder
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                }
            }
            Tls::Off | Tls::Unverified(_) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
        };
        tokio_postgres_rustls::MakeRustlsConnect::new(config)
    }
}

/// The password of a URL as written and percent-decoded, for scrubbing messages.
fn url_passwords(url: &str) -> Vec<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let mut secrets = Vec::new();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if let Some((_, password)) = userinfo.split_once(':') {
            secrets.push(password);
        }
    }
    for pair in rest
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
    {
        if let Some(("password", value)) = pair.split_once('=') {
            secrets.push(value);
        }
    }
    secrets
}

/// Runs a connection until it closes; its errors reach the client's next call.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(error) = connection.await {
        tracing::debug!(%error, "a PostgreSQL connection ended");
    }
}

/// `sslmode=require`: the connection is encrypted, the certificate not checked (libpq's
/// meaning), but its signatures still are.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `PGPASSWORD`, else the first matching line of the password file.
fn password_from_environment(config: &tokio_postgres::Config) -> Option<String> {
    if let Ok(password) = std::env::var("PGPASSWORD") {
        return Some(password);
    }
    let file = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass")))?;
    let text = read_private(&file)?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        // libpq matches a socket directory as `localhost`.
        _ => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    pgpass_lookup(
        &text,
        [
            host.as_str(),
            &port,
            config.get_dbname().unwrap_or_default(),
            config.get_user().unwrap_or_default(),
        ],
    )
}

/// The file's text, unless others may read it (libpq ignores such a file, and so do we).
fn read_private(file: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(file).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(file = %file.display(), "ignoring the password file: others may read it (chmod 0600 it)");
        return None;
    }
    std::fs::read_to_string(file).ok()
}

/// The password of the first `host:port:database:user:password` line matching `wanted`
/// (`*` matches anything; `\:` and `\\` are escapes).
fn pgpass_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() == 5
            && fields[..4]
                .iter()
                .zip(wanted)
                .all(|(pattern, value)| pattern == "*" || pattern == value)
        {
            return fields.pop();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_with_wildcards_and_escapes() {
        let text =
            "# comment\nother:5432:*:*:no\nlocalhost:5432:app:alice:pa\\:ss\n*:*:*:bob:b0b\n";
        assert_eq!(
            pgpass_lookup(text, ["localhost", "5432", "app", "alice"]).as_deref(),
            Some("pa:ss")
        );
        assert_eq!(
            pgpass_lookup(text, ["db", "6432", "x", "bob"]).as_deref(),
            Some("b0b")
        );
        assert_eq!(pgpass_lookup(text, ["db", "5432", "x", "carol"]), None);
    }

    #[test]
    fn sslmode_is_read_as_libpq_reads_it() {
        let url = |s: &str| PostgresUrl::new(s).unwrap();
        let target = Target::parse(&url("postgres://u:pw@db/x?sslmode=verify-full")).unwrap();
        assert_eq!(target.tls, Tls::Verified);
        assert_eq!(target.shown(), "postgres://u:***@db/x?sslmode=verify-full");
        assert!(!format!("{target:?}").contains("pw"));
        let target = Target::parse(&url("postgres://db/x?sslmode=require")).unwrap();
        assert_eq!(target.tls, Tls::Unverified(SslMode::Require));
        let target = Target::parse(&url("postgres://db/x")).unwrap();
        assert_eq!(target.tls, Tls::Unverified(SslMode::Prefer));
        let error = Target::parse(&url("postgres://u:pw@db/x?sslmode=sometimes")).unwrap_err();
        assert!(error.to_string().contains("sslmode=sometimes"));
        assert!(!error.to_string().contains("pw"));
        for bad in [
            "postgres://u:hunter2@db:notaport/x",
            "postgres://u:hunter2@db/x?password=hunter2&connect_timeout=soon",
        ] {
            let error = Target::parse(&url(bad)).unwrap_err().to_string();
            assert!(!error.contains("hunter2"), "{error}");
        }
    }
}
