//! The executor: plan → batches → API calls through the shared rate limiter → one snapshot
//! commit per accepted batch → a report. Owns the retry policy.
//!
//! Invariant: the snapshot never claims what the server did not accept. A batch is committed
//! only after every call it needs (`set_attr`, then `remove_attr`) was answered `OK`, and only
//! for the users not refused in an `ErrorList`. A crash at any moment therefore loses at most
//! the batches in flight, and the next run re-plans and re-sends only what is missing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::{ApiError, Client, Endpoint, UserAttrNames, UserAttrs};
use crate::model::{Action, Attrs, Change, Plan, Snapshot};
use crate::state::{self, Store, Write};

/// Attempts per call for transient and rate-limited failures, the first included.
pub const MAX_ATTEMPTS: u32 = 8;
/// The first backoff's upper bound; each retry doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// No backoff waits longer than this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Batches in flight at once. The rate limiter, not this, bounds calls per second; it only has
/// to cover the latency: 100 calls/s × 50 ms needs 5 in flight, 16 leaves room for slow answers.
pub const IN_FLIGHT: usize = 16;
/// The server's code for an invalid attribute: the batch is split to find the offending users.
const INVALID_ATTRIBUTE: u32 = 90033;

/// How the executor runs.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    /// Users per call, 1..=100.
    pub batch_size: usize,
    /// Batches in flight.
    pub in_flight: usize,
}

/// Stops an apply between batches (SIGINT, SIGTERM, daemon shutdown).
#[derive(Clone, Debug, Default)]
pub struct StopSignal(Arc<(AtomicBool, tokio::sync::Notify)>);

impl StopSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the apply to stop: no new batch starts; batches in flight finish and commit.
    pub fn stop(&self) {
        self.0 .0.store(true, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }

    /// Whether [`StopSignal::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0 .0.load(Ordering::SeqCst)
    }

    /// Sleeps for `duration`; returns `false` early if the signal fires.
    async fn sleep(&self, duration: Duration) -> bool {
        let notified = self.0 .1.notified();
        if self.is_stopped() {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = notified => false,
        }
    }
}

/// A user the server did not accept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedUser {
    /// The user.
    pub user: String,
    /// The server's code (per-user `ErrorList` code, or the call's error code).
    pub code: Option<u32>,
    /// Why.
    pub reason: String,
}

/// What an apply did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Users created and recorded.
    pub created: usize,
    /// Users updated and recorded.
    pub updated: usize,
    /// Users deleted and forgotten.
    pub deleted: usize,
    /// Users the server refused, with its code and reason.
    pub failed: Vec<FailedUser>,
    /// Users not attempted because the run stopped (interrupt or fatal error).
    pub skipped: usize,
    /// HTTP calls made, retries included.
    pub calls: usize,
    /// Calls repeated after a transient failure, a rate-limit answer or an expired UserSig.
    pub retries: usize,
    /// Rate-limit answers from the server.
    pub throttled: usize,
    /// Wall time.
    #[serde(rename = "elapsed_ms", serialize_with = "millis")]
    pub elapsed: Duration,
    /// The run was stopped by a signal before it finished.
    pub interrupted: bool,
    /// The error that stopped the run, if any.
    pub error: Option<String>,
    /// Calls per endpoint and outcome (`{"set_attr": {"ok": 3, "throttled": 1}}`), for metrics.
    pub calls_by_endpoint: BTreeMap<String, BTreeMap<String, usize>>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Report {
    /// Whether every planned user was applied.
    pub fn succeeded(&self) -> bool {
        self.failed.is_empty() && self.error.is_none() && self.skipped == 0
    }

    /// Users applied (created, updated or deleted).
    pub fn applied(&self) -> usize {
        self.created + self.updated + self.deleted
    }
}

/// Progress after each committed batch.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Users finished (applied or failed).
    pub done: usize,
    /// Users the plan writes.
    pub total: usize,
}

/// One user's work: the change and what the snapshot records once it is accepted.
struct Item<'a> {
    change: &'a Change,
    /// `None` forgets the user (a delete).
    record: Option<Attrs>,
}

