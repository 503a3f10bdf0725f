//! The sled store: opening (lock, format, app and server checks, the `serial` file), reading,
//! one transaction per commit, and replacing everything at once.

use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::codec::{
    decode_chunk, decode_doubt, decode_entry, decode_serial, decode_user, encode_chunk,
    encode_doubt, encode_entry, encode_serial, Decoder,
};
use crate::model::{Attrs, InDoubt, Snapshot, SnapshotEntry, Target, UserId, UserMap};

/// The on-disk format this build writes. It reads format 1 too, and upgrades it on open.
pub const FORMAT_VERSION: u64 = 2;

const KEY_FORMAT: &[u8] = b"format_version";
const KEY_SDKAPPID: &[u8] = b"sdkappid";
const KEY_SERIAL: &[u8] = b"serial";
const KEY_TARGET: &[u8] = b"target";
const KEY_USER_COUNT: &[u8] = b"user_count";
const KEY_USERS_TREE: &[u8] = b"users_tree";
const KEY_DRIFT_CURSOR: &[u8] = b"drift_cursor";
/// Where the snapshot went with `state migrate`; a snapshot with it is never opened again.
const KEY_MIGRATED_TO: &[u8] = b"migrated_to";
const META_TREE: &[u8] = b"meta";
const DOUBT_TREE: &[u8] = b"in_doubt";
pub(super) const HOLDER_FILE: &str = "holder.json";
/// The serial of the last commit, outside the database: 8 bytes LE then their CRC-32.
const SERIAL_FILE: &str = "serial";
/// Users per chunk when chunks are built or split.
pub const CHUNK_USERS: usize = 128;
/// A chunk that grows past this is split.
const CHUNK_SPLIT_ABOVE: usize = 2 * CHUNK_USERS;
/// How many chunks [`SledDb::load`] reads before decoding them: 64k users, a few MB.
const LOAD_BATCH_CHUNKS: usize = 512;
/// The most users [`SledDb::load`] makes room for up front, whatever the recorded count says.
const LOAD_PRESIZE_MAX: usize = 1 << 24;
/// sled's default cache is 1 GiB; the snapshot is read once per run, so a small one is enough.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// What `attrsync import` does about a damaged snapshot, for every message that needs it.
const REBUILD: &str = "move the directory aside and rebuild the snapshot from the server with \
                       `attrsync import` (the server is the truth; the snapshot is a record of it)";

