//! The snapshot store: what the server last accepted, per user, kept in sled.
//!
//! sled 0.34 makes a write durable only at `flush`, and lets one process open a database at a
//! time. So every commit is one transaction followed by a flush before it returns, the
//! snapshot is only ever written after the server accepted a batch, and a second process gets
//! [`StateError::Locked`] naming whoever holds the database (from a small `holder.json` that
//! the holder writes next to it).
//!
//! Users are stored in chunks: one sled key per sorted run of about [`CHUNK_USERS`] users,
//! keyed by the run's first user id. sled spends about a microsecond per key on iteration, so
//! one key per user made reading a million-user snapshot take seconds; chunks read in tens of
//! milliseconds, and a batch (up to 100 users, consecutive in plan order) rewrites one or two.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::model::{AttrName, AttrValue, Attrs, Snapshot, SnapshotEntry, UserId, UserMap};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

const KEY_FORMAT: &[u8] = b"format_version";
const KEY_SDKAPPID: &[u8] = b"sdkappid";
const KEY_SERIAL: &[u8] = b"serial";
const KEY_USERS_TREE: &[u8] = b"users_tree";
const META_TREE: &[u8] = b"meta";
const HOLDER_FILE: &str = "holder.json";
/// Users per chunk when chunks are built or split.
pub const CHUNK_USERS: usize = 128;
/// A chunk that grows past this is split.
const CHUNK_SPLIT_ABOVE: usize = 2 * CHUNK_USERS;
/// sled's default cache is 1 GiB; the snapshot is read once per run, so a small one is enough.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

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
    /// Written by an incompatible attrsync.
    #[error("the snapshot at {dir} has format version {found}, this attrsync reads {FORMAT_VERSION}; use a matching attrsync version")]
    Version {
        /// The state directory.
        dir: PathBuf,
        /// The version found.
        found: u64,
    },
    /// A record could not be decoded.
    #[error("the snapshot at {dir} is corrupt ({what}); move the directory aside and rebuild it with `attrsync import`")]
    Corrupt {
        /// The state directory.
        dir: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// sled failed.
    #[error("cannot {doing} the snapshot at {dir}: {source}; check the disk and the directory's permissions")]
    Store {
        /// What was being done ("open", "commit to", …).
        doing: &'static str,
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        source: sled::Error,
    },
}

/// Who holds the database, written to `holder.json` so that others can say so.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// The command, e.g. `watch`.
    pub command: String,
    /// The daemon's `--listen` address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl Holder {
    /// This process, running `command`.
    pub fn this_process(command: &str) -> Self {
        Self {
            pid: std::process::id(),
            command: command.to_owned(),
            listen: None,
        }
    }

    fn describe(&self) -> String {
        let mut text = format!(" (pid {}, `attrsync {}`", self.pid, self.command);
        if let Some(listen) = &self.listen {
            text.push_str(&format!(
                ", listening on {listen}: GET http://{listen}/plan shows its current plan"
            ));
        }
        text.push(')');
        text
    }
}

/// One user's write in a commit: `Some` records attributes, `None` forgets the user.
pub type Write = (UserId, Option<Attrs>);