/// Applies `plan` (computed against `snapshot`) through `client`, committing to `store`.
pub async fn execute(
    plan: &Plan,
    snapshot: &Snapshot,
    client: &Client,
    store: &Arc<Store>,
    options: ApplyOptions,
    stop: &StopSignal,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> Report {
    let started = Instant::now();
    let items: Vec<Item<'_>> = plan
        .changes
        .iter()
        .filter(|c| c.action.writes())
        .map(|change| {
            let record = match change.action {
                Action::Delete | Action::Orphaned => None,
                Action::Create => Some(Attrs::default().with_changes(&change.attrs)),
                Action::Update => {
                    let before = snapshot
                        .users
                        .get(change.user.as_str())
                        .map(|e| e.attrs.clone())
                        .unwrap_or_default();
                    Some(before.with_changes(&change.attrs))
                }
            };
            Item { change, record }
        })
        .collect();
    let total = items.len();
    let batch_size = options.batch_size.clamp(1, crate::model::MAX_BATCH_SIZE);
    let queue: Mutex<VecDeque<&[Item<'_>]>> = Mutex::new(items.chunks(batch_size).collect());
    let shared = Shared {
        client,
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
            let Some(batch) = queue.lock().expect("queue lock").pop_front() else {
                break;
            };
            shared.run_batch(batch).await;
        }
    };
    // Workers are futures on this task, not spawned tasks: they borrow the plan, and the
    // limiter and the server's latency, not CPU, bound the throughput.
    let mut running: Vec<_> = (0..workers).map(|_| Some(Box::pin(worker()))).collect();
    join_all(&mut running).await;
    drop(running);
    let mut report = shared.report.into_inner().expect("report lock");
    report.calls_by_endpoint = shared.stats.by_endpoint();
    report.calls = shared.stats.calls.into_inner();
    report.retries = shared.stats.retries.into_inner();
    report.throttled = shared.stats.throttled.into_inner();
    let left: usize = queue
        .into_inner()
        .expect("queue lock")
        .iter()
        .map(|b| b.len())
        .sum();
    report.skipped += left;
    report.interrupted = stop.is_stopped();
    report.elapsed = started.elapsed();
    report.failed.sort_by(|a, b| a.user.cmp(&b.user));
    report
}

/// Polls every future to completion (a tiny `join_all`, to avoid a dependency for one call).
async fn join_all<F: std::future::Future<Output = ()> + Unpin>(futures: &mut [Option<F>]) {
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in futures.iter_mut() {
            if let Some(future) = slot {
                if std::pin::Pin::new(future).poll(cx).is_pending() {
                    pending = true;
                } else {
                    // A finished future must not be polled again.
                    *slot = None;
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
}

struct Shared<'a> {
    client: &'a Client,
    store: &'a Arc<Store>,
    stop: &'a StopSignal,
    report: Mutex<Report>,
    stats: CallStats,
    done: AtomicUsize,
    fatal: AtomicBool,
    total: usize,
    on_progress: &'a (dyn Fn(Progress) + Sync),
}

/// Counters of one run's calls, shared by everything that talks to the server.
#[derive(Debug, Default)]
pub struct CallStats {
    /// HTTP calls made, retries included.
    pub calls: AtomicUsize,
    /// Calls repeated after a transient failure, a rate-limit answer or an expired UserSig.
    pub retries: AtomicUsize,
    /// Rate-limit answers from the server.
    pub throttled: AtomicUsize,
    /// Attempts per endpoint and outcome, recorded by [`counted`].
    outcomes: Mutex<BTreeMap<(Endpoint, CallOutcome), usize>>,
}

impl CallStats {
    /// Counts one attempt's outcome.
    pub fn record(&self, endpoint: Endpoint, outcome: CallOutcome) {
        *self
            .outcomes
            .lock()
            .expect("stats lock")
            .entry((endpoint, outcome))
            .or_default() += 1;
    }

    /// Attempts per endpoint name and outcome name.
    pub fn by_endpoint(&self) -> BTreeMap<String, BTreeMap<String, usize>> {
        let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for ((endpoint, outcome), calls) in self.outcomes.lock().expect("stats lock").iter() {
            out.entry(endpoint.name().to_owned())
                .or_default()
                .insert(outcome.name().to_owned(), *calls);
        }
        out
    }
}

/// How one attempt at a call ended, as counted in [`CallStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CallOutcome {
    /// Answered `OK` (possibly with an `ErrorList`).
    Ok,
    /// Refused for the rate limit.
    Throttled,
    /// A transient failure (transport, timeout, 5xx, busy codes).
    Transient,
    /// The UserSig had expired.
    UserSigExpired,
    /// Anything retrying cannot fix.
    Fatal,
}

impl CallOutcome {
    /// Classifies an attempt's result.
    pub fn of<T>(result: &Result<T, ApiError>) -> Self {
        match result {
            Ok(_) => CallOutcome::Ok,
            Err(ApiError::RateLimited { .. }) => CallOutcome::Throttled,
            Err(ApiError::Transient { .. }) => CallOutcome::Transient,
            Err(ApiError::UserSigExpired { .. }) => CallOutcome::UserSigExpired,
            Err(_) => CallOutcome::Fatal,
        }
    }

    /// The label value (`ok`, `throttled`, `transient`, `usersig_expired`, `fatal`).
    pub fn name(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Throttled => "throttled",
            CallOutcome::Transient => "transient",
            CallOutcome::UserSigExpired => "usersig_expired",
            CallOutcome::Fatal => "fatal",
        }
    }
}

/// Makes one attempt and counts its outcome under `endpoint` (wrap the closure given to
/// [`with_retries`] in it, so that every retry is counted too).
pub async fn counted<T>(
    stats: &CallStats,
    endpoint: Endpoint,
    attempt: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let result = attempt.await;
    stats.record(endpoint, CallOutcome::of(&result));
    result
}

/// Why [`with_retries`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum GaveUp {
    /// Retrying cannot help: the run must stop.
    #[error("{0}")]
    Fatal(ApiError),
    /// Still failing after [`MAX_ATTEMPTS`]: this batch fails, the run goes on.
    #[error("{0}; gave up after {MAX_ATTEMPTS} attempts: check the network and that the endpoint or region is right, then run again")]
    Exhausted(ApiError),
    /// The server found an invalid attribute (90033): the caller may split the batch.
    #[error("{0}")]
    InvalidAttribute(ApiError),
    /// Stopped while waiting to retry; nothing more was sent.
    #[error("interrupted")]
    Interrupted,
}

