//! The executor: plan → batches → API calls through the shared rate limiter → snapshot
//! commits → a report. Owns the retry policy.
//!
//! Invariant: the snapshot never claims what the server does not hold. Before a batch is
//! sent, its users are marked *in doubt* with the values being sent (one commit). After the
//! calls, one more commit settles each user: recorded when every call it needed was answered
//! `OK` for it; cleared when an answer proves nothing was applied (the server refused the call
//! or listed the user in an `ErrorList`, or the request never left this machine); left in doubt
//! otherwise (no answer, a timeout, a 5xx, "internal error", retries exhausted). A kill at any
//! moment leaves the batches in flight in doubt, and the next plan re-sends them in full.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::{ApiError, Client, Endpoint, UserAttrNames, UserAttrs};
use crate::model::{
    Action, AttrName, Attrs, Change, DoubtNote, InDoubt, Plan, Snapshot, UserId, UserMap,
};
use crate::state::{self, Commit, Store};

/// How calls are retried: exponential backoff with full jitter, bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call for transient and rate-limited failures, the first included.
    pub max_attempts: u32,
    /// The first backoff's upper bound; each retry doubles it.
    pub base: Duration,
    /// No backoff waits longer than this.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, 250 ms doubling up to 30 s: about a minute of trying before a call is given
    /// up, enough to ride out a server's short hiccup without hanging a CI job.
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based): a random duration in
    /// `[0, min(cap, base × 2^(attempt-1))]`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.cap);
        ceiling.mul_f64(fastrand::f64())
    }
}
/// Batches in flight at once. The rate limiter, not this, bounds calls per second; it only has
/// to cover the latency: 100 calls/s × 50 ms needs 5 in flight, 16 leaves room for slow answers.
pub const IN_FLIGHT: usize = 16;
/// The server's code for an invalid attribute: the batch is split to find the offending users.
const INVALID_ATTRIBUTE: i64 = 90033;
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
    pub code: Option<i64>,
    /// Why.
    pub reason: String,
    /// Whether the server may hold the write anyway: the user stays in doubt, and the next
    /// apply re-sends its full desired state.
    pub in_doubt: bool,
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
    /// Users not applied, with the server's code and reason (those in doubt say so).
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

    /// Users the run left in doubt.
    pub fn in_doubt(&self) -> usize {
        self.failed.iter().filter(|f| f.in_doubt).count()
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
        client,
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
    let mut report = shared
        .report
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    report.calls_by_endpoint = shared.stats.by_endpoint();
    report.calls = shared.stats.calls.into_inner();
    report.retries = shared.stats.retries.into_inner();
    report.throttled = shared.stats.throttled.into_inner();
    let left: usize = queue
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|b| b.len())
        .sum();
    report.skipped += left;
    report.interrupted = stop.is_stopped();
    report.elapsed = started.elapsed();
    report.failed.sort_by(|a, b| a.user.cmp(&b.user));
    report
}

