//! `attrsync emulator`: the emulator as a foreground process.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::{Emulator, EmulatorConfig, FailMode, SetAttrMode, DEFAULT_SDKAPPID, DEMO_SECRET_KEY};
use crate::api::{Endpoint, SecretKey};

fn parse_endpoint(name: &str) -> Result<Endpoint, String> {
    Endpoint::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Endpoint::ALL.iter().map(|e| e.name()).collect();
        format!("unknown endpoint {name:?}; use {}", names.join(", "))
    })
}

/// Command-line arguments of `attrsync emulator`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free port. The bound address is printed as the
    /// first line on stdout.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// SDKAppID of the emulated application.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SDKAPPID)]
    pub sdkappid: u64,
    /// Environment variable holding the secret key; when unset, the public demo key is used.
    #[arg(long, value_name = "VAR", default_value = crate::model::DEFAULT_SECRET_KEY_ENV)]
    pub secret_key_env: String,
    /// Attribute names to register at start (comma-separated).
    #[arg(long, value_name = "a,b", value_delimiter = ',')]
    pub attributes: Vec<String>,
    /// Accounts to treat as never imported: answered with 70107 (comma-separated).
    #[arg(long, value_name = "u1,u2", value_delimiter = ',')]
    pub unknown_users: Vec<String>,
    /// Calls admitted per endpoint in any one-second window; more are answered with 60007.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,
    /// Delay before every answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency: u64,
    /// Probability (0 to 1) that a call gets a fault.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// The fault to inject.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = FailMode::Mixed)]
    pub fail_mode: FailMode,
    /// Inject faults only into these endpoints (comma-separated, e.g. set_attr,remove_attr);
    /// by default into every endpoint.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', value_parser = parse_endpoint)]
    pub fail_endpoints: Vec<Endpoint>,
    /// What set_attr does with attributes it does not name: keep them (merge) or drop them
    /// (replace). The documentation does not say; attrsync is right under both.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = SetAttrMode::Merge)]
    pub set_attr: SetAttrMode,
    /// Seed of the fault-injection RNG (same seed, same faults for the same calls).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Keep the data in sled under this directory instead of in memory.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

/// Runs the emulator until Ctrl-C or SIGTERM.
pub async fn run_from_cli(args: EmulatorArgs) -> anyhow::Result<()> {
    let secret_key = match std::env::var(&args.secret_key_env) {
        Ok(key) if !key.is_empty() => SecretKey::new(key),
        _ => {
            eprintln!(
                "note: {var} is not set; the emulator uses its public demo key. Point attrsync at \
                 it with `export {var}={DEMO_SECRET_KEY}` (never use this key for a real app)",
                var = args.secret_key_env
            );
            SecretKey::new(DEMO_SECRET_KEY)
        }
    };
    let config = EmulatorConfig {
        sdkappid: args.sdkappid,
        secret_key,
        attributes: args.attributes,
        unknown_users: args.unknown_users,
        rate_limit: args.rate_limit,
        latency: Duration::from_millis(args.latency),
        fail_rate: args.fail_rate,
        fail_mode: args.fail_mode,
        fail_endpoints: args.fail_endpoints,
        set_attr: args.set_attr,
        seed: args.seed,
        data_dir: args.data,
        ..EmulatorConfig::default()
    };
    let running = Emulator::start(config, &args.listen).await?;
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
        args.sdkappid,
        running.base_url(),
        super::STATE_PATH,
    );
    wait_for_stop_signal().await?;
    eprintln!("attrsync emulator: stopping");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
