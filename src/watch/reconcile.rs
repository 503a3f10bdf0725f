//! One reconcile: reload the config, open the snapshot, plan, connect, apply.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::daemon::{Daemon, Link, LinkKey, OpenStore, Pass};
use super::trigger::Scope;
use super::{Current, ReconcileError, PLAN_LOG_LIMIT, PROGRESS_EVERY};
use crate::api::AttrApi;
use crate::apply::{self, ApplyOptions, Progress, Report, StopSignal};
use crate::config::{self, Config, Settings};
use crate::link;
use crate::model::Snapshot;
use crate::model::{Action, Plan};
use crate::plan::{self, Guards, PlanOptions, TextStyle};
use crate::state::{Access, OnOtherTarget, SnapshotStore, StateError};

impl Daemon {
    /// One pass: reload, plan, apply (or log the plan with `--plan-only`).
    pub(super) async fn reconcile(&mut self, pass: &mut Pass) -> Result<(), ReconcileError> {
        self.watcher.arm();
        let config = self.load(pass).await?;
        let settings = &config.settings;
        pass.desired_users = Some(config.desired.len());
        self.watcher.set_scope(Scope::new(
            &self.root,
            &settings.users_dir,
            &settings.local_dir(),
        ));
        self.watcher.arm();

        let store = match self.store_for(settings).await {
            Ok(store) => store,
            Err(ReconcileError::State(StateError::LockHeld { holder, .. })) => {
                return Err(self.stand_by(&config, holder).await);
            }
            Err(error) => return Err(error),
        };
        self.standby_reader = None;
        if self.shared.status().standby.take().is_some() {
            tracing::info!("took the snapshot's write lock: this daemon is now the active one");
        }
        self.shared.metrics.leader(true);
        // A state directory removed under the daemon (or a lost lock) is a failure now, not
        // at the next write.
        store.check().await?;
        self.shared.status().current = Some(Current {
            config: Arc::clone(&config),
            store: Arc::clone(&store),
        });
        let known = self.known_snapshot().await;
        let planned = plan_pass(&config, store.as_ref(), known).await?;
        if let Some(open) = &mut self.store {
            open.known = Some(Arc::clone(&planned.snapshot));
        }
        let writes = planned.plan.summary.writes();
        pass.summary = Some(planned.plan.summary);
        self.shared.metrics.planned(config.desired.len(), writes);

        if self.options.plan_only {
            self.log_plan(&planned.plan);
            return Ok(());
        }
        plan::check_mass_delete(&planned.plan, daemon_guards(settings))?;
        // Connect (and check the attribute names) even when there is nothing to send, so that
        // a wrong key or endpoint shows on /readyz at once, not at the next edit.
        let client = self.client_for(settings).await?;
        if writes == 0 {
            return Ok(());
        }
        let progress = ProgressLog::new();
        let report = apply_pass(
            &config,
            &planned,
            &client,
            store.as_ref(),
            &self.stop,
            &|p| progress.update(p),
        )
        .await;
        // The batches were committed: read the new snapshot while the daemon waits for the
        // next edit, not when it comes.
        self.refresh_snapshot_in_background();
        self.shared.metrics.applied(&report);
        self.shared.metrics.planned(
            config.desired.len(),
            writes.saturating_sub(report.applied()),
        );
        let outcome = pass_outcome(&report);
        if outcome.is_ok() {
            pass.changed = Some(describe_changes(&planned.plan));
        }
        pass.report = Some(report);
        outcome
    }

    /// The snapshot this daemon last read, once any background read has finished; `None`
    /// before the first read or when that read failed (the pass then reads it itself).
    async fn known_snapshot(&mut self) -> Option<Arc<Snapshot>> {
        let open = self.store.as_mut()?;
        if let Some(refreshing) = open.refreshing.take() {
            if let Ok(Ok(snapshot)) = refreshing.await {
                open.known = Some(Arc::new(snapshot));
            }
        }
        open.known.clone()
    }

    /// Starts reading the snapshot again, after a pass wrote to it.
    fn refresh_snapshot_in_background(&mut self) {
        let Some(open) = &mut self.store else {
            return;
        };
        open.known = None;
        let store = Arc::clone(&open.store);
        open.refreshing = Some(tokio::spawn(async move {
            let snapshot = store.load().await;
            crate::memory::release_free_memory();
            snapshot
        }));
    }