/// The open snapshot store.
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    users: sled::Tree,
    /// Commits read the chunks they change before their transaction (sled transactions
    /// cannot range-scan), so commits must not interleave.
    commit_lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the snapshot at `dir` for app `sdkappid`.
    pub fn open(dir: &Path, sdkappid: u64, holder: &Holder) -> Result<Store, StateError> {
        let store_err = |doing, source| StateError::Store {
            doing,
            dir: dir.to_owned(),
            source,
        };
        let db = match sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            // Every write path flushes before it returns; a background flusher would only wake
            // an idle daemon for nothing.
            .flush_every_ms(None)
            .open()
        {
            Ok(db) => db,
            Err(sled::Error::Io(err)) if err.to_string().contains("could not acquire lock") => {
                let holder = std::fs::read(dir.join(HOLDER_FILE))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Holder>(&bytes).ok())
                    .map(|h| h.describe())
                    .unwrap_or_default();
                return Err(StateError::Locked {
                    dir: dir.to_owned(),
                    holder,
                });
            }
            Err(sled::Error::Corruption { .. }) => {
                return Err(StateError::Corrupt {
                    dir: dir.to_owned(),
                    what: "sled reported corruption at open".to_owned(),
                })
            }
            Err(err) => return Err(store_err("open", err)),
        };
        let meta = db.open_tree(META_TREE).map_err(|e| store_err("open", e))?;
        let read_u64 = |key: &[u8]| -> Result<Option<u64>, StateError> {
            match meta.get(key).map_err(|e| store_err("read", e))? {
                None => Ok(None),
                Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
                    .map(|b| Some(u64::from_le_bytes(b)))
                    .map_err(|_| StateError::Corrupt {
                        dir: dir.to_owned(),
                        what: format!("meta key {}", String::from_utf8_lossy(key)),
                    }),
            }
        };
        match read_u64(KEY_FORMAT)? {
            None => {
                meta.insert(KEY_FORMAT, &FORMAT_VERSION.to_le_bytes())
                    .map_err(|e| store_err("initialise", e))?;
                meta.insert(KEY_SDKAPPID, &sdkappid.to_le_bytes())
                    .map_err(|e| store_err("initialise", e))?;
                meta.insert(KEY_SERIAL, &0u64.to_le_bytes())
                    .map_err(|e| store_err("initialise", e))?;
                meta.insert(KEY_USERS_TREE, b"users.0".as_slice())
                    .map_err(|e| store_err("initialise", e))?;
                db.flush().map_err(|e| store_err("initialise", e))?;
            }
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(StateError::Version {
                    dir: dir.to_owned(),
                    found,
                })
            }
        }
        match read_u64(KEY_SDKAPPID)? {
            Some(found) if found != sdkappid => {
                return Err(StateError::OtherApp {
                    dir: dir.to_owned(),
                    found,
                    expected: sdkappid,
                })
            }
            _ => {}
        }
        let users_name = meta
            .get(KEY_USERS_TREE)
            .map_err(|e| store_err("read", e))?
            .unwrap_or_else(|| "users.0".into());
        let users = db
            .open_tree(&users_name)
            .map_err(|e| store_err("open", e))?;
        // A crash during `replace_all` can leave an unreferenced tree behind: drop it.
        for name in db.tree_names() {
            if name.starts_with(b"users.") && name != users_name {
                db.drop_tree(&name).map_err(|e| store_err("clean up", e))?;
            }
        }
        let holder_json = serde_json::to_vec(holder).expect("holder serialises");
        // Best effort: the file only improves the message another process shows.
        let _ = std::fs::write(dir.join(HOLDER_FILE), holder_json);
        Ok(Store {
            dir: dir.to_owned(),
            db,
            meta,
            users,
            commit_lock: std::sync::Mutex::new(()),
        })
    }

    /// Opens the snapshot at `dir` if one exists; `None` (and nothing created) otherwise.
    pub fn open_existing(
        dir: &Path,
        sdkappid: u64,
        holder: &Holder,
    ) -> Result<Option<Store>, StateError> {
        if dir.join("db").exists() || dir.join("conf").exists() {
            Self::open(dir, sdkappid, holder).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Updates the holder record (e.g. once the daemon knows its listen address).
    pub fn set_holder(&self, holder: &Holder) {
        let _ = std::fs::write(
            self.dir.join(HOLDER_FILE),
            serde_json::to_vec(holder).expect("holder serialises"),
        );
    }

    fn err(&self, doing: &'static str) -> impl Fn(sled::Error) -> StateError + '_ {
        move |source| StateError::Store {
            doing,
            dir: self.dir.clone(),
            source,
        }
    }

    /// The serial of the last committed write.
    pub fn serial(&self) -> Result<u64, StateError> {
        let bytes = self.meta.get(KEY_SERIAL).map_err(self.err("read"))?;
        Ok(bytes
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(0, u64::from_le_bytes))
    }

    /// Reads the whole snapshot.
    pub fn load(&self) -> Result<Snapshot, StateError> {
        let mut names = NameInterner::default();
        let mut users = Vec::new();
        for item in self.users.iter() {
            let (_, chunk) = item.map_err(self.err("read"))?;
            for (id, entry) in
                decode_chunk(&chunk).ok_or_else(|| self.corrupt("a chunk of users"))?
            {
                let user = decode_user(id).ok_or_else(|| self.corrupt("a user id"))?;
                let entry = decode_entry(entry, &mut names)
                    .ok_or_else(|| self.corrupt(&format!("the record of user {user}")))?;
                users.push((user, entry));
            }
        }
        let users = UserMap::from_sorted(users).ok_or_else(|| self.corrupt("user order"))?;
        Ok(Snapshot {
            users,
            serial: self.serial()?,
        })
    }

    /// One user's entry.
    pub fn get(&self, user: &str) -> Result<Option<SnapshotEntry>, StateError> {
        let Some((_, chunk)) = self
            .users
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
            Some((_, entry)) => decode_entry(entry, &mut NameInterner::default())
                .map(Some)
                .ok_or_else(|| self.corrupt(&format!("the record of user {user}"))),
        }
    }

    fn corrupt(&self, what: &str) -> StateError {
        StateError::Corrupt {
            dir: self.dir.clone(),
            what: what.to_owned(),
        }
    }

    /// Records one accepted batch atomically and durably; returns the new serial.
    ///
    /// A user written with `None` or with no attributes is forgotten. The serial grows by one.
    pub fn commit_batch(&self, writes: &[Write], applied_at: u64) -> Result<u64, StateError> {
        let _guard = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut writes: Vec<(&[u8], Option<Vec<u8>>)> = writes
            .iter()
            .map(|(user, attrs)| {
                let record = attrs
                    .as_ref()
                    .filter(|a| !a.is_empty())
                    .map(|a| encode_entry(a, applied_at));
                (user.as_str().as_bytes(), record)
            })
            .collect();
        writes.sort_by(|a, b| a.0.cmp(b.0));
        // Which chunk each write lands in: the last chunk starting at or before the user, or
        // the first chunk for a user before all of them.
        let first_key = self
            .users
            .first()
            .map_err(self.err("read"))?
            .map(|(k, _)| k);
        // (the chunk's key, or None when the tree is empty) → the writes that land in it.
        type Group<'w> = (Option<sled::IVec>, Vec<(&'w [u8], Option<Vec<u8>>)>);
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (user, record) in writes {
            let key = match self
                .users
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
        for (key, members) in groups {
            let old = match &key {
                Some(key) => self.users.get(key).map_err(self.err("read"))?,
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
        let serial = (&self.meta, &self.users)
            .transaction(|(meta, users)| {
                for key in &removals {
                    users.remove(key)?;
                }
                for (key, chunk) in &inserts {
                    users.insert(key.as_slice(), chunk.as_slice())?;
                }
                let serial = meta
                    .get(KEY_SERIAL)?
                    .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
                    .map_or(0, u64::from_le_bytes)
                    + 1;
                meta.insert(KEY_SERIAL, &serial.to_le_bytes())?;
                Ok::<u64, ConflictableTransactionError<()>>(serial)
            })
            .map_err(|e| match e {
                TransactionError::Storage(source) => StateError::Store {
                    doing: "commit to",
                    dir: self.dir.clone(),
                    source,
                },
                TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
            })?;
        self.db.flush().map_err(self.err("flush"))?;
        Ok(serial)
    }

    /// Replaces the whole snapshot with `users` atomically; returns the new serial.
    ///
    /// The new content goes to a fresh tree first; one small transaction then switches the
    /// snapshot over, so a crash leaves either the old or the new snapshot, never a mix.
    pub fn replace_all(
        &mut self,
        users: &UserMap<Attrs>,
        applied_at: u64,
    ) -> Result<u64, StateError> {
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
            .filter(|(_, a)| !a.is_empty())
            .map(|(user, attrs)| {
                (
                    user.as_str().as_bytes().to_vec(),
                    encode_entry(attrs, applied_at),
                )
            })
            .collect();
        let mut batch = sled::Batch::default();
        for piece in records.chunks(CHUNK_USERS) {
            batch.insert(piece[0].0.as_slice(), encode_chunk(piece));
        }
        next.apply_batch(batch).map_err(self.err("write"))?;
        self.db.flush().map_err(self.err("flush"))?;
        let serial = self.serial()? + 1;
        let mut switch = sled::Batch::default();
        switch.insert(KEY_USERS_TREE, next_name.as_bytes());
        switch.insert(KEY_SERIAL, &serial.to_le_bytes());
        self.meta.apply_batch(switch).map_err(self.err("write"))?;
        self.db.flush().map_err(self.err("flush"))?;
        self.users = next;
        self.db.drop_tree(&current).map_err(self.err("clean up"))?;
        self.db.flush().map_err(self.err("flush"))?;
        Ok(serial)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.db.flush();
        let _ = std::fs::remove_file(self.dir.join(HOLDER_FILE));
    }
}

/// Seconds since the Unix epoch, for `applied_at`.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Record layout, version 1: `[1][applied_at: u64 LE][n: u8]` then n × `[len: u8][name][len: u8][value]`.
/// Names and values are at most 50 bytes, so a byte holds each length.
fn encode_entry(attrs: &Attrs, applied_at: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + attrs.len() * 24);
    out.push(1);
    out.extend_from_slice(&applied_at.to_le_bytes());
    out.push(attrs.len() as u8);
    for (name, value) in attrs.iter() {
        out.push(name.as_str().len() as u8);
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(value.as_str().len() as u8);
        out.extend_from_slice(value.as_str().as_bytes());
    }
    out
}

/// Chunk layout: `[1][count: u32 LE]` then count × `[id len: u8][id][record len: u16 LE][record]`.
fn encode_chunk(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        5 + records
            .iter()
            .map(|(id, r)| 3 + id.len() + r.len())
            .sum::<usize>(),
    );
    out.push(1);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (id, record) in records {
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&(record.len() as u16).to_le_bytes());
        out.extend_from_slice(record);
    }
    out
}

