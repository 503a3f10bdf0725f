//! The commands that talk to the server: `apply`, `plan --refresh`, `import` and
//! `attributes push`, plus connecting (a real region, an endpoint, or the embedded emulator).

use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::api::AttrSlot;
use crate::apply::{
    self, ApplyOptions, CallStats, FailedUser, Progress, Report, RetryPolicy, StopSignal,
};
use crate::config::Config;
use crate::model::{AttrName, Attrs, Drift, Snapshot, UserId, UserMap};
use crate::plan::{self, Guards, PlanOptions};
use crate::state::{Commit, Holder, OnOtherTarget, Store};

use super::{binding, describe_failed, Context};
use crate::link::{connect, preflight};

/// Why a saved plan cannot be applied: it is not the plan the config and snapshot give now.
#[derive(Debug, thiserror::Error)]
#[error("the saved plan is stale or was edited: {reasons}; nothing was applied. Run `attrsync plan --out FILE` again and review the new plan")]
pub struct StalePlan {
    reasons: String,
}

/// The options of `apply`.
#[derive(Clone, Debug, Default)]
pub struct ApplyRequest {
    /// Apply this saved plan instead of planning now.
    pub plan_file: Option<PathBuf>,
    /// Skip the confirmation.
    pub auto_approve: bool,
    /// `--prune`.
    pub prune: bool,
    /// `--allow-mass-delete`.
    pub allow_mass_delete: bool,
    /// `--allow-empty`.
    pub allow_empty: bool,
    /// Print the report as JSON.
    pub json: bool,
}

/// What `apply` did.
#[derive(Debug)]
pub struct ApplyOutcome {
    /// The report, or `None` when nothing was applied (no changes, or not confirmed).
    pub report: Option<Report>,
}

/// `attrsync apply`: plans (or reads a saved plan), confirms, and applies.
pub async fn apply(
    ctx: &Context,
    request: &ApplyRequest,
    stop: &StopSignal,
) -> Result<ApplyOutcome> {
    let config = ctx.load_config()?;
    let settings = &config.settings;
    std::fs::create_dir_all(&settings.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            settings.state_dir.display()
        )
    })?;
    let store = Arc::new(Store::open(
        &settings.state_dir,
        binding(settings),
        &Holder::this_process("apply"),
    )?);
    let snapshot = store.load()?;
    let guards = Guards {
        max_deletes: settings.max_deletes,
        allow_mass_delete: request.allow_mass_delete,
        allow_empty: request.allow_empty,
    };
    let plan = match &request.plan_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the plan file {}", path.display()))?;
            let saved = plan::from_json(&text)?;
            // Verified, not trusted: the plan applied is the one computed now, and only when
            // it equals the saved one in every change.
            let now = plan::plan(
                &config.desired,
                &snapshot,
                PlanOptions {
                    sdkappid: settings.sdkappid,
                    prune: saved.prune,
                },
            );
            let differences = plan::differences(&saved, &now);
            if !differences.is_empty() {
                return Err(StalePlan {
                    reasons: differences.join("; "),
                }
                .into());
            }
            if saved.prune && !(settings.prune || request.prune) {
                tracing::info!("the saved plan was made with --prune: applying its deletions");
            }
            now
        }
        None => {
            plan::check_empty_desired(&config.desired, &snapshot, guards)?;
            plan::plan(
                &config.desired,
                &snapshot,
                PlanOptions {
                    sdkappid: settings.sdkappid,
                    prune: settings.prune || request.prune,
                },
            )
        }
    };
    plan::check_mass_delete(&plan, guards)?;
    let mut stdout = std::io::stdout().lock();
    if !plan.summary.has_writes() {
        if !request.json {
            write!(stdout, "{}", plan::render_text(&plan, ctx.text_style()))?;
        }
        return Ok(ApplyOutcome {
            report: Some(Report::default()),
        });
    }
    if request.plan_file.is_none() {
        if !request.json {
            write!(stdout, "{}", plan::render_text(&plan, ctx.text_style()))?;
            stdout.flush()?;
        }
        if !request.auto_approve && !confirm()? {
            writeln!(stdout, "Apply cancelled: nothing was sent.")?;
            return Ok(ApplyOutcome { report: None });
        }
    }
    drop(stdout);
    let connection = connect(settings).await?;
    preflight(&connection, settings).await?;
    let options = ApplyOptions {
        batch_size: settings.batch_size,
        in_flight: apply::IN_FLIGHT,
        retry: RetryPolicy::default(),
    };
    let total = plan.changes.iter().filter(|c| c.action.writes()).count();
    let progress = ProgressLine::new(total);
    let report = apply::execute(
        &plan,
        &snapshot,
        &connection.client,
        &store,
        options,
        stop,
        &|p| progress.update(p),
    )
    .await;
    progress.finish();
    Ok(ApplyOutcome {
        report: Some(report),
    })
}

