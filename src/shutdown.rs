//! SIGINT and SIGTERM, the same way for every long-running command: the first asks the work to
//! stop cleanly, a second ends the process at once (the snapshot is consistent at every moment,
//! so that is safe).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Exit code after SIGINT (128 + 2).
pub const EXIT_SIGINT: u8 = 130;
/// Exit code after SIGTERM (128 + 15).
pub const EXIT_SIGTERM: u8 = 143;

/// The stop signals, listened to from the moment [`Signals::install`] returns, so that a signal
/// arriving during start-up is not lost.
#[derive(Debug)]
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Installs the handlers (must run inside a tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the first signal and returns its exit code; from then on, a second signal
    /// prints `on_second` and exits the process with its own code.
    pub async fn first(mut self, on_second: &'static str) -> u8 {
        let code = self.next().await;
        tokio::spawn(async move {
            let code = self.next().await;
            eprintln!("{on_second}");
            std::process::exit(i32::from(code));
        });
        code
    }

    async fn next(&mut self) -> u8 {
        tokio::select! {
            _ = self.interrupt.recv() => EXIT_SIGINT,
            _ = self.terminate.recv() => EXIT_SIGTERM,
        }
    }
}

/// The name of the signal behind an exit code, for messages.
pub fn name(code: u8) -> &'static str {
    if code == EXIT_SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    }
}