/// Why the snapshot cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process has the database open.
    #[error("the snapshot at {dir} is in use by another attrsync process{holder}; wait for it to finish, or stop it, then run again")]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// ` (pid 1234, attrsync watch, …)` when known, else empty.
        holder: String,
    },
    /// The snapshot was written for another app.
    #[error("the snapshot at {dir} belongs to app {found}, but attrsync.yaml says {expected}; point --state (or state_dir) at this app's snapshot")]
    OtherApp {
        /// The state directory.
        dir: PathBuf,
        /// The sdkappid stored in the snapshot.
        found: u64,
        /// The sdkappid in the settings.
        expected: u64,
    },
    /// The snapshot records another server than the one the settings point at.
    #[error("the snapshot at {dir} records what {found} holds, but attrsync.yaml now points at {expected}; \
             its values say nothing about that server. Point --state (or state_dir) at a snapshot of {expected}, \
             or run `attrsync import` to adopt {expected}'s current values into this snapshot")]
    OtherTarget {
        /// The state directory.
        dir: PathBuf,
        /// The server recorded in the snapshot.
        found: String,
        /// The server in the settings.
        expected: String,
    },
    /// Written by an incompatible attrsync.
    #[error("the snapshot at {dir} has format version {found}, this attrsync reads 1 to {FORMAT_VERSION}; use a matching attrsync version")]
    Version {
        /// The state directory.
        dir: PathBuf,
        /// The version found.
        found: u64,
    },
    /// A record could not be decoded, or failed its checksum.
    #[error("the snapshot at {dir} is damaged ({what}); {REBUILD}")]
    Corrupt {
        /// The state directory.
        dir: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The database is older than its last commit.
    #[error("the snapshot at {dir} went back in time: its last commit was serial {expected}, but the database holds serial {found} \
             (damaged or truncated files, or files put back from an older copy), so it may claim values the server no longer holds; {REBUILD}")]
    RolledBack {
        /// The state directory.
        dir: PathBuf,
        /// The serial in the `serial` file.
        expected: u64,
        /// The serial in the database.
        found: u64,
    },
    /// The state directory was removed or replaced while the store was open.
    #[error("the state directory {dir} was removed or replaced while attrsync was using it; nothing more is recorded. \
             Restore it, or start again with a new snapshot (`attrsync import` reads the server's values)")]
    Gone {
        /// The state directory.
        dir: PathBuf,
    },
    /// The PostgreSQL URL cannot be used.
    #[error(transparent)]
    BadUrl(#[from] super::pg::BadUrl),
    /// PostgreSQL failed or could not be reached.
    #[error("cannot {doing} the snapshot at {location}: {source}; check that the database is reachable and that the URL, user and password are right")]
    Postgres {
        /// What was being done ("connect to", "commit to", …).
        doing: &'static str,
        /// The URL without its password.
        location: String,
        /// The database's error.
        source: tokio_postgres::Error,
    },
    /// The schema was migrated by a newer attrsync.
    #[error("the snapshot at {location} has schema version {found}, this attrsync knows 1 to {known}; use a matching attrsync version")]
    SchemaTooNew {
        /// The URL without its password.
        location: String,
        /// The version found.
        found: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// Another writer holds the app's lock.
    #[error("the snapshot of {app} at {location} is locked by another attrsync{holder}, lock ID {lock_id}; wait for it to finish, \
             or pass --lock-timeout DURATION to wait for it, or, if that process is gone, run `attrsync state unlock {lock_id}`")]
    LockHeld {
        /// The URL without its password.
        location: String,
        /// `app 1400000000 (region singapore …)`.
        app: String,
        /// ` (pid …, host …, command, since, version)`.
        holder: String,
        /// The holder's lock ID, for `state unlock`.
        lock_id: String,
    },
    /// This process no longer holds its lock: its session died, or `state unlock` ended it.
    #[error("the lock on the snapshot at {location} was lost ({reason}); nothing more is recorded and no more calls are sent. \
             Run again: users whose writes were in flight are in doubt, and the next run re-sends them")]
    LockLost {
        /// The URL without its password.
        location: String,
        /// What happened.
        reason: String,
    },
    /// No lock has this ID.
    #[error("no lock with ID {lock_id} is held on the snapshot at {location}; a writer refused by the lock is told the current lock's ID")]
    NoSuchLock {
        /// The URL without its password.
        location: String,
        /// The ID given.
        lock_id: String,
    },
    /// The snapshot was moved elsewhere with `state migrate`.
    #[error("the snapshot at {location} was migrated to {to} and is kept only as a record; point --state (or `state`) at {to}")]
    Migrated {
        /// Where it is.
        location: String,
        /// Where it went (without a password).
        to: String,
    },
    /// A record in the database cannot be read.
    #[error("the snapshot at {location} holds a record attrsync cannot read ({what}); rebuild the snapshot with `attrsync import`")]
    Unreadable {
        /// The URL without its password.
        location: String,
        /// What is wrong.
        what: String,
    },
    /// A write was attempted through a store opened for reading.
    #[error("the snapshot at {location} was opened for reading only; this is a bug in attrsync, please report it")]
    ReadOnly {
        /// Where it is.
        location: String,
    },
    /// sled or the file system failed.
    // `cause`, not `source`: the message already says it, and a source would print it twice.
    #[error("cannot {doing} the snapshot at {dir}: {cause}; check the disk and the directory's permissions")]
    Sled {
        /// What was being done ("open", "commit to", …).
        doing: &'static str,
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        cause: sled::Error,
    },
}

impl StateError {
    /// Whether the file system refused access (a snapshot this user may only read).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, StateError::Sled { cause: sled::Error::Io(e), .. }
            if e.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

/// Who holds the snapshot: written to `holder.json` beside a sled database, and to the lock
/// record of a PostgreSQL one, so that others can say who is in their way.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// The command, e.g. `watch`.
    pub command: String,
    /// The daemon's `--listen` address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The machine it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Who runs it (the login name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The attrsync version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When it started holding, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

impl Holder {
    /// This process, running `command`.
    pub fn this_process(command: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|h| !h.is_empty());
        Self {
            pid: std::process::id(),
            command: command.to_owned(),
            listen: None,
            host,
            user: std::env::var("USER").ok().filter(|u| !u.is_empty()),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            since: Some(crate::clock::unix_seconds()),
        }
    }

    /// ` (pid 1234 on host h as alice, `attrsync apply`, since …, attrsync 0.1.0)`.
    pub(super) fn describe(&self) -> String {
        let mut text = format!(" (pid {}", self.pid);
        if let Some(host) = &self.host {
            text.push_str(&format!(" on host {host}"));
        }
        if let Some(user) = &self.user {
            text.push_str(&format!(" as {user}"));
        }
        text.push_str(&format!(", `attrsync {}`", self.command));
        if let Some(since) = self.since {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(since);
            text.push_str(&format!(
                ", since {}",
                humantime::format_rfc3339_seconds(at)
            ));
        }
        if let Some(version) = &self.version {
            text.push_str(&format!(", attrsync {version}"));
        }
        if let Some(listen) = &self.listen {
            text.push_str(&format!(
                ", listening on {listen}: GET http://{listen}/plan shows its current plan"
            ));
        }
        text.push(')');
        text
    }
}

/// The app and server a snapshot is about.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    /// The app's SDKAppID.
    pub sdkappid: u64,
    /// The server the values were read from or written to.
    pub target: &'a Target,
}

/// What opening a snapshot recorded for another server does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOtherTarget {
    /// Refuse with [`StateError::OtherTarget`] (every command but import).
    Refuse,
    /// Open it; the caller replaces its whole content with [`SledDb::replace_all`], which binds
    /// it to the new server (`attrsync import`).
    Adopt,
}

/// One atomic write to the snapshot: users recorded after the server accepted them, users
/// marked in doubt before a write is sent, and users whose doubt is cleared.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    /// Users the server accepted: `Some` records attributes (no attributes forgets the user),
    /// `None` forgets the user. Each also leaves doubt.
    pub record: Vec<(UserId, Option<Attrs>)>,
    /// Users to mark in doubt (their snapshot entry stays as it is).
    pub doubt: Vec<(UserId, InDoubt)>,
    /// Users whose doubt is cleared without a new entry: the server proved it applied nothing.
    pub clear: Vec<UserId>,
    /// When the recorded users were applied, in seconds since the Unix epoch.
    pub applied_at: u64,
}

impl Commit {
    /// Whether the commit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.record.is_empty() && self.doubt.is_empty() && self.clear.is_empty()
    }
}

/// The server a snapshot records and the one it is being bound to.
#[derive(Debug, Default)]
struct Targets {
    /// The server to bind the snapshot to at its next commit (a format-1 snapshot has none).
    bind: Option<String>,
    /// The other server the snapshot records, when it was opened to adopt a new one.
    other: Option<String>,
}

/// The identity of a directory, to notice it being removed or replaced.
type DirId = (u64, u64);

fn dir_id(dir: &Path) -> Option<DirId> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// The open snapshot store.
pub struct SledDb {
    dir: PathBuf,
    dir_id: Option<DirId>,
    db: sled::Db,
    meta: sled::Tree,
    /// The users tree; `replace_all` swaps in a new one.
    users: std::sync::RwLock<sled::Tree>,
    doubt: sled::Tree,
    serial_file: std::fs::File,
    /// Which server the snapshot is bound to, and what changes at the next commit.
    targets: std::sync::Mutex<Targets>,
    /// Commits read the chunks they change before their transaction (sled transactions
    /// cannot range-scan), so commits must not interleave.
    commit_lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for SledDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledDb")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The u64 at `key`, if any.
fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, Option<sled::Error>> {
    match tree.get(key).map_err(Some)? {
        None => Ok(None),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
            .map(|b| Some(u64::from_le_bytes(b)))
            .map_err(|_| None),
    }
}

impl SledDb {
    /// Opens (creating if needed) the snapshot at `dir` for `binding`, refusing one recorded
    /// for another app or server.
    pub fn open(dir: &Path, binding: Binding<'_>, holder: &Holder) -> Result<SledDb, StateError> {
        Self::open_with(dir, binding, holder, OnOtherTarget::Refuse)
    }

