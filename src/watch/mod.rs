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
//! - [`trigger`]: the file watcher, its filter and the debounce.
//! - [`drift`]: the rolling scan of live values that finds and heals drift.
//! - [`metrics`]: the Prometheus registry.
//! - `server`: the HTTP endpoints.

pub mod drift;
pub mod metrics;
mod server;
pub mod trigger;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc::UnboundedReceiver, Notify};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::apply::{self, ApplyOptions, Progress, Report, StopSignal};
use crate::config::{self, Config, Diagnostics, ParseCache, Settings, Target};
use crate::link::{self, Connection, LinkError};
use crate::model::{AttrName, Plan, Summary};
use crate::plan::{self, GuardError, Guards, PlanOptions, TextStyle};
use crate::state::{Holder, StateError, Store};

pub use metrics::Metrics;
use trigger::{normalize, ConfigWatcher, Debounce, FsSignal, Mode, Scope, Trigger};

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
    /// A signal handler could not be installed.
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
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
    /// The apply left users unapplied.
    #[error("the apply did not finish: {0}")]
    Apply(String),
    /// The daemon is shutting down; the apply stopped between batches.
    #[error("interrupted by shutdown")]
    Interrupted,
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
    status: Mutex<Status>,
}

struct Status {
    /// `Err(reason)` until a reconcile succeeds, and after one fails.
    ready: Result<(), String>,
    current: Option<Current>,
}

/// The last valid config and the open snapshot, for `GET /plan`.
#[derive(Clone)]
pub(crate) struct Current {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<Store>,
}

impl Shared {
    fn new() -> Self {
        Self {
            metrics: Metrics::new(),
            reconcile_now: Notify::new(),
            status: Mutex::new(Status {
                ready: Err("no reconcile has finished yet".to_owned()),
                current: None,
            }),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        crate::sync::lock(&self.status)
    }

    pub(crate) fn readiness(&self) -> Result<(), String> {
        let status = self.status();
        match (&status.ready, &status.current) {
            (Ok(()), Some(_)) => Ok(()),
            (Ok(()), None) => Err("the snapshot is not open".to_owned()),
            (Err(reason), _) => Err(reason.clone()),
        }
    }

    pub(crate) fn current(&self) -> Option<Current> {
        self.status().current.clone()
    }
}

/// Runs the daemon for the config repository in `ctx` until `shutdown` resolves.
///
/// Startup problems (an address in use, no signal handlers) are errors; everything after that
/// — an invalid config, an unreachable server, a snapshot held by another process — is a
/// failed reconcile: logged, shown on `/readyz`, retried with backoff, never fatal.
pub async fn run(
    dir: &Path,
    state: Option<&Path>,
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
    let state_override = state.map(absolute).transpose()?;
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

    let shared = Arc::new(Shared::new());
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
        tracing::info!(address = %bound, "listening on http://{bound} (/healthz, /readyz, /metrics, GET /plan, POST /reconcile)");
        server = Some(tokio::spawn(server::serve(
            listener,
            Arc::clone(&shared),
            down_rx.clone(),
        )));
        listen = Some(bound.to_string());
    }

    let default_state = root.join(config::DEFAULT_STATE_DIR);
    let scope = Scope::new(
        &root,
        &root.join(config::DEFAULT_USERS_DIR),
        state_override.as_deref().unwrap_or(&default_state),
    );
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
            pid: std::process::id(),
            command: "watch".to_owned(),
            listen,
        },
        options,
        cache: ParseCache::retaining(),
        watcher,
        shared,
        stop,
        store: None,
        link: None,
        drift: None,
        failures: 0,
        last_diagnostics: None,
        last_logged_plan: None,
    };
    daemon.run_loop(events, hangup, down_rx).await;
    if let (Some(scan), Some(open)) = (daemon.drift.as_mut(), daemon.store.as_ref()) {
        scan.save(&open.store);
    }
    // Release every handle on the snapshot: dropping the last one flushes it and removes
    // holder.json, so a CLI command can open it the moment the process is gone.
    daemon.shared.status().current = None;
    drop(daemon);
    if let Some(server) = server {
        let _ = timeout(Duration::from_secs(1), server).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The open snapshot and what it was opened for.
struct OpenStore {
    dir: PathBuf,
    sdkappid: u64,
    target: Target,
    store: Arc<Store>,
}

/// The connection to the server and what it was made for.
struct Link {
    key: LinkKey,
    connection: Connection,
    /// The attribute names last checked by `preflight` on this connection.
    preflighted: Option<Vec<AttrName>>,
}

/// The settings a connection depends on: when one changes, the daemon reconnects.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LinkKey {
    target: Target,
    sdkappid: u64,
    identifier: String,
    secret_key_env: String,
    rate_limit: u32,
    state_dir: PathBuf,
}