/// The `(user id, record)` pairs of a chunk, borrowed from it; `None` if it is malformed.
fn decode_chunk(chunk: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let (&version, rest) = chunk.split_first()?;
    if version != 1 || rest.len() < 4 {
        return None;
    }
    let count = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
    let mut cursor = &rest[4..];
    let mut records = Vec::with_capacity(count.min(4 * CHUNK_SPLIT_ABOVE));
    for _ in 0..count {
        let id = take_field(&mut cursor)?;
        let (len, tail) = cursor.split_at_checked(2)?;
        let (record, tail) =
            tail.split_at_checked(u16::from_le_bytes(len.try_into().ok()?) as usize)?;
        cursor = tail;
        records.push((id, record));
    }
    cursor.is_empty().then_some(records)
}

/// Attribute names seen while decoding, so a million users share ten allocations.
#[derive(Default)]
struct NameInterner(Vec<AttrName>);

impl NameInterner {
    fn get(&mut self, bytes: &[u8]) -> Option<AttrName> {
        if let Some(name) = self.0.iter().find(|n| n.as_str().as_bytes() == bytes) {
            return Some(name.clone());
        }
        let name = AttrName::new(std::str::from_utf8(bytes).ok()?).ok()?;
        self.0.push(name.clone());
        Some(name)
    }
}

