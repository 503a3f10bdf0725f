//! `attrsync plan`: the config against the snapshot, or with `--refresh` against the server.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::{describe_failed, Globals};
use crate::apply::FailedUser;
use crate::config::Config;
use crate::files::write_private;
use crate::model::{Attrs, Drift, Plan, Snapshot, UserId, UserMap};
use crate::plan::{self, Guards, PlanOptions, TextStyle};
use crate::state::{Access, Commit, StateError};

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
    /// `--target`: plan only the users matching one of these ids or globs.
    pub targets: Vec<String>,
}

/// What `plan` produced.
#[derive(Debug)]
pub struct PlanOutcome {
    /// The plan.
    pub plan: Plan,
    /// Warnings for stderr (e.g. the mass-delete guard will refuse this plan).
    pub warnings: Vec<String>,
    /// How the plan is shown on stdout, written by [`PlanOutcome::write_output`].
    output: Output,
}

/// The rendering of a plan for stdout. Text and JSON are written as they render: the text
/// of a million creates is a few hundred MB that would otherwise be held beside the plan.
#[derive(Debug)]
enum Output {
    /// Rendered already: Markdown (capped in size), and JSON with a `--refresh` drift list.
    Rendered(String),
    /// The text rendering, after `head` (the endpoint header and any drift).
    Text { head: String, style: TextStyle },
    /// The plan JSON.
    Json,
}

impl PlanOutcome {
    /// Writes the plan in the requested format to `out`.
    pub fn write_output(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match &self.output {
            Output::Rendered(text) => out.write_all(text.as_bytes()),
            Output::Json => plan::write_json(&self.plan, out),
            Output::Text { head, style } => {
                out.write_all(head.as_bytes())?;
                let mut adapter = IoText { out, failed: None };
                match plan::write_text(&self.plan, *style, &mut adapter) {
                    Ok(()) => Ok(()),
                    Err(std::fmt::Error) => Err(adapter.failed.unwrap_or_else(|| {
                        std::io::Error::other("the plan could not be rendered")
                    })),
                }
            }
        }
    }
}

/// Text rendered through `fmt::Write` into an `io::Write`, keeping the I/O error (a closed
/// pipe) that `fmt::Error` cannot carry.
struct IoText<'a, W> {
    out: &'a mut W,
    failed: Option<std::io::Error>,
}

impl<W: std::io::Write> std::fmt::Write for IoText<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.out.write_all(s.as_bytes()).map_err(|err| {
            self.failed = Some(err);
            std::fmt::Error
        })
    }
}

