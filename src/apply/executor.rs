//! The executor: plan → batches → calls → snapshot commits → a report.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::report::refused_users;
use super::{
    counted, lock, with_retries, CallFailure, CallStats, FailedUser, GaveUp, Progress, Report,
    RetryPolicy, StopSignal,
};
use crate::api::{ApiError, AttrApi, Endpoint, UserAttrNames, UserAttrs};
use crate::model::{Action, Attrs, Change, DoubtNote, InDoubt, Plan, Snapshot, UserId};
use crate::state::{self, Commit, SnapshotStore};

/// Batches in flight at once. The rate limiter, not this, bounds calls per second; it only has
/// to cover the latency: 100 calls/s × 50 ms needs 5 in flight, 16 leaves room for slow answers.
pub const IN_FLIGHT: usize = 16;

/// Why a user is in doubt after its write was sent (the text plans show).
pub const SENT_REASON: &str = "a write was sent and no answer confirmed or refused it";

/// How the executor runs.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    /// Users per call, 1..=100.
    pub batch_size: usize,
    /// Batches in flight.
    pub in_flight: usize,
    /// How failed calls are retried.
    pub retry: RetryPolicy,
}

/// One user's work: the change and what the snapshot records once it is accepted.
struct Item<'a> {
    change: &'a Change,
    /// What the server holds once the change is applied; `None` forgets the user (a delete).
    record: Option<Attrs>,
    /// What the server may hold from an earlier unconfirmed write, if the user was in doubt
    /// before this run: a refusal of this run's write says nothing about that one.
    earlier_doubt: Option<&'a Attrs>,
}

impl Item<'_> {
    fn user(&self) -> &UserId {
        &self.change.user
    }

    /// Whether the change needs any call at all.
    fn sends(&self) -> bool {
        self.change.sets() || self.change.to_remove().next().is_some()
    }

    /// What the server may hold once this write is sent: its values, and those of an earlier
    /// unconfirmed write (by name; this write's values win).
    fn maybe(&self) -> Attrs {
        let mut pairs: Vec<_> = self
            .earlier_doubt
            .into_iter()
            .flat_map(Attrs::iter)
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        pairs.extend(
            self.record
                .iter()
                .flat_map(Attrs::iter)
                .map(|(n, v)| (n.clone(), v.clone())),
        );
        Attrs::from_pairs(pairs)
    }

    /// Whether an answer proving this run's write was not applied makes the user known again:
    /// only if it was not in doubt before.
    fn cleared_by_refusal(&self) -> bool {
        self.earlier_doubt.is_none()
    }
}

