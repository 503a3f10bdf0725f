//! [`SledStore`]: the sled database behind the [`SnapshotStore`] trait. sled blocks (a commit
//! waits for fsync), so every call runs on tokio's blocking pool, never on an async worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::snapshot_store::{PagedUser, SnapshotStore};
use super::store::{Binding, Commit, Holder, OnOtherTarget, SledDb, StateError};
use crate::model::{InDoubt, Snapshot, SnapshotEntry};

/// A sled snapshot, shared: clones use one open database.
#[derive(Clone, Debug)]
pub struct SledStore {
    db: Arc<SledDb>,
    /// For a snapshot this user may only read: the private copy opened instead (sled needs
    /// write access to open a database), removed with the last clone.
    _copy: Option<Arc<ReadCopy>>,
}

/// A private temporary copy of a state directory, removed when dropped.
#[derive(Debug)]
struct ReadCopy(PathBuf);

impl Drop for ReadCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the snapshot's files in `from` into `to` (holder record and the embedded emulator's
/// data left out: neither is the snapshot).
fn copy_snapshot(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == super::store::HOLDER_FILE || name == "emulator" {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        if entry.file_type()?.is_dir() {
            crate::files::create_private_dir(&target)?;
            copy_snapshot(&source, &target)?;
        } else if entry.file_type()?.is_file() {
            std::fs::copy(&source, &target)?;
            // The copy keeps the source's (read-only) mode; sled opens it for writing.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

impl SledStore {
    /// Opens (creating if needed) the snapshot at `dir`; see [`SledDb::open_with`].
    pub async fn open(
        dir: &Path,
        binding: Binding<'_>,
        holder: &Holder,
        on_other_target: OnOtherTarget,
    ) -> Result<Self, StateError> {
        let dir: PathBuf = dir.to_owned();
        let (sdkappid, target, holder) = (binding.sdkappid, binding.target.clone(), holder.clone());
        let db = blocking(move || {
            let binding = Binding {
                sdkappid,
                target: &target,
            };
            SledDb::open_with(&dir, binding, &holder, on_other_target)
        })
        .await?;
        Ok(Self::from(db))
    }

    /// Opens the snapshot at `dir` for reading by a user who may not write there: sled needs
    /// write access to open a database, so a private temporary copy is opened instead (and
    /// removed when the store is dropped). Writes to it would be lost: read access only.
    pub async fn open_read_only(
        dir: &Path,
        binding: Binding<'_>,
        holder: &Holder,
    ) -> Result<Self, StateError> {
        let copy_dir = std::env::temp_dir().join(format!(
            "attrsync-read-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let io_error = |doing, e: std::io::Error| StateError::Sled {
            doing,
            dir: dir.to_owned(),
            cause: sled::Error::Io(e),
        };
        crate::files::create_private_dir(&copy_dir).map_err(|e| io_error("copy", e))?;
        let copy = ReadCopy(copy_dir);
        copy_snapshot(dir, &copy.0).map_err(|e| io_error("read", e))?;
        let opened = Self::open(&copy.0, binding, holder, OnOtherTarget::Refuse).await?;
        Ok(Self {
            db: opened.db,
            _copy: Some(Arc::new(copy)),
        })
    }

    /// The database itself, for sled-only work (benchmarks, damage checks).
    pub fn db(&self) -> &SledDb {
        &self.db
    }

    /// Runs `read` on the blocking pool with the database.
    fn with<T: Send + 'static>(
        &self,
        read: impl FnOnce(&SledDb) -> Result<T, StateError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StateError>> {
        let db = Arc::clone(&self.db);
        Box::pin(blocking(move || read(&db)))
    }
}

impl From<SledDb> for SledStore {
    fn from(db: SledDb) -> Self {
        Self {
            db: Arc::new(db),
            _copy: None,
        }
    }
}

/// Runs `work` on the blocking pool. A panic there is a bug, resumed here as one.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

impl SnapshotStore for SledStore {
    fn location(&self) -> String {
        self.db.dir().display().to_string()
    }

    fn serial(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        self.with(SledDb::serial)
    }

    fn load(&self) -> BoxFuture<'_, Result<Snapshot, StateError>> {
        self.with(SledDb::load)
    }

    fn get<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<SnapshotEntry>, StateError>> {
        let user = user.to_owned();
        self.with(move |db| db.get(&user))
    }

    fn doubt<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<InDoubt>, StateError>> {
        let user = user.to_owned();
        self.with(move |db| db.doubt(&user))
    }

    fn users_after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<PagedUser>, StateError>> {
        let after = after.map(str::to_owned);
        self.with(move |db| {
            db.users_after(after.as_deref(), limit)?
                .into_iter()
                .map(|(user, entry)| {
                    let in_doubt = db.doubt(user.as_str())?.is_some();
                    Ok(PagedUser {
                        user,
                        entry,
                        in_doubt,
                    })
                })
                .collect()
        })
    }

    fn drift_cursor(&self) -> BoxFuture<'_, Result<Option<String>, StateError>> {
        self.with(SledDb::drift_cursor)
    }

    fn save_drift_cursor<'a>(
        &'a self,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        let cursor = cursor.map(str::to_owned);
        self.with(move |db| db.save_drift_cursor(cursor.as_deref()))
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<u64, StateError>> {
        self.with(move |db| db.commit(&commit))
    }

    fn replace_all(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<u64, StateError>> {
        self.with(move |db| db.replace_all(&snapshot))
    }

    fn mark_migrated<'a>(&'a self, to: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        let to = to.to_owned();
        self.with(move |db| db.mark_migrated(&to))
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StateError>> {
        // A stat of the directory: cheap enough for the async worker.
        Box::pin(std::future::ready(self.db.check_dir()))
    }

    fn previous_target(&self) -> Option<String> {
        // Opened for another server only to adopt it (`import`), which replaces everything.
        None
    }

    fn other_target(&self) -> Option<String> {
        self.db.other_target()
    }
}
