//! `attrsync emulator`: the emulator as a foreground process.

use std::io::Write as _;

use super::{Emulator, EmulatorConfig, DEMO_SECRET_KEY};
use crate::api::SecretKey;

/// Runs the emulator on `listen` until Ctrl-C or SIGTERM, with the secret key from the
/// environment variable `secret_key_env` (the public demo key when it is unset). The bound
/// address is the first line on stdout.
pub async fn run_foreground(
    listen: &str,
    secret_key_env: &str,
    mut config: EmulatorConfig,
) -> anyhow::Result<()> {
    config.secret_key = match std::env::var(secret_key_env) {
        Ok(key) if !key.is_empty() => SecretKey::new(key),
        _ => {
            eprintln!(
                "note: {secret_key_env} is not set; the emulator uses its public demo key. Point attrsync at \
                 it with `export {secret_key_env}={DEMO_SECRET_KEY}` (never use this key for a real app)"
            );
            SecretKey::new(DEMO_SECRET_KEY)
        }
    };
    let sdkappid = config.sdkappid;
    let signals = crate::shutdown::Signals::install()?;
    let running = Emulator::start(config, listen).await?;
    let addr = running.addr();
    // The first stdout line is the contract for scripts; everything else goes to stderr.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{addr}")?;
    stdout.flush()?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: the emulator listens on {addr}, which is reachable from other machines"
        );
    }
    eprintln!(
        "attrsync emulator: serving v4/timpush on {} for sdkappid {}; state at {}{}; Ctrl-C stops it",
        running.base_url(),
        sdkappid,
        running.base_url(),
        super::STATE_PATH,
    );
    signals.first("second signal: stopping now").await;
    eprintln!("attrsync emulator: stopping");
    running.shutdown().await;
    Ok(())
}
