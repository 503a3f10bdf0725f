//! `attrsync watch`: the daemon that keeps the app's attributes equal to the config repository,
//! reconciling on file changes, on a periodic resync, on SIGHUP and on `POST /reconcile`.
//!
//! Every reconcile is level-triggered and idempotent: it reloads the config (re-parsing only
//! the files whose content changed), plans from scratch against the snapshot and applies the
//! plan. A trigger never means "apply this event". All failures — an invalid config, a refused
//! plan, an unreachable server, users the server refused — go through [`error_policy`]; a
//! success resets it. Shutdown is a future handed to [`run`]: when it resolves, an apply in
//! flight starts no new batch, the batches in flight finish and are committed, and `run`
//! returns.
//!
//! - `daemon`: the loop — triggers, the drift scan between passes, logging and the error policy.
//! - `reconcile`: one pass — reload, open the snapshot, plan, connect, apply.
//! - [`trigger`]: the file watcher, its filter and the debounce.
//! - [`drift`]: the rolling scan of live values that finds and heals drift.
//! - [`metrics`]: the Prometheus registry.
//! - `server`: the HTTP endpoints.

mod daemon;
pub mod drift;
pub mod metrics;
mod reconcile;
mod server;
pub mod trigger;

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::model::PostgresUrl;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};

use crate::apply::StopSignal;
use crate::config::{self, Config, Diagnostics, ParseCache};
use crate::link::LinkError;
use crate::plan::GuardError;
use crate::state::{Holder, SnapshotStore, StateError};

use daemon::Daemon;
pub use metrics::Metrics;
use trigger::{normalize, ConfigWatcher, Mode, Scope};

/// `--interval`: the periodic full resync, a safety net for missed file events.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// `--debounce`: the quiet period that coalesces a burst of file events into one reconcile.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);
/// The first retry after a failed reconcile; each further failure doubles the wait.
pub const FAILURE_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// No retry after a failure waits longer than this.
pub const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// On shutdown, how long batches in flight may take to finish and be committed. A batch is
/// one call (plus retries, which stop at once): seconds at most, unless the server hangs.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// While the config directory is gone, how often to look for it coming back.
const ROOT_POLL: Duration = Duration::from_secs(1);
/// A standby tries for the shared snapshot's lock this often: a leader killed outright is
/// replaced within about this long.
pub const STANDBY_RETRY: Duration = Duration::from_millis(500);
/// How often a long apply logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Plans with more changes than this are logged as a summary only in `--plan-only` mode.
const PLAN_LOG_LIMIT: usize = 100;

/// How the daemon runs (the flags of `attrsync watch`).
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// The periodic full resync.
    pub interval: Duration,
    /// The quiet period after a file event before reconciling.
    pub debounce: Duration,
    /// Where to serve the HTTP endpoints; `None` serves nothing.
    pub listen: Option<String>,
    /// The bearer token `/plan`, `/metrics` and `POST /reconcile` require; required to listen
    /// on an address other than loopback.
    pub listen_token: Option<ListenToken>,
    /// Plan and log the plan, never apply.
    pub plan_only: bool,
    /// The share of `rate_limit` the drift scan may use, in percent; 0 turns it off.
    pub drift_budget: u32,
    /// Mark drifted users in doubt so the next reconcile repairs them (else only report).
    pub self_heal: bool,
    /// A drift pass starts at most this often (a pass over many users takes longer anyway).
    pub drift_pass_every: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            debounce: DEFAULT_DEBOUNCE,
            listen: None,
            listen_token: None,
            plan_only: false,
            drift_budget: drift::DEFAULT_DRIFT_BUDGET,
            self_heal: true,
            drift_pass_every: drift::DEFAULT_PASS_EVERY,
        }
    }
}

/// Parses a positive duration such as `300ms` or `5m` (for the command line).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration such as 300ms, 10s or 5m"))?;
    if duration.is_zero() {
        return Err("the duration must be more than zero".to_owned());
    }
    Ok(duration)
}