/// `attrsync plan`: diffs the config against the snapshot (or, with `--refresh`, the server).
///
/// With `--refresh`, users in doubt whose live values were read are recorded with them: the
/// doubt is resolved, so the snapshot moves (a new serial) even though nothing is sent.
pub async fn plan(ctx: &Globals, request: &PlanRequest) -> Result<PlanOutcome> {
    let started = std::time::Instant::now();
    // `--refresh` records what it reads of users in doubt: a writer's lock on a shared
    // snapshot. A plain plan reads one consistent view without a lock.
    let access = match request.refresh {
        true => Access::Write {
            lock_timeout: ctx.lock_timeout,
        },
        false => Access::Read,
    };
    // The snapshot depends only on the settings: a plain plan reads it while the user files
    // load (about as long each at a million users), instead of after.
    let early = match request.refresh {
        false => ctx.load_settings().map(|settings| {
            let reading = tokio::spawn(read_base(settings.clone(), access));
            (settings, reading)
        }),
        true => None,
    };
    let loading = tokio::task::spawn_blocking({
        let ctx = ctx.clone();
        move || ctx.load_config()
    });
    let config = loading
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
    tracing::debug!(users = config.desired.len(), files = config.files, elapsed = ?started.elapsed(), "loaded the config");
    let base = match early {
        Some((settings, reading)) if settings == config.settings => reading
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?,
        _ => read_base(config.settings.clone(), access).await?,
    };
    let Base {
        store,
        previous_endpoint,
        mut snapshot,
        mut warnings,
    } = base;
    warnings.splice(0..0, config.warnings());
    tracing::debug!(users = snapshot.users.len(), elapsed = ?started.elapsed(), "read the snapshot");
    if let Some(warning) = super::no_snapshot_warning(&config, &snapshot, store.is_some()) {
        warnings.push(warning);
    }
    warnings.extend(super::unmatched_targets(
        &request.targets,
        &config,
        &snapshot,
    ));
    let settings = &config.settings;
    let guards = Guards {
        max_deletes: settings.max_deletes,
        allow_mass_delete: false,
        allow_empty: request.allow_empty,
    };
    plan::check_empty_desired(&config.desired, &snapshot, guards)?;
    let refreshed = match request.refresh {
        true => {
            let connection = super::connect_checked(&config.settings).await?;
            let refreshed = refresh(&config, &snapshot, &connection).await?;
            if let (Some(store), false) = (&store, refreshed.resolved.is_empty()) {
                let resolved = refreshed.resolved.clone();
                store.commit(resolved.clone()).await?;
                let n = resolved.record.len();
                warnings.push(if n == 1 {
                    "1 user in doubt was read back from the server; the snapshot now records its live values".to_owned()
                } else {
                    format!("{n} users in doubt were read back from the server; the snapshot now records their live values")
                });
                snapshot = store.load().await?;
            }
            for failed in &refreshed.unread {
                warnings.push(format!(
                    "could not read {} from the server ({}); it is planned against the snapshot",
                    crate::text::quote_user(failed.user.as_str()),
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
            endpoint: settings.target.key(),
            previous_endpoint,
            targets: request.targets.clone(),
        },
    );
    tracing::debug!(changes = plan.changes.len(), elapsed = ?started.elapsed(), "planned");
    if let Err(guard) = plan::check_mass_delete(&plan, guards) {
        warnings.push(format!("apply will refuse this plan: {guard}"));
    }
    if let Some(path) = &request.out {
        write_private(path, plan::to_json(&plan).as_bytes())
            .with_context(|| format!("cannot write the plan to {}", path.display()))?;
    }
    let drift = refreshed.as_ref().map(|r| r.drift.as_slice());
    let output = match (request.format, drift) {
        (PlanFormat::Text, drift) => Output::Text {
            head: super::endpoint_header(&plan, false)
                + &drift.map_or_else(String::new, |drift| {
                    plan::render_drift_text(drift, ctx.text_style())
                }),
            style: ctx.text_style(),
        },
        (PlanFormat::Json, None) => Output::Json,
        (PlanFormat::Json, Some(drift)) => Output::Rendered(plan::to_json_with_drift(&plan, drift)),
        (PlanFormat::Markdown, drift) => Output::Rendered(plan::render_markdown(
            &plan,
            drift,
            &super::endpoint_header(&plan, true),
        )),
    };
    super::drop_in_background((config, snapshot, refreshed));
    Ok(PlanOutcome {
        plan,
        warnings,
        output,
    })
}

/// The snapshot a plan is computed against, with what was found out opening it.
struct Base {
    store: Option<std::sync::Arc<dyn crate::state::SnapshotStore>>,
    previous_endpoint: Option<String>,
    snapshot: Snapshot,
    warnings: Vec<String>,
}

/// Opens the snapshot of `settings` (never creating one) and reads it. A sled snapshot
/// recorded for another server is read as empty, with a warning, for a plain plan: its
/// values say nothing about the new server, and the reviewer should still see what the change
/// means (everything is sent anew); `apply` refuses until `import`, and so does `--refresh`.
async fn read_base(settings: crate::config::Settings, access: Access) -> Result<Base> {
    let mut warnings = Vec::new();
    let opened = crate::state::open_existing(
        &settings.state,
        super::binding(&settings),
        &crate::state::Holder::this_process("plan"),
        access,
    )
    .await;
    let (store, previous_endpoint) = match opened {
        Ok(store) => {
            let previous = store.as_ref().and_then(|store| store.previous_target());
            (store, previous)
        }
        Err(StateError::OtherTarget {
            found, expected, ..
        }) if access == Access::Read => {
            warnings.push(format!(
                "the snapshot records {found}, not {expected}: this plan is against an empty snapshot, \
                 and `attrsync apply` refuses until `attrsync import` reads {expected}'s current values"
            ));
            (None, Some(found))
        }
        Err(error) => return Err(error.into()),
    };
    let snapshot = match &store {
        Some(store) => store.load().await?,
        None => Snapshot::default(),
    };
    Ok(Base {
        store,
        previous_endpoint,
        snapshot,
        warnings,
    })
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

/// Reads the live attributes of every user in desired ∪ snapshot ∪ in doubt, through
/// `connection`.
pub async fn refresh(
    config: &Config,
    snapshot: &Snapshot,
    connection: &crate::link::Connection,
) -> Result<Refreshed> {
    let mut users: Vec<UserId> = config.desired.iter().map(|(u, _)| u.clone()).collect();
    users.extend(snapshot.users.iter().map(|(u, _)| u.clone()));
    users.extend(snapshot.in_doubt.iter().map(|(u, _)| u.clone()));
    users.sort();
    users.dedup();
    let (live, calls) = super::read_live(connection, &config.settings, &users).await?;
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
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan of `n` creates, to render.
    fn creates(n: usize) -> Plan {
        let desired = UserMap::from_sorted(
            (0..n)
                .map(|i| {
                    let id = UserId::new(&format!("user{i:05}")).unwrap();
                    (id, Attrs::parse(&[("city", "Lima")]).unwrap())
                })
                .collect(),
        )
        .unwrap();
        plan::plan(
            &desired,
            &Snapshot::default(),
            PlanOptions {
                sdkappid: 1,
                prune: false,
                endpoint: "embedded".to_owned(),
                previous_endpoint: None,
                targets: Vec::new(),
            },
        )
    }

    /// Takes `room` bytes, then fails as a closed pipe does.
    struct ClosedAfter {
        room: usize,
        taken: Vec<u8>,
    }

    impl std::io::Write for ClosedAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.taken.len() + buf.len() > self.room {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.taken.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn outcome(plan: Plan, output: Output) -> PlanOutcome {
        PlanOutcome {
            plan,
            warnings: Vec::new(),
            output,
        }
    }

    #[test]
    fn streamed_text_and_json_are_the_renderings() {
        let text = outcome(
            creates(30),
            Output::Text {
                head: "head\n".to_owned(),
                style: TextStyle::Plain,
            },
        );
        let mut written = Vec::new();
        text.write_output(&mut written).unwrap();
        let expected = "head\n".to_owned() + &plan::render_text(&text.plan, TextStyle::Plain);
        assert_eq!(String::from_utf8(written).unwrap(), expected);

        let json = outcome(creates(30), Output::Json);
        let mut written = Vec::new();
        json.write_output(&mut written).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            plan::to_json(&json.plan)
        );
    }

    #[test]
    fn a_closed_pipe_is_reported_as_the_io_error_it_is() {
        for output in [
            Output::Json,
            Output::Text {
                head: String::new(),
                style: TextStyle::Plain,
            },
        ] {
            let outcome = outcome(creates(30), output);
            let mut closed = ClosedAfter {
                room: 200,
                taken: Vec::new(),
            };
            let err = outcome.write_output(&mut closed).unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe,
                "{:?}",
                outcome.output
            );
        }
    }
}