/// Applies `plan` (computed against `snapshot`) through `api`, committing to `store`.
pub async fn execute(
    plan: &Plan,
    snapshot: &Snapshot,
    api: &dyn AttrApi,
    store: &dyn SnapshotStore,
    options: ApplyOptions,
    stop: &StopSignal,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> Report {
    let started = Instant::now();
    let empty = Attrs::default();
    let items: Vec<Item<'_>> = plan
        .changes
        .iter()
        .filter(|c| c.action.writes())
        .map(|change| {
            let recorded = snapshot
                .users
                .get(change.user.as_str())
                .map_or(&empty, |e| &e.attrs);
            Item {
                change,
                record: change.result(recorded),
                earlier_doubt: snapshot
                    .in_doubt
                    .get(change.user.as_str())
                    .map(|d| &d.maybe),
            }
        })
        .collect();
    let total = items.len();
    let batch_size = options.batch_size.clamp(1, crate::model::MAX_BATCH_SIZE);
    let queue: Mutex<VecDeque<&[Item<'_>]>> = Mutex::new(items.chunks(batch_size).collect());
    let shared = Shared {
        api,
        retry: options.retry,
        store,
        stop,
        report: Mutex::new(Report::default()),
        stats: CallStats::default(),
        done: AtomicUsize::new(0),
        fatal: AtomicBool::new(false),
        total,
        on_progress,
    };
    let workers = options.in_flight.max(1);
    let worker = || async {
        loop {
            if shared.stop.is_stopped() || shared.fatal.load(Ordering::SeqCst) {
                break;
            }
            let Some(batch) = lock(&queue).pop_front() else {
                break;
            };
            shared.run_batch(batch).await;
        }
    };
    // Workers are futures on this task, not spawned tasks: they borrow the plan, and the
    // limiter and the server's latency, not CPU, bound the throughput.
    futures_util::future::join_all((0..workers).map(|_| worker())).await;
    let mut report = crate::sync::into_inner(shared.report);
    report.calls_by_endpoint = shared.stats.by_endpoint();
    report.calls = shared.stats.calls.into_inner();
    report.retries = shared.stats.retries.into_inner();
    report.throttled = shared.stats.throttled.into_inner();
    let left: usize = crate::sync::into_inner(queue).iter().map(|b| b.len()).sum();
    report.skipped += left;
    report.interrupted = stop.is_stopped();
    report.elapsed = started.elapsed();
    report.failed.sort_by(|a, b| a.user.cmp(&b.user));
    report
}

struct Shared<'a> {
    api: &'a dyn AttrApi,
    retry: RetryPolicy,
    store: &'a dyn SnapshotStore,
    stop: &'a StopSignal,
    report: Mutex<Report>,
    stats: CallStats,
    done: AtomicUsize,
    fatal: AtomicBool,
    total: usize,
    on_progress: &'a (dyn Fn(Progress) + Sync),
}

/// How one user of a sent part ended.
enum Settled {
    /// Every call it needed was accepted: record its new attributes.
    Applied,
    /// Not applied; `in_doubt` says whether the server may hold the write anyway.
    Failed(FailedUser),
    /// Never sent (the run stopped first); in doubt only if an earlier attempt may have
    /// reached the server.
    NotSent { in_doubt: bool },
}

/// What sending one part found out.
struct Sent<'p, 'a> {
    settled: Vec<(&'p Item<'a>, Settled)>,
    /// A failure that ends the run, if any.
    fatal: Option<ApiError>,
}

impl Shared<'_> {
    async fn run_batch(&self, batch: &[Item<'_>]) {
        // Mark the users that are sent something as in doubt before anything leaves: if the
        // answer never comes (or this process dies), the next plan knows to re-send them.
        let since = crate::clock::unix_seconds();
        let marks: Vec<(UserId, InDoubt)> = batch
            .iter()
            .filter(|item| item.sends())
            .map(|item| {
                (
                    item.user().clone(),
                    InDoubt {
                        maybe: item.maybe(),
                        note: DoubtNote {
                            since,
                            reason: SENT_REASON.to_owned(),
                        },
                    },
                )
            })
            .collect();
        if !marks.is_empty() {
            let mark = Commit {
                doubt: marks,
                applied_at: since,
                ..Commit::default()
            };
            if let Err(error) = self.commit(mark).await {
                // Nothing was sent: the batch is simply not attempted.
                tracing::error!(%error, "could not mark a batch in doubt before sending it");
                self.stop_run(error.to_string());
                lock(&self.report).skipped += batch.len();
                self.progress(batch.len());
                return;
            }
        }
        // A writer that may have lost its hold on a shared snapshot must not call the API:
        // another one may be writing now. Its marked users stay in doubt, which is only
        // cautious.
        if let Err(error) = self.store.check().await {
            tracing::error!(%error, "not sending a batch: the snapshot can no longer be written");
            self.stop_run(error.to_string());
            lock(&self.report).skipped += batch.len();
            self.progress(batch.len());
            return;
        }
        let mut settled: Vec<(&Item<'_>, Settled)> = Vec::with_capacity(batch.len());
        // Split on 90033 until the offending users are alone; the rest is applied normally. A
        // part is "tainted" when an earlier attempt at it may have been applied: none of its
        // users can then be cleared of doubt by a later refusal.
        let mut pending: Vec<(&[Item<'_>], bool)> = vec![(batch, false)];
        while let Some((part, tainted)) = pending.pop() {
            if self.stop.is_stopped() && part.len() < batch.len() {
                settled.extend(
                    part.iter()
                        .map(|item| (item, Settled::NotSent { in_doubt: tainted })),
                );
                continue;
            }
            match self.send(part).await {
                Ok(sent) => {
                    if let Some(error) = sent.fatal {
                        self.stop_run(error.to_string());
                    }
                    settled.extend(
                        sent.settled
                            .into_iter()
                            .map(|(item, outcome)| (item, taint(outcome, tainted))),
                    );
                }
                Err(CallFailure {
                    gave_up: GaveUp::InvalidAttribute(_),
                    maybe_applied,
                }) if part.len() > 1 => {
                    tracing::debug!(
                        users = part.len(),
                        "a batch was answered 90033: splitting it to find the invalid users"
                    );
                    let (left, right) = part.split_at(part.len() / 2);
                    pending.push((right, tainted || maybe_applied));
                    pending.push((left, tainted || maybe_applied));
                }
                Err(failure) => {
                    let in_doubt = tainted || failure.maybe_applied;
                    let reason = failure.gave_up.to_string();
                    let error = match failure.gave_up {
                        GaveUp::Interrupted => {
                            settled.extend(
                                part.iter()
                                    .map(|item| (item, Settled::NotSent { in_doubt })),
                            );
                            continue;
                        }
                        GaveUp::Fatal(error) => {
                            self.stop_run(error.to_string());
                            error
                        }
                        GaveUp::InvalidAttribute(error)
                        | GaveUp::Exhausted(error, _)
                        | GaveUp::Refused(error) => error,
                    };
                    settled.extend(part.iter().map(|item| {
                        (
                            item,
                            Settled::Failed(FailedUser {
                                user: item.user().as_str().to_owned(),
                                code: error.code(),
                                reason: reason.clone(),
                                in_doubt,
                            }),
                        )
                    }));
                }
            }
        }
        self.settle(batch.len(), settled).await;
    }

    /// Sends the calls a part needs: `set_attr` with each user's full desired attributes, then
    /// `remove_attr` for the attributes to remove. `Err` when the first call failed as a
    /// whole (nothing of the part is known to be applied).
    async fn send<'p, 'a>(&self, part: &'p [Item<'a>]) -> Result<Sent<'p, 'a>, CallFailure> {
        let mut settled: Vec<(&'p Item<'a>, Settled)> = Vec::with_capacity(part.len());
        let sets: Vec<UserAttrs> = part
            .iter()
            .filter(|item| item.change.sets())
            .map(|item| UserAttrs {
                account: item.user().as_str().to_owned(),
                attrs: item
                    .record
                    .iter()
                    .flat_map(Attrs::iter)
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_str().to_owned()))
                    .collect(),
            })
            .collect();
        let mut refused: Vec<FailedUser> = Vec::new();
        if !sets.is_empty() {
            let outcome = with_retries(self.api, &self.retry, self.stop, &self.stats, || {
                counted(&self.stats, Endpoint::SetAttr, self.api.set_attr(&sets))
            })
            .await?;
            refused = refused_users(outcome);
        }
        let refused_of =
            |item: &Item<'_>| refused.iter().position(|f| f.user == item.user().as_str());
        let mut removes: Vec<UserAttrNames> = Vec::new();
        let mut pending: Vec<&'p Item<'a>> = Vec::new();
        for item in part {
            if let Some(i) = refused_of(item) {
                // set_attr refused it: nothing was applied for this user.
                settled.push((item, Settled::Failed(refused[i].clone())));
                continue;
            }
            let names: Vec<String> = item
                .change
                .to_remove()
                .map(|n| n.as_str().to_owned())
                .collect();
            if names.is_empty() {
                settled.push((item, Settled::Applied));
            } else {
                removes.push(UserAttrNames {
                    account: item.user().as_str().to_owned(),
                    names,
                });
                pending.push(item);
            }
        }
        let mut fatal = None;
        if !removes.is_empty() {
            let result = with_retries(self.api, &self.retry, self.stop, &self.stats, || {
                counted(
                    &self.stats,
                    Endpoint::RemoveAttr,
                    self.api.remove_attr(&removes),
                )
            })
            .await;
            match result {
                Ok(outcome) => {
                    let refused = refused_users(outcome);
                    for item in pending {
                        match refused.iter().find(|f| f.user == item.user().as_str()) {
                            // Its set_attr was applied, its removal refused: whether the server
                            // kept the old attributes depends on how set_attr treats them.
                            Some(f) => settled.push((
                                item,
                                Settled::Failed(FailedUser {
                                    in_doubt: item.change.sets(),
                                    ..f.clone()
                                }),
                            )),
                            None => settled.push((item, Settled::Applied)),
                        }
                    }
                }
                Err(failure) => {
                    let reason = failure.gave_up.to_string();
                    let error = match failure.gave_up {
                        GaveUp::Interrupted => None,
                        GaveUp::Fatal(error) => {
                            fatal = Some(error.clone());
                            Some(error)
                        }
                        GaveUp::Exhausted(error, _)
                        | GaveUp::Refused(error)
                        | GaveUp::InvalidAttribute(error) => Some(error),
                    };
                    for item in pending {
                        let in_doubt = item.change.sets() || failure.maybe_applied;
                        let outcome = match &error {
                            None => Settled::NotSent { in_doubt },
                            Some(error) => Settled::Failed(FailedUser {
                                user: item.user().as_str().to_owned(),
                                code: error.code(),
                                reason: reason.clone(),
                                in_doubt,
                            }),
                        };
                        settled.push((item, outcome));
                    }
                }
            }
        }
        Ok(Sent { settled, fatal })
    }

    /// Records what the batch settled, in one commit, and counts it in the report.
    async fn settle(&self, batch_len: usize, settled: Vec<(&Item<'_>, Settled)>) {
        let mut commit = Commit {
            applied_at: crate::clock::unix_seconds(),
            ..Commit::default()
        };
        // A refusal of this run's write leaves a user that was in doubt before still in doubt.
        let settled: Vec<(&Item<'_>, Settled)> = settled
            .into_iter()
            .map(|(item, outcome)| (item, taint(outcome, !item.cleared_by_refusal())))
            .collect();
        for (item, outcome) in &settled {
            match outcome {
                Settled::Applied => commit
                    .record
                    .push((item.user().clone(), item.record.clone())),
                Settled::Failed(FailedUser {
                    in_doubt: false, ..
                })
                | Settled::NotSent { in_doubt: false } => {
                    if item.sends() {
                        commit.clear.push(item.user().clone());
                    }
                }
                Settled::Failed(_) | Settled::NotSent { in_doubt: true } => {}
            }
        }
        let committed = if commit.is_empty() {
            Ok(0)
        } else {
            self.commit(commit).await
        };
        let mut report = lock(&self.report);
        match committed {
            Ok(_) => {
                for (item, outcome) in settled {
                    match outcome {
                        Settled::Applied => match item.change.action {
                            Action::Create => report.created += 1,
                            Action::Update | Action::Resend => report.updated += 1,
                            Action::Delete | Action::Orphaned => report.deleted += 1,
                        },
                        Settled::Failed(failed) => report.failed.push(failed),
                        Settled::NotSent { in_doubt: false } => report.skipped += 1,
                        // Stopped while retrying a write that may have been applied.
                        Settled::NotSent { in_doubt: true } => report.failed.push(FailedUser {
                            user: item.user().as_str().to_owned(),
                            code: None,
                            reason: "stopped before an answer confirmed or refused its write"
                                .to_owned(),
                            in_doubt: true,
                        }),
                    }
                }
            }
            Err(error) => {
                // The users stay marked in doubt: the next plan re-sends them. Stop, so the
                // snapshot falls no further behind.
                tracing::error!(%error, users = batch_len, "could not record a batch's outcome");
                if !self.fatal.swap(true, Ordering::SeqCst) {
                    report.error = Some(error.to_string());
                }
                for (item, outcome) in settled {
                    match outcome {
                        Settled::Failed(failed) => report.failed.push(FailedUser {
                            in_doubt: failed.in_doubt || item.sends(),
                            ..failed
                        }),
                        _ => report.failed.push(FailedUser {
                            user: item.user().as_str().to_owned(),
                            code: None,
                            reason: format!("the outcome could not be recorded: {error}"),
                            in_doubt: item.sends(),
                        }),
                    }
                }
            }
        }
        drop(report);
        self.progress(batch_len);
    }

    /// One snapshot commit.
    async fn commit(&self, commit: Commit) -> Result<u64, state::StateError> {
        self.store.commit(commit).await
    }

    /// Stops dispatching; the first error stopping the run is the one reported.
    fn stop_run(&self, error: String) {
        if !self.fatal.swap(true, Ordering::SeqCst) {
            lock(&self.report).error = Some(error);
        }
    }

    fn progress(&self, users: usize) {
        let done = self.done.fetch_add(users, Ordering::SeqCst) + users;
        (self.on_progress)(Progress {
            done,
            total: self.total,
        });
    }
}

/// A settled outcome in a part an earlier attempt may have applied: a refusal now proves
/// nothing about that earlier attempt.
fn taint(outcome: Settled, tainted: bool) -> Settled {
    match outcome {
        Settled::Failed(failed) if tainted => Settled::Failed(FailedUser {
            in_doubt: true,
            ..failed
        }),
        Settled::NotSent { in_doubt } => Settled::NotSent {
            in_doubt: in_doubt || tainted,
        },
        other => other,
    }
}
