//! The drift scan: the daemon reads the live attributes of the users it manages, a page of 100
//! at a time, in a rolling pass that uses at most a set share of the rate limit, and resumes
//! where it stopped after a restart.
//!
//! A user whose live attributes differ from the snapshot was changed behind attrsync's back:
//! with self-heal (the default) it is marked in doubt with the live values, and the reconcile
//! that follows re-sends its full desired state; without, it is only logged and counted. The
//! scan runs in the daemon's own loop, between reconciles, so it never races an apply.

use std::time::Duration;

use tokio::time::Instant;

use crate::api::AttrApi;
use crate::apply::CallOutcome;
use crate::config::Config;
use crate::model::{AttrValue, Attrs, DoubtNote, InDoubt, UserId, MAX_BATCH_SIZE};
use crate::state::{Commit, SnapshotStore, StateError};

use super::Metrics;

/// `--drift-budget`: the share of `rate_limit` the scan may use, in percent.
pub const DEFAULT_DRIFT_BUDGET: u32 = 10;
/// `--drift-pass-every`: a new pass starts at most this long after the previous one started,
/// so that a small app is not read again and again while nothing changes. A change made behind
/// attrsync's back is found within this period plus one pass.
pub const DEFAULT_PASS_EVERY: Duration = Duration::from_secs(30);
/// After a failed read, the scan waits this long before trying again.
const AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How often the scan's position is saved, so a restart resumes near where it stopped.
const SAVE_CURSOR_EVERY: Duration = Duration::from_secs(10);
/// Pages without a user to read (all undeclared or already in doubt) skipped in one step.
const QUIET_PAGES_PER_STEP: usize = 100;
/// Why a drifted user is in doubt (the text plans show).
pub const DRIFT_REASON: &str = "the drift scan read live values that differ from the snapshot";

/// The scan's position and pace.
#[derive(Debug)]
pub struct DriftScan {
    self_heal: bool,
    /// Time between two calls at the budget.
    spacing: Duration,
    /// Least time from the start of one pass to the start of the next.
    pass_every: Duration,
    /// The last user read; `None` starts a pass; not loaded from the store yet when outer `None`.
    cursor: Option<Option<String>>,
    pass_started: Option<Instant>,
    /// Users read in the current pass.
    scanned: usize,
    cursor_saved: Instant,
    next_at: Instant,
}

/// What one step found.
#[derive(Debug, Default)]
pub struct StepOutcome {
    /// Users found drifted.
    pub drifted: usize,
    /// Whether they were marked in doubt (a reconcile should follow).
    pub marked: bool,
}

impl DriftScan {
    /// A scan using `budget_percent` of `rate_limit` calls per second; `None` when the budget
    /// is 0 (the scan is off).
    pub fn new(
        budget_percent: u32,
        rate_limit: u32,
        self_heal: bool,
        pass_every: Duration,
    ) -> Option<Self> {
        if budget_percent == 0 {
            return None;
        }
        let calls_per_second =
            f64::from(rate_limit.max(1)) * f64::from(budget_percent.min(100)) / 100.0;
        let now = Instant::now();
        Some(Self {
            self_heal,
            spacing: Duration::from_secs_f64(1.0 / calls_per_second),
            pass_every,
            cursor: None,
            pass_started: None,
            scanned: 0,
            cursor_saved: now,
            next_at: now,
        })
    }

    /// When the next step is due.
    pub fn next_at(&self) -> Instant {
        self.next_at
    }

    /// Saves the position (on shutdown), so the next start resumes there.
    pub async fn save(&mut self, store: &dyn SnapshotStore) {
        if let Some(cursor) = &self.cursor {
            if let Err(error) = store.save_drift_cursor(cursor.as_deref()).await {
                tracing::warn!(%error, "could not save the drift scan's position");
            }
        }
    }

