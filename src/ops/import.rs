//! `attrsync import [USERS…]`: the snapshot seeded from the server's live values.

use anyhow::Result;

use super::{describe_failed, open_for_writing, Globals};
use crate::model::{Attrs, Snapshot, UserId, UserMap};
use crate::plan;
use crate::state::{Commit, OnOtherTarget};

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
    let store = open_for_writing(&config, "import", OnOtherTarget::Adopt, ctx.lock_timeout).await?;
    let connection = super::connect_checked(settings).await?;
    let (live, calls) = super::read_live(&connection, settings, &users).await?;
    let now = crate::clock::unix_seconds();
    let with_attrs = live.attrs.iter().filter(|(_, a)| !a.is_empty()).count();
    let mut out = String::new();
    let read = live.attrs.len();
    if let Some(previous) = store.other_target() {
        // Nothing recorded for the previous server says anything about this one.
        store
            .replace_all(Snapshot::recorded(&live.attrs, UserMap::default(), now))
            .await?;
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
            store
                .commit(Commit {
                    record: chunk.to_vec(),
                    applied_at: now,
                    ..Commit::default()
                })
                .await?;
        }
    }
    out.push_str(&format!(
        "Imported {} from the server ({with_attrs} with attributes, {} without) in {}; the snapshot is at serial {}.\n",
        plan::plural(read, "user"),
        read - with_attrs,
        plan::plural(calls, "call"),
        store.serial().await?
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
                crate::text::quote_user(failed.user.as_str()),
                describe_failed(failed)
            ));
        }
    }
    Ok(out)
}
