//! The retry policy and everything a single call goes through: backoff with full jitter, one
//! re-sign for an expired UserSig, the stop signal that interrupts a backoff, and the counters
//! of every attempt.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock;
use crate::api::{ApiError, AttrApi, Endpoint};

/// The server's code for an invalid attribute: the caller may split the batch.
pub(super) const INVALID_ATTRIBUTE: i64 = 90033;

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
        self.backoff_ceiling(attempt).mul_f64(fastrand::f64())
    }

    /// The longest wait before retry number `attempt`: `min(cap, base × 2^(attempt-1))`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.cap)
    }
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

    /// Waits until [`StopSignal::stop`] is called (at once if it was).
    pub async fn stopped(&self) {
        loop {
            let notified = self.0 .1.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
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

    /// Attempts per endpoint and outcome.
    pub fn by_endpoint(&self) -> BTreeMap<Endpoint, BTreeMap<CallOutcome, usize>> {
        let mut out: BTreeMap<Endpoint, BTreeMap<CallOutcome, usize>> = BTreeMap::new();
        for ((endpoint, outcome), calls) in lock(&self.outcomes).iter() {
            out.entry(*endpoint).or_default().insert(*outcome, *calls);
        }
        out
    }
}

/// How one attempt at a call ended, as counted in [`CallStats`]; serialised as its name.
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

impl serde::Serialize for CallOutcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
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
/// makes one attempt (the API's limiter paces it).
pub async fn with_retries<T, F, Fut>(
    api: &dyn AttrApi,
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
            api.renew_usersig();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let policy = RetryPolicy::default();
        for attempt in 1..=20 {
            let ceiling = policy.backoff_ceiling(attempt);
            assert!(ceiling <= policy.cap);
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
