//! SIGINT and SIGTERM during long work: the first asks the work to stop cleanly, the second
//! ends the process at once (the snapshot is consistent at every moment, so that is safe).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::apply::StopSignal;

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

/// Exit code after SIGINT.
pub const EXIT_SIGINT: u8 = 130;
/// Exit code after SIGTERM.
pub const EXIT_SIGTERM: u8 = 143;

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
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!(
            "cannot listen for SIGINT/SIGTERM; an interrupt will end the process at once"
        );
        return received;
    };
    tokio::spawn(async move {
        loop {
            let code = tokio::select! {
                _ = interrupt.recv() => EXIT_SIGINT,
                _ = terminate.recv() => EXIT_SIGTERM,
            };
            if flag.swap(code, Ordering::SeqCst) != 0 {
                eprintln!(
                    "second signal: stopping now (batches in flight may be sent again next time)"
                );
                std::process::exit(i32::from(code));
            }
            eprintln!("stopping: no new batches; waiting for the ones in flight to finish and be recorded (signal again to stop at once)");
            stop.stop();
        }
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
