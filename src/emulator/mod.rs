//! A local stand-in for the Tencent Cloud IM server's `v4/timpush/*` attribute APIs.
//!
//! It behaves like the documented server, not like attrsync's client: every request is checked
//! the way `docs/api.md` describes, so tests and benchmarks against it mean something.
//!
//! # Behaviour
//!
//! Every `POST /v4/timpush/{set_attr,get_attr,remove_attr,get_attr_name,set_attr_name}` is
//! answered HTTP 200 with `{"ActionStatus","ErrorCode","ErrorInfo",…}`, checked in this order:
//!
//! 1. **rate limit** — per endpoint, at most `rate_limit` calls (default 100) are admitted in
//!    any sliding one-second window of arrival times; a call beyond it gets **60007** and does
//!    not count against the window. Per endpoint is the likely reading of the documentation
//!    (unconfirmed: `docs/api.md`, "Where the documentation is silent"); attrsync's client
//!    shares one limiter across endpoints, safe either way.
//! 2. **fault injection** — with probability `fail_rate` (seeded RNG, repeatable for sequential
//!    calls) an admitted call gets the `fail_mode` fault: `91000` (internal error, nothing
//!    applied), `502` (HTTP 502 from a "gateway", nothing applied), `drop` (the call **is
//!    applied**, then the connection is closed without an answer — the ambiguous failure that
//!    retries must survive), or `mixed` (one of the three, uniformly); only into the
//!    `fail_endpoints` when some are named. [`RunningEmulator::set_faults`] changes them while
//!    it runs.
//! 3. **query string** — `sdkappid`, `identifier`, `usersig`, `random` (a u32) and
//!    `contenttype=json` must all be present: else **60002**.
//! 4. **UserSig** — verified at the emulator's [`Clock`] with the app's key: SDKAppID not this
//!    app's or not the UserSig's **70014**, identifier not the UserSig's **70013**, expired
//!    **70001**, bad signature **70009**, undecodable **70003**. Any identifier with a valid
//!    UserSig is treated as an App admin.
//! 5. **body** — not the documented JSON **90001**; more than 100 accounts **90018**; an
//!    attribute name not registered (by `set_attr_name` or `attributes` at start) or a value
//!    over 50 bytes **90033** (the whole call is refused, nothing applied).
//! 6. **semantics** — `set_attr` merges the given attributes into the user's, or with
//!    [`SetAttrMode::Replace`] makes them its whole set (undocumented either way); `remove_attr`
//!    deletes the named ones; `get_attr` returns `"Attrs":{}` for a user with none; accounts in
//!    `unknown_users` are left out and listed in `ErrorList` with **70107** (a partial success);
//!    `set_attr_name` merges by slot (`"0"`..`"9"`, names 1..=50 bytes, one slot per name; an
//!    omitted `AttrTypes` entry is 0, and a registered name's type cannot change: **90033**).
//!
//! Data lives in memory, or in sled under `data_dir` (flushed before a change is answered).
//! `latency` delays every answer.
//!
//! # `GET /_emulator/state`
//!
//! For tests ([`StateReport`]):
//!
//! ```json
//! {"sdkappid": 1400000000,
//!  "users": {"Mary": {"sex": "female"}},
//!  "attr_names": {"0": "sex"},
//!  "calls": {"set_attr": {"total": 3, "ok": 1, "partial": 0, "throttled": 1, "failed": 0,
//!                         "injected": 1}, "get_attr": {…}, …},
//!  "log": [{"endpoint": "set_attr", "accounts": 1, "code": 0, "user_errors": 0,
//!           "fault": null, "at_ms": 12}, …]}
//! ```
//!
//! `total = ok + throttled + failed + injected`; `partial` counts `ok` calls with an
//! `ErrorList`. The log keeps the last 10,000 calls; `code` is `null` for an injected 502,
//! `fault` is `"91000"`, `"502"`, `"drop"` or `null`; `at_ms` is the arrival time in
//! milliseconds since the emulator started.

mod foreground;
mod in_process;
mod server;
mod service;
mod stats;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use foreground::run_foreground;
pub use in_process::InProcess;
pub use service::{MAX_ATTR_SLOTS, MAX_VALUE_BYTES, STATE_PATH};
pub use stats::{CallCounts, CallRecord, StateReport, LOG_CAPACITY};
pub use store::StoreError;

use crate::api::{Endpoint, SecretKey};
use service::{Mutable, ServerSettings, Shared};
use stats::Stats;
use store::{AttrSlot, DataChange, EmulatorStore};