fn decode_user(key: &[u8]) -> Option<UserId> {
    UserId::new(std::str::from_utf8(key).ok()?).ok()
}

fn decode_entry(bytes: &[u8], names: &mut NameInterner) -> Option<SnapshotEntry> {
    let (&version, rest) = bytes.split_first()?;
    if version != 1 || rest.len() < 9 {
        return None;
    }
    let applied_at = u64::from_le_bytes(rest[..8].try_into().ok()?);
    let count = rest[8] as usize;
    let mut cursor = &rest[9..];
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let name = names.get(take_field(&mut cursor)?)?;
        let value = AttrValue::new(std::str::from_utf8(take_field(&mut cursor)?).ok()?).ok()?;
        pairs.push((name, value));
    }
    cursor.is_empty().then(|| SnapshotEntry {
        attrs: Attrs::from_pairs(pairs),
        applied_at,
    })
}

/// Splits one length-prefixed field off the front of `cursor`.
fn take_field<'b>(cursor: &mut &'b [u8]) -> Option<&'b [u8]> {
    let (&len, tail) = cursor.split_first()?;
    let (field, tail) = tail.split_at_checked(len as usize)?;
    *cursor = tail;
    Some(field)
}

/// One line of `state export` / `state import`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    user: String,
    attrs: BTreeMap<String, serde_json::Value>,
}

