//! The daemon's reloads on real files in temp dirs: which files a retaining load reads again,
//! and that a patched desired state and its problems are those of a load from scratch.

use std::path::Path;

use super::{load, load_at, retained, Config, Diagnostics, ParseCache};

/// Far enough after the files were written that every one of them has settled.
fn much_later() -> i128 {
    retained::now_nanos() + 60 * 1_000_000_000
}

fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_settings(dir.path(), "[sex, city, tier]");
    std::fs::create_dir(dir.path().join("users")).unwrap();
    for (name, text) in files {
        write_user_file(dir.path(), name, text);
    }
    dir
}

fn write_settings(root: &Path, attributes: &str) {
    std::fs::write(
        root.join("attrsync.yaml"),
        format!(
            "sdkappid: 1400000000\nidentifier: admin\nregion: singapore\nattributes: {attributes}\n"
        ),
    )
    .unwrap();
}

fn write_user_file(root: &Path, name: &str, text: &str) {
    std::fs::write(root.join("users").join(name), text).unwrap();
}

/// What a load says, in a form that compares.
fn said(loaded: &Result<Config, Diagnostics>) -> Result<String, String> {
    match loaded {
        Ok(config) => Ok(format!("{} files: {:?}", config.files, config.desired)),
        Err(problems) => Err(problems.to_string()),
    }
}

/// A load from scratch, with no cache at all.
fn from_scratch(root: &Path) -> Result<String, String> {
    said(&load(root, None, &mut ParseCache::default()))
}

const A: &str = "users:\n  a1: {city: Oslo}\n  a2: {city: Lima}\n";
const B: &str = "users:\n  b1: {city: Oslo}\n";
const C: &str = "users:\n  c1: {sex: female}\n";

#[test]
fn settled_files_whose_metadata_is_unchanged_are_not_read_again() {
    let dir = repo(&[("a.yaml", A), ("b.yaml", B), ("c.yaml", C)]);
    let mut cache = ParseCache::retaining();
    load_at(dir.path(), None, &mut cache, much_later()).unwrap();
    assert_eq!((cache.last_read, cache.last_parsed), (3, 3));

    let again = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!((cache.last_read, cache.last_parsed), (0, 0));
    assert_eq!(said(&again), from_scratch(dir.path()));

    write_user_file(
        dir.path(),
        "b.yaml",
        "users:\n  b1: {city: Rome}\n  b2: {}\n",
    );
    let edited = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!((cache.last_read, cache.last_parsed), (1, 1));
    assert_eq!(said(&edited), from_scratch(dir.path()));

    cache.check_every_file();
    let checked = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!(
        (cache.last_read, cache.last_parsed),
        (3, 0),
        "every file is read, none changed"
    );
    assert_eq!(said(&checked), from_scratch(dir.path()));
    load_at(dir.path(), None, &mut cache, much_later()).unwrap();
    assert_eq!(cache.last_read, 0, "checking every file is for one load");
}

#[test]
fn a_file_rewritten_in_place_right_after_a_load_is_read_again() {
    let dir = repo(&[("a.yaml", A), ("b.yaml", B)]);
    let mut cache = ParseCache::retaining();
    load(dir.path(), None, &mut cache).unwrap();
    // The same size, the same inode and, quite likely, the same timestamps: only the
    // content tells, and a file that changed this recently is always read.
    let same_size = B.replace("Oslo", "Rome");
    assert_eq!(same_size.len(), B.len());
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("users/b.yaml"))
        .and_then(|mut file| std::io::Write::write_all(&mut file, same_size.as_bytes()))
        .unwrap();
    let reloaded = load(dir.path(), None, &mut cache);
    assert!(said(&reloaded).unwrap().contains("Rome"));
    assert_eq!(said(&reloaded), from_scratch(dir.path()));
}

#[test]
fn added_removed_and_renamed_files_patch_the_desired_state() {
    let dir = repo(&[("a.yaml", A), ("b.yaml", B)]);
    let mut cache = ParseCache::retaining();
    load_at(dir.path(), None, &mut cache, much_later()).unwrap();

    write_user_file(dir.path(), "0-first.yaml", C);
    let added = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!(cache.last_read, 1);
    assert_eq!(said(&added), from_scratch(dir.path()));

    std::fs::remove_file(dir.path().join("users/a.yaml")).unwrap();
    let removed = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!(cache.last_read, 0);
    assert_eq!(said(&removed), from_scratch(dir.path()));

    std::fs::rename(
        dir.path().join("users/b.yaml"),
        dir.path().join("users/z.yaml"),
    )
    .unwrap();
    let renamed = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!(said(&renamed), from_scratch(dir.path()));
    // A user moved from one file to another, both changed at once.
    write_user_file(dir.path(), "z.yaml", "users: {}\n");
    write_user_file(
        dir.path(),
        "0-first.yaml",
        "users:\n  c1: {}\n  b1: {city: Oslo}\n",
    );
    let moved = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!(said(&moved), from_scratch(dir.path()));
}

#[test]
fn a_user_declared_again_beside_an_unchanged_file_names_both_places() {
    let dir = repo(&[("a.yaml", A), ("b.yaml", B)]);
    let mut cache = ParseCache::retaining();
    load_at(dir.path(), None, &mut cache, much_later()).unwrap();
    write_user_file(
        dir.path(),
        "b.yaml",
        "users:\n  b1: {}\n  a2: {city: Rome}\n",
    );
    let twice = load_at(dir.path(), None, &mut cache, much_later());
    let problems = said(&twice).unwrap_err();
    assert!(
        problems.contains("users/b.yaml:3:3: user `a2` is declared twice")
            && problems.contains("also declared at users/a.yaml:3:3"),
        "{problems}"
    );
    assert_eq!(said(&twice), from_scratch(dir.path()));
}

#[test]
fn after_an_invalid_load_only_the_files_changed_since_the_last_valid_one_are_read() {
    let dir = repo(&[("a.yaml", A), ("b.yaml", B), ("c.yaml", C)]);
    let mut cache = ParseCache::retaining();
    load_at(dir.path(), None, &mut cache, much_later()).unwrap();

    write_user_file(dir.path(), "b.yaml", "users:\n  b1: {city: [Oslo]}\n");
    let broken = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!(said(&broken), from_scratch(dir.path()));
    assert!(broken.is_err());

    write_user_file(dir.path(), "b.yaml", "users:\n  b1: {city: Bergen}\n");
    let fixed = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!((cache.last_read, cache.last_parsed), (1, 1));
    assert_eq!(said(&fixed), from_scratch(dir.path()));
}

#[test]
fn a_changed_attribute_list_reads_every_file_again() {
    let dir = repo(&[("a.yaml", A), ("b.yaml", B), ("c.yaml", C)]);
    let mut cache = ParseCache::retaining();
    load_at(dir.path(), None, &mut cache, much_later()).unwrap();
    write_settings(dir.path(), "[city, tier]");
    let narrowed = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!(cache.last_read, 3);
    assert!(said(&narrowed).unwrap_err().contains("`sex`"));
    assert_eq!(said(&narrowed), from_scratch(dir.path()));

    write_settings(dir.path(), "[sex, city, tier]");
    let restored = load_at(dir.path(), None, &mut cache, much_later());
    assert_eq!(said(&restored), from_scratch(dir.path()));
}
