//! The connection to the configured server: a region, an endpoint, or the emulator run
//! in-process (`endpoint: embedded`), and the preflight check of the app's attribute names.
//! Shared by the commands and the daemon.

use std::path::{Path, PathBuf};

use crate::api::{Client, ClientBuildError, ClientConfig, SecretKey};
use crate::apply::{self, CallFailure, CallStats, RetryPolicy, StopSignal};
use crate::config::{Settings, Target};
use crate::emulator::{Emulator, EmulatorConfig, EmulatorError, RunningEmulator, DEMO_SECRET_KEY};
use crate::text::plural;

/// Why the configured server cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The environment variable named by `secret_key_env` is unset or empty.
    #[error(
        "the secret key is not set: export {var}=<the app's secret key> (Tencent Cloud IM console → \
         your app → Basic Configuration), or set secret_key_env in attrsync.yaml to the variable that holds it"
    )]
    NoSecretKey {
        /// The variable.
        var: String,
    },
    /// The embedded emulator's data directory could not be created.
    #[error("cannot create the embedded emulator's data directory {}: {source}; check the state directory's permissions", .dir.display())]
    EmbeddedDataDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded emulator did not start.
    #[error("cannot start the embedded emulator: {0}")]
    Embedded(#[from] EmulatorError),
    /// The HTTP client could not be set up.
    #[error("cannot set up the API client: {0}")]
    Client(#[from] ClientBuildError),
    /// `get_attr_name` failed.
    #[error(
        "cannot reach the Tencent Cloud IM API at {endpoint} (reading the app's attribute names): {source}; \
         check `region` or `endpoint` in attrsync.yaml, and that this machine can reach it"
    )]
    AttributeNames {
        /// Where the client points.
        endpoint: String,
        /// Why.
        source: CallFailure,
    },
    /// Some configured attribute names are not registered on the app.
    #[error(
        "the app has no attribute named {}; register {} with `attrsync attributes push` (or in the console), \
         then run again (registered now: {})",
        .missing.join(", "),
        if .missing.len() == 1 { "it" } else { "them" },
        if .registered.is_empty() { "none".to_owned() } else { .registered.join(", ") }
    )]
    Unregistered {
        /// The configured names the app lacks.
        missing: Vec<String>,
        /// The names the app has.
        registered: Vec<String>,
    },
}

impl LinkError {
    /// Whether a change of the environment, not of the config files, is needed: a daemon
    /// cannot fix it by waiting for an edit.
    pub fn needs_the_environment(&self) -> bool {
        matches!(self, LinkError::NoSecretKey { .. })
    }
}

/// A client for the configured server, with the embedded emulator kept alive beside it.
pub struct Connection {
    /// The REST client.
    pub client: Client,
    /// Where the client points (for messages).
    pub base_url: String,
    _embedded: Option<RunningEmulator>,
}

/// Where the embedded emulator keeps its data, under the state directory.
pub fn embedded_data_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("emulator")
}

/// Connects to the server in `settings`: reads the secret key from its environment variable
/// and, for `endpoint: embedded`, starts the emulator in-process.
pub async fn connect(settings: &Settings) -> Result<Connection, LinkError> {
    let key = match std::env::var(&settings.secret_key_env) {
        Ok(key) if !key.trim().is_empty() => SecretKey::new(key.trim()),
        _ if settings.target == Target::Embedded => {
            tracing::info!(
                "signing with the built-in emulator's public demo key ({} is unset): fine for the emulator, never for a real app",
                settings.secret_key_env
            );
            SecretKey::new(DEMO_SECRET_KEY)
        }
        _ => {
            return Err(LinkError::NoSecretKey {
                var: settings.secret_key_env.clone(),
            })
        }
    };
    let (base_url, embedded) = match &settings.target {
        Target::Region(region) => (region.base_url(), None),
        Target::Endpoint(url) => {
            // A reviewer of the config, and whoever reads this log, should see where the
            // admin credential goes when it is not one of Tencent Cloud's own hosts.
            tracing::warn!(endpoint = %url, "the admin UserSig is sent to a custom endpoint, not a Tencent Cloud region: {url}");
            (url.clone(), None)
        }
        Target::Embedded => {
            let data_dir = embedded_data_dir(&settings.local_dir());
            std::fs::create_dir_all(&data_dir).map_err(|source| LinkError::EmbeddedDataDir {
                dir: data_dir.clone(),
                source,
            })?;
            let config = EmulatorConfig {
                sdkappid: settings.sdkappid,
                secret_key: key.clone(),
                attributes: settings
                    .attributes
                    .iter()
                    .map(|a| a.as_str().to_owned())
                    .collect(),
                data_dir: Some(data_dir),
                ..EmulatorConfig::default()
            };
            let running = Emulator::start(config, "127.0.0.1:0").await?;
            tracing::debug!(address = %running.addr(), "started the embedded emulator (endpoint: embedded)");
            (running.base_url(), Some(running))
        }
    };
    let mut config = ClientConfig::new(
        base_url.clone(),
        settings.sdkappid,
        settings.identifier.clone(),
        key,
    );
    config.rate_limit = settings.rate_limit;
    let client = Client::new(config)?;
    Ok(Connection {
        client,
        base_url,
        _embedded: embedded,
    })
}

/// How the preflight retries: a few quick attempts (under 2 s in all), so that a wrong
/// endpoint is reported at once rather than after a minute of backoff; a server's short
/// hiccup still passes.
pub const PREFLIGHT_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 4,
    base: std::time::Duration::from_millis(200),
    cap: std::time::Duration::from_secs(1),
};

/// Checks that the server answers as Tencent Cloud IM and that every configured attribute
/// name is registered on the app (`get_attr_name`). Run before anything is shown or sent, so
/// that a wrong endpoint fails fast, naming it.
pub async fn preflight(connection: &Connection, settings: &Settings) -> Result<(), LinkError> {
    let registered = apply::with_retries(
        &connection.client,
        &PREFLIGHT_RETRY,
        &StopSignal::new(),
        &CallStats::default(),
        || connection.client.get_attr_name(),
    )
    .await
    .map_err(|source| LinkError::AttributeNames {
        endpoint: connection.base_url.clone(),
        source,
    })?;
    let missing: Vec<String> = settings
        .attributes
        .iter()
        .map(|a| a.as_str())
        .filter(|name| !registered.values().any(|r| r.name == *name))
        .map(str::to_owned)
        .collect();
    if missing.is_empty() {
        tracing::debug!(
            "{} registered on the app",
            plural(settings.attributes.len(), "attribute")
        );
        return Ok(());
    }
    Err(LinkError::Unregistered {
        missing,
        registered: registered.values().map(|r| r.name.clone()).collect(),
    })
}
