//! `attrsync apply`: plans (or verifies a saved plan), confirms, applies, reports.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::{
    ask, describe_failed, open_for_writing, require_terminal, Answer, Globals, APPLY_QUESTION,
    APPLY_WAY_OUT,
};
use crate::apply::{self, ApplyOptions, Progress, Report, RetryPolicy, StopSignal};
use crate::plan::{self, Guards, PlanOptions};
use crate::state::OnOtherTarget;

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
    /// `--target`: apply only to the users matching one of these ids or globs.
    pub targets: Vec<String>,
    /// `--refresh`: plan against the server's live values, so drift is put back.
    pub refresh: bool,
}

/// What `apply` did.
#[derive(Debug)]
pub struct ApplyOutcome {
    /// The report, or `None` when nothing was applied (no changes, or not confirmed).
    pub report: Option<Report>,
}

/// `attrsync apply`: plans (or reads a saved plan), confirms, and applies.
pub async fn apply(
    ctx: &Globals,
    request: &ApplyRequest,
    stop: &StopSignal,
) -> Result<ApplyOutcome> {
    let config = ctx.load_config()?;
    let settings = &config.settings;
    let store = open_for_writing(&config, "apply", OnOtherTarget::Refuse, ctx.lock_timeout).await?;
    let mut snapshot = store.load().await?;
    // `--refresh` talks to the server before planning; the same connection applies.
    let mut connection = None;
    if request.refresh {
        let checked = super::connect_checked(settings).await?;
        snapshot = refreshed_base(&config, store.as_ref(), snapshot, &checked).await?;
        connection = Some(checked);
    }
    for warning in config
        .warnings()
        .into_iter()
        .chain(super::no_snapshot_warning(&config, &snapshot, true))
        .chain(super::unmatched_targets(
            &request.targets,
            &config,
            &snapshot,
        ))
    {
        eprintln!("warning: {warning}");
    }
    let guards = Guards {
        max_deletes: settings.max_deletes,
        allow_mass_delete: request.allow_mass_delete,
        allow_empty: request.allow_empty,
    };
    let plan = match &request.plan_file {
        Some(path) => {
            let text = super::read_named_file(path).context("cannot read the plan file")?;
            let saved = plan::from_json(&text)?;
            // Verified, not trusted: the plan applied is the one computed now, and only when
            // it equals the saved one in every change.
            let now = plan::plan(
                &config.desired,
                &snapshot,
                PlanOptions {
                    sdkappid: settings.sdkappid,
                    prune: saved.prune,
                    endpoint: settings.target.key(),
                    previous_endpoint: store.previous_target(),
                    targets: saved.targets.clone(),
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
                    endpoint: settings.target.key(),
                    previous_endpoint: store.previous_target(),
                    targets: request.targets.clone(),
                },
            )
        }
    };
    plan::check_mass_delete(&plan, guards)?;
    let header = super::endpoint_header(&plan, false);
    if !plan.summary.has_writes() {
        if !request.json {
            write!(
                std::io::stdout().lock(),
                "{header}{}",
                plan::render_text(&plan, ctx.text_style())
            )?;
        }
        return Ok(ApplyOutcome {
            report: Some(Report::default()),
        });
    }
    let prompts = request.plan_file.is_none() && !request.auto_approve;
    if prompts {
        require_terminal("apply", APPLY_WAY_OUT)?;
    }
    // Something will be sent: check the server first, so that a wrong endpoint or key fails
    // in a second, naming the endpoint, before a plan that cannot be applied is shown.
    let connection = match connection {
        Some(connection) => connection,
        None => super::connect_checked(settings).await?,
    };
    let mut stdout = std::io::stdout().lock();
    if request.plan_file.is_none() {
        if !request.json {
            write!(
                stdout,
                "{header}{}",
                plan::render_text(&plan, ctx.text_style())
            )?;
            stdout.flush()?;
        }
        if prompts {
            drop(stdout);
            let answer = ask(APPLY_QUESTION, stop).await?;
            stdout = std::io::stdout().lock();
            if answer != Answer::Yes {
                if answer == Answer::Interrupted {
                    writeln!(stdout)?;
                }
                writeln!(stdout, "Apply cancelled: nothing was sent.")?;
                return Ok(ApplyOutcome { report: None });
            }
        }
    }
    drop(stdout);
    let options = ApplyOptions {
        batch_size: settings.batch_size,
        in_flight: apply::IN_FLIGHT,
        retry: RetryPolicy::default(),
    };
    let total = plan.changes.iter().filter(|c| c.action.writes()).count();
    let progress = ProgressLine::new(total);
    // From here a signal drains: batches in flight finish and are recorded.
    let announce = tokio::spawn({
        let stop = stop.clone();
        async move {
            stop.stopped().await;
            eprintln!("stopping: no new batches; waiting for the ones in flight to finish and be recorded (signal again to stop at once)");
        }
    });
    let report = apply::execute(
        &plan,
        &snapshot,
        &connection.client,
        store.as_ref(),
        options,
        stop,
        &|p| progress.update(p),
    )
    .await;
    announce.abort();
    progress.finish();
    Ok(ApplyOutcome {
        report: Some(report),
    })
}

/// `apply --refresh`: reads the live attributes (as `plan --refresh` does), records the users
/// in doubt that were read, reports drift, and returns the base to plan against: the snapshot
/// with every read user's live values, so that changes made outside attrsync are undone.
async fn refreshed_base(
    config: &crate::config::Config,
    store: &dyn crate::state::SnapshotStore,
    snapshot: crate::model::Snapshot,
    connection: &crate::link::Connection,
) -> Result<crate::model::Snapshot> {
    let refreshed = super::refresh(config, &snapshot, connection).await?;
    // What the server was just seen to hold is recorded: users in doubt that were read, and
    // users that drifted, so the snapshot agrees with the server before anything is sent.
    let mut seen = refreshed.resolved.clone();
    for drifted in &refreshed.drift {
        if let Some(live) = refreshed.live.get(drifted.user.as_str()) {
            if !seen.record.iter().any(|(user, _)| *user == drifted.user) {
                seen.record.push((drifted.user.clone(), Some(live.clone())));
            }
        }
    }
    seen.record.sort_by(|a, b| a.0.cmp(&b.0));
    let snapshot = match seen.is_empty() {
        true => snapshot,
        false => {
            store.commit(seen).await?;
            store.load().await?
        }
    };
    if !refreshed.drift.is_empty() {
        eprintln!(
            "{} changed outside attrsync since the last apply; the plan puts {} back",
            plan::plural(refreshed.drift.len(), "user"),
            if refreshed.drift.len() == 1 {
                "it"
            } else {
                "them"
            }
        );
    }
    for failed in &refreshed.unread {
        eprintln!(
            "warning: could not read {} from the server ({}); it is planned against the snapshot",
            crate::text::quote_user(failed.user.as_str()),
            describe_failed(failed)
        );
    }
    Ok(plan::live_snapshot(&snapshot, &refreshed.live))
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
        let mut last = crate::sync::lock(&self.last_line);
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
            format!(", {} not sent", report.skipped)
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "  {}, {}, {} throttled, {:.2}s\n",
        crate::text::plural(report.calls, "call"),
        match report.retries {
            1 => "1 retry".to_owned(),
            n => format!("{n} retries"),
        },
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
                crate::text::quote_user(failed.user.as_str()),
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
