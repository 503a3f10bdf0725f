//! One function per command: each loads what it needs through the shells, calls the core,
//! and returns what the command prints. `main.rs` maps the results to exit codes.

pub mod interrupts;
pub mod remote;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::config::{self, Config, Diagnostics, ParseCache, Settings};
use crate::model::{Plan, Snapshot};
use crate::plan::{self, Guards, PlanOptions, TextStyle};
use crate::state::{self, Binding, Holder, OnOtherTarget, Store};

/// What every command gets from the global flags.
#[derive(Clone, Debug)]
pub struct Context {
    /// The config repository (`--dir`).
    pub dir: PathBuf,
    /// Overrides `state_dir` (`--state`).
    pub state: Option<PathBuf>,
    /// Whether human output may use colour.
    pub color: bool,
}

impl Context {
    /// Loads and validates the config repository.
    pub fn load_config(&self) -> Result<Config, Diagnostics> {
        config::load(&self.dir, self.state.as_deref(), &mut ParseCache::default())
    }

    pub(crate) fn text_style(&self) -> TextStyle {
        if self.color {
            TextStyle::Color
        } else {
            TextStyle::Plain
        }
    }
}

/// Output formats of `validate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidateFormat {
    /// `file:line:column: message` lines.
    Text,
    /// One JSON document, for editors and CI tools.
    Json,
    /// GitHub Actions workflow annotations (`::error file=…,line=…,col=…::message`).
    Github,
}

/// The result of `validate`: what to print and whether the config is valid.
#[derive(Debug)]
pub struct Validation {
    /// The rendering for stdout.
    pub output: String,
    /// Whether the config is valid.
    pub valid: bool,
}

/// `attrsync validate`: checks the config repository without touching the snapshot or the API.
pub fn validate(ctx: &Context, format: ValidateFormat) -> Validation {
    let result = ctx.load_config();
    let diagnostics = match &result {
        Ok(_) => Vec::new(),
        Err(d) => d.0.clone(),
    };
    let output = match format {
        ValidateFormat::Text => match &result {
            Ok(config) => format!(
                "The config is valid: {} in {}, {}.\n",
                plan::plural(config.desired.len(), "user"),
                plan::plural(config.files, "file"),
                plan::plural(config.settings.attributes.len(), "attribute")
            ),
            Err(d) => format!("{d}\n"),
        },
        ValidateFormat::Json => {
            #[derive(Serialize)]
            struct Doc<'a> {
                format_version: u32,
                valid: bool,
                error_count: usize,
                users: Option<usize>,
                files: Option<usize>,
                diagnostics: Vec<DiagnosticDoc<'a>>,
            }
            #[derive(Serialize)]
            struct DiagnosticDoc<'a> {
                severity: &'static str,
                file: String,
                line: Option<u32>,
                column: Option<u32>,
                message: &'a str,
                hint: Option<&'a str>,
            }
            let doc = Doc {
                format_version: 1,
                valid: result.is_ok(),
                error_count: diagnostics.len(),
                users: result.as_ref().ok().map(|c| c.desired.len()),
                files: result.as_ref().ok().map(|c| c.files),
                diagnostics: diagnostics
                    .iter()
                    .map(|d| DiagnosticDoc {
                        severity: "error",
                        file: d.file.display().to_string(),
                        line: d.pos.map(|p| p.line),
                        column: d.pos.map(|p| p.column),
                        message: &d.message,
                        hint: d.hint.as_deref(),
                    })
                    .collect(),
            };
            let mut json = serde_json::to_string_pretty(&doc).expect("validation JSON serialises");
            json.push('\n');
            json
        }
        ValidateFormat::Github => {
            let mut out = String::new();
            for d in &diagnostics {
                let mut props = format!("file={}", escape_property(&d.file.display().to_string()));
                if let Some(pos) = d.pos {
                    props.push_str(&format!(",line={},col={}", pos.line, pos.column));
                }
                let mut message = d.message.clone();
                if let Some(hint) = &d.hint {
                    message.push_str(&format!(" ({hint})"));
                }
                out.push_str(&format!("::error {props}::{}\n", escape_data(&message)));
            }
            if diagnostics.is_empty() {
                out.push_str("The config is valid.\n");
            }
            out
        }
    };
    Validation {
        output,
        valid: result.is_ok(),
    }
}

/// Workflow-command escaping (as `@actions/core` does it).
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// Output formats of `plan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanFormat {
    /// For people, Terraform-like.
    Text,
    /// The plan document (`format_version` 1), for machines and saved plans.
    Json,
    /// For a pull-request comment.
    Markdown,
}

