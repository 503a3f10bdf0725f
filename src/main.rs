//! The `attrsync` command line: parses arguments, calls one library function per command,
//! maps the result to an exit code. No logic lives here.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, CommandFactory as _, Parser, Subcommand, ValueEnum};

use attrsync::api::Endpoint;
use attrsync::apply::StopSignal;
use attrsync::config::Diagnostics;
use attrsync::emulator::{EmulatorConfig, FailMode, SetAttrMode, DEFAULT_SDKAPPID};
use attrsync::ops::ApplyRequest;
use attrsync::ops::{self, interrupts, Globals, PlanFormat, PlanRequest, ValidateFormat};

/// Keep Tencent Cloud IM push user attributes equal to what a config repository declares.
///
/// A config repository holds attrsync.yaml (settings) and YAML files under users/ that declare
/// each user's attributes. `plan` shows what would change against the snapshot of what was last
/// applied; `apply` sends only the changed users, in batches, within the API's rate limit.
#[derive(Debug, Parser)]
#[command(
    name = "attrsync",
    version = env!("ATTRSYNC_VERSION"),
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

    /// Where the snapshot lives: a directory, or a postgres:// URL shared by every machine;
    /// overrides `state` in attrsync.yaml.
    #[arg(
        long,
        global = true,
        env = "ATTRSYNC_STATE",
        // The URL may hold a password: --help must not print it.
        hide_env_values = true,
        value_name = "DIR|URL",
        help_heading = "Global options"
    )]
    state: Option<String>,

    /// How long to wait for another writer's lock on a shared (PostgreSQL) snapshot before
    /// giving up, e.g. 5m; 0 fails at once, naming the holder.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "0s",
        value_parser = parse_lock_timeout,
        help_heading = "Global options"
    )]
    lock_timeout: std::time::Duration,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides both flags.
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet", help_heading = "Global options")]
    verbose: u8,

    /// Only errors in the log.
    #[arg(short, long, global = true, help_heading = "Global options")]
    quiet: bool,

    /// No colours in output or logs (as NO_COLOR=1 does).
    #[arg(long, global = true, help_heading = "Global options")]
    no_color: bool,

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
    /// Start a config repository in DIR (default: the current directory): a commented
    /// attrsync.yaml, users/example.yaml and a .gitignore for the local snapshot.
    Init {
        /// Where (default: --dir); created if needed. Never overwrites an existing config.
        dir: Option<PathBuf>,
    },
    /// Check the config repository: every problem, with file:line:column. Exit 0 valid, 1 invalid.
    Validate {
        /// Output format: text, json (for tools), github (workflow annotations).
        #[arg(long, value_enum, default_value_t = ValidateFormatArg::Text)]
        format: ValidateFormatArg,
    },
    /// Show what apply would change: the config against the snapshot of what was last applied.
    Plan {
        /// Output format: text (people), json (machines), markdown (pull-request comments).
        #[arg(long, value_enum, default_value_t = PlanFormatArg::Text)]
        format: PlanFormatArg,
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
        /// Plan only this user: an id, or a glob (`team-*`, `u?`); repeatable. The plan says
        /// that it is partial.
        #[arg(long, value_name = "USER")]
        target: Vec<String>,
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
        /// Apply only to this user: an id, or a glob (`team-*`, `u?`); repeatable. A saved
        /// plan keeps the targets it was made with.
        #[arg(long, value_name = "USER", conflicts_with = "planfile")]
        target: Vec<String>,
        /// Read the live attributes first (as `plan --refresh` does) and plan against them, so
        /// that changes made outside attrsync are put back.
        #[arg(long, conflicts_with = "planfile")]
        refresh: bool,
    },
    /// Show a plan saved with `plan --out FILE`, in any format, without the config or the
    /// snapshot (for review, or to render one saved in CI as Markdown).
    Show {
        /// The saved plan.
        planfile: PathBuf,
        /// Output format: text (people), json (machines), markdown (pull-request comments).
        #[arg(long, value_enum, default_value_t = PlanFormatArg::Text)]
        format: PlanFormatArg,
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
        /// The environment variable holding a bearer token that /plan, /metrics and POST
        /// /reconcile then require (Authorization: Bearer TOKEN); needed to listen on an
        /// address other machines can reach.
        #[arg(long, value_name = "VAR", requires = "listen")]
        listen_token_env: Option<String>,
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
    Emulator(EmulatorArgs),
    /// Print the JSON Schema of attrsync.yaml (config) or of a user file (users), for editors.
    Schema {
        /// Which file's schema.
        #[arg(value_enum)]
        of: SchemaOf,
    },
    /// Print a shell completion script, e.g. `attrsync completions bash > /etc/bash_completion.d/attrsync`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (attrsync.1 and one per command) into DIR.
    Man {
        /// The directory, created if needed, e.g. /usr/local/share/man/man1.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemaOf {
    /// attrsync.yaml.
    Config,
    /// A user file.
    Users,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ValidateFormatArg {
    Text,
    Json,
    Github,
}

impl From<ValidateFormatArg> for ValidateFormat {
    fn from(arg: ValidateFormatArg) -> Self {
        match arg {
            ValidateFormatArg::Text => ValidateFormat::Text,
            ValidateFormatArg::Json => ValidateFormat::Json,
            ValidateFormatArg::Github => ValidateFormat::Github,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PlanFormatArg {
    Text,
    Json,
    Markdown,
}

impl From<PlanFormatArg> for PlanFormat {
    fn from(arg: PlanFormatArg) -> Self {
        match arg {
            PlanFormatArg::Text => PlanFormat::Text,
            PlanFormatArg::Json => PlanFormat::Json,
            PlanFormatArg::Markdown => PlanFormat::Markdown,
        }
    }
}

/// Command-line arguments of `attrsync emulator`.
#[derive(Debug, Clone, clap::Args)]
struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free port. The bound address is printed as the
    /// first line on stdout.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// SDKAppID of the emulated application.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SDKAPPID)]
    sdkappid: u64,
    /// Environment variable holding the secret key; when unset, the public demo key is used.
    #[arg(long, value_name = "VAR", default_value = attrsync::model::DEFAULT_SECRET_KEY_ENV)]
    secret_key_env: String,
    /// Attribute names to register at start (comma-separated).
    #[arg(long, value_name = "a,b", value_delimiter = ',')]
    attributes: Vec<String>,
    /// Accounts to treat as never imported: answered with 70107 (comma-separated).
    #[arg(long, value_name = "u1,u2", value_delimiter = ',')]
    unknown_users: Vec<String>,
    /// Calls admitted per endpoint in any one-second window; more are answered with 60007.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: u32,
    /// Delay before every answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency: u64,
    /// Probability (0 to 1) that a call gets a fault.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    fail_rate: f64,
    /// The fault to inject.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = FailModeArg::Mixed)]
    fail_mode: FailModeArg,
    /// Inject faults only into these endpoints (comma-separated, e.g. set_attr,remove_attr);
    /// by default into every endpoint.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', value_parser = parse_endpoint)]
    fail_endpoints: Vec<Endpoint>,
    /// What set_attr does with attributes it does not name: keep them (merge) or drop them
    /// (replace). The documentation does not say; attrsync is right under both.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = SetAttrModeArg::Merge)]
    set_attr: SetAttrModeArg,
    /// Seed of the fault-injection RNG (same seed, same faults for the same calls).
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Keep the data in sled under this directory instead of in memory.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FailModeArg {
    #[value(name = "91000")]
    InternalError,
    #[value(name = "502")]
    BadGateway,
    Drop,
    Mixed,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SetAttrModeArg {
    Merge,
    Replace,
}

fn parse_endpoint(name: &str) -> Result<Endpoint, String> {
    Endpoint::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Endpoint::ALL.iter().map(|e| e.name()).collect();
        format!("unknown endpoint {name:?}; use {}", names.join(", "))
    })
}

impl EmulatorArgs {
    /// The emulator's settings (the key is read by `run_foreground`).
    fn config(&self) -> EmulatorConfig {
        EmulatorConfig {
            sdkappid: self.sdkappid,
            attributes: self.attributes.clone(),
            unknown_users: self.unknown_users.clone(),
            rate_limit: self.rate_limit,
            latency: std::time::Duration::from_millis(self.latency),
            fail_rate: self.fail_rate,
            fail_mode: match self.fail_mode {
                FailModeArg::InternalError => FailMode::InternalError,
                FailModeArg::BadGateway => FailMode::BadGateway,
                FailModeArg::Drop => FailMode::Drop,
                FailModeArg::Mixed => FailMode::Mixed,
            },
            fail_endpoints: self.fail_endpoints.clone(),
            set_attr: match self.set_attr {
                SetAttrModeArg::Merge => SetAttrMode::Merge,
                SetAttrModeArg::Replace => SetAttrMode::Replace,
            },
            seed: self.seed,
            data_dir: self.data.clone(),
            ..EmulatorConfig::default()
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum AttributesCommand {
    /// Show the attribute names registered on the app (get_attr_name), slot by slot, and which
    /// of the configured ones are missing.
    List,
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
    /// Forget users in the snapshot (the server keeps their attributes): a user still declared
    /// is then planned as a create, one no longer declared is no longer managed. Asks first.
    Rm {
        /// The user ids.
        #[arg(required = true)]
        users: Vec<String>,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long)]
        auto_approve: bool,
    },
    /// Release a shared (PostgreSQL) snapshot's lock held by a writer that is gone or stuck:
    /// ends its database session, so its next write is refused. Asks first.
    Unlock {
        /// The lock ID, as the refused writer's error names it.
        lock_id: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Copy the snapshot to another directory or postgres:// URL in one transaction, verify
    /// the copy, and mark the source as migrated so that it is no longer used.
    Migrate {
        /// Where to: a directory, or a postgres:// URL.
        #[arg(long, value_name = "DIR|URL")]
        to: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to stdout and succeed. A usage error exits 1, like every
            // other error: 2 means "changes present" to `plan --detailed-exitcode`.
            let _ = error.print();
            return match error.use_stderr() {
                true => ExitCode::FAILURE,
                false => ExitCode::SUCCESS,
            };
        }
    };
    init_logging(&cli);
    let applies = matches!(cli.command, Command::Apply { .. });
    let ctx = Globals {
        dir: cli.dir.clone(),
        state: cli.state.clone(),
        lock_timeout: cli.lock_timeout,
        color: colors_allowed(&cli) && std::io::stdout().is_terminal(),
    };
    match run(cli.command, &ctx) {
        Ok(code) => code,
        // A closed stdout (`attrsync plan | head -1`) ends the program quietly, as in
        // ripgrep: the reader has what it wanted. Only an apply says so, since nothing was
        // sent (its report after sending never fails on a closed pipe).
        Err(err) if closed_stdout(&err) => match applies {
            true => {
                eprintln!("error: stdout was closed before the apply started: nothing was sent");
                ExitCode::FAILURE
            }
            false => ExitCode::SUCCESS,
        },
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// Whether `err` comes from writing to a pipe whose reader went away.
fn closed_stdout(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes `text` to stdout; an error (a closed pipe) is returned, never a panic.
fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

fn run(command: Command, ctx: &Globals) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init { dir } => print_ok(ops::init(dir.as_deref().unwrap_or(&ctx.dir))?),
        Command::Validate { format } => {
            let validation = ops::validate(ctx, format.into());
            for warning in &validation.warnings {
                eprintln!("warning: {warning}");
            }
            emit(&validation.output)?;
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
            target,
        } => {
            let request = PlanRequest {
                format: format.into(),
                out,
                prune,
                allow_empty,
                refresh,
                targets: target,
            };
            let outcome = runtime()?.block_on(ops::plan(ctx, &request))?;
            for warning in &outcome.warnings {
                eprintln!("warning: {warning}");
            }
            {
                use std::io::Write as _;
                let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
                outcome.write_output(&mut stdout)?;
                stdout.flush()?;
            }
            let changes = outcome.plan.summary.has_writes();
            ops::drop_in_background(outcome);
            Ok(if detailed_exitcode && changes {
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
            target,
            refresh,
        } => {
            let json = matches!(format, ReportFormat::Json);
            let request = ApplyRequest {
                plan_file: planfile,
                auto_approve,
                prune,
                allow_mass_delete,
                allow_empty,
                json,
                targets: target,
                refresh,
            };
            let runtime = runtime()?;
            let stop = StopSignal::new();
            let signal = runtime.block_on(async { interrupts::listen(stop.clone()) });
            let outcome = runtime.block_on(ops::apply(ctx, &request, &stop))?;
            let Some(report) = outcome.report else {
                // Cancelled at the prompt: 130/143 for a signal, else 1; nothing was sent.
                return Ok(ExitCode::from(signal.received().unwrap_or(1)));
            };
            // The apply happened: its exit code stands even if nobody reads the report.
            let _ = if json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
            } else if report.calls > 0 || !report.succeeded() {
                emit(&ops::render_report(&report))
            } else {
                Ok(())
            };
            Ok(ExitCode::from(interrupts::exit_code(
                signal.received(),
                &report,
            )))
        }
        Command::Show { planfile, format } => print_ok(ops::show(ctx, &planfile, format.into())?),
        Command::Import { users } => print_ok(runtime()?.block_on(ops::import(ctx, &users))?),
        Command::Attributes(AttributesCommand::List) => {
            print_ok(runtime()?.block_on(ops::attributes_list(ctx))?)
        }
        Command::Attributes(AttributesCommand::Push { auto_approve }) => {
            print_ok(runtime()?.block_on(ops::attributes_push(ctx, auto_approve))?)
        }
        Command::State(StateCommand::List) => print_ok(runtime()?.block_on(ops::state_list(ctx))?),
        Command::State(StateCommand::Show { user }) => {
            print_ok(runtime()?.block_on(ops::state_show(ctx, &user))?)
        }
        Command::State(StateCommand::Export { out }) => {
            runtime()?.block_on(ops::state_export(ctx, out.as_deref()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::State(StateCommand::Import { file }) => {
            print_ok(runtime()?.block_on(ops::state_import(ctx, &file))?)
        }
        Command::State(StateCommand::Rm {
            users,
            auto_approve,
        }) => print_ok(runtime()?.block_on(ops::state_rm(ctx, &users, auto_approve))?),
        Command::State(StateCommand::Unlock { lock_id, force }) => {
            print_ok(runtime()?.block_on(ops::state_unlock(ctx, &lock_id, force))?)
        }
        Command::State(StateCommand::Migrate { to }) => {
            print_ok(runtime()?.block_on(ops::state_migrate(ctx, &to))?)
        }
        Command::Watch {
            interval,
            debounce,
            listen,
            listen_token_env,
            plan_only,
            drift_budget,
            no_self_heal,
            drift_pass_every,
        } => {
            let listen_token = match &listen_token_env {
                None => None,
                Some(var) => Some(
                    std::env::var(var)
                        .ok()
                        .and_then(|token| attrsync::watch::ListenToken::new(&token))
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "--listen-token-env names {var}, but {var} is not set or empty; put the bearer token in it"
                            )
                        })?,
                ),
            };
            let options = attrsync::watch::WatchOptions {
                interval,
                debounce,
                listen,
                listen_token,
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
        Command::Schema { of } => {
            use attrsync::config::schema;
            let generated = match of {
                SchemaOf::Config => schema::settings_schema(),
                SchemaOf::Users => schema::users_schema(),
            };
            print_ok(schema::render(&generated))
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "attrsync", &mut script);
            emit(&String::from_utf8(script)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => {
            let written = write_man_pages(&out)?;
            emit(&format!(
                "Wrote {} to {}.\n",
                attrsync::text::plural(written, "man page"),
                out.display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Emulator(args) => {
            runtime()?.block_on(attrsync::emulator::run_foreground(
                &args.listen,
                &args.secret_key_env,
                args.config(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes `attrsync.1` and `attrsync-COMMAND.1` for every command (and `attrsync-state-list.1`
/// for nested ones) into `dir`; returns how many.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    let mut root = Cli::command();
    root.build();
    let mut pages = vec![("attrsync".to_owned(), root.clone())];
    // clap's generated `help` commands need no page of their own.
    let commands = |parent: &clap::Command, prefix: &str| -> Vec<(String, clap::Command)> {
        parent
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .map(|c| (format!("{prefix}-{}", c.get_name()), c.clone()))
            .collect()
    };
    let mut queue = commands(&root, "attrsync");
    while let Some((name, command)) = queue.pop() {
        queue.extend(commands(&command, &name));
        pages.push((name, command));
    }
    for (name, command) in &pages {
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone().name(name.clone()))
            .render(&mut page)
            .with_context(|| format!("cannot render the man page of {name}"))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(pages.len())
}

fn print_ok(text: String) -> anyhow::Result<ExitCode> {
    emit(&text)?;
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

/// Whether colours may be used at all: not with `--no-color`, nor with `NO_COLOR` set to
/// anything but the empty string (no-color.org).
fn colors_allowed(cli: &Cli) -> bool {
    !cli.no_color && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
    let ansi = colors_allowed(cli) && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `--lock-timeout`: a duration, zero included (fail at once).
fn parse_lock_timeout(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration such as 0s, 30s or 5m"))
}
