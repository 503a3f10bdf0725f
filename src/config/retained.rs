//! What the daemon keeps from one valid load to the next: the desired state, the file that
//! declared each of its users, and each file's content hash and metadata stamp; and patching
//! that desired state with only the files that changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::users::DeclaredUser;
use crate::model::{AttrName, Attrs, Desired, UserId};

/// How long after a file's last change its metadata is trusted to show the next one. A write
/// within the same timestamp tick as the last leaves mtime and ctime as they were; a file
/// changed less than this before it was read is read and hashed again at the next load
/// (git's "racily clean" rule). Two seconds covers the coarsest timestamps Linux filesystems
/// keep (FAT's), and a little clock skew between a network filesystem and this machine.
const RACY_WINDOW_NANOS: i128 = 2_000_000_000;

/// The metadata that changes whenever a file's content does: device, inode, size, mtime and
/// ctime. ctime cannot be set by `touch` or `cp -p`; an inode reused by a new file comes with
/// a new ctime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_nanos: i128,
    ctime_nanos: i128,
}

impl Stamp {
    /// The stamp of `meta`.
    pub(super) fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_nanos: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_nanos: nanos(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the stamp, taken before reading a file whose load started at `load_started`
    /// (nanoseconds since the epoch), vouches for the content read: the file had last
    /// changed well before, so a change after the read cannot leave the stamp as it is.
    pub(super) fn settled(&self, load_started: i128) -> bool {
        self.mtime_nanos.max(self.ctime_nanos) < load_started - RACY_WINDOW_NANOS
    }
}

fn nanos(seconds: i64, nanos: i64) -> i128 {
    i128::from(seconds) * 1_000_000_000 + i128::from(nanos)
}

/// Now, in nanoseconds since the epoch (negative before it), on the clock file times use.
pub(super) fn now_nanos() -> i128 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// How a file looked when it was read.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    /// The SHA-256 of its content.
    pub key: [u8; 32],
    /// Its metadata, taken before the read.
    pub stamp: Stamp,
    /// Whether `stamp` vouches for the content (see [`Stamp::settled`]).
    pub settled: bool,
}

/// One file of a retained load.
#[derive(Debug)]
pub(super) struct KnownFile {
    /// The path, as found under the users directory.
    pub path: PathBuf,
    /// How it looked when read.
    pub seen: Seen,
}

/// The last valid load.
#[derive(Debug)]
pub(super) struct Retained {
    /// The `attributes` list it was validated against.
    pub attributes: Vec<AttrName>,
    /// Its user files, sorted by path.
    pub files: Vec<KnownFile>,
    /// Its desired state (shared with the [`super::Config`] it returned).
    pub desired: Arc<Desired>,
    /// For each user of `desired`, in the same order, the index in `files` of its file.
    pub origins: Vec<u32>,
}

impl Retained {
    /// The index of the file at `path`.
    pub(super) fn file(&self, path: &Path) -> Option<usize> {
        self.files
            .binary_search_by(|known| known.path.as_path().cmp(path))
            .ok()
    }
}

/// A desired state's entries, sorted by id, and the index of the file declaring each.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Entries {
    /// The users.
    pub users: Vec<(UserId, Attrs)>,
    /// For each user, the index of its file; empty unless origins are tracked.
    pub origins: Vec<u32>,
    /// Whether `origins` is filled: only a load that is retained needs it.
    track_origins: bool,
}

impl Entries {
    /// Room for `capacity` users, and their origins when `track_origins`.
    pub(super) fn with_capacity(capacity: usize, track_origins: bool) -> Self {
        Self {
            users: Vec::with_capacity(capacity),
            origins: Vec::with_capacity(if track_origins { capacity } else { 0 }),
            track_origins,
        }
    }

    pub(super) fn push(&mut self, id: UserId, attrs: Attrs, origin: u32) {
        self.users.push((id, attrs));
        if self.track_origins {
            self.origins.push(origin);
        }
    }
}