/// The wait before retrying after `failures` consecutive failed reconciles (at least 1):
/// [`FAILURE_BACKOFF_INITIAL`], doubling each time, at most [`FAILURE_BACKOFF_MAX`].
pub fn error_policy(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FAILURE_BACKOFF_INITIAL
        .saturating_mul(1 << doublings)
        .min(FAILURE_BACKOFF_MAX)
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// `--listen` could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another --listen address (port 0 picks a free one)")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// `--listen` is reachable from other machines and no token protects it.
    #[error("refusing to listen on {addr} without a token: it is reachable from other machines, and /plan shows users' attributes \
             while POST /reconcile makes the daemon write; set --listen-token-env VAR (a bearer token in VAR) or listen on 127.0.0.1")]
    Unprotected {
        /// The address bound.
        addr: String,
    },
    /// A signal handler could not be installed.
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    /// The daemon's environment lacks what it needs (the secret key), which cannot change
    /// while it runs.
    #[error("{0}; then start the daemon again")]
    Environment(String),
    /// The config directory's path could not be made absolute.
    #[error("cannot resolve the config directory {}: {source}", .dir.display())]
    Dir {
        /// The directory given.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why one reconcile failed; every variant goes through [`error_policy`].
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The config has problems (each is logged with its `file:line:column`).
    #[error(
        "the config is invalid ({} problem{}); nothing was applied, and the last good desired state is kept until the files are fixed",
        .0.0.len(),
        crate::text::s(.0.0.len())
    )]
    Invalid(Diagnostics),
    /// The state directory could not be created.
    #[error("cannot create the state directory {}: {source}; check its permissions", .dir.display())]
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The snapshot could not be opened or read (for instance, a CLI `apply` holds it).
    #[error(transparent)]
    State(#[from] StateError),
    /// A guard refused the plan (empty desired state, mass delete).
    #[error(
        "the plan was refused and nothing was applied: {0}; stop the daemon to apply it by hand"
    )]
    Refused(#[from] GuardError),
    /// Connecting, or checking the app's attribute names, failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The apply left users unapplied; the report says which and why.
    #[error("the apply did not finish: {}", reconcile::describe_failure(.0))]
    Apply(Box<crate::apply::Report>),
    /// The daemon is shutting down; the apply stopped between batches.
    #[error("interrupted by shutdown")]
    Interrupted,
    /// Another daemon (or a CLI writer) holds the shared snapshot's lock: this one stands by.
    #[error("standing by: another attrsync{0} holds the snapshot's write lock")]
    Standby(String),
}

/// Resolves on the first SIGTERM or SIGINT; a second one ends the process at once.
///
/// The handlers are installed when this is called (inside the runtime), not when the future is
/// first polled, so a signal that arrives during startup is not lost.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, WatchError> {
    let signals = crate::shutdown::Signals::install().map_err(WatchError::Signals)?;
    Ok(async move {
        let code = signals
            .first("second signal: exiting now; batches in flight are re-planned at the next start")
            .await;
        let name = crate::shutdown::name(code);
        tracing::info!(signal = name, "{name}: stopping; batches in flight finish and are recorded (signal again to exit at once)");
    })
}

/// What the daemon shares with its HTTP endpoints.
pub(crate) struct Shared {
    pub(crate) metrics: Metrics,
    /// Wakes the daemon for `POST /reconcile`; a stored permit coalesces repeated requests.
    pub(crate) reconcile_now: Notify,
    /// The token `/plan`, `/metrics` and `POST /reconcile` require, if any.
    pub(crate) listen_token: Option<ListenToken>,
    /// `GET /plan`'s JSON and the reconcile generation it was computed after.
    pub(crate) plan_cache: tokio::sync::Mutex<Option<(u64, axum::body::Bytes)>>,
    /// Grows after every reconcile (and drift mark): the cached plan is then out of date.
    generation: std::sync::atomic::AtomicU64,
    /// Until when the daemon backs off after a failure.
    backoff_until: Mutex<Option<Instant>>,
    status: Mutex<Status>,
}