    /// Reloads the config, re-parsing only the files whose content changed.
    pub(super) async fn load(&mut self, pass: &mut Pass) -> Result<Arc<Config>, ReconcileError> {
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

    /// Another writer holds the shared snapshot: serve `/plan` from a reading handle, make no
    /// API call, and say so on `/readyz` and in `attrsync_leader`.
    async fn stand_by(&mut self, config: &Arc<Config>, holder: String) -> ReconcileError {
        let settings = &config.settings;
        self.shared.metrics.leader(false);
        self.link = None;
        let reader = match &self.standby_reader {
            Some((location, reader)) if *location == settings.state => Some(Arc::clone(reader)),
            _ => {
                let binding = crate::state::Binding {
                    sdkappid: settings.sdkappid,
                    target: &settings.target,
                };
                match crate::state::open(
                    &settings.state,
                    binding,
                    &self.holder,
                    OnOtherTarget::Refuse,
                    Access::Read,
                )
                .await
                {
                    Ok(reader) => {
                        self.standby_reader = Some((settings.state.clone(), Arc::clone(&reader)));
                        Some(reader)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "standing by, but the snapshot cannot be read for /plan");
                        None
                    }
                }
            }
        };
        let mut status = self.shared.status();
        if status.standby.is_none() {
            tracing::info!("standing by: another attrsync{holder} holds the snapshot's write lock; this daemon takes over if it goes away");
        }
        status.standby = Some(holder.clone());
        status.current = reader.map(|store| Current {
            config: Arc::clone(config),
            store,
        });
        ReconcileError::Standby(holder)
    }

    /// The snapshot for `settings`, opened once and kept; reopened if the state directory or
    /// the app changes.
    pub(super) async fn store_for(
        &mut self,
        settings: &Settings,
    ) -> Result<Arc<dyn SnapshotStore>, ReconcileError> {
        if let Some(open) = &self.store {
            if open.location == settings.state
                && open.sdkappid == settings.sdkappid
                && open.target == settings.target
            {
                return Ok(Arc::clone(&open.store));
            }
            tracing::info!(state = %settings.state, "the snapshot's location, the app or the server changed: reopening the snapshot");
        }
        // sled lets one handle at a time open a directory: close the old one first (after
        // its background read, which holds it too).
        if let Some(refreshing) = self.store.take().and_then(|open| open.refreshing) {
            let _ = refreshing.await;
        }
        self.drift = None;
        self.shared.status().current = None;
        if let Some(dir) = settings.state.dir() {
            crate::files::create_private_dir(dir).map_err(|source| ReconcileError::StateDir {
                dir: dir.to_owned(),
                source,
            })?;
        }
        let binding = crate::state::Binding {
            sdkappid: settings.sdkappid,
            target: &settings.target,
        };
        // The daemon is a writer: on a shared snapshot it holds the app's lock while it runs,
        // so a CLI apply and another daemon wait for it.
        let access = Access::Write {
            lock_timeout: Duration::ZERO,
        };
        let store = crate::state::open(
            &settings.state,
            binding,
            &self.holder,
            OnOtherTarget::Refuse,
            access,
        )
        .await?;
        tracing::info!(state = %settings.state, "opened the snapshot; other attrsync commands are told this daemon holds it");
        self.store = Some(OpenStore {
            location: settings.state.clone(),
            sdkappid: settings.sdkappid,
            target: settings.target.clone(),
            store: Arc::clone(&store),
            known: None,
            refreshing: None,
        });
        Ok(store)
    }

