//! `attrsync init [DIR]`: a commented starter config repository that validates as written.

use std::path::Path;

use anyhow::{bail, Context as _, Result};

use crate::config::SETTINGS_FILE;

/// The starter `attrsync.yaml`: every line a new user must look at, commented.
const STARTER_SETTINGS: &str = "\
# attrsync.yaml: the settings of this config repository. `attrsync schema config` prints the
# JSON Schema of this file for editors; README's table lists every setting.

# The app's SDKAppID (Tencent Cloud IM console → Applications).
sdkappid: 1400000000

# An App admin account; every request is signed as it.
identifier: administrator

# Where the app lives: china, singapore, seoul, tokyo, frankfurt, silicon-valley or jakarta.
# To try attrsync without an account, write `endpoint: embedded` instead: the emulator then
# runs inside attrsync, with its data in the state directory.
region: singapore

# The environment variable that holds the app's secret key (console → Basic Configuration).
# The key itself never goes into this repository.
secret_key_env: TIM_SECRET_KEY

# The app's attribute names (at most 10). Register them once with `attrsync attributes push`.
attributes: [sex, city, tier]

# Where the user files are, and where the snapshot of what was applied is kept (a directory,
# ignored by git, or a postgres:// URL shared by every machine that runs attrsync).
users_dir: users
state: state

# Delete the attributes of users removed from the config (false: report them as orphaned).
prune: false
";

/// The starter user file.
const STARTER_USERS: &str = "\
# Users and their attributes. Every *.yaml file under users/ is read, in any folder.
# `defaults` apply to every user of this file; a user's own value wins.
defaults:
  tier: free
users:
  Mary:
    sex: female
    city: NewYork
  xiaoming: {sex: male, city: ShenZhen, tier: gold}
";

/// The starter `.gitignore`: the local snapshot is the machine's, not the repository's.
const STARTER_GITIGNORE: &str = "\
# attrsync's local snapshot (sled): what this machine last applied. Not configuration.
/state/
";

/// Writes a starter config repository into `dir` (created if needed). Refuses to overwrite
/// an existing `attrsync.yaml`, `users/` or `.gitignore` entry; returns what to do next.
pub fn init(dir: &Path) -> Result<String> {
    let settings = dir.join(SETTINGS_FILE);
    let users = dir.join("users");
    for existing in [&settings, &users] {
        if existing.exists() {
            bail!(
                "{} already exists: `attrsync init` only starts new config repositories; \
                 pick an empty directory (`attrsync init DIR`)",
                existing.display()
            );
        }
    }
    std::fs::create_dir_all(&users)
        .with_context(|| format!("cannot create {}", users.display()))?;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(&settings, STARTER_SETTINGS)?;
    write(&users.join("example.yaml"), STARTER_USERS)?;
    let gitignore = dir.join(".gitignore");
    match std::fs::read_to_string(&gitignore) {
        Ok(existing) if existing.lines().any(|l| l.trim() == "/state/") => {}
        Ok(existing) => write(
            &gitignore,
            &format!("{}\n{STARTER_GITIGNORE}", existing.trim_end()),
        )?,
        Err(_) => write(&gitignore, STARTER_GITIGNORE)?,
    }
    let shown = dir.display();
    Ok(format!(
        "Created a config repository in {shown}: attrsync.yaml, users/example.yaml, .gitignore.\n\
         Next:\n  \
         1. Set sdkappid, identifier, region and attributes in {shown}/attrsync.yaml.\n  \
         2. export TIM_SECRET_KEY=<the app's secret key>\n  \
         3. attrsync --dir {shown} attributes push    # registers the attribute names once\n  \
         4. attrsync --dir {shown} plan               # then `apply`\n"
    ))
}
