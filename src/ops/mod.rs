//! One function per command: each loads what it needs through the shells, calls the core,
//! and returns what the command prints. `main.rs` maps the results to exit codes.
//!
//! One file per command (`validate`, `plan`, `apply`, `state`, `import`, `attributes`);
//! [`interrupts`] turns SIGINT/SIGTERM into a clean stop.

mod apply;
mod attributes;
mod import;
mod init;
pub mod interrupts;
mod plan;
mod show;
mod state;
mod validate;

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};

use crate::config::{self, Config, Diagnostics, ParseCache, Settings};
use crate::model::{Plan, Snapshot};
use crate::plan::TextStyle;
use crate::state::{Access, Binding, Holder, OnOtherTarget, SnapshotStore};

pub use apply::{apply, render_report, ApplyOutcome, ApplyRequest, StalePlan};
pub use attributes::{attributes_list, attributes_push};
pub use import::import;
pub use init::init;
pub use plan::{plan, refresh, PlanFormat, PlanOutcome, PlanRequest, Refreshed};
pub use show::show;
pub use state::{
    state_export, state_import, state_list, state_migrate, state_rm, state_show, state_unlock,
    ImportError,
};
pub use validate::{validate, ValidateFormat, Validation};

/// What every command gets from the global flags.
#[derive(Clone, Debug)]
pub struct Globals {
    /// The config repository (`--dir`).
    pub dir: PathBuf,
    /// Overrides the `state` setting (`--state`, or `ATTRSYNC_STATE`): a directory or a
    /// PostgreSQL URL.
    pub state: Option<String>,
    /// How long a writer waits for another one's lock on a shared snapshot
    /// (`--lock-timeout`; zero fails at once).
    pub lock_timeout: std::time::Duration,
    /// Whether human output may use colour.
    pub color: bool,
}

impl Globals {
    /// Loads and validates the config repository.
    pub fn load_config(&self) -> Result<Config, Diagnostics> {
        // One-shot commands keep a parse cache on disk: unchanged files are not parsed again.
        config::load(
            &self.dir,
            self.state.as_deref(),
            &mut ParseCache::persistent(),
        )
    }

    /// Reads only the settings (see [`config::load_settings`]).
    pub fn load_settings(&self) -> Option<Settings> {
        config::load_settings(&self.dir, self.state.as_deref())
    }

    pub(crate) fn text_style(&self) -> TextStyle {
        if self.color {
            TextStyle::Color
        } else {
            TextStyle::Plain
        }
    }
}

/// The app and server the snapshot of `settings` is about.
pub fn binding(settings: &Settings) -> Binding<'_> {
    Binding {
        sdkappid: settings.sdkappid,
        target: &settings.target,
    }
}

/// Opens the snapshot for `config` if one exists, without creating one: for reading (no
/// lock), or for writing (a shared snapshot's lock, as `access` says).
pub async fn open_existing(
    config: &Config,
    command: &str,
    access: Access,
) -> Result<Option<Arc<dyn SnapshotStore>>> {
    Ok(crate::state::open_existing(
        &config.settings.state,
        binding(&config.settings),
        &Holder::this_process(command),
        access,
    )
    .await?)
}

/// Opens the snapshot for `config` to write to it, creating it if needed; on a shared
/// snapshot this takes the app's lock, waiting up to `lock_timeout`.
pub async fn open_for_writing(
    config: &Config,
    command: &str,
    on_other_target: OnOtherTarget,
    lock_timeout: std::time::Duration,
) -> Result<Arc<dyn SnapshotStore>> {
    if let Some(dir) = config.settings.state.dir() {
        let created = match dir.is_dir() {
            // An existing directory is made private again; one this user may only read says so.
            true => crate::files::create_private_dir(dir).map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                    "cannot write the snapshot at {}: this user may only read it ({e}); \
                     `plan` and `state list|show|export` work as this user, `{command}` needs the \
                     user that owns the directory",
                    dir.display()
                ),
                _ => anyhow::Error::new(e)
                    .context(format!("cannot use the state directory {}", dir.display())),
            }),
            false => crate::files::create_private_dir(dir)
                .with_context(|| format!("cannot create the state directory {}", dir.display())),
        };
        created?;
    }
    Ok(crate::state::open(
        &config.settings.state,
        binding(&config.settings),
        &Holder::this_process(command),
        on_other_target,
        Access::Write { lock_timeout },
    )
    .await?)
}

/// Reads the snapshot for `config` without creating one when none exists yet.
pub async fn read_snapshot(config: &Config, command: &str) -> Result<Snapshot> {
    match open_existing(config, command, Access::Read).await? {
        Some(store) => Ok(store.load().await?),
        None => Ok(Snapshot::default()),
    }
}

/// Connects to the configured server and checks it (`get_attr_name` with quick retries, and
/// the attribute names): a wrong endpoint fails in a second, naming it, before anything else.
async fn connect_checked(settings: &Settings) -> Result<crate::link::Connection> {
    let connection = crate::link::connect(settings).await?;
    crate::link::preflight(&connection, settings).await?;
    Ok(connection)
}