impl LinkKey {
    fn of(settings: &Settings) -> Self {
        Self {
            target: settings.target.clone(),
            sdkappid: settings.sdkappid,
            identifier: settings.identifier.clone(),
            secret_key_env: settings.secret_key_env.clone(),
            rate_limit: settings.rate_limit,
            state_dir: settings.state_dir.clone(),
        }
    }
}

/// What one reconcile learned, for its log line (filled as far as it got).
#[derive(Default)]
struct Pass {
    files: Option<usize>,
    files_changed: Option<usize>,
    desired_users: Option<usize>,
    summary: Option<Summary>,
    report: Option<Report>,
}

struct Daemon {
    root: PathBuf,
    state_override: Option<PathBuf>,
    holder: Holder,
    options: WatchOptions,
    cache: ParseCache,
    watcher: ConfigWatcher,
    shared: Arc<Shared>,
    stop: StopSignal,
    store: Option<OpenStore>,
    link: Option<Link>,
    /// The drift scan, once a reconcile has connected (none with `--plan-only` or budget 0).
    drift: Option<drift::DriftScan>,
    /// Consecutive failed reconciles.
    failures: u32,
    /// The problems last logged, so that an unchanged invalid config is not logged again at
    /// every retry.
    last_diagnostics: Option<Diagnostics>,
    /// `(digest, serial, summary)` of the plan last logged in `--plan-only` mode.
    last_logged_plan: Option<(String, u64, Summary)>,
}

impl Daemon {
    /// Waits for triggers and reconciles, until shutdown.
    async fn run_loop(
        &mut self,
        mut events: UnboundedReceiver<FsSignal>,
        mut hangup: tokio::signal::unix::Signal,
        mut down: tokio::sync::watch::Receiver<bool>,
    ) {
        let shared = Arc::clone(&self.shared);
        let mut debounce = Debounce::new(self.options.debounce);
        let mut next = Some(Trigger::Startup);
        let mut resync_at = Instant::now() + self.options.interval;
        let mut retry_at: Option<Instant> = None;
        let mut root_lost = false;
        loop {
            if let Some(trigger) = next.take() {
                // This pass reads every file: it covers the events seen so far.
                debounce.clear();
                let Some(retry) = self.reconcile_once(trigger, &mut down).await else {
                    return;
                };
                if *down.borrow() {
                    return;
                }
                resync_at = Instant::now() + self.options.interval;
                retry_at = retry.map(|wait| Instant::now() + wait);
                continue;
            }
            // A deadline that is never reached, for the branches that are disabled.
            let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
            let debounce_at = debounce.deadline();
            let drift_at = self.drift_due();
            tokio::select! {
                _ = down.wait_for(|down| *down) => return,
                Some(signal) = events.recv() => match signal {
                    FsSignal::Changed => debounce.event(Instant::now()),
                    FsSignal::RootGone => {
                        tracing::warn!(dir = %self.root.display(), "the config directory was removed or moved away; waiting for it to come back");
                        root_lost = true;
                        debounce.event(Instant::now());
                    }
                    FsSignal::Limit(message) => {
                        tracing::error!("{message}");
                        self.watcher.fall_back_to_polling();
                        self.shared.metrics.polling(true);
                        debounce.event(Instant::now());
                    }
                    FsSignal::Failed(error) => {
                        tracing::warn!(%error, "the file watcher reported an error; reconciling in case events were lost");
                        debounce.event(Instant::now());
                    }
                },
                () = sleep_until(debounce_at.unwrap_or(never)), if debounce_at.is_some() => next = Some(Trigger::Files),
                Some(()) = hangup.recv() => next = Some(Trigger::Hangup),
                () = shared.reconcile_now.notified() => next = Some(Trigger::Http),
                () = sleep_until(resync_at) => next = Some(Trigger::Interval),
                () = sleep_until(retry_at.unwrap_or(never)), if retry_at.is_some() => next = Some(Trigger::Retry),
                () = sleep_until(drift_at.unwrap_or(never)), if drift_at.is_some() => {
                    if self.drift_step().await {
                        next = Some(Trigger::Drift);
                    }
                }
                () = sleep(ROOT_POLL), if root_lost => {
                    if self.watcher.root_exists() {
                        tracing::info!(dir = %self.root.display(), "the config directory is back");
                        root_lost = false;
                        next = Some(Trigger::Files);
                    }
                }
            }
        }
    }