/// The options of `plan`.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// Output format.
    pub format: PlanFormat,
    /// Save the plan (JSON) here for `apply PLANFILE`.
    pub out: Option<PathBuf>,
    /// `--prune` (in addition to `prune:` in attrsync.yaml).
    pub prune: bool,
    /// `--allow-empty`.
    pub allow_empty: bool,
    /// `--refresh`: plan against the server's live values instead of the snapshot.
    pub refresh: bool,
}

/// What `plan` produced.
#[derive(Debug)]
pub struct PlanOutcome {
    /// The plan.
    pub plan: Plan,
    /// The rendering for stdout.
    pub output: String,
    /// Warnings for stderr (e.g. the mass-delete guard will refuse this plan).
    pub warnings: Vec<String>,
}

/// The app and server the snapshot of `settings` is about.
pub fn binding(settings: &Settings) -> Binding<'_> {
    Binding {
        sdkappid: settings.sdkappid,
        target: &settings.target,
    }
}

/// Opens the snapshot for `config` if one exists, without creating one.
pub fn open_existing(config: &Config, command: &str) -> Result<Option<Store>> {
    Ok(Store::open_existing(
        &config.settings.state_dir,
        binding(&config.settings),
        &Holder::this_process(command),
    )?)
}

/// Reads the snapshot for `config` without creating one when none exists yet.
pub fn read_snapshot(config: &Config, command: &str) -> Result<Snapshot> {
    match open_existing(config, command)? {
        Some(store) => Ok(store.load()?),
        None => Ok(Snapshot::default()),
    }
}

/// `attrsync plan`: diffs the config against the snapshot (or, with `--refresh`, the server).
///
/// With `--refresh`, users in doubt whose live values were read are recorded with them: the
/// doubt is resolved, so the snapshot moves (a new serial) even though nothing is sent.
pub async fn plan(ctx: &Context, request: &PlanRequest) -> Result<PlanOutcome> {
    let started = std::time::Instant::now();
    let config = ctx.load_config()?;
    tracing::debug!(users = config.desired.len(), files = config.files, elapsed = ?started.elapsed(), "loaded the config");
    let store = open_existing(&config, "plan")?;
    let mut snapshot = match &store {
        Some(store) => store.load()?,
        None => Snapshot::default(),
    };
    tracing::debug!(users = snapshot.users.len(), elapsed = ?started.elapsed(), "read the snapshot");
    let settings = &config.settings;
    let guards = Guards {
        max_deletes: settings.max_deletes,
        allow_mass_delete: false,
        allow_empty: request.allow_empty,
    };
    plan::check_empty_desired(&config.desired, &snapshot, guards)?;
    let mut warnings = Vec::new();
    let refreshed = match request.refresh {
        true => {
            let refreshed = remote::refresh(&config, &snapshot).await?;
            if let (Some(store), false) = (&store, refreshed.resolved.is_empty()) {
                let resolved = refreshed.resolved.clone();
                store.commit(&resolved)?;
                let n = resolved.record.len();
                warnings.push(if n == 1 {
                    "1 user in doubt was read back from the server; the snapshot now records its live values".to_owned()
                } else {
                    format!("{n} users in doubt were read back from the server; the snapshot now records their live values")
                });
                snapshot = store.load()?;
            }
            for failed in &refreshed.unread {
                warnings.push(format!(
                    "could not read {} from the server ({}); it is planned against the snapshot",
                    failed.user,
                    describe_failed(failed)
                ));
            }
            Some(refreshed)
        }
        false => None,
    };
    drop(store);
    let live;
    let base = match &refreshed {
        Some(r) => {
            live = plan::live_snapshot(&snapshot, &r.live);
            &live
        }
        None => &snapshot,
    };
    let plan = plan::plan(
        &config.desired,
        base,
        PlanOptions {
            sdkappid: settings.sdkappid,
            prune: settings.prune || request.prune,
        },
    );
    tracing::debug!(changes = plan.changes.len(), elapsed = ?started.elapsed(), "planned");
    if let Err(guard) = plan::check_mass_delete(&plan, guards) {
        warnings.push(format!("apply will refuse this plan: {guard}"));
    }
    if let Some(path) = &request.out {
        write_atomically(path, plan::to_json(&plan).as_bytes())
            .with_context(|| format!("cannot write the plan to {}", path.display()))?;
    }
    let drift = refreshed.as_ref().map(|r| r.drift.as_slice());
    let output = match (request.format, drift) {
        (PlanFormat::Text, None) => plan::render_text(&plan, ctx.text_style()),
        (PlanFormat::Text, Some(drift)) => {
            plan::render_drift_text(drift, ctx.text_style())
                + &plan::render_text(&plan, ctx.text_style())
        }
        (PlanFormat::Json, None) => plan::to_json(&plan),
        (PlanFormat::Json, Some(drift)) => plan::to_json_with_drift(&plan, drift),
        (PlanFormat::Markdown, None) => plan::render_markdown(&plan),
        (PlanFormat::Markdown, Some(drift)) => {
            plan::render_markdown(&plan) + &plan::render_drift_markdown(drift)
        }
    };
    Ok(PlanOutcome {
        plan,
        output,
        warnings,
    })
}

