//! SIGINT and SIGTERM during `apply`: the first stops dispatching (see [`crate::shutdown`]),
//! and the exit code says whether the apply was interrupted.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::apply::StopSignal;
use crate::shutdown::Signals;
pub use crate::shutdown::{EXIT_SIGINT, EXIT_SIGTERM};

/// Which signal arrived, as the conventional exit code (128 + signal number).
#[derive(Clone, Debug, Default)]
pub struct Received(Arc<AtomicU8>);

impl Received {
    /// `Some(130)` after SIGINT, `Some(143)` after SIGTERM, `None` if neither arrived.
    pub fn received(&self) -> Option<u8> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            code => Some(code),
        }
    }
}

/// The exit code of an apply: 130/143 when a signal interrupted it, else 0 when every user was
/// applied and 1 otherwise. A signal that arrived after the apply finished interrupted nothing.
pub fn exit_code(signal: Option<u8>, report: &crate::apply::Report) -> u8 {
    match signal {
        Some(code) if report.interrupted => code,
        _ if report.succeeded() => 0,
        _ => 1,
    }
}

/// Starts listening (must run inside a tokio runtime); `stop` fires on the first signal.
pub fn listen(stop: StopSignal) -> Received {
    let received = Received::default();
    let flag = Arc::clone(&received.0);
    let Ok(signals) = Signals::install() else {
        tracing::warn!(
            "cannot listen for SIGINT/SIGTERM; an interrupt will end the process at once"
        );
        return received;
    };
    tokio::spawn(async move {
        let code = signals
            .first("second signal: stopping now (batches in flight may be sent again next time)")
            .await;
        flag.store(code, Ordering::SeqCst);
        // What a signal means depends on the phase (a prompt is cancelled, an apply drains):
        // whoever waits on `stop` says so.
        stop.stop();
    });
    received
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Report;

    #[test]
    fn a_signal_after_the_apply_finished_does_not_change_its_exit_code() {
        let finished = Report::default();
        assert_eq!(exit_code(Some(EXIT_SIGINT), &finished), 0);
        let interrupted = Report {
            interrupted: true,
            skipped: 3,
            ..Report::default()
        };
        assert_eq!(exit_code(Some(EXIT_SIGINT), &interrupted), 130);
        assert_eq!(exit_code(Some(EXIT_SIGTERM), &interrupted), 143);
        assert_eq!(exit_code(None, &interrupted), 1);
    }
}
