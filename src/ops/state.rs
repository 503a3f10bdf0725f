//! `attrsync state list | show | export | import | rm | unlock | migrate`: the snapshot, read,
//! replaced, trimmed and moved.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::{open_existing, open_for_writing, read_snapshot, Globals};
use crate::files::write_private;
use crate::model::{Snapshot, StateLocation};
use crate::state::{self, Access, OnOtherTarget, PgStore};

/// `attrsync state list`: the users in the snapshot (recorded or in doubt), one per line.
pub async fn state_list(ctx: &Globals) -> Result<String> {
    let config = ctx.load_config()?;
    let snapshot = read_snapshot(&config, "state list").await?;
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
pub async fn state_show(ctx: &Globals, user: &str) -> Result<String> {
    let config = ctx.load_config()?;
    let store = open_existing(&config, "state show", Access::Read).await?;
    let (entry, doubt) = match &store {
        Some(store) => (store.get(user).await?, store.doubt(user).await?),
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
pub async fn state_export(ctx: &Globals, out: Option<&Path>) -> Result<()> {
    let config = ctx.load_config()?;
    let snapshot = read_snapshot(&config, "state export").await?;
    match out {
        Some(path) => {
            let mut buffer = Vec::new();
            state::export(&snapshot, &mut buffer)?;
            write_private(path, &buffer)
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
pub async fn state_import(ctx: &Globals, file: &Path) -> Result<String> {
    let config = ctx.load_config()?;
    let text = super::read_named_file(file)?;
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
    let store = open_for_writing(
        &config,
        "state import",
        OnOtherTarget::Adopt,
        ctx.lock_timeout,
    )
    .await?;
    let (users, in_doubt) = (imported.users.len(), imported.in_doubt.len());
    let serial = store
        .replace_all(Snapshot::recorded(
            &imported.users,
            imported.in_doubt,
            crate::clock::unix_seconds(),
        ))
        .await?;
    let doubt = if in_doubt == 0 {
        String::new()
    } else {
        format!(", {in_doubt} in doubt")
    };
    Ok(format!(
        "Imported {users} users into the snapshot{doubt} (serial {serial}).\n"
    ))
}

/// `attrsync state rm USER…`: forgets users in the snapshot (their entries and any doubt),
/// leaving the server as it is, like Terraform's `state rm`: a user still declared is then
/// planned as a create, one no longer declared is no longer managed (never deleted). All or
/// nothing: a user the snapshot does not hold is an error and nothing is removed. Asks first on
/// a terminal, unless `auto_approve`.
pub async fn state_rm(ctx: &Globals, users: &[String], auto_approve: bool) -> Result<String> {
    let config = ctx.load_config()?;
    let store =
        open_for_writing(&config, "state rm", OnOtherTarget::Refuse, ctx.lock_timeout).await?;
    let mut held = Vec::new();
    let mut unknown = Vec::new();
    for user in users {
        let known = store.get(user).await?.is_some() || store.doubt(user).await?.is_some();
        match (known, crate::model::UserId::new(user)) {
            (true, Ok(id)) => held.push(id),
            _ => unknown.push(crate::text::quote_user(user)),
        }
    }
    if !unknown.is_empty() {
        anyhow::bail!(
            "not in the snapshot: {}; nothing was removed (`attrsync state list` shows who is)",
            unknown.join(", ")
        );
    }
    held.sort();
    held.dedup();
    let names: Vec<String> = held
        .iter()
        .map(|u| crate::text::quote_user(u.as_str()))
        .collect();
    if !auto_approve {
        super::require_terminal(
            "remove users from the snapshot",
            "re-run with --auto-approve",
        )?;
        let question = format!(
            "attrsync will forget {} in the snapshot (the server keeps their attributes; a user still \
             declared is then planned as a create): {}\nDo you want to remove {}? Only 'yes' will be accepted: ",
            crate::text::plural(held.len(), "user"),
            names.join(", "),
            if held.len() == 1 { "it" } else { "them" }
        );
        let never = crate::apply::StopSignal::new();
        if super::ask(&question, &never).await? != super::Answer::Yes {
            return Ok("Cancelled: the snapshot is unchanged.\n".to_owned());
        }
    }
    let count = held.len();
    store
        .commit(state::Commit {
            record: held.into_iter().map(|user| (user, None)).collect(),
            applied_at: crate::clock::unix_seconds(),
            ..state::Commit::default()
        })
        .await?;
    Ok(format!(
        "Removed {} from the snapshot: {}. The server is unchanged; the snapshot is at serial {}.\n",
        crate::text::plural(count, "user"),
        names.join(", "),
        store.serial().await?
    ))
}

/// `attrsync state unlock LOCK_ID`: ends the session of the writer holding the lock `lock_id` on
/// the shared snapshot and fences it out, so its next write is refused. Asks first, unless
/// `force`.
pub async fn state_unlock(ctx: &Globals, lock_id: &str, force: bool) -> Result<String> {
    let config = ctx.load_config()?;
    let StateLocation::Postgres(url) = &config.settings.state else {
        anyhow::bail!(
            "the snapshot at {} is a directory: it is locked by the process that has it open, and \
             freed when that process ends; stop it (`state unlock` is for PostgreSQL snapshots)",
            config.settings.state
        );
    };
    if !force {
        super::require_terminal("unlock", "re-run with --force")?;
        let question = format!(
            "Force-unlocking ends the holder's database session; if it is still running, its next \
             write is refused and its users in flight stay in doubt.\nDo you really want to \
             force-unlock lock {lock_id}? Only 'yes' will be accepted: "
        );
        let never = crate::apply::StopSignal::new();
        if super::ask(&question, &never).await? != super::Answer::Yes {
            return Ok("Unlock cancelled.\n".to_owned());
        }
    }
    let holder = PgStore::force_unlock(url, lock_id).await?;
    Ok(format!(
        "Lock {lock_id} on {holder} released: that writer can no longer write to the snapshot.\n"
    ))
}

/// `attrsync state migrate --to DIR|URL`: copies the snapshot to another location in one
/// transaction, verifies the copy (user count and digest on both sides), and marks the source
/// as migrated so nobody applies from it by mistake.
pub async fn state_migrate(ctx: &Globals, to: &str) -> Result<String> {
    let config = ctx.load_config()?;
    let source_location = &config.settings.state;
    let target_location = StateLocation::parse(to, Path::new(""));
    if &target_location == source_location {
        anyhow::bail!(
            "the snapshot is already at {target_location}; name another location with --to"
        );
    }
    if let StateLocation::Dir(dir) = source_location {
        if !state::SledDb::exists(dir) {
            anyhow::bail!("there is no snapshot at {} to migrate", dir.display());
        }
    }
    let source = open_for_writing(
        &config,
        "state migrate",
        OnOtherTarget::Refuse,
        ctx.lock_timeout,
    )
    .await?;
    if let Some(dir) = target_location.dir() {
        crate::files::create_private_dir(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    }
    let target = state::open(
        &target_location,
        super::binding(&config.settings),
        &state::Holder::this_process("state migrate"),
        OnOtherTarget::Refuse,
        Access::Write {
            lock_timeout: ctx.lock_timeout,
        },
    )
    .await?;
    let existing = target.load().await?;
    if existing.serial != 0 || !existing.users.is_empty() || !existing.in_doubt.is_empty() {
        anyhow::bail!(
            "{target_location} already holds a snapshot of this app (serial {}, {} users); \
             migrate only into an empty location",
            existing.serial,
            existing.users.len()
        );
    }
    let snapshot = source.load().await?;
    let source_digest = digest(&snapshot)?;
    let (users, in_doubt) = (snapshot.users.len(), snapshot.in_doubt.len());
    let serial = target.replace_all(snapshot).await?;
    let copy = target.load().await?;
    let copied = digest(&copy)?;
    if copy.users.len() != users || copy.in_doubt.len() != in_doubt || copied != source_digest {
        anyhow::bail!(
            "the copy at {target_location} does not match the source ({} users and {} in doubt, digest {copied}, \
             instead of {users}, {in_doubt} and {source_digest}); the source is left in use",
            copy.users.len(),
            copy.in_doubt.len()
        );
    }
    source.mark_migrated(&target_location.to_string()).await?;
    Ok(format!(
        "Migrated {users} users ({in_doubt} in doubt) from {source_location} to {target_location}, serial {serial}, \
         digest {source_digest} on both sides.\n{source_location} is marked as migrated and refuses to be used from now on: \
         set `state: {target_location}` in attrsync.yaml (or ATTRSYNC_STATE).\n"
    ))
}

/// A digest of a snapshot's content (users, when applied, doubt): SHA-256 of its export.
fn digest(snapshot: &crate::model::Snapshot) -> Result<String> {
    use sha2::Digest as _;
    let mut text = Vec::new();
    state::export(snapshot, &mut text)?;
    let hash = sha2::Sha256::digest(&text);
    Ok(format!(
        "sha256:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}
