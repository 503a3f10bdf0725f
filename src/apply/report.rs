//! What an apply did: the report, the users it could not apply, and progress.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::CallOutcome;
use crate::api::Endpoint;

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
    pub calls_by_endpoint: BTreeMap<Endpoint, BTreeMap<CallOutcome, usize>>,
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

/// The users an OK answer refused, as report entries (`in_doubt` false: an `ErrorList` entry
/// says the call did nothing for that user).
pub(super) fn refused_users(outcome: crate::api::BatchOutcome) -> Vec<FailedUser> {
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