/// `error 70107: the account has not been imported`, or the reason alone.
pub fn describe_failed(failed: &crate::apply::FailedUser) -> String {
    match failed.code {
        Some(code) => format!("error {code}: {}", failed.reason),
        None => failed.reason.clone(),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `attrsync state list`: the users in the snapshot (recorded or in doubt), one per line.
pub fn state_list(ctx: &Context) -> Result<String> {
    let config = ctx.load_config()?;
    let snapshot = read_snapshot(&config, "state list")?;
    // Users only in doubt are in the snapshot too: `state show` tells them apart.
    let mut users: Vec<&str> = snapshot
        .users
        .iter()
        .map(|(u, _)| u.as_str())
        .chain(snapshot.in_doubt.iter().map(|(u, _)| u.as_str()))
        .collect();
    users.sort_unstable();
    users.dedup();
    let mut out = String::with_capacity(users.len() * 12);
    for user in users {
        out.push_str(user);
        out.push('\n');
    }
    Ok(out)
}

/// `attrsync state show USER`: one user's recorded attributes, when they were applied, and
/// whether it is in doubt.
pub fn state_show(ctx: &Context, user: &str) -> Result<String> {
    let config = ctx.load_config()?;
    let store = open_existing(&config, "state show")?;
    let (entry, doubt) = match &store {
        Some(store) => (store.get(user)?, store.doubt(user)?),
        None => (None, None),
    };
    if entry.is_none() && doubt.is_none() {
        anyhow::bail!("user {user:?} is not in the snapshot; `attrsync state list` shows who is");
    }
    let time = |secs: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
    };
    let mut out = format!("user: {user}\n");
    match &entry {
        Some(entry) => {
            out.push_str(&format!("applied_at: {}\nattrs:\n", time(entry.applied_at)));
            for (name, value) in entry.attrs.iter() {
                out.push_str(&format!("  {name}: {:?}\n", value.as_str()));
            }
        }
        None => out.push_str("attrs: {}\n"),
    }
    if let Some(doubt) = &doubt {
        out.push_str(&format!(
            "in_doubt: {} (since {})\nmay_hold:\n",
            doubt.note.reason,
            time(doubt.note.since)
        ));
        for (name, value) in doubt.maybe.iter() {
            out.push_str(&format!("  {name}: {:?}\n", value.as_str()));
        }
    }
    Ok(out)
}

/// `attrsync state export`: the snapshot as JSON Lines, to `out` or stdout.
pub fn state_export(ctx: &Context, out: Option<&Path>) -> Result<()> {
    let config = ctx.load_config()?;
    let snapshot = read_snapshot(&config, "state export")?;
    match out {
        Some(path) => {
            let mut buffer = Vec::new();
            state::export(&snapshot, &mut buffer)?;
            write_atomically(path, &buffer)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = std::io::BufWriter::new(stdout.lock());
            state::export(&snapshot, &mut lock).context("cannot write to stdout")?;
            lock.flush().context("cannot write to stdout")?;
        }
    }
    Ok(())
}

/// Lines of an import file that failed validation.
#[derive(Debug, thiserror::Error)]
#[error("{}\nthe import file {} is invalid: {} problem{}; nothing was imported", .lines.join("\n"), .file.display(), .lines.len(), crate::text::s(.lines.len()))]
pub struct ImportError {
    file: PathBuf,
    lines: Vec<String>,
}

/// `attrsync state import FILE`: replaces the snapshot with the file's content, atomically.
pub fn state_import(ctx: &Context, file: &Path) -> Result<String> {
    let config = ctx.load_config()?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let imported = state::parse_import(&text, &config.settings.attributes).map_err(|problems| {
        ImportError {
            file: file.to_owned(),
            lines: problems
                .iter()
                .map(|p| format!("{}:{}: {}", file.display(), p.line, p.message))
                .collect(),
        }
    })?;
    // The file replaces everything, so the snapshot is bound to the server configured now.
    let mut store = Store::open_with(
        &config.settings.state_dir,
        binding(&config.settings),
        &Holder::this_process("state import"),
        OnOtherTarget::Adopt,
    )?;
    let serial = store.replace_all(
        &imported.users,
        &imported.in_doubt,
        crate::clock::unix_seconds(),
    )?;
    let doubt = if imported.in_doubt.is_empty() {
        String::new()
    } else {
        format!(", {} in doubt", imported.in_doubt.len())
    };
    Ok(format!(
        "Imported {} users into the snapshot{doubt} (serial {serial}).\n",
        imported.users.len()
    ))
}
