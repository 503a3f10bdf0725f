//! What the emulator saw: per-endpoint call counts, a bounded call log, and the rate windows.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

use crate::api::Endpoint;

/// How many calls the log keeps (the oldest are dropped first).
pub const LOG_CAPACITY: usize = 10_000;

/// The sliding window the emulator's rate limit counts calls in.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Per-endpoint counters. `total = ok + throttled + failed + injected`; `partial` counts the
/// `ok` calls whose answer carried an `ErrorList`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCounts {
    /// Every call that reached the endpoint.
    pub total: u64,
    /// Calls answered with `ErrorCode` 0 (including partial successes).
    pub ok: u64,
    /// Successful calls with a non-empty `ErrorList`.
    pub partial: u64,
    /// Calls refused with 60007 by the rate limit.
    pub throttled: u64,
    /// Calls answered with any other error code.
    pub failed: u64,
    /// Calls hit by fault injection (91000, HTTP 502 or a dropped connection).
    pub injected: u64,
}

/// One call in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The endpoint's command name (`set_attr`).
    pub endpoint: String,
    /// Accounts in the request body (0 for the attribute-name APIs or an unreadable body).
    pub accounts: usize,
    /// The `ErrorCode` the emulator decided on; `null` for an injected HTTP 502.
    pub code: Option<i64>,
    /// Entries in the answer's `ErrorList`.
    pub user_errors: usize,
    /// The injected fault, if any: `"91000"`, `"502"` or `"drop"` (a dropped call was applied
    /// before its connection was closed).
    pub fault: Option<String>,
    /// Milliseconds since the emulator started, at the call's arrival.
    pub at_ms: u64,
}

/// The document served at `GET /_emulator/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReport {
    /// The app's SDKAppID.
    pub sdkappid: u64,
    /// Account → attributes, for every user that has at least one.
    pub users: BTreeMap<String, BTreeMap<String, String>>,
    /// Slot (`"0"`..`"9"`) → registered attribute name.
    pub attr_names: BTreeMap<String, String>,
    /// Endpoint name → counters; every endpoint is present.
    pub calls: BTreeMap<String, CallCounts>,
    /// The last [`LOG_CAPACITY`] calls, oldest first.
    pub log: Vec<CallRecord>,
}

/// How a call ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `ErrorCode` 0, with this many `ErrorList` entries.
    Ok { user_errors: usize },
    /// 60007 from the rate limit.
    Throttled,
    /// Any other error code.
    Failed,
    /// A fault was injected.
    Injected,
}

/// Counters, log and rate windows, behind the emulator's lock.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    calls: BTreeMap<Endpoint, CallCounts>,
    log: VecDeque<CallRecord>,
    admitted: BTreeMap<Endpoint, VecDeque<Instant>>,
}

impl Stats {
    /// Empty statistics; `at_ms` counts from now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            calls: Endpoint::ALL
                .into_iter()
                .map(|endpoint| (endpoint, CallCounts::default()))
                .collect(),
            log: VecDeque::new(),
            admitted: BTreeMap::new(),
        }
    }

    /// Whether a call to `endpoint` arriving at `arrived` fits into the rate limit: fewer than
    /// `limit` calls were admitted in the second before it. Admits (counts) it if so; refused
    /// calls do not count, so a client that backs off recovers after at most one second.
    pub fn admit(&mut self, endpoint: Endpoint, arrived: Instant, limit: u32) -> bool {
        let window = self.admitted.entry(endpoint).or_default();
        while window
            .front()
            .is_some_and(|&admitted| admitted + RATE_WINDOW <= arrived)
        {
            window.pop_front();
        }
        if window.len() >= limit as usize {
            return false;
        }
        window.push_back(arrived);
        true
    }

    /// Counts and logs one finished call.
    pub fn record(&mut self, endpoint: Endpoint, arrived: Instant, record: Record) {
        let counts = self.calls.entry(endpoint).or_default();
        counts.total += 1;
        let user_errors = match record.outcome {
            Outcome::Ok { user_errors } => {
                counts.ok += 1;
                if user_errors > 0 {
                    counts.partial += 1;
                }
                user_errors
            }
            Outcome::Throttled => {
                counts.throttled += 1;
                0
            }
            Outcome::Failed => {
                counts.failed += 1;
                0
            }
            Outcome::Injected => {
                counts.injected += 1;
                0
            }
        };
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(CallRecord {
            endpoint: endpoint.name().to_owned(),
            accounts: record.accounts,
            code: record.code,
            user_errors,
            fault: record.fault.map(str::to_owned),
            at_ms: arrived.saturating_duration_since(self.started).as_millis() as u64,
        });
    }

    /// The counters by endpoint name, and the log.
    pub fn report(&self) -> (BTreeMap<String, CallCounts>, Vec<CallRecord>) {
        (
            self.calls
                .iter()
                .map(|(endpoint, counts)| (endpoint.name().to_owned(), *counts))
                .collect(),
            self.log.iter().cloned().collect(),
        )
    }
}

/// What [`Stats::record`] needs to know about a call.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// How it ended.
    pub outcome: Outcome,
    /// Accounts in its body.
    pub accounts: usize,
    /// The `ErrorCode` decided on, if a JSON answer was produced.
    pub code: Option<i64>,
    /// The injected fault's name.
    pub fault: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_window_admits_limit_calls_per_sliding_second() {
        let mut stats = Stats::new();
        let start = Instant::now();
        assert!(stats.admit(Endpoint::SetAttr, start, 2));
        assert!(stats.admit(Endpoint::SetAttr, start + Duration::from_millis(500), 2));
        assert!(!stats.admit(Endpoint::SetAttr, start + Duration::from_millis(999), 2));
        // Other endpoints have their own window.
        assert!(stats.admit(Endpoint::GetAttr, start + Duration::from_millis(999), 2));
        // The first call leaves the window exactly one second after it arrived.
        assert!(stats.admit(Endpoint::SetAttr, start + Duration::from_millis(1000), 2));
        assert!(!stats.admit(Endpoint::SetAttr, start + Duration::from_millis(1499), 2));
    }

    #[test]
    fn the_log_keeps_only_the_newest_calls() {
        let mut stats = Stats::new();
        let now = Instant::now();
        for accounts in 0..LOG_CAPACITY + 5 {
            let record = Record {
                outcome: Outcome::Ok { user_errors: 0 },
                accounts,
                code: Some(0),
                fault: None,
            };
            stats.record(Endpoint::SetAttr, now, record);
        }
        let (calls, log) = stats.report();
        assert_eq!(log.len(), LOG_CAPACITY);
        assert_eq!(log[0].accounts, 5);
        assert_eq!(calls["set_attr"].total, (LOG_CAPACITY + 5) as u64);
        assert_eq!(calls["get_attr"], CallCounts::default());
    }
}