    /// When the drift scan's next step is due, if it can run now: after a reconcile connected
    /// and opened the snapshot, and never in `--plan-only` mode.
    fn drift_due(&mut self) -> Option<Instant> {
        if self.options.plan_only || self.store.is_none() || self.link.is_none() {
            return None;
        }
        let rate_limit = self.link.as_ref().map_or(1, |l| l.key.rate_limit);
        if self.drift.is_none() {
            self.drift = drift::DriftScan::new(
                self.options.drift_budget,
                rate_limit,
                self.options.self_heal,
                self.options.drift_pass_every,
            );
        }
        self.drift.as_ref().map(drift::DriftScan::next_at)
    }

    /// One step of the drift scan; returns whether users were marked in doubt (reconcile now).
    async fn drift_step(&mut self) -> bool {
        let (Some(scan), Some(open), Some(link), Some(current)) = (
            self.drift.as_mut(),
            self.store.as_ref(),
            self.link.as_ref(),
            self.shared.current(),
        ) else {
            return false;
        };
        match scan
            .step(
                &open.store,
                &link.connection.client,
                &current.config,
                &self.shared.metrics,
            )
            .await
        {
            Ok(step) => step.marked,
            Err(error) => {
                tracing::warn!(%error, "the drift scan could not use the snapshot");
                false
            }
        }
    }

    /// Runs one reconcile and logs it; returns when to retry (`Some` after a failure), or
    /// `None` in the outer option when the daemon must stop at once.
    async fn reconcile_once(
        &mut self,
        trigger: Trigger,
        down: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<Option<Duration>> {
        let started = Instant::now();
        let mut pass = Pass::default();
        let result = {
            let reconcile = self.reconcile(&mut pass);
            tokio::pin!(reconcile);
            tokio::select! {
                result = &mut reconcile => result,
                _ = down.wait_for(|down| *down) => {
                    // The stop signal has fired: an apply starts no new batch and waits for
                    // the ones in flight to be answered and committed.
                    match timeout(SHUTDOWN_GRACE, &mut reconcile).await {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::warn!(
                                "batches still in flight after {}s: exiting without them (the next start re-plans them)",
                                SHUTDOWN_GRACE.as_secs()
                            );
                            return None;
                        }
                    }
                }
            }
        };
        Some(self.finish(trigger, &pass, result, started.elapsed()))
    }