/// The desired state of a load in which only some files changed: `retained`'s users whose
/// file is unchanged (`renumbered[old file]` is that file's index now, `None` for a file
/// changed or gone) and the users of the changed files (`changed`: each file's index and
/// users, sorted by id).
///
/// `None` when a user is declared twice: the caller then loads every file, so that the
/// error names both declarations, which needs positions the retained state does not keep.
pub(super) fn patch(
    retained: &Retained,
    renumbered: &[Option<u32>],
    changed: &[(u32, &[DeclaredUser])],
) -> Option<Entries> {
    let mut fresh: Vec<(&DeclaredUser, u32)> = changed
        .iter()
        .flat_map(|&(file, users)| users.iter().map(move |user| (user, file)))
        .collect();
    fresh.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    if fresh.windows(2).any(|w| w[0].0.id == w[1].0.id) {
        return None;
    }
    let kept = retained
        .desired
        .iter()
        .zip(&retained.origins)
        .filter_map(|((id, attrs), &origin)| Some((id, attrs, renumbered[origin as usize]?)));
    let mut entries = Entries::with_capacity(retained.desired.len() + fresh.len(), true);
    let mut fresh = fresh.into_iter().peekable();
    for (id, attrs, origin) in kept {
        while let Some((user, file)) = fresh.next_if(|(user, _)| user.id < *id) {
            entries.push(user.id.clone(), user.attrs.clone(), file);
        }
        if fresh.peek().is_some_and(|(user, _)| user.id == *id) {
            return None;
        }
        entries.push(id.clone(), attrs.clone(), origin);
    }
    for (user, file) in fresh {
        entries.push(user.id.clone(), user.attrs.clone(), file);
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::Pos;
    use crate::model::UserMap;

    fn user(id: &str, city: &str) -> DeclaredUser {
        DeclaredUser {
            id: UserId::new(id).unwrap(),
            attrs: Attrs::parse(&[("city", city)]).unwrap(),
            pos: Pos { line: 1, column: 3 },
        }
    }

    fn seen() -> Seen {
        Seen {
            key: [0; 32],
            stamp: Stamp {
                dev: 1,
                ino: 1,
                size: 1,
                mtime_nanos: 0,
                ctime_nanos: 0,
            },
            settled: true,
        }
    }

    /// A retained load of `files`, each a list of (id, city).
    fn retained(files: &[&[(&str, &str)]]) -> Retained {
        let mut entries: Vec<((UserId, Attrs), u32)> = files
            .iter()
            .enumerate()
            .flat_map(|(file, users)| {
                users.iter().map(move |(id, city)| {
                    let user = user(id, city);
                    ((user.id, user.attrs), file as u32)
                })
            })
            .collect();
        entries.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
        let (users, origins): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        Retained {
            attributes: Vec::new(),
            files: (0..files.len())
                .map(|i| KnownFile {
                    path: PathBuf::from(format!("users/{i}.yaml")),
                    seen: seen(),
                })
                .collect(),
            desired: Arc::new(UserMap::from_sorted(users).unwrap()),
            origins,
        }
    }

    fn listed(entries: &Entries) -> Vec<(String, String, u32)> {
        entries
            .users
            .iter()
            .zip(&entries.origins)
            .map(|((id, attrs), origin)| {
                let city = attrs.get("city").unwrap().as_str().to_owned();
                (id.to_string(), city, *origin)
            })
            .collect()
    }

    #[test]
    fn a_changed_file_replaces_its_own_users_and_keeps_the_others() {
        let old = retained(&[&[("a", "x"), ("d", "x")], &[("b", "y"), ("c", "y")]]);
        let new_file_1 = [user("b", "z"), user("e", "z")];
        let patched = patch(&old, &[Some(0), None], &[(1, &new_file_1)]).unwrap();
        assert_eq!(
            listed(&patched),
            [
                ("a".into(), "x".into(), 0),
                ("b".into(), "z".into(), 1),
                ("d".into(), "x".into(), 0),
                ("e".into(), "z".into(), 1),
            ]
        );
    }

    #[test]
    fn files_are_renumbered_when_one_is_added_before_them() {
        let old = retained(&[&[("a", "x")], &[("c", "y")]]);
        let added = [user("b", "new")];
        let patched = patch(&old, &[Some(1), Some(2)], &[(0, &added)]).unwrap();
        assert_eq!(
            listed(&patched),
            [
                ("a".into(), "x".into(), 1),
                ("b".into(), "new".into(), 0),
                ("c".into(), "y".into(), 2),
            ]
        );
    }

    #[test]
    fn a_removed_file_takes_its_users_with_it() {
        let old = retained(&[&[("a", "x")], &[("b", "y")]]);
        let patched = patch(&old, &[Some(0), None], &[]).unwrap();
        assert_eq!(listed(&patched), [("a".into(), "x".into(), 0)]);
    }

    #[test]
    fn a_user_moved_between_changed_files_is_not_a_duplicate() {
        let old = retained(&[&[("a", "x")], &[("b", "y")]]);
        let first = [user("a", "x"), user("b", "y")];
        let patched = patch(&old, &[None, None], &[(0, &first), (1, &[])]).unwrap();
        assert_eq!(
            listed(&patched),
            [("a".into(), "x".into(), 0), ("b".into(), "y".into(), 0)]
        );
    }

    #[test]
    fn a_user_declared_twice_asks_for_a_full_load() {
        let old = retained(&[&[("a", "x")], &[("b", "y")]]);
        // Declared again in a changed file while its own file is unchanged.
        assert_eq!(
            patch(&old, &[Some(0), None], &[(1, &[user("a", "z")])]),
            None
        );
        // Declared in two changed files.
        let twice = [user("c", "z")];
        assert_eq!(
            patch(&old, &[None, None], &[(0, &twice), (1, &twice)]),
            None
        );
        // Repeated inside one changed file.
        assert_eq!(
            patch(
                &old,
                &[Some(0), None],
                &[(1, &[user("c", "1"), user("c", "2")])]
            ),
            None
        );
    }

    #[test]
    fn a_stamp_is_trusted_only_once_the_file_has_settled() {
        let stamp = seen().stamp;
        let changed_at = 1_000 * 1_000_000_000;
        let stamp = Stamp {
            mtime_nanos: changed_at - 5_000_000_000,
            ctime_nanos: changed_at,
            ..stamp
        };
        assert!(!stamp.settled(changed_at), "read in the same instant");
        assert!(
            !stamp.settled(changed_at + RACY_WINDOW_NANOS),
            "at the window's edge"
        );
        assert!(stamp.settled(changed_at + RACY_WINDOW_NANOS + 1));
        // An mtime in the future (set by hand, or a skewed server) is never settled.
        let future = Stamp {
            mtime_nanos: changed_at + 10 * RACY_WINDOW_NANOS,
            ..stamp
        };
        assert!(!future.settled(changed_at + 2 * RACY_WINDOW_NANOS));
    }
}
