//! `attrsync attributes list|push`: the app's attribute names against the configured ones.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::{ask, require_terminal, Answer, Globals, APPLY_QUESTION};
use crate::api::AttrSlot;
use crate::apply::{self, CallStats, RetryPolicy, StopSignal};
use crate::link::connect;
use crate::model::AttrName;
use crate::plan;

/// The app's registered attribute names, read with the preflight's quick retries.
async fn registered_names(connection: &crate::link::Connection) -> Result<BTreeMap<u8, AttrSlot>> {
    apply::with_retries(
        &connection.client,
        &crate::link::PREFLIGHT_RETRY,
        &StopSignal::new(),
        &CallStats::default(),
        || connection.client.get_attr_name(),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot read the app's attribute names from {}: {e}",
            connection.base_url
        )
    })
}

/// `attrsync attributes list`: every registered slot of the app, and whether `attributes` in
/// attrsync.yaml uses it; then the configured names the app lacks.
pub async fn attributes_list(ctx: &Globals) -> Result<String> {
    let config = ctx.load_config()?;
    let settings = &config.settings;
    let connection = connect(settings).await?;
    let registered = registered_names(&connection).await?;
    let configured = |name: &str| settings.attributes.iter().any(|a| a.as_str() == name);
    let mut out = format!(
        "{} registered on the app ({} slots free):\n",
        plan::plural(registered.len(), "attribute name"),
        crate::model::MAX_ATTRIBUTES.saturating_sub(registered.len())
    );
    for (slot, attr) in &registered {
        let used = match configured(&attr.name) {
            true => "in attributes",
            false => "not in attributes: attrsync leaves it alone",
        };
        out.push_str(&format!(
            "  slot {slot}: {} (account type {}; {used})\n",
            attr.name, attr.account_type
        ));
    }
    let missing: Vec<&str> = settings
        .attributes
        .iter()
        .map(|a| a.as_str())
        .filter(|name| !registered.values().any(|r| r.name == *name))
        .collect();
    if !missing.is_empty() {
        out.push_str(&format!(
            "Not registered yet: {}; `attrsync attributes push` registers {}.\n",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        ));
    }
    Ok(out)
}

/// `attrsync attributes push`: registers the configured names in free slots.
pub async fn attributes_push(ctx: &Globals, auto_approve: bool) -> Result<String> {
    let config = ctx.load_config()?;
    let settings = &config.settings;
    let connection = connect(settings).await?;
    let stop = StopSignal::new();
    let stats = CallStats::default();
    let retry = RetryPolicy::default();
    let registered = registered_names(&connection).await?;
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
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(preview.as_bytes())?;
        stdout.flush()?;
    }
    if !auto_approve {
        require_terminal("register attribute names", "re-run with --auto-approve")?;
        if ask(APPLY_QUESTION, &stop).await? != Answer::Yes {
            return Ok("Cancelled: nothing was registered.\n".to_owned());
        }
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
