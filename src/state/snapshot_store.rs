//! [`SnapshotStore`]: everything attrsync asks of a snapshot, as one trait, so the executor,
//! the daemon and the commands work the same on any backend. Built for a networked store:
//! every call is async and fallible, reads come in pages, and each write is one atomic commit.

use futures_util::future::BoxFuture;

use super::store::{Commit, StateError};
use crate::model::{InDoubt, Snapshot, SnapshotEntry, UserId};

/// One user of a page read by [`SnapshotStore::users_after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagedUser {
    /// The user.
    pub user: UserId,
    /// What the snapshot records for it.
    pub entry: SnapshotEntry,
    /// Whether the user is also in doubt (its entry may not be what the server holds).
    pub in_doubt: bool,
}

/// A snapshot: what the server last accepted, per user, who is in doubt, and the serial.
///
/// Implementations keep the invariant the executor relies on: a commit is all or nothing and
/// durable when it returns, and the serial grows by one with every commit.
pub trait SnapshotStore: Send + Sync + std::fmt::Debug {
    /// Where the snapshot is, for messages (a directory; never a password).
    fn location(&self) -> String;

    /// The serial of the last commit (0 for a new snapshot).
    fn serial(&self) -> BoxFuture<'_, Result<u64, StateError>>;

    /// The whole snapshot, one consistent view.
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, StateError>>;

    /// One user's entry.
    fn get<'a>(&'a self, user: &'a str)
        -> BoxFuture<'a, Result<Option<SnapshotEntry>, StateError>>;

    /// One user's doubt, if it is in doubt.
    fn doubt<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Option<InDoubt>, StateError>>;

    /// Up to `limit` users after `after` (from the first with `None`), in user-id order: the
    /// way to stream through a snapshot too large to load at once.
    fn users_after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<PagedUser>, StateError>>;

    /// Where the daemon's drift scan stopped, if saved.
    fn drift_cursor(&self) -> BoxFuture<'_, Result<Option<String>, StateError>>;

    /// Saves where the drift scan stopped (`None`: start over). Not a commit: the serial
    /// does not move.
    fn save_drift_cursor<'a>(
        &'a self,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// Writes `commit` atomically and durably; returns the new serial.
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<u64, StateError>>;

    /// Replaces every user and every doubt at once with `snapshot`'s (import, migrate),
    /// binding the snapshot to the configured server; returns the new serial, which is past
    /// both the current one and `snapshot.serial` (so a copy keeps its saved plans' serials
    /// meaningful).
    fn replace_all(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<u64, StateError>>;

    /// Marks the snapshot as moved to `to` (shown without a password): from now on it refuses
    /// to be opened, so nobody applies from a stale copy.
    fn mark_migrated<'a>(&'a self, to: &'a str) -> BoxFuture<'a, Result<(), StateError>>;

    /// Checks that the snapshot is still usable (a long-running holder calls it before each
    /// pass, since a pass with nothing to commit would not notice otherwise).
    fn check(&self) -> BoxFuture<'_, Result<(), StateError>>;

    /// The server the snapshot records, when it was opened to adopt another one: its content
    /// must be replaced with [`SnapshotStore::replace_all`], not added to.
    fn other_target(&self) -> Option<String>;

    /// The server the app's last write went to, when that is not the server this store was
    /// opened for: the config's endpoint changed since, which a plan calls out. A sled
    /// snapshot records one server and refuses to open for another, so it has none; a
    /// PostgreSQL database keeps one snapshot per server and knows which was written last.
    fn previous_target(&self) -> Option<String>;
}