    /// One pass: reload, plan, apply (or log the plan with `--plan-only`).
    async fn reconcile(&mut self, pass: &mut Pass) -> Result<(), ReconcileError> {
        self.watcher.arm();
        let config = self.load(pass).await?;
        let settings = &config.settings;
        pass.desired_users = Some(config.desired.len());
        self.watcher.set_scope(Scope::new(
            &self.root,
            &settings.users_dir,
            &settings.state_dir,
        ));
        self.watcher.arm();

        let store = self.store_for(settings).await?;
        // A state directory removed under the daemon is a failure now, not at the next write.
        store.check_dir()?;
        self.shared.status().current = Some(Current {
            config: Arc::clone(&config),
            store: Arc::clone(&store),
        });
        // The daemon has no --allow-* flags: a guard that refuses is for a person to decide,
        // with the daemon stopped, using `attrsync apply --allow-mass-delete`.
        let guards = Guards {
            max_deletes: settings.max_deletes,
            allow_mass_delete: false,
            allow_empty: false,
        };
        let planned = tokio::task::spawn_blocking({
            let config = Arc::clone(&config);
            let store = Arc::clone(&store);
            move || -> Result<_, ReconcileError> {
                let snapshot = store.load()?;
                plan::check_empty_desired(&config.desired, &snapshot, guards)?;
                let options = PlanOptions {
                    sdkappid: config.settings.sdkappid,
                    prune: config.settings.prune,
                };
                let plan = plan::plan(&config.desired, &snapshot, options);
                Ok((snapshot, plan))
            }
        })
        .await
        .expect("planning does not panic");
        let (snapshot, plan) = planned?;
        let writes = plan.summary.writes();
        pass.summary = Some(plan.summary);
        self.shared.metrics.planned(config.desired.len(), writes);

        if self.options.plan_only {
            self.log_plan(&plan);
            return Ok(());
        }
        plan::check_mass_delete(&plan, guards)?;
        // Connect (and check the attribute names) even when there is nothing to send, so that
        // a wrong key or endpoint shows on /readyz at once, not at the next edit.
        let client = self.client_for(settings).await?;
        if writes == 0 {
            return Ok(());
        }
        let options = ApplyOptions {
            batch_size: settings.batch_size,
            in_flight: apply::IN_FLIGHT,
            retry: apply::RetryPolicy::default(),
        };
        let progress = ProgressLog::new();
        let report = apply::execute(
            &plan,
            &snapshot,
            &client,
            &store,
            options,
            &self.stop,
            &|p| progress.update(p),
        )
        .await;
        self.shared.metrics.applied(&report);
        self.shared.metrics.planned(
            config.desired.len(),
            writes.saturating_sub(report.applied()),
        );
        let outcome = if report.interrupted {
            Err(ReconcileError::Interrupted)
        } else if !report.succeeded() {
            Err(ReconcileError::Apply(describe_failure(&report)))
        } else {
            Ok(())
        };
        pass.report = Some(report);
        outcome
    }

    /// Reloads the config, re-parsing only the files whose content changed.
    async fn load(&mut self, pass: &mut Pass) -> Result<Arc<Config>, ReconcileError> {
        let root = self.root.clone();
        let state_override = self.state_override.clone();
        let mut cache = std::mem::take(&mut self.cache);
        // Parsing uses every core through scoped threads: keep it off the async workers.
        let (cache, loaded) = tokio::task::spawn_blocking(move || {
            let loaded = config::load(&root, state_override.as_deref(), &mut cache);
            (cache, loaded)
        })
        .await
        .expect("loading the config does not panic");
        self.cache = cache;
        pass.files_changed = Some(self.cache.last_parsed);
        let config = loaded.map_err(ReconcileError::Invalid)?;
        pass.files = Some(config.files);
        Ok(Arc::new(config))
    }