/// The built-in **demo** secret key, used when no key is configured.
///
/// It is public — anyone can sign UserSigs with it. It exists so that the quickstart and the
/// tests run with no Tencent account; never register it with a real application.
pub const DEMO_SECRET_KEY: &str =
    "de70de70de70de70de70de70de70de70de70de70de70de70de70de70de70de70";

/// The SDKAppID the emulator hosts unless told otherwise.
pub const DEFAULT_SDKAPPID: u64 = 1_400_000_000;

/// Which faults `fail_rate` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Answer `ErrorCode` 91000 (internal service error).
    InternalError,
    /// Answer HTTP 502.
    BadGateway,
    /// Apply the call, then close the connection without answering.
    Drop,
    /// One of the three, chosen uniformly per faulty call.
    #[default]
    Mixed,
}

/// What `set_attr` does with a user's attributes it does not name. The documentation does not
/// say; attrsync must be right under both readings, and its tests run under both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetAttrMode {
    /// The given attributes replace their old values; the others stay.
    #[default]
    Merge,
    /// The given attributes become the user's whole attribute set.
    Replace,
}

/// Fault injection: which calls get which fault.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    /// Probability (0.0..=1.0) that an admitted call gets a fault.
    pub rate: f64,
    /// Which fault.
    pub mode: FailMode,
    /// The endpoints faults are injected into; empty means every endpoint.
    pub endpoints: Vec<Endpoint>,
}

/// The emulator's notion of "now" for UserSig expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A fixed unix time in seconds (to accept UserSigs made at a known time).
    Fixed(u64),
    /// The system clock shifted by this many seconds (positive: the emulator runs ahead).
    Offset(i64),
}

impl Clock {
    /// The current unix time in seconds on this clock.
    pub fn now_unix(self) -> u64 {
        let system = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs())
        };
        match self {
            Clock::System => system(),
            Clock::Fixed(at) => at,
            Clock::Offset(seconds) => system().saturating_add_signed(seconds),
        }
    }
}