/// Writes the snapshot as JSON Lines, one `{"user": …, "attrs": {…}}` per user, sorted by user.
pub fn export(snapshot: &Snapshot, out: &mut impl std::io::Write) -> std::io::Result<()> {
    for (user, entry) in snapshot.users.iter() {
        let line = Line {
            user: user.as_str().to_owned(),
            attrs: entry
                .attrs
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_str().into()))
                .collect(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A problem on one line of an import file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProblem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads JSON Lines written by [`export`], validating ids, names (against `attributes`) and
/// values like the YAML loader does. Returns every problem, not just the first.
pub fn parse_import(
    text: &str,
    attributes: &[AttrName],
) -> Result<UserMap<Attrs>, Vec<ImportProblem>> {
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    let mut lines_of: HashMap<UserId, usize> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut problem = |message: String| problems.push(ImportProblem { line, message });
        let parsed: Line = match serde_json::from_str(raw) {
            Ok(parsed) => parsed,
            Err(err) => {
                problem(format!(
                    "not a {{\"user\": …, \"attrs\": {{…}}}} object: {err}"
                ));
                continue;
            }
        };
        let user = match UserId::new(&parsed.user) {
            Ok(user) => user,
            Err(err) => {
                problem(format!("user {:?}: {err}", parsed.user));
                continue;
            }
        };
        if let Some(first) = lines_of.get(&user) {
            problem(format!("user {user} appears twice (first on line {first})"));
            continue;
        }
        lines_of.insert(user.clone(), line);
        let mut pairs = Vec::new();
        for (name, value) in &parsed.attrs {
            let Some(known) = attributes.iter().find(|a| a.as_str() == name) else {
                problem(format!(
                    "user {user}: unknown attribute {name:?}; attrsync.yaml lists {}",
                    attributes
                        .iter()
                        .map(AttrName::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                continue;
            };
            let Some(text) = value.as_str() else {
                problem(format!(
                    "user {user}: attribute {name} must be a string, found {value}"
                ));
                continue;
            };
            match AttrValue::new(text) {
                Ok(v) => pairs.push((known.clone(), v)),
                Err(err) => problem(format!("user {user}: attribute {name}: {err}")),
            }
        }
        entries.push((user, Attrs::from_pairs(pairs)));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(UserMap::from_unsorted(entries).expect("duplicates were rejected above"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attrs {
        Attrs::parse(pairs).unwrap()
    }

    fn id(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn entries_round_trip() {
        let a = attrs(&[("city", "東京"), ("sex", "female")]);
        let bytes = encode_entry(&a, 42);
        let entry = decode_entry(&bytes, &mut NameInterner::default()).unwrap();
        assert_eq!(
            entry,
            SnapshotEntry {
                attrs: a,
                applied_at: 42
            }
        );
        assert!(decode_entry(&bytes[..bytes.len() - 1], &mut NameInterner::default()).is_none());
        assert!(decode_entry(&[], &mut NameInterner::default()).is_none());
    }

    #[test]
    fn commit_grows_the_serial_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let holder = Holder::this_process("test");
        {
            let store = Store::open(dir.path(), 7, &holder).unwrap();
            assert_eq!(store.serial().unwrap(), 0);
            let serial = store
                .commit_batch(
                    &[
                        (id("b"), Some(attrs(&[("x", "1")]))),
                        (id("a"), Some(attrs(&[("x", "2")]))),
                    ],
                    100,
                )
                .unwrap();
            assert_eq!(serial, 1);
            assert_eq!(store.commit_batch(&[(id("b"), None)], 101).unwrap(), 2);
        }
        let store = Store::open(dir.path(), 7, &holder).unwrap();
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
    fn chunks_split_and_stay_sorted_under_scattered_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 7, &Holder::default()).unwrap();
        let mut expected = std::collections::BTreeMap::new();
        // 1,000 users in 10 interleaved batches, then every third one removed.
        for round in 0..10u32 {
            let writes: Vec<Write> = (0..100u32)
                .map(|i| {
                    let user = format!("u{:04}", i * 10 + round);
                    expected.insert(user.clone(), round.to_string());
                    (id(&user), Some(attrs(&[("x", &round.to_string())])))
                })
                .collect();
            store.commit_batch(&writes, 1).unwrap();
        }
        let removed: Vec<Write> = expected.keys().step_by(3).map(|u| (id(u), None)).collect();
        for (user, _) in &removed {
            expected.remove(user.as_str());
        }
        store.commit_batch(&removed, 2).unwrap();
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
            store.users.len() > 1000 / CHUNK_SPLIT_ABOVE,
            "chunks were split: {}",
            store.users.len()
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
    }

    #[test]
    fn refuses_another_apps_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), 7, &Holder::default()).unwrap());
        let err = Store::open(dir.path(), 8, &Holder::default()).unwrap_err();
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
        assert!(Store::open_existing(&path, 1, &Holder::default())
            .unwrap()
            .is_none());
        assert!(!path.exists());
    }

    #[test]
    fn replace_all_swaps_the_whole_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), 7, &Holder::default()).unwrap();
        store
            .commit_batch(&[(id("old"), Some(attrs(&[("x", "1")])))], 1)
            .unwrap();
        let new = UserMap::from_unsorted(vec![
            (id("n1"), attrs(&[("x", "2")])),
            (id("n2"), attrs(&[("x", "3")])),
        ])
        .unwrap();
        assert_eq!(store.replace_all(&new, 5).unwrap(), 2);
        let snapshot = store.load().unwrap();
        assert_eq!(
            snapshot
                .users
                .iter()
                .map(|(u, _)| u.as_str())
                .collect::<Vec<_>>(),
            ["n1", "n2"]
        );
        drop(store);
        let store = Store::open(dir.path(), 7, &Holder::default()).unwrap();
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

    #[test]
    fn export_then_import_round_trips() {
        let names = vec![
            AttrName::new("city").unwrap(),
            AttrName::new("sex").unwrap(),
        ];
        let users = UserMap::from_unsorted(vec![
            (id("b"), attrs(&[("city", "Oslo")])),
            (id("a"), attrs(&[("sex", "f"), ("city", "Rome")])),
        ])
        .unwrap();
        let snapshot = Snapshot {
            users: UserMap::from_sorted(
                users
                    .iter()
                    .map(|(u, a)| {
                        (
                            u.clone(),
                            SnapshotEntry {
                                attrs: a.clone(),
                                applied_at: 1,
                            },
                        )
                    })
                    .collect(),
            )
            .unwrap(),
            serial: 3,
        };
        let mut out = Vec::new();
        export(&snapshot, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "{\"user\":\"a\",\"attrs\":{\"city\":\"Rome\",\"sex\":\"f\"}}\n{\"user\":\"b\",\"attrs\":{\"city\":\"Oslo\"}}\n");
        assert_eq!(parse_import(&text, &names).unwrap(), users);
    }

    #[test]
    fn import_reports_every_bad_line() {
        let names = vec![AttrName::new("city").unwrap()];
        let text = "{\"user\":\"a\",\"attrs\":{\"city\":\"Rome\"}}\nnot json\n{\"user\":\"a\",\"attrs\":{}}\n{\"user\":\"c\",\"attrs\":{\"tier\":\"x\",\"city\":1}}\n";
        let problems = parse_import(text, &names).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 4]);
        assert!(problems[1]
            .message
            .contains("appears twice (first on line 1)"));
    }
}