    /// The snapshot for `settings`, opened once and kept; reopened if the state directory or
    /// the app changes.
    async fn store_for(&mut self, settings: &Settings) -> Result<Arc<Store>, ReconcileError> {
        if let Some(open) = &self.store {
            if open.dir == settings.state_dir
                && open.sdkappid == settings.sdkappid
                && open.target == settings.target
            {
                return Ok(Arc::clone(&open.store));
            }
            tracing::info!(dir = %settings.state_dir.display(), "the state directory, the app or the server changed: reopening the snapshot");
        }
        // sled lets one handle at a time open a directory: close the old one first.
        self.store = None;
        self.drift = None;
        self.shared.status().current = None;
        let dir = settings.state_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| ReconcileError::StateDir {
            dir: dir.clone(),
            source,
        })?;
        let (sdkappid, holder) = (settings.sdkappid, self.holder.clone());
        let target = settings.target.clone();
        let opened = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || {
                let binding = crate::state::Binding {
                    sdkappid,
                    target: &target,
                };
                Store::open(&dir, binding, &holder)
            }
        })
        .await
        .expect("opening the snapshot does not panic")?;
        let store = Arc::new(opened);
        tracing::info!(dir = %dir.display(), "opened the snapshot; other attrsync commands are told this daemon holds it");
        self.store = Some(OpenStore {
            dir,
            sdkappid,
            target: settings.target.clone(),
            store: Arc::clone(&store),
        });
        Ok(store)
    }

    /// The API client for `settings`: connects once, reconnects when the settings it depends
    /// on change, and checks the attribute names once per connection and attribute list.
    async fn client_for(
        &mut self,
        settings: &Settings,
    ) -> Result<crate::api::Client, ReconcileError> {
        let key = LinkKey::of(settings);
        if self.link.as_ref().is_none_or(|link| link.key != key) {
            if self.link.take().is_some() {
                tracing::info!("the server settings in attrsync.yaml changed: reconnecting");
                self.drift = None;
            }
            let connection = link::connect(settings).await?;
            tracing::info!(endpoint = %connection.base_url, "connected");
            self.link = Some(Link {
                key,
                connection,
                preflighted: None,
            });
        }
        let link = self.link.as_mut().expect("connected above");
        if link.preflighted.as_deref() != Some(settings.attributes.as_slice()) {
            link::preflight(&link.connection, settings).await?;
            link.preflighted = Some(settings.attributes.clone());
        }
        Ok(link.connection.client.clone())
    }

    /// `--plan-only`: logs the plan when it differs from the one logged last.
    fn log_plan(&mut self, plan: &Plan) {
        let key = (
            plan.desired_digest.clone(),
            plan.snapshot_serial,
            plan.summary,
        );
        if self.last_logged_plan.as_ref() == Some(&key) {
            return;
        }
        self.last_logged_plan = Some(key);
        if plan.changes.len() > PLAN_LOG_LIMIT {
            tracing::info!(
                changes = plan.changes.len(),
                "plan-only: {} ({} changes; GET /plan shows them all)",
                plan::summary_line(&plan.summary),
                plan.changes.len()
            );
        } else {
            tracing::info!(
                "plan-only: the plan is\n{}",
                plan::render_text(plan, TextStyle::Plain).trim_end()
            );
        }
    }

    /// Logs the pass as one structured line, updates metrics and readiness, and applies the
    /// error policy. Returns when to retry.
    fn finish(
        &mut self,
        trigger: Trigger,
        pass: &Pass,
        result: Result<(), ReconcileError>,
        elapsed: Duration,
    ) -> Option<Duration> {
        let summary = pass.summary.as_ref();
        let report = pass.report.as_ref();
        let duration_ms = elapsed.as_millis() as u64;
        let applied = report.map(|r| r.applied() as u64);
        let failed = report.map(|r| (r.failed.len() + r.skipped) as u64);
        macro_rules! log_pass {
            ($level:ident, $result:expr, $error:expr, $retry_in_ms:expr, $($message:tt)+) => {
                tracing::$level!(
                    trigger = trigger.name(),
                    result = $result,
                    files = pass.files.map(|n| n as u64),
                    files_changed = pass.files_changed.map(|n| n as u64),
                    desired_users = pass.desired_users.map(|n| n as u64),
                    create = summary.map(|s| s.create as u64),
                    update = summary.map(|s| s.update as u64),
                    delete = summary.map(|s| s.delete as u64),
                    resend = summary.map(|s| s.resend as u64),
                    orphaned = summary.map(|s| s.orphaned as u64),
                    unchanged = summary.map(|s| s.unchanged as u64),
                    applied,
                    failed,
                    duration_ms,
                    error = $error,
                    retry_in_ms = $retry_in_ms,
                    $($message)+
                )
            };
        }
        let plan_line = summary.map_or_else(String::new, plan::summary_line);
        match result {
            Ok(()) => {
                self.failures = 0;
                self.last_diagnostics = None;
                self.shared.metrics.reconciled(true, elapsed.as_secs_f64());
                self.shared.status().ready = Ok(());
                let done = match (self.options.plan_only, applied) {
                    (true, _) => " Plan only: nothing applied.".to_owned(),
                    (false, Some(1)) => " Applied 1 user.".to_owned(),
                    (false, Some(applied)) => format!(" Applied {applied} users."),
                    (false, None) => String::new(),
                };
                log_pass!(
                    info,
                    "success",
                    None::<&str>,
                    None::<u64>,
                    "reconciled ({trigger}) in {duration_ms} ms: {plan_line}{done}"
                );
                None
            }
            Err(ReconcileError::Interrupted) => {
                log_pass!(info, "interrupted", None::<&str>, None::<u64>, "reconcile interrupted by shutdown ({trigger}): the batches in flight were recorded; the rest is applied at the next start");
                None
            }
            Err(error) => {
                self.failures += 1;
                let retry = error_policy(self.failures);
                if let ReconcileError::Invalid(diagnostics) = &error {
                    self.log_diagnostics(diagnostics);
                }
                self.shared.metrics.reconciled(false, elapsed.as_secs_f64());
                let message = error.to_string();
                self.shared.status().ready = Err(format!("the last reconcile failed: {message}"));
                let retry_ms = retry.as_millis() as u64;
                log_pass!(
                    warn,
                    "failure",
                    Some(message.as_str()),
                    Some(retry_ms),
                    "reconcile failed ({trigger}); retrying in {} unless something changes first",
                    humantime::format_duration(retry)
                );
                Some(retry)
            }
        }
    }

    /// Logs each problem as `file:line:column: message`, unless they are the ones logged last.
    fn log_diagnostics(&mut self, diagnostics: &Diagnostics) {
        if self.last_diagnostics.as_ref() == Some(diagnostics) {
            tracing::debug!("the config has the same problems as at the last attempt");
            return;
        }
        for d in &diagnostics.0 {
            let hint = d
                .hint
                .as_deref()
                .map(|h| format!(" (help: {h})"))
                .unwrap_or_default();
            tracing::error!(location = %d.location(), "{}: {}{hint}", d.location(), d.message);
        }
        self.last_diagnostics = Some(diagnostics.clone());
    }
}

