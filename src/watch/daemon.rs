//! The daemon's loop: waiting for triggers, running the drift scan between reconciles, and
//! logging each pass with the error policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::trigger::{ConfigWatcher, Debounce, FsSignal, Trigger};
use super::{
    drift, error_policy, ReconcileError, Shared, WatchOptions, ROOT_POLL, SHUTDOWN_GRACE,
    STANDBY_RETRY,
};
use crate::apply::{Report, StopSignal};
use crate::config::{Diagnostics, ParseCache, Settings, Target};
use crate::link::Connection;
use crate::model::{AttrName, Snapshot, StateLocation, Summary};
use crate::plan;
use crate::state::{Holder, SnapshotStore, StateError};

/// The open snapshot and what it was opened for.
pub(super) struct OpenStore {
    pub(super) location: StateLocation,
    pub(super) sdkappid: u64,
    pub(super) target: Target,
    pub(super) store: Arc<dyn SnapshotStore>,
    /// The snapshot as this daemon last read it: a pass plans against it without reading a
    /// million users again while the store's serial says it is still what the store holds.
    pub(super) known: Option<Arc<Snapshot>>,
    /// The read of the snapshot started in the background after a pass wrote, so that the
    /// next pass (an edit) finds it read.
    pub(super) refreshing: Option<tokio::task::JoinHandle<Result<Snapshot, StateError>>>,
}

/// The connection to the server and what it was made for.
pub(super) struct Link {
    pub(super) key: LinkKey,
    pub(super) connection: Connection,
    /// The attribute names last checked by `preflight` on this connection.
    pub(super) preflighted: Option<Vec<AttrName>>,
}

/// The settings a connection depends on: when one changes, the daemon reconnects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LinkKey {
    pub(super) target: Target,
    pub(super) sdkappid: u64,
    pub(super) identifier: String,
    pub(super) secret_key_env: String,
    pub(super) rate_limit: u32,
    /// Where the embedded emulator keeps its data.
    pub(super) local_dir: PathBuf,
}

impl LinkKey {
    pub(super) fn of(settings: &Settings) -> Self {
        Self {
            target: settings.target.clone(),
            sdkappid: settings.sdkappid,
            identifier: settings.identifier.clone(),
            secret_key_env: settings.secret_key_env.clone(),
            rate_limit: settings.rate_limit,
            local_dir: settings.local_dir(),
        }
    }
}

/// What one reconcile learned, for its log line (filled as far as it got).
#[derive(Default)]
pub(super) struct Pass {
    pub(super) files: Option<usize>,
    pub(super) files_changed: Option<usize>,
    pub(super) desired_users: Option<usize>,
    pub(super) summary: Option<Summary>,
    pub(super) report: Option<Report>,
    /// The users the pass changed and which attributes (see `describe_changes`).
    pub(super) changed: Option<String>,
}

pub(super) struct Daemon {
    pub(super) root: PathBuf,
    pub(super) state_override: Option<String>,
    pub(super) holder: Holder,
    pub(super) options: WatchOptions,
    pub(super) cache: ParseCache,
    pub(super) watcher: ConfigWatcher,
    pub(super) shared: Arc<Shared>,
    pub(super) stop: StopSignal,
    pub(super) store: Option<OpenStore>,
    pub(super) link: Option<Link>,
    /// The drift scan, once a reconcile has connected (none with `--plan-only` or budget 0).
    pub(super) drift: Option<drift::DriftScan>,
    /// While standing by: a reading handle on the shared snapshot, for `/plan`.
    pub(super) standby_reader: Option<(StateLocation, Arc<dyn SnapshotStore>)>,
    /// Consecutive failed reconciles.
    pub(super) failures: u32,
    /// The problems last logged, so that an unchanged invalid config is not logged again at
    /// every retry.
    pub(super) last_diagnostics: Option<Diagnostics>,
    /// The snapshot serial and the text of the plan last logged in `--plan-only` mode.
    pub(super) last_logged_plan: Option<(u64, String)>,
    /// Whether any reconcile has connected to the server since the daemon started.
    pub(super) connected_once: bool,
    /// Why the daemon must exit: a problem no edit of the config can fix while it runs.
    pub(super) fatal: Option<String>,
}

impl Daemon {
    /// Waits for triggers and reconciles, until shutdown.
    pub(super) async fn run_loop(
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
                self.shared.snapshot_moved();
                self.shared.set_backoff(retry);
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
                        self.shared.snapshot_moved();
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
                open.store.as_ref(),
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
        if matches!(trigger, Trigger::Interval | Trigger::Hangup | Trigger::Http) {
            // A resync asked for by the clock or a person reads every file, trusting no
            // metadata: a change that left it as it was is picked up here at the latest.
            self.cache.check_every_file();
        }
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
        let retry = self.finish(trigger, &pass, result, started.elapsed());
        // What the pass freed (a million users' parse and plan) goes back to the system
        // rather than staying with an idle daemon.
        drop(pass);
        crate::memory::release_free_memory();
        // Exiting says more than retrying for ever: a supervisor shows the failed unit.
        if self.fatal.is_some() {
            return None;
        }
        Some(retry)
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
        let failed = report.map(|r| r.failed.len() as u64);
        // Users an interrupted or stopped apply never sent: not failures, re-planned next time.
        let not_sent = report.map(|r| r.skipped as u64);
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
                    not_sent,
                    changes = pass.changed.as_deref(),
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
                let changed = pass
                    .changed
                    .as_deref()
                    .map_or_else(String::new, |c| format!(": {c}"));
                let done = match (self.options.plan_only, applied) {
                    (true, _) => " Plan only: nothing applied.".to_owned(),
                    (false, Some(1)) => format!(" Applied 1 user{changed}."),
                    (false, Some(applied)) => format!(" Applied {applied} users{changed}."),
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
            Err(ReconcileError::Standby(holder)) => {
                // Not a failure: another writer is active. Try for the lock again soon, so a
                // dead leader is replaced within seconds.
                self.failures = 0;
                self.shared.metrics.reconciled(true, elapsed.as_secs_f64());
                log_pass!(
                    debug,
                    "standby",
                    None::<&str>,
                    Some(STANDBY_RETRY.as_millis() as u64),
                    "standing by ({trigger}): another attrsync{holder} holds the snapshot's write lock"
                );
                Some(STANDBY_RETRY)
            }
            Err(ReconcileError::Interrupted) => {
                let not_sent = not_sent.unwrap_or(0) as usize;
                log_pass!(info, "interrupted", None::<&str>, None::<u64>, "reconcile interrupted by shutdown ({trigger}): the batches in flight were recorded; {} not sent, applied at the next start", crate::text::plural(not_sent, "user"));
                None
            }
            Err(ReconcileError::Link(error))
                if error.needs_the_environment() && !self.connected_once =>
            {
                // The daemon's environment cannot change while it runs: the secret key is
                // missing from the start, so no edit or retry can help.
                let message = error.to_string();
                log_pass!(
                    error,
                    "failure",
                    Some(message.as_str()),
                    None::<u64>,
                    "cannot start reconciling ({trigger}): {message}"
                );
                self.fatal = Some(message);
                None
            }
            Err(error) => {
                if matches!(
                    &error,
                    ReconcileError::State(
                        StateError::LockLost { .. } | StateError::Postgres { .. }
                    )
                ) {
                    // The shared snapshot's lock may be gone: open it afresh next time, and
                    // stand by if another daemon took over meanwhile.
                    self.store = None;
                    self.drift = None;
                    self.shared.metrics.leader(false);
                }
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