    /// The API client for `settings`: connects once, reconnects when the settings it depends
    /// on change, and checks the attribute names once per connection and attribute list.
    pub(super) async fn client_for(
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
            self.connected_once = true;
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
    pub(super) fn log_plan(&mut self, plan: &Plan) {
        let logged = if plan.changes.len() > PLAN_LOG_LIMIT {
            format!(
                "plan-only: {} ({} changes; GET /plan shows them all)",
                plan::summary_line(&plan.summary),
                plan.changes.len()
            )
        } else {
            format!(
                "plan-only: the plan is\n{}",
                plan::render_text(plan, TextStyle::Plain).trim_end()
            )
        };
        let key = (plan.snapshot_serial, logged);
        if self.last_logged_plan.as_ref() == Some(&key) {
            return;
        }
        if plan.changes.len() > PLAN_LOG_LIMIT {
            tracing::info!(changes = plan.changes.len(), "{}", key.1);
        } else {
            tracing::info!("{}", key.1);
        }
        self.last_logged_plan = Some(key);
    }
}

/// The daemon has no --allow-* flags: a guard that refuses is for a person to decide, with the
/// daemon stopped, using `attrsync apply --allow-mass-delete`.
fn daemon_guards(settings: &Settings) -> Guards {
    Guards {
        max_deletes: settings.max_deletes,
        allow_mass_delete: false,
        allow_empty: false,
    }
}

/// A plan and the snapshot it was computed against.
#[derive(Debug)]
pub(crate) struct Planned {
    /// The snapshot as read for this pass (or kept from the last one).
    pub snapshot: Arc<Snapshot>,
    /// The plan against it.
    pub plan: Plan,
}

/// The planning half of a pass: reads the snapshot and plans the config against it, refusing
/// an empty desired state that would delete everything.
///
/// `known` is a snapshot read earlier: it is used when the store's serial shows nothing was
/// committed since (every commit moves the serial), and the store is read otherwise.
pub(crate) async fn plan_pass(
    config: &Arc<Config>,
    store: &dyn SnapshotStore,
    known: Option<Arc<Snapshot>>,
) -> Result<Planned, ReconcileError> {
    let snapshot = match known {
        Some(known) if store.serial().await? == known.serial => known,
        _ => Arc::new(store.load().await?),
    };
    let previous_endpoint = store.previous_target();
    let config = Arc::clone(config);
    // Planning a large config takes a while: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let guards = daemon_guards(&config.settings);
        plan::check_empty_desired(&config.desired, &snapshot, guards)?;
        let options = PlanOptions {
            sdkappid: config.settings.sdkappid,
            prune: config.settings.prune,
            endpoint: config.settings.target.key(),
            previous_endpoint,
            targets: Vec::new(),
        };
        // The pass applies the plan at once and never saves it: no desired-state digest.
        let plan = plan::plan_undigested(&config.desired, &snapshot, options);
        if let (Some(previous), true) = (&plan.previous_endpoint, plan.summary.has_writes()) {
            tracing::warn!(
                from = %previous,
                to = %plan.endpoint,
                "the config's server changed: this app's last write went to {previous}, the admin UserSig is now sent to {}",
                plan.endpoint
            );
        }
        Ok(Planned { snapshot, plan })
    })
    .await
    .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
}