    /// Opens (creating if needed) the snapshot at `dir`, saying what to do when it records
    /// another server.
    pub fn open_with(
        dir: &Path,
        binding: Binding<'_>,
        holder: &Holder,
        on_other_target: OnOtherTarget,
    ) -> Result<SledDb, StateError> {
        let store_err = |doing, source| sled_error(doing, dir, source);
        let corrupt = |what: String| StateError::Corrupt {
            dir: dir.to_owned(),
            what,
        };
        let db = open_sled(dir)?;
        let meta = db.open_tree(META_TREE).map_err(|e| store_err("open", e))?;
        let read = |key: &[u8]| {
            read_u64(&meta, key).map_err(|e| match e {
                Some(source) => store_err("read", source),
                None => corrupt(format!("meta key {}", String::from_utf8_lossy(key))),
            })
        };
        let target = binding.target.key();
        let found_format = read(KEY_FORMAT)?;
        let (serial_file, file_serial) = open_serial_file(dir)?;
        match found_format {
            None => {
                if let Some(expected) = file_serial.filter(|s| *s > 0) {
                    // The database files are gone but the serial file is not.
                    return Err(StateError::RolledBack {
                        dir: dir.to_owned(),
                        expected,
                        found: 0,
                    });
                }
                let mut batch = sled::Batch::default();
                batch.insert(KEY_FORMAT, &FORMAT_VERSION.to_le_bytes());
                batch.insert(KEY_SDKAPPID, &binding.sdkappid.to_le_bytes());
                batch.insert(KEY_SERIAL, &0u64.to_le_bytes());
                batch.insert(KEY_USER_COUNT, &0u64.to_le_bytes());
                batch.insert(KEY_USERS_TREE, b"users.0".as_slice());
                batch.insert(KEY_TARGET, target.as_bytes());
                meta.apply_batch(batch)
                    .map_err(|e| store_err("initialise", e))?;
                db.flush().map_err(|e| store_err("initialise", e))?;
            }
            Some(1 | FORMAT_VERSION) => {}
            Some(found) => {
                return Err(StateError::Version {
                    dir: dir.to_owned(),
                    found,
                })
            }
        }
        match read(KEY_SDKAPPID)? {
            Some(found) if found != binding.sdkappid => {
                return Err(StateError::OtherApp {
                    dir: dir.to_owned(),
                    found,
                    expected: binding.sdkappid,
                })
            }
            _ => {}
        }
        let recorded_target = meta
            .get(KEY_TARGET)
            .map_err(|e| store_err("read", e))?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        let (bind_target, other_target) = match recorded_target {
            Some(found) if found != target => match on_other_target {
                OnOtherTarget::Refuse => {
                    return Err(StateError::OtherTarget {
                        dir: dir.to_owned(),
                        found,
                        expected: target,
                    })
                }
                OnOtherTarget::Adopt => (Some(target), Some(found)),
            },
            Some(_) => (None, None),
            // A snapshot written before targets were recorded: adopted at its first write.
            None => (Some(target), None),
        };
        if let Some(to) = meta
            .get(KEY_MIGRATED_TO)
            .map_err(|e| store_err("read", e))?
        {
            return Err(StateError::Migrated {
                location: dir.display().to_string(),
                to: String::from_utf8_lossy(&to).into_owned(),
            });
        }
        let db_serial = read(KEY_SERIAL)?.unwrap_or(0);
        if let Some(expected) = file_serial.filter(|s| *s > db_serial) {
            return Err(StateError::RolledBack {
                dir: dir.to_owned(),
                expected,
                found: db_serial,
            });
        }
        let users_name = meta
            .get(KEY_USERS_TREE)
            .map_err(|e| store_err("read", e))?
            .unwrap_or_else(|| "users.0".into());
        let users = db
            .open_tree(&users_name)
            .map_err(|e| store_err("open", e))?;
        let doubt = db.open_tree(DOUBT_TREE).map_err(|e| store_err("open", e))?;
        // A crash during `replace_all` can leave an unreferenced tree behind: drop it.
        for name in db.tree_names() {
            if name.starts_with(b"users.") && name != users_name {
                db.drop_tree(&name).map_err(|e| store_err("clean up", e))?;
            }
        }
        let store = SledDb {
            dir: dir.to_owned(),
            dir_id: dir_id(dir),
            db,
            meta,
            users: std::sync::RwLock::new(users),
            doubt,
            serial_file,
            targets: std::sync::Mutex::new(Targets {
                bind: bind_target,
                other: other_target,
            }),
            commit_lock: std::sync::Mutex::new(()),
        };
        if found_format == Some(1) {
            store.upgrade_from_format_1()?;
        }
        if file_serial != Some(db_serial) {
            // New, written by a version without the file, or a crash came between the
            // database flush and the file write: the database is the later of the two.
            store.write_serial_file(db_serial)?;
        }
        // Best effort: the file only improves the message another process shows. Written
        // through a temp file, so a symlink planted as holder.json is never followed.
        let _ = crate::files::write_private(&dir.join(HOLDER_FILE), &holder_json(holder));
        // sled creates its files with the process's umask: they hold every user's data.
        if let Err(error) = crate::files::make_private(dir) {
            tracing::warn!(%error, dir = %dir.display(), "could not make the snapshot's files private (0600)");
        }
        Ok(store)
    }