/// Asks on the terminal; refuses without one.
fn confirm() -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to apply without confirmation: stdin is not a terminal; re-run with --auto-approve, \
             or save a plan with `attrsync plan --out FILE` and apply it with `attrsync apply FILE`"
        );
    }
    print!("\nDo you want to apply these changes? Only 'yes' will be accepted: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// A progress bar on a terminal, a plain line every few seconds otherwise.
struct ProgressLine {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: std::sync::Mutex<Instant>,
    total: usize,
}

/// How often the plain progress line is printed.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl ProgressLine {
    fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} users  {msg}  ETA {eta}",
                )
                .expect("valid template"),
            );
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            last_line: std::sync::Mutex::new(Instant::now()),
            total,
        }
    }

    fn update(&self, progress: Progress) {
        let rate = progress.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        if let Some(bar) = &self.bar {
            bar.set_position(progress.done as u64);
            bar.set_message(format!("{rate:.0} users/s"));
            return;
        }
        let mut last = self.last_line.lock().expect("progress lock");
        if last.elapsed() >= PLAIN_PROGRESS_EVERY {
            *last = Instant::now();
            let eta = if rate > 0.0 {
                (self.total - progress.done) as f64 / rate
            } else {
                0.0
            };
            eprintln!(
                "applied {}/{} users ({rate:.0} users/s, ETA {eta:.0}s)",
                progress.done, progress.total
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Renders an apply report for people.
pub fn render_report(report: &Report) -> String {
    let mut out = String::new();
    let verdict = if report.interrupted {
        "Apply interrupted"
    } else if report.succeeded() {
        "Apply complete"
    } else {
        "Apply finished with errors"
    };
    let in_doubt = report.in_doubt();
    out.push_str(&format!(
        "{verdict}: {} created, {} updated, {} deleted, {} failed{}{}.\n",
        report.created,
        report.updated,
        report.deleted,
        report.failed.len(),
        if in_doubt > 0 {
            format!(" ({in_doubt} in doubt)")
        } else {
            String::new()
        },
        if report.skipped > 0 {
            format!(", {} not attempted", report.skipped)
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "  {} calls, {} retries, {} throttled, {:.2}s\n",
        report.calls,
        report.retries,
        report.throttled,
        report.elapsed.as_secs_f64()
    ));
    if !report.failed.is_empty() {
        out.push_str("Failed users (not recorded in the snapshot; the next apply retries them):\n");
        for failed in &report.failed {
            let doubt = if failed.in_doubt {
                " [in doubt: the server may hold the new values; the next apply re-sends them in full]"
            } else {
                ""
            };
            out.push_str(&format!(
                "  - {}: {}{doubt}\n",
                failed.user,
                describe_failed(failed)
            ));
        }
    }
    if let Some(error) = &report.error {
        out.push_str(&format!("Stopped: {error}\n"));
    }
    if report.interrupted || report.skipped > 0 {
        out.push_str("Run `attrsync apply` again to send what is still missing.\n");
    }
    out
}

/// What `plan --refresh` read from the server.
#[derive(Debug)]
pub struct Refreshed {
    /// The live attributes of every user that could be read.
    pub live: UserMap<Attrs>,
    /// Users that changed outside attrsync.
    pub drift: Vec<Drift>,
    /// Users in doubt that were read: recording their live values resolves the doubt.
    pub resolved: Commit,
    /// Users the server could not be asked about (answered with an error): planned against
    /// the snapshot, neither drift nor resolved.
    pub unread: Vec<FailedUser>,
    /// Calls made.
    pub calls: usize,
}

/// Reads the live attributes of every user in desired ∪ snapshot ∪ in doubt.
pub async fn refresh(config: &Config, snapshot: &Snapshot) -> Result<Refreshed> {
    let mut users: Vec<UserId> = config.desired.iter().map(|(u, _)| u.clone()).collect();
    users.extend(snapshot.users.iter().map(|(u, _)| u.clone()));
    users.extend(snapshot.in_doubt.iter().map(|(u, _)| u.clone()));
    users.sort();
    users.dedup();
    let connection = connect(&config.settings).await?;
    let stats = CallStats::default();
    let live = apply::read_live(
        &connection.client,
        &users,
        &config.settings.attributes,
        &RetryPolicy::default(),
        &StopSignal::new(),
        &stats,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot read the live attributes from {}: {e}",
            connection.base_url
        )
    })?;
    let resolved = Commit {
        record: live
            .attrs
            .iter()
            .filter(|(user, _)| snapshot.in_doubt.get(user.as_str()).is_some())
            .map(|(user, attrs)| (user.clone(), Some(attrs.clone())))
            .collect(),
        applied_at: crate::clock::unix_seconds(),
        ..Commit::default()
    };
    Ok(Refreshed {
        drift: plan::drift(snapshot, &live.attrs),
        live: live.attrs,
        resolved,
        unread: live.errors,
        calls: stats.calls.into_inner(),
    })
}

/// `attrsync import [USERS…]`: records the users' live attributes in the snapshot, resolving
/// any doubt about them. A snapshot recorded for another server is adopted: its whole content
/// is replaced by what this server holds.
pub async fn import(ctx: &Context, users: &[String]) -> Result<String> {
    let config = ctx.load_config()?;
    let settings = &config.settings;
    let users: Vec<UserId> = if users.is_empty() {
        config.desired.iter().map(|(u, _)| u.clone()).collect()
    } else {
        users
            .iter()
            .map(|u| UserId::new(u).map_err(|e| anyhow::anyhow!("invalid user id {u:?}: {e}")))
            .collect::<Result<_>>()?
    };
    std::fs::create_dir_all(&settings.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            settings.state_dir.display()
        )
    })?;
    let mut store = Store::open_with(
        &settings.state_dir,
        binding(settings),
        &Holder::this_process("import"),
        OnOtherTarget::Adopt,
    )?;
    let connection = connect(settings).await?;
    let stats = CallStats::default();
    let live = apply::read_live(
        &connection.client,
        &users,
        &settings.attributes,
        &RetryPolicy::default(),
        &StopSignal::new(),
        &stats,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot read the live attributes from {}: {e}",
            connection.base_url
        )
    })?;
    let now = crate::clock::unix_seconds();
    let with_attrs = live.attrs.iter().filter(|(_, a)| !a.is_empty()).count();
    let mut out = String::new();
    if let Some(previous) = store.other_target().map(str::to_owned) {
        // Nothing recorded for the previous server says anything about this one.
        store.replace_all(&live.attrs, &UserMap::default(), now)?;
        out.push_str(&format!(
            "The snapshot recorded {previous}; it now records {} and holds only the users read from it.\n",
            settings.target
        ));
    } else {
        let writes: Vec<(UserId, Option<Attrs>)> = live
            .attrs
            .iter()
            .map(|(user, attrs)| (user.clone(), Some(attrs.clone())))
            .collect();
        for chunk in writes.chunks(10_000) {
            store.commit(&Commit {
                record: chunk.to_vec(),
                applied_at: now,
                ..Commit::default()
            })?;
        }
    }
    out.push_str(&format!(
        "Imported {} from the server ({with_attrs} with attributes, {} without) in {} calls; the snapshot is at serial {}.\n",
        plan::plural(live.attrs.len(), "user"),
        live.attrs.len() - with_attrs,
        stats.calls.into_inner(),
        store.serial()?
    ));
    if !live.errors.is_empty() {
        out.push_str(&format!(
            "{} could not be read and {}:\n",
            plan::plural(live.errors.len(), "user"),
            if live.errors.len() == 1 {
                "is left as it was"
            } else {
                "are left as they were"
            },
        ));
        for failed in &live.errors {
            out.push_str(&format!(
                "  - {}: {}\n",
                failed.user,
                describe_failed(failed)
            ));
        }
    }
    Ok(out)
}