/// Why an apply did not finish, in one line: counts, the first refused users, the fatal error.
fn describe_failure(report: &Report) -> String {
    let mut text = format!(
        "{} applied, {} failed, {} not attempted",
        report.applied(),
        report.failed.len(),
        report.skipped
    );
    const SHOWN: usize = 3;
    for failed in report.failed.iter().take(SHOWN) {
        match failed.code {
            Some(code) => text.push_str(&format!(
                "; {}: error {code}: {}",
                failed.user, failed.reason
            )),
            None => text.push_str(&format!("; {}: {}", failed.user, failed.reason)),
        }
    }
    if report.failed.len() > SHOWN {
        text.push_str(&format!("; and {} more", report.failed.len() - SHOWN));
    }
    if let Some(error) = &report.error {
        text.push_str(&format!("; stopped: {error}"));
    }
    text
}

/// A progress line every [`PROGRESS_EVERY`] during a long apply.
struct ProgressLog {
    last: Mutex<Instant>,
}

impl ProgressLog {
    fn new() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
        }
    }

    fn update(&self, progress: Progress) {
        let mut last = crate::sync::lock(&self.last);
        if last.elapsed() >= PROGRESS_EVERY {
            *last = Instant::now();
            tracing::info!(
                done = progress.done as u64,
                total = progress.total as u64,
                "applying: {}/{} users",
                progress.done,
                progress.total
            );
        }
    }
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

    #[test]
    fn a_failed_apply_is_described_in_one_line() {
        let report = Report {
            created: 1,
            failed: (0..5)
                .map(|i| crate::apply::FailedUser {
                    user: format!("u{i}"),
                    code: Some(70107),
                    reason: "not imported".to_owned(),
                    in_doubt: false,
                })
                .collect(),
            ..Report::default()
        };
        let text = describe_failure(&report);
        assert_eq!(
            text,
            "1 applied, 5 failed, 0 not attempted; u0: error 70107: not imported; u1: error 70107: not imported; \
             u2: error 70107: not imported; and 2 more"
        );
    }
}
