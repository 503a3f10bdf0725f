//! The `attrsync` command line: parses arguments, calls one library function per command,
//! maps the result to an exit code.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "attrsync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local Tencent Cloud IM stand-in (for tests and demos).
    Emulator(attrsync::emulator::EmulatorArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = match cli.command {
        Command::Emulator(args) => runtime.block_on(attrsync::emulator::run_from_cli(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
