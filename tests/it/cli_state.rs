//! `attrsync state list | show | export | import` through the real binary against real sled
//! snapshots: the JSON Lines round trip, all-or-nothing validated imports, and the serial.

use crate::common;

use attrsync::model::{Attrs, UserId};
use attrsync::state::Holder;
use common::Repo;

/// Three users, one with non-ASCII text, in the order `state export` writes them.
const EXPORT: &str = "\
{\"user\":\"Mary\",\"attrs\":{\"city\":\"NewYork\",\"sex\":\"female\"}}
{\"user\":\"xiaoming\",\"attrs\":{\"city\":\"ShenZhen\",\"tier\":\"gold\"}}
{\"user\":\"小明\",\"attrs\":{\"city\":\"東京\"}}
";

fn attrs(pairs: &[(&str, &str)]) -> Attrs {
    Attrs::parse(pairs).unwrap()
}

/// A repository whose snapshot holds the users of [`EXPORT`] (written in another order).
fn imported() -> Repo {
    let repo = Repo::with_users(&[]);
    let shuffled: Vec<&str> = EXPORT.lines().rev().collect();
    repo.write("snapshot.jsonl", shuffled.join("\n"));
    let out = repo.run(&["state", "import", "snapshot.jsonl"]);
    assert_eq!(
        out.success().stdout,
        "Imported 3 users into the snapshot (serial 1).\n"
    );
    repo
}

#[test]
fn a_repository_without_a_snapshot_lists_and_exports_nothing() {
    let repo = Repo::with_users(&[]);
    assert_eq!(repo.run(&["state", "list"]).success().stdout, "");
    assert_eq!(repo.run(&["state", "export"]).success().stdout, "");
    assert!(
        !repo.path("state").exists(),
        "reading must not create a snapshot"
    );
}

#[test]
fn list_shows_every_user_sorted() {
    assert_eq!(
        imported().run(&["state", "list"]).success().stdout,
        "Mary\nxiaoming\n小明\n"
    );
}

#[test]
fn export_writes_sorted_json_lines_to_stdout_or_a_file() {
    let repo = imported();
    assert_eq!(repo.run(&["state", "export"]).success().stdout, EXPORT);
    let out = repo.run(&["state", "export", "--out", "backup.jsonl"]);
    assert_eq!(out.success().stdout, "");
    assert_eq!(repo.read("backup.jsonl"), EXPORT);
}

#[test]
fn export_then_import_into_another_repository_round_trips() {
    let source = imported();
    source
        .run(&["state", "export", "--out", "backup.jsonl"])
        .success();

    let target = Repo::with_users(&[]);
    let backup = source.path("backup.jsonl");
    target
        .run(&["state", "import", backup.to_str().unwrap()])
        .success();
    assert_eq!(target.run(&["state", "export"]).success().stdout, EXPORT);
    assert_eq!(
        target
            .run(&["plan", "--format", "json", "--allow-empty"])
            .json()["changes"],
        source
            .run(&["plan", "--format", "json", "--allow-empty"])
            .json()["changes"],
    );
}

#[test]
fn show_prints_one_users_attributes_and_when_they_were_applied() {
    let repo = Repo::with_users(&[]);
    let store = common::open_store(&repo.path("state"), &Holder::this_process("test"));
    let mary = UserId::new("Mary").unwrap();
    common::record(
        &store,
        &[(mary, Some(attrs(&[("sex", "female"), ("city", "Boston")])))],
        1_700_000_000,
    );
    drop(store);
    insta::assert_snapshot!(repo.run(&["state", "show", "Mary"]).success().stdout, @r#"
    user: Mary
    applied_at: 2023-11-14T22:13:20Z
    attrs:
      city: "Boston"
      sex: "female"
    "#);
}

#[test]
fn show_of_an_unknown_user_exits_1_and_says_where_to_look() {
    for repo in [Repo::with_users(&[]), imported()] {
        let out = repo.run(&["state", "show", "nobody"]);
        out.expect_code(1);
        assert_eq!(out.stdout, "");
        assert_eq!(
            out.stderr,
            "error: user \"nobody\" is not in the snapshot; `attrsync state list` shows who is\n"
        );
    }
}

#[test]
fn import_replaces_the_snapshot_and_users_not_in_the_file_disappear() {
    let repo = imported();
    repo.write("next.jsonl", "{\"user\":\"Mary\",\"attrs\":{\"city\":\"Boston\"}}\n\n{\"user\":\"Zoe\",\"attrs\":{\"tier\":\"free\"}}\n");
    let out = repo.run(&["state", "import", "next.jsonl"]);
    assert_eq!(
        out.success().stdout,
        "Imported 2 users into the snapshot (serial 2).\n"
    );
    assert_eq!(
        repo.run(&["state", "export"]).success().stdout,
        "{\"user\":\"Mary\",\"attrs\":{\"city\":\"Boston\"}}\n{\"user\":\"Zoe\",\"attrs\":{\"tier\":\"free\"}}\n"
    );
}

#[test]
fn importing_an_empty_file_empties_the_snapshot() {
    let repo = imported();
    repo.write("empty.jsonl", "");
    assert_eq!(
        repo.run(&["state", "import", "empty.jsonl"])
            .success()
            .stdout,
        "Imported 0 users into the snapshot (serial 2).\n"
    );
    assert_eq!(repo.run(&["state", "list"]).success().stdout, "");
}

#[test]
fn import_reports_every_bad_line_and_imports_nothing() {
    let repo = imported();
    let before = repo.run(&["state", "export"]).success().stdout.clone();
    let fifty_one = "中".repeat(17);
    repo.write(
        "bad.jsonl",
        format!(
            "{{\"user\":\"a\",\"attrs\":{{\"city\":\"Rome\"}}}}\n\
             not json\n\
             {{\"user\":\"a\",\"attrs\":{{}}}}\n\
             {{\"user\":\"c\",\"attrs\":{{\"colour\":\"red\",\"tier\":1}}}}\n\
             {{\"user\":\"d\",\"attrs\":{{\"city\":\"{fifty_one}\"}}}}\n\
             {{\"user\":\"\",\"attrs\":{{}}}}\n\
             {{\"user\":\"e\",\"attrs\":{{}},\"extra\":true}}\n\
             {{\"user\":\"f\",\"attrs\":{{\"sex\":null}}}}\n"
        ),
    );
    let out = repo.run(&["state", "import", "bad.jsonl"]);
    out.expect_code(1);
    assert_eq!(out.stdout, "");
    let lines: Vec<&str> = out.stderr.lines().collect();
    let expected: [(&str, &str); 9] = [
        (
            "error: bad.jsonl:2: ",
            "not a {\"user\": …, \"attrs\": {…}} object",
        ),
        ("bad.jsonl:3: ", "user a appears twice (first on line 1)"),
        (
            "bad.jsonl:4: ",
            "user c: unknown attribute \"colour\"; attrsync.yaml lists sex, city, tier",
        ),
        (
            "bad.jsonl:4: ",
            "user c: attribute tier must be a string, found 1",
        ),
        (
            "bad.jsonl:5: ",
            "user d: attribute city: value is 51 bytes long, at most 50 are allowed",
        ),
        ("bad.jsonl:6: ", "user \"\": a user id must not be empty"),
        ("bad.jsonl:7: ", "unknown field `extra`"),
        (
            "bad.jsonl:8: ",
            "user f: attribute sex must be a string, found null",
        ),
        (
            "the import file bad.jsonl is invalid: 8 problems; nothing was imported",
            "",
        ),
    ];
    assert_eq!(lines.len(), expected.len(), "{}", out.stderr);
    for (line, (prefix, words)) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(prefix) && line.contains(words),
            "expected {prefix}…{words}…, got {line}"
        );
    }
    assert_eq!(
        repo.run(&["state", "export"]).success().stdout,
        before,
        "the snapshot is unchanged"
    );
    assert_eq!(
        repo.serial(),
        1,
        "a refused import does not move the serial"
    );
}

#[test]
fn import_of_a_missing_file_is_a_clear_error() {
    let out = Repo::with_users(&[]).run(&["state", "import", "missing.jsonl"]);
    out.expect_code(1);
    assert!(
        out.stderr.starts_with("error: cannot read missing.jsonl: "),
        "{}",
        out.stderr
    );
}

#[test]
fn the_serial_grows_with_every_committed_write() {
    let repo = Repo::with_users(&[]);
    assert_eq!(repo.serial(), 0, "no snapshot yet");
    repo.seed(&[("Mary", &[("city", "Boston")])]);
    assert_eq!(repo.serial(), 1);
    repo.seed(&[("Mary", &[("city", "Boston")])]);
    assert_eq!(
        repo.serial(),
        2,
        "an import grows it even when the content is the same"
    );
    let store = common::open_store(&repo.path("state"), &Holder::this_process("test"));
    assert_eq!(
        common::record(
            &store,
            &[(UserId::new("Bob").unwrap(), Some(attrs(&[("sex", "male")])))],
            1
        ),
        3
    );
    drop(store);
    assert_eq!(repo.serial(), 3);
    assert_eq!(repo.run(&["state", "list"]).success().stdout, "Bob\nMary\n");
}

#[test]
fn import_into_a_snapshot_in_use_is_refused_and_changes_nothing() {
    let repo = imported();
    repo.write("next.jsonl", "");
    let store = common::open_store(
        &repo.path("state"),
        &Holder {
            pid: 4242,
            command: "watch".into(),
            listen: None,
            ..Holder::default()
        },
    );
    let out = repo.run(&["state", "import", "next.jsonl"]);
    drop(store);
    out.expect_code(1);
    assert_eq!(
        out.stderr,
        "error: the snapshot at ./state is in use by another attrsync process (pid 4242, `attrsync watch`); wait for it to \
         finish, or stop it, then run again\n"
    );
    assert_eq!(
        repo.run(&["state", "list"]).success().stdout,
        "Mary\nxiaoming\n小明\n"
    );
}

#[test]
fn rm_forgets_users_and_leaves_the_rest() {
    let repo = imported();
    let out = repo.run(&["state", "rm", "Mary", "小明", "--auto-approve"]);
    assert_eq!(
        out.success().stdout,
        "Removed 2 users from the snapshot: Mary, 小明. The server is unchanged; the snapshot is at serial 2.\n"
    );
    assert_eq!(repo.run(&["state", "list"]).stdout, "xiaoming\n");
}

#[test]
fn rm_of_an_unknown_user_removes_nothing() {
    let repo = imported();
    let out = repo.run(&[
        "state",
        "rm",
        "Mary",
        "nobody",
        "two words",
        "--auto-approve",
    ]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("not in the snapshot: nobody, \"two words\"; nothing was removed"),
        "{}",
        out.stderr
    );
    assert_eq!(
        repo.run(&["state", "list"]).stdout,
        "Mary\nxiaoming\n小明\n"
    );
}

#[test]
fn rm_asks_first_and_refuses_without_a_terminal() {
    let repo = imported();
    let out = repo.run(&["state", "rm", "Mary"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("re-run with --auto-approve"),
        "{}",
        out.stderr
    );
    assert_eq!(
        repo.run(&["state", "list"]).stdout,
        "Mary\nxiaoming\n小明\n"
    );
    // On a terminal: anything but `yes` keeps the snapshot as it was.
    let command = format!("{} state rm Mary", env!("CARGO_BIN_EXE_attrsync"));
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(repo.dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child.stdin.as_mut().unwrap().write_all(b"no\r").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(
        terminal.contains("forget 1 user in the snapshot"),
        "{terminal}"
    );
    assert!(
        terminal.contains("Cancelled: the snapshot is unchanged."),
        "{terminal}"
    );
    assert_eq!(
        repo.run(&["state", "list"]).stdout,
        "Mary\nxiaoming\n小明\n"
    );
}

/// Runs `attrsync ARGS` in `repo` as a user who may only read it: as `nobody` when the tests
/// run as root (root may write anywhere), else as this user after taking write permission away.
fn as_a_reader(repo: &Repo, args: &[&str]) -> common::Output {
    use std::os::unix::fs::PermissionsExt as _;
    let set_mode = |path: &std::path::Path, dirs: u32, files: u32| {
        fn walk(path: &std::path::Path, dirs: u32, files: u32) {
            let mode = if path.is_dir() { dirs } else { files };
            if path.is_dir() {
                for entry in std::fs::read_dir(path).unwrap() {
                    walk(&entry.unwrap().path(), dirs, files);
                }
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        walk(path, dirs, files);
    };
    set_mode(repo.dir(), 0o555, 0o444);
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    // The binary may live under a directory `nobody` cannot enter: run a copy.
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("attrsync");
    std::fs::copy(env!("CARGO_BIN_EXE_attrsync"), &bin).unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = if root {
        let mut command = std::process::Command::new("setpriv");
        command
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&bin);
        command
    } else {
        std::process::Command::new(&bin)
    };
    command
        .args(args)
        .current_dir(repo.dir())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env("TMPDIR", std::env::temp_dir());
    let out = common::run(command);
    // Writable again, so the temporary directory can be removed.
    set_mode(repo.dir(), 0o755, 0o644);
    out
}

#[test]
fn a_snapshot_this_user_may_only_read_can_be_planned_and_inspected() {
    let repo = imported();
    repo.write("users/a.yaml", "users:\n  Mary: {city: Boston}\n");
    for (args, expect) in [
        (&["state", "list"][..], "Mary\nxiaoming\n小明\n"),
        (&["state", "show", "Mary"], "user: Mary\n"),
        (&["state", "export"], "{\"user\":\"Mary\""),
    ] {
        let out = as_a_reader(&repo, args);
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        assert!(out.stdout.starts_with(expect), "{args:?}: {}", out.stdout);
        assert_eq!(out.stderr, "", "{args:?}");
    }
    let plan = as_a_reader(&repo, &["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        plan.stdout.contains("Mary will be updated"),
        "{}",
        plan.stdout
    );
    // A write says why it cannot, once.
    let rm = as_a_reader(&repo, &["state", "rm", "Mary", "--auto-approve"]);
    assert_eq!(rm.code, 1);
    assert!(
        rm.stderr.contains("this user may only read it")
            && rm.stderr.contains("`state rm` needs the user that owns"),
        "{}",
        rm.stderr
    );
    assert_eq!(rm.stderr.lines().count(), 1, "{}", rm.stderr);
    // Nothing was left behind, and the snapshot is as it was.
    assert_eq!(
        repo.run(&["state", "list"]).stdout,
        "Mary\nxiaoming\n小明\n"
    );
}