/// Locks a mutex whose data stays valid whatever a panicking holder was doing: every update
/// under these locks is a single push, pop or increment.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared<'a> {
    client: &'a Client,
    retry: RetryPolicy,
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
        *lock(&self.outcomes).entry((endpoint, outcome)).or_default() += 1;
    }

    /// Attempts per endpoint name and outcome name.
    pub fn by_endpoint(&self) -> BTreeMap<String, BTreeMap<String, usize>> {
        let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for ((endpoint, outcome), calls) in lock(&self.outcomes).iter() {
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
    /// Retrying cannot help and no other call can succeed: the run must stop.
    #[error("{0}")]
    Fatal(ApiError),
    /// Still failing after the policy's last attempt: this call fails, the run goes on.
    #[error("{0}; gave up after {1} attempts: check the network and that the endpoint or region is right, then run again")]
    Exhausted(ApiError, u32),
    /// The server refused this call for good (an undocumented code): the run goes on.
    #[error("{0}")]
    Refused(ApiError),
    /// The server found an invalid attribute (90033): the caller may split the batch.
    #[error("{0}")]
    InvalidAttribute(ApiError),
    /// Stopped while waiting to retry; nothing more was sent.
    #[error("interrupted")]
    Interrupted,
}

/// A call that did not succeed, and whether any of its attempts may have been applied.
#[derive(Debug, thiserror::Error)]
#[error("{gave_up}")]
pub struct CallFailure {
    /// Why the retries stopped.
    pub gave_up: GaveUp,
    /// Whether the server may have applied one of the attempts (a timeout, a 5xx, …): the
    /// users it carried stay in doubt.
    pub maybe_applied: bool,
}

/// Runs one call with `policy`: exponential backoff with full jitter for transient and
/// rate-limited failures, one re-sign for an expired UserSig, none for other errors. `send`
/// makes one attempt (the client's limiter paces it).
pub async fn with_retries<T, F, Fut>(
    client: &Client,
    policy: &RetryPolicy,
    stop: &StopSignal,
    stats: &CallStats,
    mut send: F,
) -> Result<T, CallFailure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut attempt = 0;
    let mut resigned = false;
    let mut maybe_applied = false;
    let fail = |gave_up, maybe_applied| CallFailure {
        gave_up,
        maybe_applied,
    };
    loop {
        attempt += 1;
        stats.calls.fetch_add(1, Ordering::Relaxed);
        let error = match send().await {
            Ok(outcome) => return Ok(outcome),
            Err(error) => error,
        };
        maybe_applied |= error.may_have_applied();
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
            return Err(fail(GaveUp::InvalidAttribute(error), maybe_applied));
        }
        if !error.is_retryable() {
            let gave_up = if error.stops_run() || error.needs_new_usersig() {
                GaveUp::Fatal(error)
            } else {
                GaveUp::Refused(error)
            };
            return Err(fail(gave_up, maybe_applied));
        }
        if attempt >= policy.max_attempts {
            tracing::warn!(attempts = attempt, %error, "giving up on a call");
            return Err(fail(GaveUp::Exhausted(error, attempt), maybe_applied));
        }
        let delay = policy.backoff(attempt);
        tracing::info!(
            attempt,
            delay_ms = delay.as_millis() as u64,
            %error,
            "retrying after backoff"
        );
        stats.retries.fetch_add(1, Ordering::Relaxed);
        if !stop.sleep(delay).await {
            return Err(fail(GaveUp::Interrupted, maybe_applied));
        }
    }
}