/// `attrsync attributes push`: registers the configured names in free slots.
pub async fn attributes_push(ctx: &Context, auto_approve: bool) -> Result<String> {
    let config = ctx.load_config()?;
    let settings = &config.settings;
    let connection = connect(settings).await?;
    let stop = StopSignal::new();
    let stats = CallStats::default();
    let retry = RetryPolicy::default();
    let registered = apply::with_retries(&connection.client, &retry, &stop, &stats, || {
        connection.client.get_attr_name()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot read the app's attribute names: {e}"))?;
    let missing: Vec<&AttrName> = settings
        .attributes
        .iter()
        .filter(|a| !registered.values().any(|r| r.name == a.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(format!(
            "All {} attributes are registered on the app. Nothing to do.\n",
            settings.attributes.len()
        ));
    }
    let free: Vec<u8> = (0..crate::model::MAX_ATTRIBUTES as u8)
        .filter(|slot| !registered.contains_key(slot))
        .collect();
    if free.len() < missing.len() {
        bail!(
            "the app has {} free attribute slots but {} names to register ({}); free slots in the console first \
             (attrsync never changes a registered slot)",
            free.len(),
            missing.len(),
            missing.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    // New names apply to the IM UserID (account type 0, the documented default).
    let additions: BTreeMap<u8, AttrSlot> = free
        .iter()
        .zip(&missing)
        .map(|(slot, name)| {
            (
                *slot,
                AttrSlot {
                    name: name.as_str().to_owned(),
                    account_type: 0,
                },
            )
        })
        .collect();
    let mut preview = String::from(
        "attrsync will register these attribute names (existing slots are left as they are):\n",
    );
    for (slot, attr) in &additions {
        preview.push_str(&format!("  + slot {slot}: {} (for UserIDs)\n", attr.name));
    }
    print!("{preview}");
    if !auto_approve && !confirm()? {
        return Ok("Cancelled: nothing was registered.\n".to_owned());
    }
    // Send the registered slots unchanged, each with its account type, with the new ones:
    // whether the API merges or replaces a partial map is not documented, the full map is
    // right either way, and a type left out would default to 0, which cannot be changed once
    // set (`docs/api.md`).
    let mut full = registered.clone();
    full.extend(additions.clone());
    apply::with_retries(&connection.client, &retry, &stop, &stats, || {
        connection.client.set_attr_name(&full)
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot register the attribute names: {e}"))?;
    Ok(format!(
        "Registered {}.\n",
        plan::plural(additions.len(), "attribute name")
    ))
}