/// Reads the live attributes of `users` through `connection`; returns them with the number of
/// calls made.
async fn read_live(
    connection: &crate::link::Connection,
    settings: &Settings,
    users: &[crate::model::UserId],
) -> Result<(crate::apply::Live, usize)> {
    let stats = crate::apply::CallStats::default();
    let live = crate::apply::read_live(
        &connection.client,
        users,
        &settings.attributes,
        &crate::apply::RetryPolicy::default(),
        &crate::apply::StopSignal::new(),
        &stats,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot read the live attributes from {}: {e}",
            connection.base_url
        )
    })?;
    Ok((live, stats.calls.into_inner()))
}

/// `error 70107: the account has not been imported`, or the reason alone.
pub fn describe_failed(failed: &crate::apply::FailedUser) -> String {
    match failed.code {
        Some(code) => format!("error {code}: {}", failed.reason),
        None => failed.reason.clone(),
    }
}

/// The lines heading a plan that say where the admin credential goes, for a reviewer: a
/// custom endpoint on another machine (not a Tencent Cloud region, the embedded emulator or
/// loopback), and a change of server since the app's last write. Markdown gets them as quotes.
/// Read from the plan alone, so a saved plan shows them too.
pub fn endpoint_header(plan: &Plan, markdown: bool) -> String {
    let mut lines = Vec::new();
    if let Some(previous) = &plan.previous_endpoint {
        lines.push(format!(
            "Endpoint change: this app's last write went to {previous}; this plan sends the admin UserSig to {}.",
            plan.endpoint
        ));
    }
    let url = plan.endpoint.as_str();
    if url == "embedded" {
        lines.push(
            "Endpoint: the built-in emulator (endpoint: embedded), inside attrsync: nothing leaves this machine."
                .to_owned(),
        );
    }
    let region = crate::model::Region::ALL
        .iter()
        .any(|(region, _, _)| region.base_url() == url);
    // Plain HTTP is only allowed to loopback: this machine, not somewhere else.
    if url.starts_with("https://") && !region {
        lines.push(format!(
            "Endpoint: {url} is a custom endpoint, not a Tencent Cloud region: the app's admin UserSig is sent there."
        ));
    }
    lines
        .iter()
        .map(|line| match markdown {
            true => format!("> **{line}**\n\n"),
            false => format!("{line}\n\n"),
        })
        .collect()
}

/// A warning for each `--target` pattern that matches no user of the config or the snapshot
/// (a typo would otherwise look like "no changes").
fn unmatched_targets(targets: &[String], config: &Config, snapshot: &Snapshot) -> Vec<String> {
    targets
        .iter()
        .filter(|pattern| {
            let matches =
                |user: &crate::model::UserId| crate::plan::target_matches(pattern, user.as_str());
            !config.desired.iter().any(|(u, _)| matches(u))
                && !snapshot.users.iter().any(|(u, _)| matches(u))
                && !snapshot.in_doubt.iter().any(|(u, _)| matches(u))
        })
        .map(|pattern| format!("--target {pattern} matches no user of the config or the snapshot"))
        .collect()
}

/// A warning when the snapshot records nothing yet while the config declares users: every
/// user is planned as a create, which is right for a new app and a mistake for a mistyped
/// `--state`. Not refused: a create sends the declared values, which is harmless on an app
/// that already holds them (only calls are wasted), and nothing is ever deleted without a
/// snapshot that recorded it.
fn no_snapshot_warning(config: &Config, snapshot: &Snapshot, exists: bool) -> Option<String> {
    // The embedded emulator keeps its data in the state directory: both start empty together.
    let embedded = config.settings.target == crate::model::Target::Embedded;
    if embedded || config.desired.is_empty() || snapshot.serial > 0 || !snapshot.users.is_empty() {
        return None;
    }
    let found = match exists {
        true => "the snapshot at {} records nothing yet",
        false => "there is no snapshot at {}",
    };
    Some(format!(
        "{}: every declared user is planned as a create. If attrsync has applied to this app \
         before, check --state (or `state` in attrsync.yaml); `attrsync import` reads the app's \
         current values into a new snapshot",
        found.replace("{}", &config.settings.state.to_string())
    ))
}

/// Frees `value` on a thread of its own. A one-shot command ends right after, and freeing a
/// million users' allocations one by one takes a third of a second that nobody waits for
/// gladly: the process exits without waiting for the thread.
pub fn drop_in_background<T: Send + 'static>(value: T) {
    // Should the thread not start, the closure (and `value` with it) is dropped here.
    let _ = std::thread::Builder::new()
        .name("drop".to_owned())
        .spawn(move || drop(value));
}

