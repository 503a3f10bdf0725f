//! One reconcile: reload the config, open the snapshot, plan, connect, apply.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::daemon::{Daemon, Link, LinkKey, OpenStore, Pass};
use super::trigger::Scope;
use super::{Current, ReconcileError, PLAN_LOG_LIMIT, PROGRESS_EVERY};
use crate::apply::{self, ApplyOptions, Progress, Report};
use crate::config::{self, Config, Settings};
use crate::link;
use crate::model::Plan;
use crate::plan::{self, Guards, PlanOptions, TextStyle};
use crate::state::Store;

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

    /// The snapshot for `settings`, opened once and kept; reopened if the state directory or
    /// the app changes.
    pub(super) async fn store_for(
        &mut self,
        settings: &Settings,
    ) -> Result<Arc<Store>, ReconcileError> {
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
