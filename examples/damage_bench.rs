//! Damages a snapshot in every way a disk, a person or a backup tool can, and checks that each
//! damage ends in a clear error or an intact snapshot, never in a silent rollback or a panic.
//!
//! ```text
//! cargo build --release --bin attrsync --example damage_bench
//! target/release/examples/damage_bench [--users 5000] [--seed 1]
//! ```
//!
//! It builds a sled snapshot of `--users` users through the library, in 100-user commits: once
//! with city A, then again with city B (so the database's log holds older versions of every
//! chunk), keeping a copy of the files after the first round. Then, each on a fresh copy, it
//! truncates the database file, zeroes 4 KiB pages, flips bits, deletes each file, and puts
//! back the older copy of the database files; and runs `attrsync state export` and
//! `attrsync plan` (the release binary next to this example, or `ATTRSYNC_BIN`) on the result:
//!
//! - **error**: exit 1 with a message (which names the damage and `attrsync import`);
//! - **intact**: exit 0 and the export equals the undamaged snapshot;
//! - **ROLLBACK**: exit 0 with other content — what must never happen;
//! - **PANIC**: any other exit — what must never happen either.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use support::binary;

use attrsync::model::{Attrs, Region, Target, UserId};
use attrsync::state::{Binding, Commit, Holder, SledDb};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn fill(state: &Path, users: usize, city: &str) {
    let target = Target::Region(Region::Singapore);
    let binding = Binding {
        sdkappid: 1_400_000_000,
        target: &target,
    };
    let store = SledDb::open(state, binding, &Holder::this_process("damage_bench")).unwrap();
    let ids: Vec<UserId> = (0..users)
        .map(|i| UserId::new(&format!("u{i:06}")).unwrap())
        .collect();
    for batch in ids.chunks(100) {
        let attrs = Attrs::parse(&[("city", city), ("sex", "female")]).unwrap();
        store
            .commit(&Commit {
                record: batch
                    .iter()
                    .map(|u| (u.clone(), Some(attrs.clone())))
                    .collect(),
                applied_at: 1_700_000_000,
                ..Commit::default()
            })
            .unwrap();
    }
}

/// Runs `attrsync --dir repo ARGS`: exit code and stdout.
fn run(bin: &Path, repo: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin)
        .arg("--dir")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn main() {
    let mut users = 5000;
    let mut seed = 1;
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--users" => users = value.parse().expect("--users N"),
            "--seed" => seed = value.parse().expect("--seed N"),
            other => panic!("unknown argument {other}; see the module documentation"),
        }
    }
    let bin = binary();
    let mut rng = fastrand::Rng::with_seed(seed);
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(repo.join("users")).unwrap();
    std::fs::write(
        repo.join("attrsync.yaml"),
        "sdkappid: 1400000000\nidentifier: administrator\nregion: singapore\nattributes: [sex, city]\n",
    )
    .unwrap();
    let mut yaml = String::from("users:\n");
    for i in 0..users {
        yaml.push_str(&format!("  u{i:06}: {{city: B, sex: female}}\n"));
    }
    std::fs::write(repo.join("users/all.yaml"), yaml).unwrap();

    let pristine = work.path().join("pristine");
    let older = work.path().join("older");
    fill(&pristine, users, "A");
    copy_dir(&pristine, &older);
    fill(&pristine, users, "B");
    let state = repo.join("state");
    copy_dir(&pristine, &state);
    let (code, truth, _) = run(&bin, &repo, &["state", "export"]);
    assert_eq!(code, Some(0));
    std::fs::remove_dir_all(&state).unwrap();
    let db_len = std::fs::metadata(pristine.join("db")).unwrap().len();
    println!(
        "damage_bench: {users} users, {} commits, the database file is {db_len} bytes",
        2 * users.div_ceil(100)
    );

    type Damage = Box<dyn Fn(&Path)>;
    let mut cases: Vec<(String, Damage)> = Vec::new();
    for percent in [1u64, 25, 50, 75, 90, 99] {
        cases.push((
            format!("truncate db to {percent}%"),
            Box::new(move |dir: &Path| {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("db"))
                    .unwrap();
                file.set_len(db_len * percent / 100).unwrap();
            }),
        ));
    }
    for _ in 0..12 {
        let page = rng.u64(0..db_len / 4096);
        cases.push((
            format!("zero the 4 KiB page at {}", page * 4096),
            Box::new(move |dir: &Path| {
                use std::os::unix::fs::FileExt as _;
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("db"))
                    .unwrap();
                file.write_all_at(&[0; 4096], page * 4096).unwrap();
            }),
        ));
    }
    for _ in 0..12 {
        let (offset, bit) = (rng.u64(0..db_len), rng.u8(0..8));
        cases.push((
            format!("flip bit {bit} of byte {offset}"),
            Box::new(move |dir: &Path| {
                use std::os::unix::fs::FileExt as _;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join("db"))
                    .unwrap();
                let mut byte = [0u8];
                file.read_exact_at(&mut byte, offset).unwrap();
                byte[0] ^= 1 << bit;
                file.write_all_at(&byte, offset).unwrap();
            }),
        ));
    }
    for name in ["db", "conf", "serial", "blobs"] {
        cases.push((
            format!("delete {name}"),
            Box::new(move |dir: &Path| {
                let path = dir.join(name);
                if path.is_dir() {
                    std::fs::remove_dir_all(path).unwrap();
                } else if path.exists() {
                    std::fs::remove_file(path).unwrap();
                }
            }),
        ));
    }
    cases.push((
        "flip a bit of the serial file".to_owned(),
        Box::new(|dir: &Path| {
            let mut bytes = std::fs::read(dir.join("serial")).unwrap();
            bytes[0] ^= 1;
            std::fs::write(dir.join("serial"), bytes).unwrap();
        }),
    ));
    let older_copy = older.clone();
    cases.push((
        "put back the older copy of db and conf".to_owned(),
        Box::new(move |dir: &Path| {
            for name in ["db", "conf"] {
                std::fs::copy(older_copy.join(name), dir.join(name)).unwrap();
            }
        }),
    ));

    let (mut errors, mut intact, mut bad) = (0, 0, 0);
    for (name, damage) in &cases {
        copy_dir(&pristine, &state);
        damage(&state);
        let export = run(&bin, &repo, &["state", "export"]);
        let plan = run(&bin, &repo, &["plan", "--format", "json"]);
        let verdict = match (export.0, plan.0) {
            (Some(1), Some(1)) => {
                errors += 1;
                let message = export.2.lines().next().unwrap_or_default().to_owned();
                format!("error: {}", message.chars().take(150).collect::<String>())
            }
            (Some(0), Some(0 | 2)) if export.1 == truth => {
                intact += 1;
                "intact".to_owned()
            }
            (Some(0), _) => {
                bad += 1;
                format!(
                    "ROLLBACK: export exits 0 with {} lines instead of {}",
                    export.1.lines().count(),
                    truth.lines().count()
                )
            }
            other => {
                bad += 1;
                format!(
                    "PANIC or odd exit {other:?}: {}",
                    export.2.lines().next().unwrap_or_default()
                )
            }
        };
        println!("{name:40} {verdict}");
        std::fs::remove_dir_all(&state).unwrap();
    }
    println!(
        "== {} damages: {errors} clear errors, {intact} intact, {bad} silent rollbacks or panics",
        cases.len()
    );
    if bad > 0 {
        std::process::exit(1);
    }
}