/// The most a file named on the command line may hold: an export or a plan of every user of
/// a large app (a million users export to about 80 MB), with room to spare.
pub const MAX_NAMED_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Reads a file the user named (`state import FILE`, `apply PLANFILE`, `show PLANFILE`): a
/// regular file of at most [`MAX_NAMED_FILE_BYTES`], as text.
pub fn read_named_file(path: &Path) -> Result<String> {
    let bytes = crate::files::read_regular(path, MAX_NAMED_FILE_BYTES)
        .with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// Refuses to ask without a terminal: `refusing to {doing} without confirmation: stdin is not
/// a terminal; {way_out}`.
fn require_terminal(doing: &str, way_out: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to {doing} without confirmation: stdin is not a terminal; {way_out}");
    }
    Ok(())
}

/// How to apply without a prompt.
const APPLY_WAY_OUT: &str = "re-run with --auto-approve, or save a plan with `attrsync plan --out \
     FILE` and apply it with `attrsync apply FILE`";

/// What the person at the terminal answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `yes`.
    Yes,
    /// Anything else, or end of input.
    No,
    /// SIGINT or SIGTERM while the question was open.
    Interrupted,
}

/// The question before an apply.
const APPLY_QUESTION: &str = "\nDo you want to apply these changes? Only 'yes' will be accepted: ";

/// Asks `question` on the terminal; answers [`Answer::Interrupted`] at once when `stop` fires
/// meanwhile (Ctrl-C at the prompt cancels, as it does in Terraform), without waiting for
/// Enter.
async fn ask(question: &str, stop: &crate::apply::StopSignal) -> Result<Answer> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(question.as_bytes())?;
    stdout.flush()?;
    drop(stdout);
    // A plain thread, not the runtime's blocking pool: a read of the terminal cannot be
    // cancelled, and the runtime waits for its blocking tasks when it shuts down.
    let (send, answer) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().lock().read_line(&mut line).map(|_| line);
        let _ = send.send(read);
    });
    tokio::select! {
        () = stop.stopped() => Ok(Answer::Interrupted),
        read = answer => match read {
            Ok(Ok(line)) if line.trim() == "yes" => Ok(Answer::Yes),
            Ok(Ok(_)) => Ok(Answer::No),
            Ok(Err(error)) => Err(error).context("cannot read the answer from the terminal"),
            Err(_) => Ok(Answer::No),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings of a repository whose server is `target`.
    fn settings(target: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("attrsync.yaml"),
            format!("sdkappid: 1400000000\nidentifier: admin\n{target}\nattributes: [sex]\n"),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("users")).unwrap();
        config::load(dir.path(), None, &mut ParseCache::default())
            .unwrap()
            .settings
    }

    /// A plan with no changes, sent where `settings` say, after a last write to `previous`.
    fn plan_for(settings: &Settings, previous: Option<&str>) -> Plan {
        crate::plan::plan(
            &crate::model::Desired::default(),
            &crate::model::Snapshot::default(),
            crate::plan::PlanOptions {
                sdkappid: settings.sdkappid,
                prune: false,
                endpoint: settings.target.key(),
                previous_endpoint: previous.map(str::to_owned),
                targets: Vec::new(),
            },
        )
    }

    /// The header of a plan for `settings`, in text or Markdown.
    fn header(settings: &Settings, markdown: bool) -> String {
        endpoint_header(&plan_for(settings, None), markdown)
    }

    #[test]
    fn a_change_of_server_heads_the_plan() {
        let settings = settings("endpoint: https://proxy.example.com");
        let plan = plan_for(&settings, Some("https://adminapisgp.im.qcloud.com"));
        assert_eq!(
            endpoint_header(&plan, false),
            "Endpoint change: this app's last write went to https://adminapisgp.im.qcloud.com; \
             this plan sends the admin UserSig to https://proxy.example.com.\n\n\
             Endpoint: https://proxy.example.com is a custom endpoint, not a Tencent Cloud region: \
             the app's admin UserSig is sent there.\n\n"
        );
        let local = self::settings("endpoint: http://127.0.0.1:8080");
        let plan = plan_for(&local, Some("embedded"));
        assert_eq!(
            endpoint_header(&plan, true),
            "> **Endpoint change: this app's last write went to embedded; this plan sends the admin UserSig to http://127.0.0.1:8080.**\n\n"
        );
    }

    #[test]
    fn a_custom_endpoint_on_another_machine_heads_the_plan() {
        assert_eq!(
            header(&settings("endpoint: https://proxy.example.com"), false),
            "Endpoint: https://proxy.example.com is a custom endpoint, not a Tencent Cloud region: the app's admin UserSig is sent there.\n\n"
        );
        assert!(
            header(&settings("endpoint: https://proxy.example.com"), true)
                .starts_with("> **Endpoint: https://proxy.example.com")
        );
        for quiet in ["region: singapore", "endpoint: http://127.0.0.1:8080"] {
            assert_eq!(header(&settings(quiet), false), "", "{quiet}");
        }
        // The emulator is named, so the quickstart says what it talked to.
        assert_eq!(
            header(&settings("endpoint: embedded"), false),
            "Endpoint: the built-in emulator (endpoint: embedded), inside attrsync: nothing leaves this machine.\n\n"
        );
    }
}
