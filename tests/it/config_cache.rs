//! The caches never change what a load says: random edits to a real config repository (change
//! a value, move a user to another file, rename a file, declare a user twice, change
//! `attributes`), each loaded with the disk cache of the previous loads, with the daemon's
//! retained load, and without any cache, must give the same desired state and the same
//! problems at the same places.

use std::collections::BTreeMap;

use attrsync::config::{self, ParseCache};
use proptest::prelude::*;

/// One edit of the repository.
#[derive(Clone, Debug)]
enum Edit {
    /// Set `attr` of the `user`-th user of the `file`-th file to `value`.
    Change {
        file: usize,
        user: usize,
        attr: usize,
        value: usize,
    },
    /// Move the first user of one file to another.
    Move { from: usize, to: usize },
    /// Rename a file.
    Rename { file: usize, name: usize },
    /// Declare a user of one file in another one too.
    Duplicate { from: usize, to: usize },
    /// Take `tier` out of `attributes`, or put it back.
    ToggleTier,
}

const ATTRS: [&str; 3] = ["sex", "city", "tier"];
const VALUES: [&str; 4] = ["Oslo", "Lima", "gold", "\"NO\""];

/// The repository as data: file name → users (id → attributes), and whether `tier` is listed.
#[derive(Clone, Debug)]
struct Model {
    files: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>,
    tier: bool,
}

impl Model {
    fn new() -> Self {
        let mut files = BTreeMap::new();
        for f in 0..3 {
            let users = (0..4)
                .map(|u| {
                    let attrs = [
                        ("city".to_owned(), "Oslo".to_owned()),
                        ("tier".to_owned(), "gold".to_owned()),
                    ];
                    (format!("u{f}{u}"), attrs.into_iter().collect())
                })
                .collect();
            files.insert(format!("f{f}.yaml"), users);
        }
        Self { files, tier: true }
    }

    fn nth_file(&self, n: usize) -> String {
        let names: Vec<&String> = self.files.keys().collect();
        names[n % names.len()].clone()
    }

    fn apply(&mut self, edit: &Edit) {
        match *edit {
            Edit::Change {
                file,
                user,
                attr,
                value,
            } => {
                let name = self.nth_file(file);
                let users = self.files.get_mut(&name).unwrap();
                if let Some(id) = users.keys().nth(user % users.len().max(1)).cloned() {
                    users
                        .get_mut(&id)
                        .unwrap()
                        .insert(ATTRS[attr % 3].to_owned(), VALUES[value % 4].to_owned());
                }
            }
            Edit::Move { from, to } | Edit::Duplicate { from, to } => {
                let (from, to) = (self.nth_file(from), self.nth_file(to));
                let Some((id, attrs)) = self.files[&from]
                    .iter()
                    .next()
                    .map(|(i, a)| (i.clone(), a.clone()))
                else {
                    return;
                };
                if matches!(edit, Edit::Move { .. }) {
                    self.files.get_mut(&from).unwrap().remove(&id);
                }
                self.files.get_mut(&to).unwrap().insert(id, attrs);
            }
            Edit::Rename { file, name } => {
                let old = self.nth_file(file);
                let new = format!("r{name}.yaml");
                if !self.files.contains_key(&new) {
                    let users = self.files.remove(&old).unwrap();
                    self.files.insert(new, users);
                }
            }
            Edit::ToggleTier => self.tier = !self.tier,
        }
    }