    /// Opens the snapshot at `dir` if one exists; `None` (and nothing created) otherwise.
    pub fn open_existing(
        dir: &Path,
        binding: Binding<'_>,
        holder: &Holder,
    ) -> Result<Option<SledDb>, StateError> {
        if Self::exists(dir) {
            Self::open(dir, binding, holder).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Whether a snapshot (or what is left of one) is at `dir`.
    pub fn exists(dir: &Path) -> bool {
        ["db", "conf", SERIAL_FILE]
            .iter()
            .any(|name| dir.join(name).exists())
    }

    /// Format 1 had no user count: count once, and mark the database as format 2.
    fn upgrade_from_format_1(&self) -> Result<(), StateError> {
        let mut count = 0u64;
        for item in self.users().iter() {
            let (_, chunk) = item.map_err(self.err("read"))?;
            count += decode_chunk(&chunk)
                .ok_or_else(|| self.corrupt("a chunk of users"))?
                .len() as u64;
        }
        let mut batch = sled::Batch::default();
        batch.insert(KEY_USER_COUNT, &count.to_le_bytes());
        batch.insert(KEY_FORMAT, &FORMAT_VERSION.to_le_bytes());
        self.meta.apply_batch(batch).map_err(self.err("upgrade"))?;
        self.db.flush().map_err(self.err("upgrade"))?;
        Ok(())
    }

    /// The server this snapshot records, when it was opened with [`OnOtherTarget::Adopt`] for
    /// another one: its content must be replaced ([`SledDb::replace_all`]), not added to.
    pub fn other_target(&self) -> Option<String> {
        crate::sync::lock(&self.targets).other.clone()
    }

    /// The current users tree (a cheap handle).
    fn users(&self) -> sled::Tree {
        // A tree handle is replaced whole; a panic elsewhere cannot leave it half-written.
        crate::sync::read(&self.users).clone()
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Updates the holder record (e.g. once the daemon knows its listen address).
    pub fn set_holder(&self, holder: &Holder) {
        let _ = crate::files::write_private(&self.dir.join(HOLDER_FILE), &holder_json(holder));
    }

    fn err(&self, doing: &'static str) -> impl Fn(sled::Error) -> StateError + '_ {
        move |source| sled_error(doing, &self.dir, source)
    }

    fn corrupt(&self, what: &str) -> StateError {
        StateError::Corrupt {
            dir: self.dir.clone(),
            what: what.to_owned(),
        }
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StateError> {
        read_u64(&self.meta, key).map_err(|e| match e {
            Some(source) => self.err("read")(source),
            None => self.corrupt(&format!("meta key {}", String::from_utf8_lossy(key))),
        })
    }

    /// The serial of the last committed write.
    pub fn serial(&self) -> Result<u64, StateError> {
        Ok(self.meta_u64(KEY_SERIAL)?.unwrap_or(0))
    }

    /// Reads the whole snapshot, checking every checksum and the user count.
    pub fn load(&self) -> Result<Snapshot, StateError> {
        let expected = self.meta_u64(KEY_USER_COUNT)?;
        // Sized once from the recorded count (bounded: the count is checked only after
        // reading); grown by doubling, the copy would be the read's peak of memory.
        let mut users = Vec::with_capacity(
            expected.map_or(0, |n| usize::try_from(n).unwrap_or(0).min(LOAD_PRESIZE_MAX)),
        );
        // Decoding a million users is most of the work: the chunks (sorted by key) are read a
        // batch at a time, each batch split into one contiguous run per core and the runs
        // joined in order. A batch, not the whole snapshot: its bytes are freed as it goes.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut chunks = self.users().iter().values();
        let mut batch = Vec::with_capacity(LOAD_BATCH_CHUNKS);
        loop {
            batch.clear();
            for chunk in chunks.by_ref().take(LOAD_BATCH_CHUNKS) {
                batch.push(chunk.map_err(self.err("read"))?);
            }
            if batch.is_empty() {
                break;
            }
            let per_worker = batch.len().div_ceil(workers).max(1);
            let runs: Vec<Result<Vec<(UserId, SnapshotEntry)>, String>> =
                std::thread::scope(|scope| {
                    let mut runs = batch.chunks(per_worker);
                    let own = runs.next().unwrap_or_default();
                    let handles: Vec<_> = runs
                        .map(|run| scope.spawn(move || decode_run(run)))
                        .collect();
                    std::iter::once(decode_run(own))
                        .chain(
                            handles
                                .into_iter()
                                .map(|h| h.join().expect("decoding does not panic")),
                        )
                        .collect()
                });
            for run in runs {
                users.extend(run.map_err(|what| self.corrupt(&what))?);
            }
        }
        let users = UserMap::from_sorted(users).ok_or_else(|| self.corrupt("user order"))?;
        let mut names = Decoder::default();
        if let Some(count) = expected {
            if count != users.len() as u64 {
                return Err(self.corrupt(&format!(
                    "it should hold {count} users but {} were found",
                    users.len()
                )));
            }
        }
        let mut in_doubt = Vec::new();
        for item in self.doubt.iter() {
            let (key, record) = item.map_err(self.err("read"))?;
            let user = decode_user(&key).ok_or_else(|| self.corrupt("a user id"))?;
            let doubt = decode_doubt(&record, &mut names)
                .ok_or_else(|| self.corrupt(&format!("the in-doubt record of user {user}")))?;
            in_doubt.push((user, doubt));
        }
        Ok(Snapshot {
            users,
            in_doubt: UserMap::from_sorted(in_doubt)
                .ok_or_else(|| self.corrupt("in-doubt order"))?,
            serial: self.serial()?,
        })
    }

    /// One user's entry.
    pub fn get(&self, user: &str) -> Result<Option<SnapshotEntry>, StateError> {
        let Some((_, chunk)) = self
            .users()
            .range(..=user.as_bytes())
            .next_back()
            .transpose()
            .map_err(self.err("read"))?
        else {
            return Ok(None);
        };
        let records = decode_chunk(&chunk).ok_or_else(|| self.corrupt("a chunk of users"))?;
        match records.iter().find(|(id, _)| *id == user.as_bytes()) {
            None => Ok(None),
            Some((_, entry)) => decode_entry(entry, &mut Decoder::default())
                .map(Some)
                .ok_or_else(|| self.corrupt(&format!("the record of user {user}"))),
        }
    }

    /// One user's doubt, if it is in doubt.
    pub fn doubt(&self, user: &str) -> Result<Option<InDoubt>, StateError> {
        match self.doubt.get(user.as_bytes()).map_err(self.err("read"))? {
            None => Ok(None),
            Some(record) => decode_doubt(&record, &mut Decoder::default())
                .map(Some)
                .ok_or_else(|| self.corrupt(&format!("the in-doubt record of user {user}"))),
        }
    }

    /// Up to `limit` users after `after` (from the first with `None`), in user-id order, with
    /// their entries: the drift scan's page.
    pub fn users_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(UserId, SnapshotEntry)>, StateError> {
        let start: &[u8] = after.map_or(b"", str::as_bytes);
        let users = self.users();
        // The chunk holding `after` starts at or before it.
        let first = match after {
            Some(after) => users
                .range(..=after.as_bytes())
                .next_back()
                .transpose()
                .map_err(self.err("read"))?
                .map(|(k, _)| k),
            None => None,
        };
        let mut names = Decoder::default();
        let mut out = Vec::with_capacity(limit);
        let range = match &first {
            Some(key) => users.range(key.as_ref()..),
            None => users.range::<&[u8], _>(..),
        };
        for item in range {
            let (_, chunk) = item.map_err(self.err("read"))?;
            for (id, entry) in
                decode_chunk(&chunk).ok_or_else(|| self.corrupt("a chunk of users"))?
            {
                if after.is_some() && id <= start {
                    continue;
                }
                let user = decode_user(id).ok_or_else(|| self.corrupt("a user id"))?;
                let entry = decode_entry(entry, &mut names)
                    .ok_or_else(|| self.corrupt(&format!("the record of user {user}")))?;
                out.push((user, entry));
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Where the daemon's drift scan stopped (the last user it read), if it was saved.
    pub fn drift_cursor(&self) -> Result<Option<String>, StateError> {
        Ok(self
            .meta
            .get(KEY_DRIFT_CURSOR)
            .map_err(self.err("read"))?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Saves where the drift scan stopped (`None`: start over), durably. Not a commit: the
    /// serial does not move, since the cursor says nothing about the server.
    pub fn save_drift_cursor(&self, cursor: Option<&str>) -> Result<(), StateError> {
        match cursor {
            Some(cursor) => self.meta.insert(KEY_DRIFT_CURSOR, cursor.as_bytes()),
            None => self.meta.remove(KEY_DRIFT_CURSOR),
        }
        .map_err(self.err("write"))?;
        self.db.flush().map_err(self.err("flush"))?;
        Ok(())
    }

    /// Checks that the state directory is still the one that was opened: a long-running
    /// holder (the daemon) calls it before each pass, since a pass with nothing to commit
    /// would not notice otherwise.
    pub fn check_dir(&self) -> Result<(), StateError> {
        if dir_id(&self.dir) != self.dir_id {
            return Err(StateError::Gone {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Writes `commit` atomically and durably; returns the new serial.
    ///
    /// The serial grows by one. Recorded users leave doubt; users written with `None` or with
    /// no attributes are forgotten.
    pub fn commit(&self, commit: &Commit) -> Result<u64, StateError> {
        let _guard = crate::sync::lock(&self.commit_lock);
        self.check_dir()?;
        let bind_target = {
            let targets = crate::sync::lock(&self.targets);
            if let (Some(found), Some(expected)) = (&targets.other, &targets.bind) {
                // Adding to another server's records would mix two servers in one snapshot.
                return Err(StateError::OtherTarget {
                    dir: self.dir.clone(),
                    found: found.clone(),
                    expected: expected.clone(),
                });
            }
            targets.bind.clone()
        };
        let users = self.users();
        let mut writes: Vec<(&[u8], Option<Vec<u8>>)> = commit
            .record
            .iter()
            .map(|(user, attrs)| {
                let record = attrs
                    .as_ref()
                    .filter(|a| !a.is_empty())
                    .map(|a| encode_entry(a, commit.applied_at));
                (user.as_str().as_bytes(), record)
            })
            .collect();
        writes.sort_by(|a, b| a.0.cmp(b.0));
        writes.dedup_by(|later, earlier| {
            // The same user twice in one commit: the later write wins.
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        let (removals, inserts, user_delta) = self.rechunk(&users, writes)?;
        let doubt_inserts: Vec<(&[u8], Vec<u8>)> = commit
            .doubt
            .iter()
            .map(|(user, doubt)| (user.as_str().as_bytes(), encode_doubt(doubt)))
            .collect();
        let doubt_removals: Vec<&[u8]> = commit
            .record
            .iter()
            .map(|(user, _)| user.as_str().as_bytes())
            .chain(commit.clear.iter().map(|user| user.as_str().as_bytes()))
            .collect();
        let bind_target = bind_target.as_deref();
        let serial = (&self.meta, &users, &self.doubt)
            .transaction(|(meta, users, doubt)| {
                for key in &removals {
                    users.remove(key)?;
                }
                for (key, chunk) in &inserts {
                    users.insert(key.as_slice(), chunk.as_slice())?;
                }
                for key in &doubt_removals {
                    doubt.remove(*key)?;
                }
                for (key, record) in &doubt_inserts {
                    doubt.insert(*key, record.as_slice())?;
                }
                let read =
                    |key: &[u8]| -> Result<u64, sled::transaction::UnabortableTransactionError> {
                        Ok(meta
                            .get(key)?
                            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
                            .map_or(0, u64::from_le_bytes))
                    };
                let serial = read(KEY_SERIAL)? + 1;
                meta.insert(KEY_SERIAL, &serial.to_le_bytes())?;
                let count = read(KEY_USER_COUNT)?.saturating_add_signed(user_delta);
                meta.insert(KEY_USER_COUNT, &count.to_le_bytes())?;
                if let Some(target) = bind_target {
                    meta.insert(KEY_TARGET, target.as_bytes())?;
                }
                Ok::<u64, ConflictableTransactionError<()>>(serial)
            })
            .map_err(|e| match e {
                TransactionError::Storage(cause) => StateError::Sled {
                    doing: "commit to",
                    dir: self.dir.clone(),
                    cause,
                },
                TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
            })?;
        self.db.flush().map_err(self.err("flush"))?;
        self.write_serial_file(serial)?;
        Ok(serial)
    }

    /// The chunk rewrites that apply `writes` (sorted by user, each user once): chunk keys to
    /// remove, chunks to insert, and how the user count changes.
    #[allow(clippy::type_complexity)]
    fn rechunk(
        &self,
        users: &sled::Tree,
        writes: Vec<(&[u8], Option<Vec<u8>>)>,
    ) -> Result<(Vec<sled::IVec>, Vec<(Vec<u8>, Vec<u8>)>, i64), StateError> {
        // Which chunk each write lands in: the last chunk starting at or before the user, or
        // the first chunk for a user before all of them.
        let first_key = users.first().map_err(self.err("read"))?.map(|(k, _)| k);
        // (the chunk's key, or None when the tree is empty) → the writes that land in it.
        type Group<'w> = (Option<sled::IVec>, Vec<(&'w [u8], Option<Vec<u8>>)>);
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (user, record) in writes {
            let key = match users
                .range(..=user)
                .next_back()
                .transpose()
                .map_err(self.err("read"))?
            {
                Some((key, _)) => Some(key),
                None => first_key.clone(),
            };
            match groups.last_mut() {
                Some((k, members)) if *k == key => members.push((user, record)),
                _ => groups.push((key, vec![(user, record)])),
            }
        }
        let mut removals: Vec<sled::IVec> = Vec::new();
        let mut inserts: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut delta = 0i64;
        for (key, members) in groups {
            let old = match &key {
                Some(key) => users.get(key).map_err(self.err("read"))?,
                None => None,
            };
            let mut records: Vec<(Vec<u8>, Vec<u8>)> = match &old {
                Some(chunk) => decode_chunk(chunk)
                    .ok_or_else(|| self.corrupt("a chunk of users"))?
                    .into_iter()
                    .map(|(id, entry)| (id.to_vec(), entry.to_vec()))
                    .collect(),
                None => Vec::new(),
            };
            let before = records.len() as i64;
            for (user, record) in members {
                match (
                    records.binary_search_by(|(id, _)| id.as_slice().cmp(user)),
                    record,
                ) {
                    (Ok(i), Some(record)) => records[i].1 = record,
                    (Ok(i), None) => {
                        records.remove(i);
                    }
                    (Err(i), Some(record)) => records.insert(i, (user.to_vec(), record)),
                    (Err(_), None) => {}
                }
            }
            delta += records.len() as i64 - before;
            if let Some(key) = key.filter(|_| old.is_some()) {
                removals.push(key);
            }
            let pieces = if records.len() > CHUNK_SPLIT_ABOVE {
                records.len().div_ceil(CHUNK_USERS)
            } else {
                1
            };
            let per_piece = records.len().div_ceil(pieces.max(1)).max(1);
            for piece in records.chunks(per_piece) {
                inserts.push((piece[0].0.clone(), encode_chunk(piece)));
            }
        }
        Ok((removals, inserts, delta))
    }

    /// Replaces the whole snapshot with `users` and `in_doubt` atomically and binds it to the
    /// server it was opened for; returns the new serial.
    ///
    /// The new content goes to a fresh tree first; one small transaction then switches the
    /// snapshot over, so a crash leaves either the old or the new snapshot, never a mix.
    pub fn replace_all(&self, snapshot: &Snapshot) -> Result<u64, StateError> {
        let (users, in_doubt) = (&snapshot.users, &snapshot.in_doubt);
        let _guard = crate::sync::lock(&self.commit_lock);
        self.check_dir()?;
        let current = self
            .meta
            .get(KEY_USERS_TREE)
            .map_err(self.err("read"))?
            .unwrap_or_else(|| "users.0".into());
        let generation: u64 = std::str::from_utf8(&current)
            .ok()
            .and_then(|s| s.strip_prefix("users."))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let next_name = format!("users.{}", generation + 1);
        let next = self.db.open_tree(&next_name).map_err(self.err("write"))?;
        next.clear().map_err(self.err("write"))?;
        let records: Vec<(Vec<u8>, Vec<u8>)> = users
            .iter()
            .filter(|(_, e)| !e.attrs.is_empty())
            .map(|(user, entry)| {
                (
                    user.as_str().as_bytes().to_vec(),
                    encode_entry(&entry.attrs, entry.applied_at),
                )
            })
            .collect();
        let mut batch = sled::Batch::default();
        for piece in records.chunks(CHUNK_USERS) {
            batch.insert(piece[0].0.as_slice(), encode_chunk(piece));
        }
        next.apply_batch(batch).map_err(self.err("write"))?;
        self.db.flush().map_err(self.err("flush"))?;
        let serial = (self.serial()? + 1).max(snapshot.serial);
        let target = crate::sync::lock(&self.targets)
            .bind
            .clone()
            .map(String::into_bytes)
            .or_else(|| self.meta.get(KEY_TARGET).ok().flatten().map(|t| t.to_vec()));
        let old_doubts: Vec<sled::IVec> = self
            .doubt
            .iter()
            .keys()
            .collect::<Result<_, _>>()
            .map_err(self.err("read"))?;
        let new_doubts: Vec<(Vec<u8>, Vec<u8>)> = in_doubt
            .iter()
            .map(|(user, doubt)| (user.as_str().as_bytes().to_vec(), encode_doubt(doubt)))
            .collect();
        (&self.meta, &self.doubt)
            .transaction(|(meta, doubt)| {
                for key in &old_doubts {
                    doubt.remove(key)?;
                }
                for (key, record) in &new_doubts {
                    doubt.insert(key.as_slice(), record.as_slice())?;
                }
                meta.insert(KEY_USERS_TREE, next_name.as_bytes())?;
                meta.insert(KEY_SERIAL, &serial.to_le_bytes())?;
                meta.insert(KEY_USER_COUNT, &(records.len() as u64).to_le_bytes())?;
                if let Some(target) = &target {
                    meta.insert(KEY_TARGET, target.as_slice())?;
                }
                meta.remove(KEY_DRIFT_CURSOR)?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(source) => self.err("write")(source),
                TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
            })?;
        self.db.flush().map_err(self.err("flush"))?;
        self.write_serial_file(serial)?;
        *crate::sync::write(&self.users) = next;
        *crate::sync::lock(&self.targets) = Targets::default();
        self.db.drop_tree(&current).map_err(self.err("clean up"))?;
        self.db.flush().map_err(self.err("flush"))?;
        Ok(serial)
    }

    /// Marks the snapshot as moved to `to`: it is never opened again (`state migrate`).
    pub fn mark_migrated(&self, to: &str) -> Result<(), StateError> {
        let _guard = crate::sync::lock(&self.commit_lock);
        self.meta
            .insert(KEY_MIGRATED_TO, to.as_bytes())
            .map_err(self.err("write"))?;
        self.db.flush().map_err(self.err("flush"))?;
        Ok(())
    }

    /// Records `serial` outside the database, after the database holds it durably.
    ///
    /// One 12-byte write in place: a sector is written whole, so a crash leaves the old or the
    /// new value. No fsync: a value lost in a crash is older than the database, which is
    /// allowed (the database is then the later of the two); only a database older than the
    /// file is refused.
    fn write_serial_file(&self, serial: u64) -> Result<(), StateError> {
        self.serial_file
            .write_all_at(&encode_serial(serial), 0)
            .map_err(|e| self.err("record the serial of")(sled::Error::Io(e)))
    }
}

impl Drop for SledDb {
    fn drop(&mut self) {
        let _ = self.db.flush();
        let _ = std::fs::remove_file(self.dir.join(HOLDER_FILE));
    }
}

/// A sled failure as a [`StateError`]: damaged data is [`StateError::Corrupt`], whatever was
/// being done when sled found it.
fn sled_error(doing: &'static str, dir: &Path, source: sled::Error) -> StateError {
    match source {
        sled::Error::Corruption { at, .. } => StateError::Corrupt {
            dir: dir.to_owned(),
            what: match at {
                Some(at) => format!("sled found damaged data at {at:?} in its files"),
                None => "sled found damaged data in its files".to_owned(),
            },
        },
        cause => StateError::Sled {
            doing,
            dir: dir.to_owned(),
            cause,
        },
    }
}

/// Decodes a run of user chunks in key order; the error says what is damaged.
fn decode_run(chunks: &[sled::IVec]) -> Result<Vec<(UserId, SnapshotEntry)>, String> {
    let mut decoder = Decoder::default();
    let mut users = Vec::with_capacity(chunks.len() * CHUNK_USERS);
    for chunk in chunks {
        for (id, entry) in decode_chunk(chunk).ok_or("a chunk of users")? {
            let user = decode_user(id).ok_or("a user id")?;
            let entry = decode_entry(entry, &mut decoder)
                .ok_or_else(|| format!("the record of user {user}"))?;
            users.push((user, entry));
        }
    }
    Ok(users)
}

/// How long opening waits for a handle of this same process to let go of the database.
const OWN_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens the sled database at `dir`, telling "held by another process" apart.
///
/// sled releases its file lock when the last reference to the database goes, and its own
/// worker threads may hold one for a moment after the store was dropped; so when the holder is
/// this process (or nobody says), opening is retried for up to [`OWN_RELEASE_WAIT`].
fn open_sled(dir: &Path) -> Result<sled::Db, StateError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            // Every write path flushes before it returns; a background flusher would only
            // wake an idle daemon for nothing.
            .flush_every_ms(None)
            .open();
        let holder = match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(err)) if err.to_string().contains("could not acquire lock") => {
                std::fs::read(dir.join(HOLDER_FILE))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Holder>(&bytes).ok())
            }
            Err(err) => return Err(sled_error("open", dir, err)),
        };
        let ours = holder.as_ref().is_none_or(|h| h.pid == std::process::id());
        if !ours || started.elapsed() >= OWN_RELEASE_WAIT {
            return Err(StateError::Locked {
                dir: dir.to_owned(),
                holder: holder.map(|h| h.describe()).unwrap_or_default(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn holder_json(holder: &Holder) -> Vec<u8> {
    serde_json::to_vec(holder).unwrap_or_default()
}

/// Opens (creating) the `serial` file and reads the serial in it, if any.
fn open_serial_file(dir: &Path) -> Result<(std::fs::File, Option<u64>), StateError> {
    let path = dir.join(SERIAL_FILE);
    let io_err = |doing, e: std::io::Error| StateError::Sled {
        doing,
        dir: dir.to_owned(),
        cause: sled::Error::Io(e),
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("open", e))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| io_err("read", e))?;
    if bytes.is_empty() {
        return Ok((file, None));
    }
    let serial = decode_serial(&bytes).ok_or_else(|| StateError::Corrupt {
        dir: dir.to_owned(),
        what: format!("{} fails its checksum", path.display()),
    })?;
    Ok((file, Some(serial)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DoubtNote;

    const EMBEDDED: Target = Target::Embedded;

    fn app(sdkappid: u64) -> Binding<'static> {
        Binding {
            sdkappid,
            target: &EMBEDDED,
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> Attrs {
        Attrs::parse(pairs).unwrap()
    }

    fn id(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn record(writes: &[(&str, Option<Attrs>)], applied_at: u64) -> Commit {
        Commit {
            record: writes.iter().map(|(u, a)| (id(u), a.clone())).collect(),
            applied_at,
            ..Commit::default()
        }
    }

    fn doubt(maybe: &[(&str, &str)]) -> InDoubt {
        InDoubt {
            maybe: attrs(maybe),
            note: DoubtNote {
                since: 7,
                reason: "sent".to_owned(),
            },
        }
    }

    #[test]
    fn commit_grows_the_serial_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let holder = Holder::this_process("test");
        {
            let store = SledDb::open(dir.path(), app(7), &holder).unwrap();
            assert_eq!(store.serial().unwrap(), 0);
            let serial = store
                .commit(&record(
                    &[
                        ("b", Some(attrs(&[("x", "1")]))),
                        ("a", Some(attrs(&[("x", "2")]))),
                    ],
                    100,
                ))
                .unwrap();
            assert_eq!(serial, 1);
            assert_eq!(store.commit(&record(&[("b", None)], 101)).unwrap(), 2);
        }
        let store = SledDb::open(dir.path(), app(7), &holder).unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.serial, 2);
        assert_eq!(
            snapshot
                .users
                .iter()
                .map(|(u, _)| u.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(store.get("a").unwrap().unwrap().applied_at, 100);
    }

    #[test]
    fn doubt_is_marked_then_cleared_by_a_record_or_a_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path(), app(7), &Holder::default()).unwrap();
        store
            .commit(&record(&[("a", Some(attrs(&[("x", "1")])))], 1))
            .unwrap();
        store
            .commit(&Commit {
                doubt: vec![(id("a"), doubt(&[("x", "2")])), (id("b"), doubt(&[]))],
                ..Commit::default()
            })
            .unwrap();
        let snapshot = store.load().unwrap();
        // The entry stays what the server held before; the doubt says what it may hold now.
        assert_eq!(snapshot.users.get("a").unwrap().attrs, attrs(&[("x", "1")]));
        assert_eq!(snapshot.in_doubt.get("a"), Some(&doubt(&[("x", "2")])));
        assert_eq!(store.doubt("b").unwrap(), Some(doubt(&[])));
        store
            .commit(&Commit {
                record: vec![(id("a"), Some(attrs(&[("x", "2")])))],
                clear: vec![id("b")],
                applied_at: 2,
                ..Commit::default()
            })
            .unwrap();
        let snapshot = store.load().unwrap();
        assert!(snapshot.in_doubt.is_empty());
        assert_eq!(snapshot.users.get("a").unwrap().attrs, attrs(&[("x", "2")]));
        assert_eq!(snapshot.serial, 3);
    }

    #[test]
    fn a_database_older_than_its_serial_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        {
            let store = SledDb::open(dir.path(), app(7), &Holder::default()).unwrap();
            store
                .commit(&record(&[("a", Some(attrs(&[("x", "1")])))], 1))
                .unwrap();
        }
        // An older copy of the database files, without the serial file.
        for name in ["conf", "db"] {
            std::fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
        }
        {
            let store = SledDb::open(dir.path(), app(7), &Holder::default()).unwrap();
            store
                .commit(&record(&[("a", Some(attrs(&[("x", "2")])))], 2))
                .unwrap();
        }
        for name in ["conf", "db"] {
            std::fs::copy(copy.path().join(name), dir.path().join(name)).unwrap();
        }
        let err = SledDb::open(dir.path(), app(7), &Holder::default()).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::RolledBack {
                    expected: 2,
                    found: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("attrsync import"), "{err}");
    }

    #[test]
    fn a_removed_state_directory_stops_the_next_commit() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state");
        let store = SledDb::open(&dir, app(7), &Holder::default()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let err = store
            .commit(&record(&[("a", Some(attrs(&[("x", "1")])))], 1))
            .unwrap_err();
        assert!(matches!(err, StateError::Gone { .. }), "{err}");
        // Recreated empty under the same name: still not the directory that was opened.
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(
            store.commit(&record(&[("a", None)], 1)),
            Err(StateError::Gone { .. })
        ));
    }

    #[test]
    fn the_snapshot_is_bound_to_its_server() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledDb::open(dir.path(), app(7), &Holder::default()).unwrap());
        let region = Target::Region(crate::model::Region::Singapore);
        let other = Binding {
            sdkappid: 7,
            target: &region,
        };
        let err = SledDb::open(dir.path(), other, &Holder::default()).unwrap_err();
        assert!(matches!(err, StateError::OtherTarget { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("embedded") && text.contains("adminapisgp"),
            "{text}"
        );
        assert!(text.contains("attrsync import"), "{text}");
        // Import adopts the new server by replacing the whole content.
        let store =
            SledDb::open_with(dir.path(), other, &Holder::default(), OnOtherTarget::Adopt).unwrap();
        store.replace_all(&Snapshot::default()).unwrap();
        drop(store);
        assert!(SledDb::open(dir.path(), other, &Holder::default()).is_ok());
        assert!(SledDb::open(dir.path(), app(7), &Holder::default()).is_err());
    }

    #[test]
    fn chunks_split_and_stay_sorted_under_scattered_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path(), app(7), &Holder::default()).unwrap();
        let mut expected = std::collections::BTreeMap::new();
        // 1,000 users in 10 interleaved batches, then every third one removed.
        for round in 0..10u32 {
            let writes: Vec<(UserId, Option<Attrs>)> = (0..100u32)
                .map(|i| {
                    let user = format!("u{:04}", i * 10 + round);
                    expected.insert(user.clone(), round.to_string());
                    (id(&user), Some(attrs(&[("x", &round.to_string())])))
                })
                .collect();
            store
                .commit(&Commit {
                    record: writes,
                    applied_at: 1,
                    ..Commit::default()
                })
                .unwrap();
        }
        let removed: Vec<(UserId, Option<Attrs>)> =
            expected.keys().step_by(3).map(|u| (id(u), None)).collect();
        for (user, _) in &removed {
            expected.remove(user.as_str());
        }
        store
            .commit(&Commit {
                record: removed,
                applied_at: 2,
                ..Commit::default()
            })
            .unwrap();
        let snapshot = store.load().unwrap();
        let got: Vec<(String, String)> = snapshot
            .users
            .iter()
            .map(|(u, e)| (u.to_string(), e.attrs.get("x").unwrap().to_string()))
            .collect();
        let want: Vec<(String, String)> = expected.into_iter().collect();
        assert_eq!(got, want);
        assert_eq!(snapshot.serial, 11);
        assert!(
            store.users().len() > 1000 / CHUNK_SPLIT_ABOVE,
            "chunks were split: {}",
            store.users().len()
        );
        assert_eq!(
            store
                .get("u0001")
                .unwrap()
                .unwrap()
                .attrs
                .get("x")
                .unwrap()
                .as_str(),
            "1"
        );
        assert!(store.get("u0000").unwrap().is_none());
        assert!(store.get("a").unwrap().is_none());
        // Pages for the drift scan resume after the given user.
        let page = store.users_after(Some("u0001"), 3).unwrap();
        assert_eq!(
            page.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
            ["u0002", "u0004", "u0005"]
        );
        assert_eq!(store.users_after(None, 1).unwrap()[0].0.as_str(), "u0001");
        assert!(store.users_after(Some("u0999"), 5).unwrap().is_empty());
    }

    #[test]
    fn refuses_another_apps_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledDb::open(dir.path(), app(7), &Holder::default()).unwrap());
        let err = SledDb::open(dir.path(), app(8), &Holder::default()).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::OtherApp {
                    found: 7,
                    expected: 8,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn open_existing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert!(SledDb::open_existing(&path, app(1), &Holder::default())
            .unwrap()
            .is_none());
        assert!(!path.exists());
    }

    #[test]
    fn replace_all_swaps_the_whole_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledDb::open(dir.path(), app(7), &Holder::default()).unwrap();
        store
            .commit(&Commit {
                record: vec![(id("old"), Some(attrs(&[("x", "1")])))],
                doubt: vec![(id("doubtful"), doubt(&[]))],
                applied_at: 1,
                ..Commit::default()
            })
            .unwrap();
        let new = UserMap::from_unsorted(vec![
            (id("n1"), attrs(&[("x", "2")])),
            (id("n2"), attrs(&[("x", "3")])),
        ])
        .unwrap();
        let doubts = UserMap::from_unsorted(vec![(id("n3"), doubt(&[("x", "4")]))]).unwrap();
        let replacement = Snapshot::recorded(&new, doubts.clone(), 5);
        assert_eq!(store.replace_all(&replacement).unwrap(), 2);
        let snapshot = store.load().unwrap();
        assert_eq!(
            snapshot
                .users
                .iter()
                .map(|(u, _)| u.as_str())
                .collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        assert_eq!(
            snapshot
                .in_doubt
                .iter()
                .map(|(u, _)| u.as_str())
                .collect::<Vec<_>>(),
            ["n3"]
        );
        drop(store);
        let store = SledDb::open(dir.path(), app(7), &Holder::default()).unwrap();
        assert_eq!(store.load().unwrap().users.len(), 2);
        assert_eq!(
            store
                .db
                .tree_names()
                .iter()
                .filter(|n| n.starts_with(b"users."))
                .count(),
            1
        );
    }
}