    /// Reads the next page of managed users and compares them with the snapshot.
    pub async fn step(
        &mut self,
        store: &dyn SnapshotStore,
        api: &dyn AttrApi,
        config: &Config,
        metrics: &Metrics,
    ) -> Result<StepOutcome, StateError> {
        let started = Instant::now();
        // A daemon that may have lost the shared snapshot's lock calls nothing more.
        store.check().await?;
        let cursor = match &self.cursor {
            Some(cursor) => cursor.clone(),
            None => store.drift_cursor().await?,
        };
        if self.pass_started.is_none() {
            self.pass_started = Some(started);
            self.scanned = 0;
        }
        let mut after = cursor.clone();
        let mut page = Vec::new();
        for _ in 0..QUIET_PAGES_PER_STEP {
            let users = store.users_after(after.as_deref(), MAX_BATCH_SIZE).await?;
            let Some(last) = users.last() else {
                self.finish_pass(store, metrics, started).await;
                return Ok(StepOutcome::default());
            };
            after = Some(last.user.as_str().to_owned());
            for paged in users {
                if config.desired.get(paged.user.as_str()).is_some() && !paged.in_doubt {
                    page.push((paged.user, paged.entry.attrs));
                }
            }
            if !page.is_empty() {
                break;
            }
        }
        if page.is_empty() {
            self.cursor = Some(after);
            self.next_at = started;
            return Ok(StepOutcome::default());
        }
        let accounts: Vec<String> = page.iter().map(|(u, _)| u.as_str().to_owned()).collect();
        let result = api.get_attr(&accounts).await;
        metrics.drift_call(CallOutcome::of(&result).name());
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::warn!(%error, "the drift scan could not read live attributes; trying again in {}s", AFTER_FAILURE.as_secs());
                self.next_at = Instant::now() + AFTER_FAILURE;
                return Ok(StepOutcome::default());
            }
        };
        self.cursor = Some(after);
        self.scanned += page.len();
        metrics.drift_progress(self.scanned);
        let attributes = &config.settings.attributes;
        let mut drifted: Vec<(UserId, Attrs, Attrs)> = Vec::new();
        for (user, recorded) in page {
            let Some(live) = outcome.attrs.get(user.as_str()) else {
                continue; // answered with an error: nothing is known
            };
            let pairs: Option<Vec<_>> = live
                .iter()
                .filter_map(|(name, value)| {
                    let name = attributes.iter().find(|a| a.as_str() == name)?;
                    Some(AttrValue::new(value).ok().map(|v| (name.clone(), v)))
                })
                .collect();
            let Some(pairs) = pairs else {
                continue; // a value attrsync cannot hold: leave it to `plan --refresh`
            };
            let live = Attrs::from_pairs(pairs);
            if live != recorded {
                drifted.push((user, recorded, live));
            }
        }
        let mut step = StepOutcome {
            drifted: drifted.len(),
            marked: false,
        };
        if !drifted.is_empty() {
            metrics.drifted(drifted.len());
            for (user, recorded, live) in &drifted {
                tracing::warn!(
                    user = user.as_str(),
                    snapshot = ?recorded,
                    live = ?live,
                    self_heal = self.self_heal,
                    "drift: {user} was changed outside attrsync (snapshot {recorded:?}, live {live:?}){}",
                    if self.self_heal { "; marked in doubt, the next reconcile re-sends its desired state" } else { "; --no-self-heal: left as it is" }
                );
            }
            if self.self_heal {
                let since = crate::clock::unix_seconds();
                let commit = Commit {
                    doubt: drifted
                        .into_iter()
                        .map(|(user, _, live)| {
                            (
                                user,
                                InDoubt {
                                    maybe: live,
                                    note: DoubtNote {
                                        since,
                                        reason: DRIFT_REASON.to_owned(),
                                    },
                                },
                            )
                        })
                        .collect(),
                    applied_at: since,
                    ..Commit::default()
                };
                store.commit(commit).await?;
                step.marked = true;
            }
        }
        if self.cursor_saved.elapsed() >= SAVE_CURSOR_EVERY {
            self.cursor_saved = Instant::now();
            self.save(store).await;
        }
        self.next_at = started + self.spacing;
        Ok(step)
    }

    async fn finish_pass(&mut self, store: &dyn SnapshotStore, metrics: &Metrics, now: Instant) {
        tracing::debug!(users = self.scanned, "the drift scan finished a pass");
        metrics.drift_pass_done();
        self.cursor = Some(None);
        self.save(store).await;
        self.cursor_saved = now;
        let started = self.pass_started.take().unwrap_or(now);
        self.next_at = (started + self.pass_every).max(now + self.spacing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::UserAttrs;
    use crate::emulator::{Emulator, EmulatorConfig, InProcess};
    use crate::state::{Binding, Holder, OnOtherTarget, SledStore};

    /// 250 users in Rome, on the emulator (in-process), in the config and recorded in the
    /// snapshot.
    async fn managed() -> (InProcess, tempfile::TempDir, SledStore, Config) {
        let emulator = Emulator::new(EmulatorConfig {
            attributes: vec!["city".into()],
            ..EmulatorConfig::default()
        })
        .unwrap();
        let client = emulator.in_process("administrator", 100);
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = String::from("users:\n");
        let ids: Vec<UserId> = (0..250)
            .map(|i| UserId::new(&format!("u{i:03}")).unwrap())
            .collect();
        for id in &ids {
            yaml.push_str(&format!("  {id}: {{city: Rome}}\n"));
        }
        std::fs::create_dir(dir.path().join("users")).unwrap();
        std::fs::write(dir.path().join("users/all.yaml"), yaml).unwrap();
        std::fs::write(
            dir.path().join("attrsync.yaml"),
            format!(
                "sdkappid: 1400000000\nidentifier: administrator\nendpoint: {}\nattributes: [city]\n",
                "http://127.0.0.1:9"
            ),
        )
        .unwrap();
        let config = crate::config::load(dir.path(), None, &mut Default::default()).unwrap();
        let rome = Attrs::parse(&[("city", "Rome")]).unwrap();
        for chunk in ids.chunks(100) {
            let users: Vec<UserAttrs> = chunk
                .iter()
                .map(|id| UserAttrs {
                    account: id.to_string(),
                    attrs: [("city".to_owned(), "Rome".to_owned())].into(),
                })
                .collect();
            AttrApi::set_attr(&client, &users).await.unwrap();
        }
        let target = config.settings.target.clone();
        let store = SledStore::open(
            &dir.path().join("state"),
            Binding {
                sdkappid: 1_400_000_000,
                target: &target,
            },
            &Holder::default(),
            OnOtherTarget::Refuse,
        )
        .await
        .unwrap();
        store
            .commit(Commit {
                record: ids
                    .iter()
                    .map(|id| (id.clone(), Some(rome.clone())))
                    .collect(),
                applied_at: 1,
                ..Commit::default()
            })
            .await
            .unwrap();
        (client, dir, store, config)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_finds_drift_marks_it_in_doubt_and_resumes_after_a_restart() {
        let (client, _dir, store, config) = managed().await;
        let metrics = Metrics::new();
        let paris = UserAttrs {
            account: "u180".into(),
            attrs: [("city".to_owned(), "Paris".to_owned())].into(),
        };
        AttrApi::set_attr(&client, &[paris]).await.unwrap();
        let every = Duration::from_millis(1);
        let mut scan = DriftScan::new(100, 100, true, every).unwrap();
        let first = scan.step(&store, &client, &config, &metrics).await.unwrap();
        assert_eq!(first.drifted, 0, "u000..u099 are as recorded");
        scan.save(&store).await;
        assert_eq!(store.drift_cursor().await.unwrap().as_deref(), Some("u099"));
        // A restart: a new scan resumes after u099 and finds u180 on its first read.
        let mut scan = DriftScan::new(100, 100, true, every).unwrap();
        let second = scan.step(&store, &client, &config, &metrics).await.unwrap();
        assert_eq!((second.drifted, second.marked), (1, true));
        let doubt = store
            .doubt("u180")
            .await
            .unwrap()
            .expect("u180 is in doubt");
        assert_eq!(doubt.maybe.get("city").unwrap().as_str(), "Paris");
        assert_eq!(doubt.note.reason, DRIFT_REASON);
        // The rest of the pass, then it wraps around.
        scan.step(&store, &client, &config, &metrics).await.unwrap();
        scan.step(&store, &client, &config, &metrics).await.unwrap();
        assert_eq!(
            store.drift_cursor().await.unwrap(),
            None,
            "a finished pass starts over"
        );
        assert!(metrics.encode().contains("attrsync_drift_users_total 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn without_self_heal_drift_is_only_counted() {
        let (client, _dir, store, config) = managed().await;
        let metrics = Metrics::new();
        let paris = UserAttrs {
            account: "u005".into(),
            attrs: [("city".to_owned(), "Paris".to_owned())].into(),
        };
        AttrApi::set_attr(&client, &[paris]).await.unwrap();
        let mut scan = DriftScan::new(100, 100, false, Duration::from_millis(1)).unwrap();
        let step = scan.step(&store, &client, &config, &metrics).await.unwrap();
        assert_eq!((step.drifted, step.marked), (1, false));
        assert!(store.doubt("u005").await.unwrap().is_none());
    }

    #[test]
    fn the_budget_sets_the_pace() {
        let every = DEFAULT_PASS_EVERY;
        let scan = DriftScan::new(10, 100, true, every).unwrap();
        assert_eq!(scan.spacing, Duration::from_millis(100));
        let scan = DriftScan::new(100, 50, true, every).unwrap();
        assert_eq!(scan.spacing, Duration::from_millis(20));
        assert!(DriftScan::new(0, 100, true, every).is_none());
    }
}