    /// Writes the repository into `root`, replacing what was there.
    fn write(&self, root: &std::path::Path) {
        let attributes = if self.tier {
            "[sex, city, tier]"
        } else {
            "[sex, city]"
        };
        std::fs::write(
            root.join("attrsync.yaml"),
            format!("sdkappid: 1400000000\nidentifier: admin\nregion: singapore\nattributes: {attributes}\n"),
        )
        .unwrap();
        let users = root.join("users");
        let _ = std::fs::remove_dir_all(&users);
        std::fs::create_dir(&users).unwrap();
        for (name, declared) in &self.files {
            let mut text = String::from("users:\n");
            if declared.is_empty() {
                text = "users: {}\n".to_owned();
            }
            for (id, attrs) in declared {
                let attrs: Vec<String> = attrs.iter().map(|(n, v)| format!("{n}: {v}")).collect();
                text.push_str(&format!("  {id}: {{{}}}\n", attrs.join(", ")));
            }
            std::fs::write(users.join(name), text).unwrap();
        }
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..3usize, 0..5usize, 0..3usize, 0..4usize).prop_map(|(file, user, attr, value)| {
            Edit::Change {
                file,
                user,
                attr,
                value,
            }
        }),
        (0..3usize, 0..3usize).prop_map(|(from, to)| Edit::Move { from, to }),
        (0..3usize, 0..4usize).prop_map(|(file, name)| Edit::Rename { file, name }),
        (0..3usize, 0..3usize).prop_map(|(from, to)| Edit::Duplicate { from, to }),
        Just(Edit::ToggleTier),
    ]
}

/// What a load says, in a form that compares: the desired state, or every problem.
fn outcome(root: &std::path::Path, cache: &mut ParseCache) -> Result<String, config::Diagnostics> {
    config::load(root, None, cache).map(|c| format!("{} files: {:?}", c.files, c.desired))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_cached_load_equals_an_uncached_one(edits in proptest::collection::vec(edit(), 1..12)) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::new();
        model.write(dir.path());
        // Warm the cache on disk, and the daemon's.
        outcome(dir.path(), &mut ParseCache::persistent()).unwrap();
        let mut daemon = ParseCache::retaining();
        outcome(dir.path(), &mut daemon).unwrap();
        for edit in &edits {
            model.apply(edit);
            model.write(dir.path());
            let cached = outcome(dir.path(), &mut ParseCache::persistent());
            let uncached = outcome(dir.path(), &mut ParseCache::default());
            prop_assert_eq!(&cached, &uncached, "after {:?}", edit);
            // The daemon's load patches the last valid desired state with the changed files.
            prop_assert_eq!(&outcome(dir.path(), &mut daemon), &uncached, "daemon, after {:?}", edit);
            // A second cached load, every file now from the disk cache, says the same.
            let mut again = ParseCache::persistent();
            prop_assert_eq!(&outcome(dir.path(), &mut again), &uncached);
            prop_assert_eq!(again.last_parsed, 0, "every file came from the cache");
        }
    }
}

#[test]
fn a_damaged_cache_is_rebuilt_and_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::new();
    model.write(dir.path());
    let fresh = outcome(dir.path(), &mut ParseCache::default());
    outcome(dir.path(), &mut ParseCache::persistent()).unwrap();
    let path = dir.path().join(".attrsync-cache/parsed-user-files");
    // Flip every byte after the header in turn would be slow; flip a few spread over the file.
    let original = std::fs::read(&path).unwrap();
    for at in (original.len() / 2..original.len()).step_by(37) {
        let mut damaged = original.clone();
        damaged[at] ^= 0x01;
        std::fs::write(&path, &damaged).unwrap();
        let mut cache = ParseCache::persistent();
        assert_eq!(outcome(dir.path(), &mut cache), fresh, "byte {at}");
        assert!(
            cache.last_parsed >= 1,
            "the damaged entry was parsed again (byte {at})"
        );
    }
    // Garbage in place of the cache: everything is parsed, and the cache is written anew.
    std::fs::write(&path, b"\x00garbage").unwrap();
    let mut cache = ParseCache::persistent();
    assert_eq!(outcome(dir.path(), &mut cache), fresh);
    assert_eq!(cache.last_parsed, 3);
    let mut cache = ParseCache::persistent();
    assert_eq!(outcome(dir.path(), &mut cache), fresh);
    assert_eq!(cache.last_parsed, 0);
}

#[test]
fn the_cache_is_private_and_keeps_itself_out_of_git() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    Model::new().write(dir.path());
    outcome(dir.path(), &mut ParseCache::persistent()).unwrap();
    let mode = |path: &str| {
        std::fs::metadata(dir.path().join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(".attrsync-cache"), 0o700);
    assert_eq!(mode(".attrsync-cache/parsed-user-files"), 0o600);
    let ignore = std::fs::read_to_string(dir.path().join(".attrsync-cache/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*"), "{ignore}");
}