/// The bearer token named by `--listen-token-env`. It prints as `***`, and is compared in
/// time that does not depend on where a guess differs.
#[derive(Clone)]
pub struct ListenToken(String);

impl ListenToken {
    /// A token, unless `token` is empty (or only spaces).
    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        (!token.is_empty()).then(|| Self(token.to_owned()))
    }

    /// Whether `given` is the token. Both are hashed first, so neither their lengths nor the
    /// position of a difference shows in the time taken.
    pub(crate) fn matches(&self, given: &str) -> bool {
        use sha2::Digest as _;
        let expected = sha2::Sha256::digest(self.0.as_bytes());
        let given = sha2::Sha256::digest(given.as_bytes());
        expected
            .iter()
            .zip(given.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for ListenToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenToken(***)")
    }
}

struct Status {
    /// `Err(reason)` until a reconcile succeeds, and after one fails.
    ready: Result<(), String>,
    /// `Some(holder)` while another writer holds the shared snapshot and this daemon waits.
    standby: Option<String>,
    current: Option<Current>,
}

/// What `/readyz` says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// The active daemon, reconciled.
    Ready,
    /// A standby: healthy, serving `/plan` and `/metrics`, making no API calls.
    Standby(String),
    /// Not ready, and why.
    NotReady(String),
}

/// The last valid config and the open snapshot, for `GET /plan`.
#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<dyn SnapshotStore>,
}

