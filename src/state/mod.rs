//! The snapshot store: what the server last accepted, per user, and who is in doubt, kept in
//! sled.
//!
//! sled 0.34 makes a write durable only at `flush`, and lets one process open a database at a
//! time. So every commit is one transaction followed by a flush before it returns, and a second
//! process gets [`StateError::Locked`] naming whoever holds the database (from a small
//! `holder.json` that the holder writes next to it).
//!
//! Users are stored in chunks: one sled key per sorted run of about [`CHUNK_USERS`] users,
//! keyed by the run's first user id. sled spends about a microsecond per key on iteration, so
//! one key per user made reading a million-user snapshot take seconds; chunks read in tens of
//! milliseconds, and a batch (up to 100 users, consecutive in plan order) rewrites one or two.
//!
//! The store checks itself, because a snapshot that silently went back in time would make
//! `plan` lie: every chunk and in-doubt record carries a CRC-32; the user count is kept beside
//! the data; and the serial of the last commit is also written to a small `serial` file
//! outside the database, after the database is durable. A database older than that file (a
//! damaged log that sled truncated, files put back from a copy) is refused with
//! [`StateError::RolledBack`], never read as if nothing happened. The directory's identity is
//! checked before every commit, so a state directory deleted under a running process stops it
//! ([`StateError::Gone`]) instead of committing into files nobody will read.
//!
//! - [`SnapshotStore`]: what attrsync asks of any snapshot backend (async, paged reads, one
//!   commit per batch); everything outside this module goes through it.
//! - [`SledStore`]: the sled database behind that trait.
//! - [`store`]: the sled database ([`SledDb`]) and its checks.
//! - `codec`: the binary records inside it.
//! - [`jsonl`]: `state export` / `state import`.

mod codec;
pub mod jsonl;
pub mod pg;
mod sled_store;
mod snapshot_store;
pub mod store;

pub use jsonl::{export, parse_import, ImportProblem, Imported};
pub use pg::{Access, PgStore};
pub use sled_store::SledStore;
pub use snapshot_store::{PagedUser, SnapshotStore};
pub use store::{
    Binding, Commit, Holder, OnOtherTarget, SledDb, StateError, CHUNK_USERS, FORMAT_VERSION,
};

use std::sync::Arc;

use crate::model::StateLocation;

/// Opens (creating if needed) the snapshot at `location` for `binding`: a sled directory, or
/// an app in a PostgreSQL database. `access` says whether it is written (a PostgreSQL writer
/// takes the app's lock; sled lets one process at a time open a directory anyway); what to
/// do when a sled snapshot records another server is `on_other_target`.
pub async fn open(
    location: &StateLocation,
    binding: Binding<'_>,
    holder: &Holder,
    on_other_target: OnOtherTarget,
    access: Access,
) -> Result<Arc<dyn SnapshotStore>, StateError> {
    Ok(match location {
        StateLocation::Dir(dir) => {
            match SledStore::open(dir, binding, holder, on_other_target).await {
                Ok(store) => Arc::new(store),
                // A user who may only read the directory can still plan and inspect.
                Err(error) if error.is_permission_denied() && access == Access::Read => {
                    tracing::debug!(dir = %dir.display(), "the snapshot is read-only here: reading a private copy");
                    Arc::new(SledStore::open_read_only(dir, binding, holder).await?)
                }
                Err(error) => return Err(error),
            }
        }
        StateLocation::Postgres(url) => {
            Arc::new(PgStore::open(url, binding, holder, access).await?)
        }
    })
}

/// Opens the snapshot at `location` if one exists; `None` (and nothing created) when a sled
/// directory holds none. A PostgreSQL app without a snapshot reads as empty.
pub async fn open_existing(
    location: &StateLocation,
    binding: Binding<'_>,
    holder: &Holder,
    access: Access,
) -> Result<Option<Arc<dyn SnapshotStore>>, StateError> {
    match location {
        StateLocation::Dir(dir) if !SledDb::exists(dir) => Ok(None),
        _ => open(location, binding, holder, OnOtherTarget::Refuse, access)
            .await
            .map(Some),
    }
}