/// The applying half of a pass: sends `planned` through `api`, committing to `store`, with the
/// settings' batch size and the default retry policy.
pub(crate) async fn apply_pass(
    config: &Config,
    planned: &Planned,
    api: &dyn AttrApi,
    store: &dyn SnapshotStore,
    stop: &StopSignal,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> Report {
    let options = ApplyOptions {
        batch_size: config.settings.batch_size,
        in_flight: apply::IN_FLIGHT,
        retry: apply::RetryPolicy::default(),
    };
    apply::execute(
        &planned.plan,
        &planned.snapshot,
        api,
        store,
        options,
        stop,
        on_progress,
    )
    .await
}

/// A pass's result from its report: interrupted, failed (in one line), or done.
pub(crate) fn pass_outcome(report: &Report) -> Result<(), ReconcileError> {
    if report.interrupted {
        Err(ReconcileError::Interrupted)
    } else if !report.succeeded() {
        Err(ReconcileError::Apply(Box::new(report.clone())))
    } else {
        Ok(())
    }
}

/// Why an apply did not finish, in one line: counts, the first refused users, the fatal error.
pub(super) fn describe_failure(report: &Report) -> String {
    let mut text = format!(
        "{} applied, {} failed, {} not sent",
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

/// How many users a reconcile's log line names before it only counts the rest.
const NAMED_CHANGES: usize = 20;

/// The users a plan changes and which attributes, for the log: `Mary (created: city, sex);
/// Bob (updated: city); ghost (deleted)`, the first [`NAMED_CHANGES`], then a count. Values are
/// left out: the log names what changed, `/plan` and the snapshot hold the data.
pub(super) fn describe_changes(plan: &Plan) -> String {
    let writes: Vec<&crate::model::Change> =
        plan.changes.iter().filter(|c| c.action.writes()).collect();
    let mut parts: Vec<String> = writes
        .iter()
        .take(NAMED_CHANGES)
        .map(|change| {
            let verb = match change.action {
                Action::Create => "created",
                Action::Update => "updated",
                Action::Delete => "deleted",
                Action::Resend => "re-sent",
                Action::Orphaned => "orphaned",
            };
            let names: Vec<&str> = change
                .attrs
                .iter()
                .filter(|a| change.action != Action::Update || a.before != a.after)
                .map(|a| a.name.as_str())
                .collect();
            let user = crate::text::quote_user(change.user.as_str());
            match (change.action, names.is_empty()) {
                (Action::Delete, _) | (_, true) => format!("{user} ({verb})"),
                _ => format!("{user} ({verb}: {})", names.join(", ")),
            }
        })
        .collect();
    if writes.len() > NAMED_CHANGES {
        parts.push(format!("and {} more", writes.len() - NAMED_CHANGES));
    }
    parts.join("; ")
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
    use crate::emulator::{Emulator, EmulatorConfig, FailMode, Faults};
    use crate::model::Target;
    use crate::state::{Binding, Holder, SledStore};

    /// A config repository of 250 users in Rome, loaded.
    fn config(dir: &std::path::Path) -> Arc<Config> {
        let mut yaml = String::from("users:\n");
        for i in 0..250 {
            yaml.push_str(&format!("  u{i:03}: {{city: Rome}}\n"));
        }
        std::fs::create_dir(dir.join("users")).unwrap();
        std::fs::write(dir.join("users/all.yaml"), yaml).unwrap();
        std::fs::write(
            dir.join("attrsync.yaml"),
            "sdkappid: 1400000000\nidentifier: administrator\nendpoint: embedded\nattributes: [city]\n",
        )
        .unwrap();
        Arc::new(config::load(dir, None, &mut Default::default()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn one_pass_converges_and_a_lost_answer_is_resent_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let emulator = Emulator::new(EmulatorConfig {
            attributes: vec!["city".into()],
            ..EmulatorConfig::default()
        })
        .unwrap();
        let api = emulator.in_process("administrator", 100);
        let store = SledStore::open(
            &dir.path().join("state"),
            Binding {
                sdkappid: 1_400_000_000,
                target: &Target::Embedded,
            },
            &Holder::default(),
            OnOtherTarget::Refuse,
        )
        .await
        .unwrap();
        let stop = StopSignal::new();

        // Every answer is lost after the call was applied: its users stay in doubt.
        api.set_faults(Faults {
            rate: 1.0,
            mode: FailMode::Drop,
            endpoints: vec![crate::api::Endpoint::SetAttr],
        });
        let planned = plan_pass(&config, &store, None).await.unwrap();
        assert_eq!(planned.plan.summary.create, 250);
        let report = apply_pass(&config, &planned, &api, &store, &stop, &|_| {}).await;
        assert!(matches!(
            pass_outcome(&report),
            Err(ReconcileError::Apply(_))
        ));
        assert_eq!(report.failed.len(), 250);
        assert!(report.failed.iter().all(|f| f.in_doubt));
        assert_eq!(api.state().users.len(), 250, "every drop was applied");
        assert_eq!(store.load().await.unwrap().in_doubt.len(), 250);

        // The next pass re-sends them in full and records them.
        api.set_faults(Faults::default());
        let planned = plan_pass(&config, &store, None).await.unwrap();
        assert_eq!(planned.plan.summary.resend, 250);
        let report = apply_pass(&config, &planned, &api, &store, &stop, &|_| {}).await;
        pass_outcome(&report).unwrap();
        let snapshot = store.load().await.unwrap();
        assert_eq!((snapshot.users.len(), snapshot.in_doubt.len()), (250, 0));

        // Converged: the pass after plans nothing.
        let planned = plan_pass(&config, &store, None).await.unwrap();
        assert_eq!(planned.plan.summary.writes(), 0);

        // A snapshot kept from an earlier pass is used only while the store's serial is its
        // own: one from before the last commit is read again, so it never hides a write.
        let kept = Arc::clone(&planned.snapshot);
        let again = plan_pass(&config, &store, Some(Arc::clone(&kept)))
            .await
            .unwrap();
        assert!(
            Arc::ptr_eq(&again.snapshot, &kept),
            "the serial did not move"
        );
        let stale = Arc::new(Snapshot {
            serial: kept.serial - 1,
            ..Snapshot::default()
        });
        let reread = plan_pass(&config, &store, Some(stale)).await.unwrap();
        assert_eq!(reread.snapshot.users.len(), 250);
        assert_eq!(reread.plan.summary.writes(), 0);
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
            "1 applied, 5 failed, 0 not sent; u0: error 70107: not imported; u1: error 70107: not imported; \
             u2: error 70107: not imported; and 2 more"
        );
    }
}