/// The users an OK answer refused, as report entries (`in_doubt` false: an `ErrorList` entry
/// says the call did nothing for that user).
fn refused_users(outcome: crate::api::BatchOutcome) -> Vec<FailedUser> {
    outcome
        .errors
        .into_iter()
        .map(|e| FailedUser {
            reason: match (e.info.is_empty(), e.code) {
                (false, _) => e.info,
                (true, Some(code)) => crate::api::describe(code).meaning.to_owned(),
                (true, None) => "refused without an error code".to_owned(),
            },
            user: e.account,
            code: e.code,
            in_doubt: false,
        })
        .collect()
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
            let outcome = with_retries(self.client, &self.retry, self.stop, &self.stats, || {
                counted(&self.stats, Endpoint::SetAttr, self.client.set_attr(&sets))
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
            let result = with_retries(self.client, &self.retry, self.stop, &self.stats, || {
                counted(
                    &self.stats,
                    Endpoint::RemoveAttr,
                    self.client.remove_attr(&removes),
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

    /// One snapshot commit, off the async worker threads (sled's flush blocks on fsync).
    async fn commit(&self, commit: Commit) -> Result<u64, state::StateError> {
        let store = Arc::clone(self.store);
        tokio::task::spawn_blocking(move || store.commit(&commit))
            .await
            .unwrap_or_else(|join| panic!("snapshot commit panicked: {join}"))
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

/// What `get_attr` found: the live attributes of the users it could read, and the users it
/// could not (with the server's code), who must be left as they were.
#[derive(Debug, Default)]
pub struct Live {
    /// User → live attributes (only the configured names).
    pub attrs: UserMap<Attrs>,
    /// Users the server answered with an error, or whose answer could not be read.
    pub errors: Vec<FailedUser>,
}

/// Reads the live attributes of `users` with `get_attr`, 100 per call, [`IN_FLIGHT`] calls at
/// once through the client's limiter. Only the configured `attributes` are kept (others on the
/// server are not attrsync's). A user the server answers with an error (70107 included), or
/// with a value attrsync cannot hold, is in [`Live::errors`], never read as having none.
pub async fn read_live(
    client: &Client,
    users: &[UserId],
    attributes: &[AttrName],
    retry: &RetryPolicy,
    stop: &StopSignal,
    stats: &CallStats,
) -> Result<Live, CallFailure> {
    use crate::model::AttrValue;
    let queue: Mutex<VecDeque<&[UserId]>> =
        Mutex::new(users.chunks(crate::model::MAX_BATCH_SIZE).collect());
    let found: Mutex<Vec<(UserId, Attrs)>> = Mutex::new(Vec::with_capacity(users.len()));
    let errors: Mutex<Vec<FailedUser>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<CallFailure>> = Mutex::new(None);
    let worker = || async {
        loop {
            if stop.is_stopped() || lock(&failure).is_some() {
                break;
            }
            let Some(chunk) = lock(&queue).pop_front() else {
                break;
            };
            let accounts: Vec<String> = chunk.iter().map(|u| u.as_str().to_owned()).collect();
            let outcome = match with_retries(client, retry, stop, stats, || {
                counted(stats, Endpoint::GetAttr, client.get_attr(&accounts))
            })
            .await
            {
                Ok(outcome) => outcome,
                Err(gave_up) => {
                    lock(&failure).get_or_insert(gave_up);
                    continue;
                }
            };
            let mut refused = refused_users(crate::api::BatchOutcome {
                errors: outcome.errors,
            });
            let mut read = Vec::with_capacity(chunk.len());
            for user in chunk {
                let Some(live) = outcome.attrs.get(user.as_str()) else {
                    continue;
                };
                let mut pairs = Vec::with_capacity(live.len());
                let mut bad = None;
                for (name, value) in live {
                    let Some(name) = attributes.iter().find(|a| a.as_str() == name) else {
                        continue;
                    };
                    match AttrValue::new(value) {
                        Ok(value) => pairs.push((name.clone(), value)),
                        Err(err) => bad = Some(format!("the server holds {name} = {value:?}, which attrsync cannot hold ({err})")),
                    }
                }
                match bad {
                    None => read.push((user.clone(), Attrs::from_pairs(pairs))),
                    Some(reason) => refused.push(FailedUser {
                        user: user.as_str().to_owned(),
                        code: None,
                        reason,
                        in_doubt: false,
                    }),
                }
            }
            lock(&found).extend(read);
            lock(&errors).extend(refused);
        }
    };
    futures_util::future::join_all((0..IN_FLIGHT).map(|_| worker())).await;
    if let Some(failure) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(failure);
    }
    if stop.is_stopped() {
        return Err(CallFailure {
            gave_up: GaveUp::Interrupted,
            maybe_applied: false,
        });
    }
    let found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    errors.sort_by(|a, b| a.user.cmp(&b.user));
    Ok(Live {
        attrs: UserMap::from_unsorted(found)
            .unwrap_or_else(|_| unreachable!("each user is asked about once")),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let policy = RetryPolicy::default();
        for attempt in 1..=20 {
            let ceiling = policy
                .base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(policy.cap);
            for _ in 0..50 {
                assert!(policy.backoff(attempt) <= ceiling);
            }
        }
        assert!(
            policy.base * (1 << (policy.max_attempts - 1)) >= policy.cap,
            "the cap is reachable within the attempts"
        );
    }
}
