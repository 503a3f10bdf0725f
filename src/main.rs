//! The `attrsync` command line: parses arguments, calls one library function per command,
//! maps the result to an exit code. No logic lives here.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use attrsync::apply::StopSignal;
use attrsync::config::Diagnostics;
use attrsync::ops::remote::{self, ApplyRequest};
use attrsync::ops::{self, interrupts, Context, PlanFormat, PlanRequest, ValidateFormat};

/// Keep Tencent Cloud IM push user attributes equal to what a config repository declares.
///
/// A config repository holds attrsync.yaml (settings) and YAML files under users/ that declare
/// each user's attributes. `plan` shows what would change against the snapshot of what was last
/// applied; `apply` sends only the changed users, in batches, within the API's rate limit.
#[derive(Debug, Parser)]
#[command(
    name = "attrsync",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// The config repository (the directory holding attrsync.yaml).
    #[arg(
        long,
        global = true,
        default_value = ".",
        value_name = "DIR",
        help_heading = "Global options"
    )]
    dir: PathBuf,

    /// Where the snapshot lives; overrides state_dir in attrsync.yaml.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        help_heading = "Global options"
    )]
    state: Option<PathBuf>,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides both flags.
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet", help_heading = "Global options")]
    verbose: u8,

    /// Only errors in the log.
    #[arg(short, long, global = true, help_heading = "Global options")]
    quiet: bool,

    /// How log lines on stderr look.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, help_heading = "Global options")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the config repository: every problem, with file:line:column. Exit 0 valid, 1 invalid.
    Validate {
        /// Output format: text, json (for tools), github (workflow annotations).
        #[arg(long, value_enum, default_value_t = ValidateFormat::Text)]
        format: ValidateFormat,
    },
    /// Show what apply would change: the config against the snapshot of what was last applied.
    Plan {
        /// Output format: text (people), json (machines), markdown (pull-request comments).
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Also save the plan as JSON to FILE, for `attrsync apply FILE`.
        #[arg(long, value_name = "FILE", conflicts_with = "refresh")]
        out: Option<PathBuf>,
        /// Exit 2 when the plan has changes, 0 when it has none (1 stays an error).
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan deletions for users removed from the config (as `prune: true` does).
        #[arg(long)]
        prune: bool,
        /// Allow a config that declares no users while the snapshot holds some.
        #[arg(long)]
        allow_empty: bool,
        /// Read the live attributes from the server (get_attr), show users changed outside
        /// attrsync, and plan against the live values. Users in doubt that are read are
        /// recorded with their live values. Cannot be saved with --out: a plan against live
        /// values cannot be verified against the snapshot when it is applied.
        #[arg(long)]
        refresh: bool,
    },
    /// Send the changes: plans (or reads PLANFILE), asks for confirmation, applies in batches.
    ///
    /// Only changed users are sent, in batches of up to batch_size, within rate_limit calls per
    /// second. Each batch is recorded in the snapshot once the server accepted it, so an
    /// interrupted apply resumes where it stopped. Exit 0 success, 1 if any user failed,
    /// 130/143 when interrupted by SIGINT/SIGTERM.
    Apply {
        /// A plan saved by `attrsync plan --out FILE`: apply exactly it (no prompt); refused if stale.
        planfile: Option<PathBuf>,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long)]
        auto_approve: bool,
        /// Delete the attributes of users removed from the config (as `prune: true` does).
        #[arg(long)]
        prune: bool,
        /// Allow deleting more users than max_deletes.
        #[arg(long)]
        allow_mass_delete: bool,
        /// Allow a config that declares no users while the snapshot holds some.
        #[arg(long)]
        allow_empty: bool,
        /// Report format: text, or json for machines.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Seed the snapshot from the server: read USERS' live attributes (default: every declared user).
    Import {
        /// User ids to import; none means every user the config declares.
        users: Vec<String>,
    },
    /// Manage the app's attribute names.
    #[command(subcommand)]
    Attributes(AttributesCommand),
    /// Inspect or move the snapshot (what attrsync last saw the server accept).
    #[command(subcommand)]
    State(StateCommand),
    /// Keep the app equal to the config: reconcile on file changes, every --interval, on SIGHUP
    /// and on POST /reconcile.
    ///
    /// Each reconcile reloads the config, plans against the snapshot and applies the plan. An
    /// invalid config is logged (file:line:column) and nothing is applied until it is fixed;
    /// failures are retried with backoff (1 s doubling to 5 min). Between reconciles a drift
    /// scan reads the live attributes of the managed users within --drift-budget and repairs
    /// those changed outside attrsync. SIGTERM/SIGINT finish the batches in flight, record
    /// them and exit 0.
    Watch {
        /// The periodic full resync, which also catches missed file events.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = attrsync::watch::parse_duration)]
        interval: std::time::Duration,
        /// Quiet time after a file change before reconciling (one reconcile per burst).
        #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = attrsync::watch::parse_duration)]
        debounce: std::time::Duration,
        /// Serve /healthz, /readyz, /metrics, GET /plan and POST /reconcile on ADDR
        /// (e.g. 127.0.0.1:9464; port 0 picks a free port). Off by default.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Plan and log the plan on every reconcile; never apply.
        #[arg(long)]
        plan_only: bool,
        /// Share of rate_limit (percent) the drift scan may use to read live attributes and
        /// find users changed outside attrsync; 0 turns the scan off.
        #[arg(long, value_name = "PERCENT", default_value_t = attrsync::watch::drift::DEFAULT_DRIFT_BUDGET,
              value_parser = clap::value_parser!(u32).range(0..=100))]
        drift_budget: u32,
        /// Only report drift (log and attrsync_drift_users_total); do not repair it.
        #[arg(long)]
        no_self_heal: bool,
        /// Start a drift pass at most this often; a change made behind attrsync's back is
        /// found within this period plus one pass.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = attrsync::watch::parse_duration)]
        drift_pass_every: std::time::Duration,
    },
    /// Run the local Tencent Cloud IM stand-in (for tests and demos).
    Emulator(attrsync::emulator::EmulatorArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum AttributesCommand {
    /// Register the names in `attributes` on the app (set_attr_name), in free slots only.
    Push {
        /// Do not ask for confirmation.
        #[arg(long)]
        auto_approve: bool,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// List the users in the snapshot.
    List,
    /// Show one user's recorded attributes and when they were applied.
    Show {
        /// The user id.
        user: String,
    },
    /// Write the snapshot as JSON Lines: {"user": "...", "attrs": {...}} per line, sorted.
    Export {
        /// Write to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Replace the snapshot with a JSON Lines file (validated first; all or nothing).
    Import {
        /// The file written by `state export`.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let ctx = Context {
        dir: cli.dir.clone(),
        state: cli.state.clone(),
        color: std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    match run(cli.command, &ctx) {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { format } => {
            let validation = ops::validate(ctx, format);
            print!("{}", validation.output);
            Ok(if validation.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Plan {
            format,
            out,
            detailed_exitcode,
            prune,
            allow_empty,
            refresh,
        } => {
            let request = PlanRequest {
                format,
                out,
                prune,
                allow_empty,
                refresh,
            };
            let outcome = runtime()?.block_on(ops::plan(ctx, &request))?;
            for warning in &outcome.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", outcome.output);
            Ok(if detailed_exitcode && outcome.plan.summary.has_writes() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Apply {
            planfile,
            auto_approve,
            prune,
            allow_mass_delete,
            allow_empty,
            format,
        } => {
            let json = matches!(format, ReportFormat::Json);
            let request = ApplyRequest {
                plan_file: planfile,
                auto_approve,
                prune,
                allow_mass_delete,
                allow_empty,
                json,
            };
            let runtime = runtime()?;
            let stop = StopSignal::new();
            let signal = runtime.block_on(async { interrupts::listen(stop.clone()) });
            let outcome = runtime.block_on(remote::apply(ctx, &request, &stop))?;
            let Some(report) = outcome.report else {
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.calls > 0 || !report.succeeded() {
                print!("{}", remote::render_report(&report));
            }
            Ok(ExitCode::from(interrupts::exit_code(
                signal.received(),
                &report,
            )))
        }
        Command::Import { users } => print_ok(runtime()?.block_on(remote::import(ctx, &users))?),
        Command::Attributes(AttributesCommand::Push { auto_approve }) => {
            print_ok(runtime()?.block_on(remote::attributes_push(ctx, auto_approve))?)
        }
        Command::State(StateCommand::List) => print_ok(ops::state_list(ctx)?),
        Command::State(StateCommand::Show { user }) => print_ok(ops::state_show(ctx, &user)?),
        Command::State(StateCommand::Export { out }) => {
            ops::state_export(ctx, out.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::State(StateCommand::Import { file }) => print_ok(ops::state_import(ctx, &file)?),
        Command::Watch {
            interval,
            debounce,
            listen,
            plan_only,
            drift_budget,
            no_self_heal,
            drift_pass_every,
        } => {
            let options = attrsync::watch::WatchOptions {
                interval,
                debounce,
                listen,
                plan_only,
                drift_budget,
                self_heal: !no_self_heal,
                drift_pass_every,
            };
            runtime()?.block_on(async {
                let shutdown = attrsync::watch::shutdown_signal()?;
                attrsync::watch::run(&ctx.dir, ctx.state.as_deref(), options, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Emulator(args) => {
            runtime()?.block_on(attrsync::emulator::run_from_cli(args))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_ok(text: String) -> anyhow::Result<ExitCode> {
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Blocking work (snapshot commits, parsing) runs on at most this many threads. Commits take
/// the store's lock one at a time, so more threads would only wait, and each thread that
/// allocates brings its own malloc arena: with tokio's default (512) a daemon's idle memory
/// grew from 190 to over 400 MiB after a first sync of 100,000 users, all fragmentation.
const BLOCKING_THREADS: usize = 4;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Prints the error once: config diagnostics as they are, anything else as a cause chain.
fn report(err: &anyhow::Error) {
    if let Some(diagnostics) = err.downcast_ref::<Diagnostics>() {
        eprintln!("{diagnostics}");
    } else {
        eprintln!("error: {err:#}");
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            // sled logs its own view of a damaged database; attrsync's error says what it
            // means and what to do, once.
            0 => "warn,attrsync=info,sled=off",
            1 => "info,attrsync=debug,sled=off",
            _ => "debug,attrsync=trace",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
