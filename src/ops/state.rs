//! `attrsync state list | show | export | import`: the snapshot, read and replaced.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::{open_existing, open_for_writing, read_snapshot, write_atomically, Globals};
use crate::state::{self, Access, OnOtherTarget};

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
pub async fn state_import(ctx: &Globals, file: &Path) -> Result<String> {
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
    let store = open_for_writing(
        &config,
        "state import",
        OnOtherTarget::Adopt,
        ctx.lock_timeout,
    )
    .await?;
    let (users, in_doubt) = (imported.users.len(), imported.in_doubt.len());
    let serial = store
        .replace_all(
            imported.users,
            imported.in_doubt,
            crate::clock::unix_seconds(),
        )
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
