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
//!
//! - `executor`: [`execute`], batch by batch.
//! - `retry`: [`RetryPolicy`], [`with_retries`], [`StopSignal`], [`CallStats`].
//! - `report`: [`Report`], [`FailedUser`], [`Progress`].
//! - `live`: [`read_live`].

mod executor;
mod live;
mod report;
mod retry;

pub use executor::{execute, ApplyOptions, IN_FLIGHT, SENT_REASON};
pub use live::{read_live, Live};
pub use report::{FailedUser, Progress, Report};
pub use retry::{
    counted, with_retries, CallFailure, CallOutcome, CallStats, GaveUp, RetryPolicy, StopSignal,
};

use crate::sync::lock;