/// How an emulator is set up.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The SDKAppID of the one application hosted.
    pub sdkappid: u64,
    /// The application's secret key.
    pub secret_key: SecretKey,
    /// Attribute names registered at start, in slot order after any already registered.
    pub attributes: Vec<String>,
    /// Accounts that "were never imported": answered with 70107 in `ErrorList`.
    pub unknown_users: Vec<String>,
    /// Calls admitted per endpoint per sliding second; more get 60007.
    pub rate_limit: u32,
    /// Delay before every answer.
    pub latency: Duration,
    /// Probability (0.0..=1.0) that an admitted call gets a fault.
    pub fail_rate: f64,
    /// Which fault.
    pub fail_mode: FailMode,
    /// The endpoints faults are injected into; empty means every endpoint.
    pub fail_endpoints: Vec<Endpoint>,
    /// Whether `set_attr` merges or replaces.
    pub set_attr: SetAttrMode,
    /// Seed of the fault-injection RNG.
    pub seed: u64,
    /// Keep the data in sled under this directory instead of in memory.
    pub data_dir: Option<PathBuf>,
    /// The clock UserSig expiry is checked against.
    pub clock: Clock,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            sdkappid: DEFAULT_SDKAPPID,
            secret_key: SecretKey::new(DEMO_SECRET_KEY),
            attributes: Vec::new(),
            unknown_users: Vec::new(),
            rate_limit: crate::api::limiter::MAX_RATE,
            latency: Duration::ZERO,
            fail_rate: 0.0,
            fail_mode: FailMode::default(),
            fail_endpoints: Vec::new(),
            set_attr: SetAttrMode::default(),
            seed: 0,
            data_dir: None,
            clock: Clock::System,
        }
    }
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A setting is out of range.
    #[error("invalid emulator setting: {0}")]
    InvalidConfig(String),
    /// The listen address could not be bound.
    #[error("the emulator could not listen on {listen}: {source}; pick another address or port (port 0 picks a free one)")]
    Bind {
        /// The address as given.
        listen: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data directory could not be used.
    #[error(transparent)]
    EmulatorStore(#[from] StoreError),
}

/// An emulator with its data loaded, ready to serve.
#[derive(Debug)]
pub struct Emulator {
    shared: Arc<Shared>,
}

impl Emulator {
    /// Validates `config`, opens the data and registers the start-up attribute names.
    pub fn new(config: EmulatorConfig) -> Result<Self, EmulatorError> {
        let invalid = |reason: String| Err(EmulatorError::InvalidConfig(reason));
        if config.rate_limit == 0 {
            return invalid("rate_limit must be at least 1 call per second".into());
        }
        if !(0.0..=1.0).contains(&config.fail_rate) {
            return invalid(format!(
                "fail_rate {} is not between 0 and 1",
                config.fail_rate
            ));
        }
        if config.secret_key.is_empty() {
            return invalid("the secret key is empty".into());
        }
        let store = match &config.data_dir {
            Some(dir) => EmulatorStore::open(dir)?,
            None => EmulatorStore::in_memory(),
        };
        register_attributes(&store, &config.attributes)?;
        let settings = ServerSettings {
            sdkappid: config.sdkappid,
            secret_key: config.secret_key,
            unknown_users: config.unknown_users.into_iter().collect(),
            rate_limit: config.rate_limit,
            latency: config.latency,
            set_attr: config.set_attr,
            clock: config.clock,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                store,
                mutable: Mutex::new(Mutable {
                    rng: fastrand::Rng::with_seed(config.seed),
                    stats: Stats::new(),
                    faults: Faults {
                        rate: config.fail_rate,
                        mode: config.fail_mode,
                        endpoints: config.fail_endpoints,
                    },
                }),
            }),
        })
    }

    /// Starts an emulator on `listen` (e.g. `"127.0.0.1:0"`) in the current tokio runtime.
    pub async fn start(
        config: EmulatorConfig,
        listen: &str,
    ) -> Result<RunningEmulator, EmulatorError> {
        Self::new(config)?.serve(listen).await
    }

    /// An [`crate::api::AttrApi`] on this emulator without HTTP, signing as `identifier` and
    /// pacing itself at `rate_limit` calls per second, for tests on paused tokio time. It shares
    /// the emulator's data, faults and statistics with [`Emulator::serve`]'s server.
    pub fn in_process(&self, identifier: &str, rate_limit: u32) -> InProcess {
        InProcess::new(Arc::clone(&self.shared), identifier, rate_limit)
    }

    /// Binds `listen` and serves in a background task until [`RunningEmulator::shutdown`].
    pub async fn serve(self, listen: &str) -> Result<RunningEmulator, EmulatorError> {
        let bind_error = |source| EmulatorError::Bind {
            listen: listen.to_owned(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let (shutdown, shutdown_requested) = oneshot::channel();
        let task = tokio::spawn(server::serve(
            listener,
            Arc::clone(&self.shared),
            shutdown_requested,
        ));
        tracing::debug!(%addr, "emulator listening");
        Ok(RunningEmulator {
            addr,
            shared: self.shared,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }
}

/// Registers `attributes` in the lowest free slots, skipping names already registered.
fn register_attributes(store: &EmulatorStore, attributes: &[String]) -> Result<(), EmulatorError> {
    let mut data = store.lock();
    let mut change = DataChange::default();
    let mut free_slots = (0..MAX_ATTR_SLOTS).filter(|slot| !data.attr_names.contains_key(slot));
    for name in attributes {
        if name.is_empty() || name.len() > MAX_VALUE_BYTES {
            return Err(EmulatorError::InvalidConfig(format!(
                "attribute name {name:?} must be 1 to {MAX_VALUE_BYTES} bytes"
            )));
        }
        let taken =
            data.is_registered(name) || change.attr_names.values().any(|slot| &slot.name == name);
        if taken {
            continue;
        }
        let Some(slot) = free_slots.next() else {
            return Err(EmulatorError::InvalidConfig(format!(
                "cannot register {name:?}: an app has at most {MAX_ATTR_SLOTS} attributes"
            )));
        };
        let registration = AttrSlot {
            name: name.clone(),
            account_type: 0,
        };
        change.attr_names.insert(slot, registration);
    }
    store.apply(&mut data, change)?;
    Ok(())
}

/// A serving emulator. Dropping it stops the server; [`RunningEmulator::shutdown`] also waits
/// for calls in flight and for the data to be flushed.
#[derive(Debug)]
pub struct RunningEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RunningEmulator {
    /// The bound address (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`, the base URL for [`crate::api::ClientConfig`].
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same document as `GET /_emulator/state`, without HTTP.
    pub fn state(&self) -> StateReport {
        self.shared.report()
    }

    /// Changes fault injection from now on (tests turn faults on for one step of a scenario).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// Stops accepting connections, lets calls in flight finish, and flushes the data.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::error!(%err, "the emulator's server task failed");
            }
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