impl Shared {
    fn new(listen_token: Option<ListenToken>) -> Self {
        Self {
            metrics: Metrics::new(),
            reconcile_now: Notify::new(),
            listen_token,
            plan_cache: tokio::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            backoff_until: Mutex::new(None),
            status: Mutex::new(Status {
                ready: Err("no reconcile has finished yet".to_owned()),
                standby: None,
                current: None,
            }),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        crate::sync::lock(&self.status)
    }

    pub(crate) fn readiness(&self) -> Readiness {
        let status = self.status();
        if let Some(holder) = &status.standby {
            return Readiness::Standby(holder.clone());
        }
        match (&status.ready, &status.current) {
            (Ok(()), Some(_)) => Readiness::Ready,
            (Ok(()), None) => Readiness::NotReady("the snapshot is not open".to_owned()),
            (Err(reason), _) => Readiness::NotReady(reason.clone()),
        }
    }

    pub(crate) fn current(&self) -> Option<Current> {
        self.status().current.clone()
    }

    /// The reconcile generation (see [`Shared::plan_cache`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks everything computed from the snapshot so far as out of date.
    pub(crate) fn snapshot_moved(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records the daemon's backoff: `Some(wait)` after a failure, `None` after a success.
    pub(crate) fn set_backoff(&self, wait: Option<Duration>) {
        *crate::sync::lock(&self.backoff_until) = wait.map(|wait| Instant::now() + wait);
    }

    /// How long the daemon still backs off, if it does.
    pub(crate) fn backing_off(&self) -> Option<Duration> {
        let until = (*crate::sync::lock(&self.backoff_until))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}
/// Runs the daemon for the config repository in `ctx` until `shutdown` resolves.
///
/// Startup problems (an address in use, no signal handlers) are errors; everything after that
/// — an invalid config, an unreachable server, a snapshot held by another process — is a
/// failed reconcile: logged, shown on `/readyz`, retried with backoff, never fatal.
pub async fn run(
    dir: &Path,
    state: Option<&str>,
    options: WatchOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WatchError> {
    let absolute = |dir: &Path| {
        std::path::absolute(dir)
            .map(|p| normalize(&p))
            .map_err(|source| WatchError::Dir {
                dir: dir.to_owned(),
                source,
            })
    };
    let root = absolute(dir)?;
    crate::memory::tune_for_long_running();
    // A directory is made absolute now, so a later change of working directory is harmless.
    let state_override = match state {
        Some(url) if PostgresUrl::is_url(url) => Some(url.to_owned()),
        Some(dir) => Some(absolute(Path::new(dir))?.to_string_lossy().into_owned()),
        None => None,
    };
    let hangup = signal(SignalKind::hangup()).map_err(WatchError::Signals)?;

    let stop = StopSignal::new();
    let (down_tx, down_rx) = tokio::sync::watch::channel(false);
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.stop();
            let _ = down_tx.send(true);
        }
    });

    let shared = Arc::new(Shared::new(options.listen_token.clone()));
    let mut server = None;
    let mut listen = None;
    if let Some(addr) = &options.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| WatchError::Listen {
                addr: addr.clone(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| WatchError::Listen {
            addr: addr.clone(),
            source,
        })?;
        if !bound.ip().is_loopback() && options.listen_token.is_none() {
            return Err(WatchError::Unprotected {
                addr: bound.to_string(),
            });
        }
        tracing::info!(address = %bound, "listening on http://{bound} (/healthz, /readyz, /metrics, GET /plan, POST /reconcile)");
        server = Some(tokio::spawn(server::serve(
            listener,
            Arc::clone(&shared),
            down_rx.clone(),
        )));
        listen = Some(bound.to_string());
    }

    let default_state = root.join(config::DEFAULT_STATE_DIR);
    let state_dir = match &state_override {
        Some(dir) if !PostgresUrl::is_url(dir) => PathBuf::from(dir),
        _ => default_state,
    };
    let scope = Scope::new(&root, &root.join(config::DEFAULT_USERS_DIR), &state_dir);
    let (watcher, events) = ConfigWatcher::start(scope);
    shared.metrics.polling(watcher.mode() == Mode::Poll);
    tracing::info!(
        dir = %root.display(),
        interval = %humantime::format_duration(options.interval),
        debounce = %humantime::format_duration(options.debounce),
        plan_only = options.plan_only,
        "watching the config repository"
    );
    let mut daemon = Daemon {
        root,
        state_override,
        holder: Holder {
            listen,
            ..Holder::this_process("watch")
        },
        options,
        cache: ParseCache::retaining(),
        watcher,
        shared,
        stop,
        store: None,
        link: None,
        drift: None,
        standby_reader: None,
        failures: 0,
        last_diagnostics: None,
        last_logged_plan: None,
        connected_once: false,
        fatal: None,
    };
    daemon.run_loop(events, hangup, down_rx).await;
    if let (Some(scan), Some(open)) = (daemon.drift.as_mut(), daemon.store.as_ref()) {
        scan.save(open.store.as_ref()).await;
    }
    // Release every handle on the snapshot: dropping the last one flushes it and removes
    // holder.json, so a CLI command can open it the moment the process is gone.
    daemon.shared.status().current = None;
    let daemon_fatal = daemon.fatal.take();
    drop(daemon);
    if let Some(server) = server {
        let _ = timeout(Duration::from_secs(1), server).await;
    }
    if let Some(reason) = daemon_fatal {
        return Err(WatchError::Environment(reason));
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_policy_doubles_from_one_second_to_five_minutes() {
        assert_eq!(error_policy(1), FAILURE_BACKOFF_INITIAL);
        assert_eq!(error_policy(2), Duration::from_secs(2));
        assert_eq!(error_policy(3), Duration::from_secs(4));
        assert_eq!(error_policy(9), Duration::from_secs(256));
        assert_eq!(error_policy(10), FAILURE_BACKOFF_MAX);
        assert_eq!(error_policy(u32::MAX), FAILURE_BACKOFF_MAX);
    }

    #[test]
    fn durations_parse_like_the_help_says() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("300ms"));
    }
}