/// Runs one call with the retry policy: exponential backoff with full jitter for transient and
/// rate-limited failures (at most [`MAX_ATTEMPTS`] attempts), one re-sign for an expired
/// UserSig, none for fatal errors. `send` makes one attempt (the client's limiter paces it).
pub async fn with_retries<T, F, Fut>(
    client: &Client,
    stop: &StopSignal,
    stats: &CallStats,
    mut send: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut attempt = 0;
    let mut resigned = false;
    loop {
        attempt += 1;
        stats.calls.fetch_add(1, Ordering::Relaxed);
        let error = match send().await {
            Ok(outcome) => return Ok(outcome),
            Err(error) => error,
        };
        if error.is_rate_limited() {
            stats.throttled.fetch_add(1, Ordering::Relaxed);
        }
        if error.needs_new_usersig() && !resigned {
            resigned = true;
            client.renew_usersig();
            stats.retries.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if error.code() == Some(INVALID_ATTRIBUTE) {
            return Err(GaveUp::InvalidAttribute(error));
        }
        if !error.is_retryable() {
            return Err(GaveUp::Fatal(error));
        }
        if attempt >= MAX_ATTEMPTS {
            tracing::warn!(attempts = attempt, %error, "giving up on a call");
            return Err(GaveUp::Exhausted(error));
        }
        let delay = backoff(attempt);
        tracing::info!(
            attempt,
            delay_ms = delay.as_millis() as u64,
            %error,
            "retrying after backoff"
        );
        stats.retries.fetch_add(1, Ordering::Relaxed);
        if !stop.sleep(delay).await {
            return Err(GaveUp::Interrupted);
        }
    }
}

/// One request entry per user of `part` not already `refused` that `entry` has something for.
fn requests<T>(
    part: &[Item<'_>],
    refused: &[FailedUser],
    entry: impl Fn(&Change) -> Option<T>,
) -> Vec<T> {
    part.iter()
        .filter(|item| !refused.iter().any(|f| f.user == item.change.user.as_str()))
        .filter_map(|item| entry(item.change))
        .collect()
}

/// The users an OK answer refused, as report entries.
fn refused_users(outcome: crate::api::BatchOutcome) -> Vec<FailedUser> {
    outcome
        .errors
        .into_iter()
        .map(|e| FailedUser {
            reason: if e.info.is_empty() {
                crate::api::describe(e.code).meaning.to_owned()
            } else {
                e.info
            },
            user: e.account,
            code: Some(e.code),
        })
        .collect()
}

impl Shared<'_> {
    async fn run_batch(&self, batch: &[Item<'_>]) {
        // Split on 90033 until the offending users are alone; the rest is applied normally.
        let mut pending: Vec<&[Item<'_>]> = vec![batch];
        while let Some(part) = pending.pop() {
            if self.stop.is_stopped() && part.len() < batch.len() {
                self.lock().skipped += part.len();
                continue;
            }
            match self.send(part).await {
                Ok(refused) => self.commit(part, refused).await,
                Err(GaveUp::InvalidAttribute(_)) if part.len() > 1 => {
                    tracing::debug!(
                        users = part.len(),
                        "a batch was answered 90033: splitting it to find the invalid users"
                    );
                    let (left, right) = part.split_at(part.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
                Err(GaveUp::InvalidAttribute(error) | GaveUp::Exhausted(error)) => {
                    self.fail_all(part, &error)
                }
                Err(GaveUp::Fatal(error)) => {
                    if !self.fatal.swap(true, Ordering::SeqCst) {
                        self.lock().error = Some(error.to_string());
                    }
                    self.fail_all(part, &error);
                }
                Err(GaveUp::Interrupted) => self.lock().skipped += part.len(),
            }
        }
    }

    /// Sends the calls a batch needs; returns the users refused along the way.
    async fn send(&self, part: &[Item<'_>]) -> Result<Vec<FailedUser>, GaveUp> {
        let mut refused: Vec<FailedUser> = Vec::new();
        let sets = requests(part, &refused, |change| {
            let attrs: std::collections::BTreeMap<String, String> = change
                .to_set()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_str().to_owned()))
                .collect();
            (!attrs.is_empty()).then(|| UserAttrs {
                account: change.user.as_str().to_owned(),
                attrs,
            })
        });
        if !sets.is_empty() {
            let outcome = with_retries(self.client, self.stop, &self.stats, || {
                counted(&self.stats, Endpoint::SetAttr, self.client.set_attr(&sets))
            })
            .await?;
            refused.extend(refused_users(outcome));
        }
        // A user refused by set_attr is not recorded, so its removals wait for the next run.
        let removes = requests(part, &refused, |change| {
            let names: Vec<String> = change.to_remove().map(|n| n.as_str().to_owned()).collect();
            (!names.is_empty()).then(|| UserAttrNames {
                account: change.user.as_str().to_owned(),
                names,
            })
        });
        if !removes.is_empty() {
            let outcome = with_retries(self.client, self.stop, &self.stats, || {
                counted(
                    &self.stats,
                    Endpoint::RemoveAttr,
                    self.client.remove_attr(&removes),
                )
            })
            .await?;
            refused.extend(refused_users(outcome));
        }
        Ok(refused)
    }

    async fn commit(&self, part: &[Item<'_>], refused: Vec<FailedUser>) {
        let writes: Vec<Write> = part
            .iter()
            .filter(|item| !refused.iter().any(|f| f.user == item.change.user.as_str()))
            .map(|item| (item.change.user.clone(), item.record.clone()))
            .collect();
        let store = Arc::clone(self.store);
        let accepted = writes.len();
        let committed = if writes.is_empty() {
            Ok(0)
        } else {
            // sled's flush blocks on fsync: keep it off the async worker threads.
            tokio::task::spawn_blocking(move || store.commit_batch(&writes, state::now_unix()))
                .await
                .unwrap_or_else(|join| panic!("snapshot commit panicked: {join}"))
        };
        match committed {
            Ok(_) => {
                let mut report = self.lock();
                for item in part {
                    if refused.iter().any(|f| f.user == item.change.user.as_str()) {
                        continue;
                    }
                    match item.change.action {
                        Action::Create => report.created += 1,
                        Action::Update => report.updated += 1,
                        Action::Delete | Action::Orphaned => report.deleted += 1,
                    }
                }
                report.failed.extend(refused);
            }
            Err(error) => {
                // The server has these users but the snapshot could not say so: stop, so the
                // snapshot falls behind the server (safe: the next run re-sends) and no further.
                tracing::error!(%error, users = accepted, "could not record an accepted batch");
                if !self.fatal.swap(true, Ordering::SeqCst) {
                    self.lock().error = Some(error.to_string());
                }
                let mut report = self.lock();
                report.skipped += accepted;
                report.failed.extend(refused);
            }
        }
        self.progress(part.len());
    }

    fn fail_all(&self, part: &[Item<'_>], error: &ApiError) {
        let mut report = self.lock();
        for item in part {
            report.failed.push(FailedUser {
                user: item.change.user.as_str().to_owned(),
                code: error.code(),
                reason: error.to_string(),
            });
        }
        drop(report);
        self.progress(part.len());
    }

    fn progress(&self, users: usize) {
        let done = self.done.fetch_add(users, Ordering::SeqCst) + users;
        (self.on_progress)(Progress {
            done,
            total: self.total,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().expect("report lock")
    }
}

/// Reads the live attributes of `users` with `get_attr`, 100 per call, [`IN_FLIGHT`] calls at
/// once through the client's limiter. Only the configured `attributes` are kept (others on the
/// server are not attrsync's); a user the server does not know (70107) has none.
pub async fn read_live(
    client: &Client,
    users: &[crate::model::UserId],
    attributes: &[crate::model::AttrName],
    stop: &StopSignal,
    stats: &CallStats,
) -> Result<crate::model::UserMap<Attrs>, GaveUp> {
    use crate::model::{AttrValue, UserMap};
    let queue: Mutex<VecDeque<&[crate::model::UserId]>> =
        Mutex::new(users.chunks(crate::model::MAX_BATCH_SIZE).collect());
    let found: Mutex<Vec<(crate::model::UserId, Attrs)>> =
        Mutex::new(Vec::with_capacity(users.len()));
    let failure: Mutex<Option<GaveUp>> = Mutex::new(None);
    let worker = || async {
        loop {
            if stop.is_stopped() || failure.lock().expect("failure lock").is_some() {
                break;
            }
            let Some(chunk) = queue.lock().expect("queue lock").pop_front() else {
                break;
            };
            let accounts: Vec<String> = chunk.iter().map(|u| u.as_str().to_owned()).collect();
            match with_retries(client, stop, stats, || {
                counted(stats, Endpoint::GetAttr, client.get_attr(&accounts))
            })
            .await
            {
                Ok(outcome) => {
                    let mut found = found.lock().expect("found lock");
                    for user in chunk {
                        let pairs = outcome
                            .attrs
                            .get(user.as_str())
                            .into_iter()
                            .flatten()
                            .filter_map(|(name, value)| {
                                let name = attributes.iter().find(|a| a.as_str() == name)?;
                                Some((name.clone(), AttrValue::new(value).ok()?))
                            })
                            .collect();
                        found.push((user.clone(), Attrs::from_pairs(pairs)));
                    }
                }
                Err(gave_up) => {
                    failure.lock().expect("failure lock").get_or_insert(gave_up);
                }
            }
        }
    };
    let mut running: Vec<_> = (0..IN_FLIGHT).map(|_| Some(Box::pin(worker()))).collect();
    join_all(&mut running).await;
    drop(running);
    if let Some(gave_up) = failure.into_inner().expect("failure lock") {
        return Err(gave_up);
    }
    if stop.is_stopped() {
        return Err(GaveUp::Interrupted);
    }
    let found = found.into_inner().expect("found lock");
    Ok(UserMap::from_unsorted(found).unwrap_or_else(|_| unreachable!("each user is read once")))
}

/// Exponential backoff with full jitter: a random wait in `[0, min(cap, base × 2^(attempt-1))]`.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        for attempt in 1..=20 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(backoff(attempt) <= ceiling);
            }
        }
        assert!(
            BACKOFF_BASE * (1 << (MAX_ATTEMPTS - 1)) >= BACKOFF_CAP,
            "the cap is reachable within the attempts"
        );
    }
}
