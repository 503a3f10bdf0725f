//! `attrsync import [USERS…]`: the snapshot seeded from the server's live values.

use anyhow::{Context as _, Result};

use super::{binding, describe_failed, Globals};
use crate::model::{Attrs, UserId, UserMap};
use crate::plan;
use crate::state::{Commit, Holder, OnOtherTarget, Store};

/// `attrsync import [USERS…]`: records the users' live attributes in the snapshot, resolving
/// any doubt about them. A snapshot recorded for another server is adopted: its whole content
/// is replaced by what this server holds.
pub async fn import(ctx: &Globals, users: &[String]) -> Result<String> {
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
    let (live, calls) = super::read_live(settings, &users).await?;
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
        calls,
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
