//! What attrsync does with files, as an adversary on the same machine would probe it: the
//! snapshot and everything written from it are private, a planted symlink is never followed,
//! and only regular files are read.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use crate::common::{Repo, SETTINGS};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// `Repo::with_users` plus one user, with the snapshot imported.
fn repo_with_snapshot() -> Repo {
    let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Mary: {sex: female}\n")]);
    repo.seed(&[("Mary", &[("sex", "female")])]);
    repo
}

#[test]
fn the_snapshot_directory_is_0700_and_its_files_0600() {
    let repo = repo_with_snapshot();
    let state = repo.path("state");
    assert_eq!(mode(&state), 0o700);
    let mut checked = 0;
    let mut stack = vec![state];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                stack.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 2,
        "the database and its serial file were checked"
    );
}

#[test]
fn exports_and_saved_plans_are_0600_and_never_follow_a_planted_symlink() {
    let repo = repo_with_snapshot();
    repo.write("victim", "keep me");
    for (args, out) in [
        (
            vec!["state", "export", "--out", "export.jsonl"],
            "export.jsonl",
        ),
        (vec!["plan", "--out", "plan.json"], "plan.json"),
    ] {
        std::os::unix::fs::symlink(repo.path("victim"), repo.path(out)).unwrap();
        repo.run(&args).success();
        assert_eq!(repo.read("victim"), "keep me", "{out} followed the symlink");
        assert!(std::fs::symlink_metadata(repo.path(out)).unwrap().is_file());
        assert_eq!(mode(&repo.path(out)), 0o600, "{out}");
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_fifo_or_a_device_is_refused_with_its_path_instead_of_hanging() {
    // A FIFO as attrsync.yaml.
    let repo = Repo::new(&[]);
    mkfifo(&repo.path("attrsync.yaml"));
    let out = repo.run(&["validate"]);
    out.expect_code(1);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("attrsync.yaml") && all.contains("a FIFO"),
        "{all}"
    );

    // A user file that is a symlink to /dev/zero.
    let repo = Repo::new(&[("attrsync.yaml", SETTINGS)]);
    repo.mkdir("users");
    std::os::unix::fs::symlink("/dev/zero", repo.path("users/zero.yaml")).unwrap();
    let out = repo.run(&["validate"]);
    out.expect_code(1);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("zero.yaml") && all.contains("a device"),
        "{all}"
    );

    // A FIFO as the file of `state import`.
    let repo = repo_with_snapshot();
    mkfifo(&repo.path("import.jsonl"));
    let out = repo.run(&["state", "import", "import.jsonl"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("import.jsonl") && out.stderr.contains("a FIFO"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_file_with_100000_keys_and_a_duplicate_is_read_and_reported() {
    let mut text = String::from("users:\n");
    for i in 0..100_000 {
        text.push_str(&format!("  u{i}: {{sex: female}}\n"));
    }
    text.push_str("  u5: {sex: male}\n");
    let repo = Repo::new(&[("attrsync.yaml", SETTINGS), ("users/big.yaml", &text)]);
    let out = repo.run(&["validate"]);
    out.expect_code(1);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("user `u5` is declared twice"), "{all}");
}

/// Every input in `tests/fuzz-corpus/` (the seeds, and anything `examples/fuzz_config.rs`
/// ever found) loads as `attrsync.yaml` and as a user file without a panic.
#[test]
fn the_fuzz_corpus_loads_without_a_panic() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let settings = std::fs::read(corpus.join("settings-full.yaml")).unwrap();
    let mut inputs = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        for as_settings in [true, false] {
            let repo = Repo::new(&[]);
            repo.mkdir("users");
            if as_settings {
                repo.write("attrsync.yaml", &input);
            } else {
                repo.write("attrsync.yaml", &settings);
                repo.write("users/a.yaml", &input);
            }
            let loaded = std::panic::catch_unwind(|| {
                let _ = attrsync::config::load(repo.dir(), None, &mut Default::default());
            });
            assert!(loaded.is_ok(), "{} panicked the loader", path.display());
        }
        inputs += 1;
    }
    assert!(inputs >= 3, "the seeds are there");
}
