//! The local stand-in for the Tencent Cloud IM server (placeholder until the client issue lands).

/// Command-line arguments of `attrsync emulator`.
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {}

/// Runs the emulator until interrupted.
pub async fn run_from_cli(_args: EmulatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("the emulator is not built yet")
}
