//! Records the git commit attrsync is built from, for `attrsync --version`: `0.1.0 (1a2b3c4)`
//! from a checkout, `0.1.0` from a source tarball (crates.io, a release archive).

use std::path::Path;
use std::process::Command;

fn main() {
    // Rebuild when the checked-out commit moves: HEAD (a branch switch) and the ref it names.
    let git = Path::new(".git");
    if git.is_dir() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        // Only paths that exist: cargo re-runs the script on every build for a missing one.
        // A fresh clone keeps its refs in packed-refs; a commit writes a loose ref under
        // refs/heads (cargo watches a directory's files).
        let mut watched = vec!["packed-refs".to_owned(), "refs/heads".to_owned()];
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
            if let Some(reference) = head.trim().strip_prefix("ref: ") {
                watched.push(reference.to_owned());
            }
        }
        for path in watched.iter().filter(|p| git.join(p).exists()) {
            println!("cargo:rerun-if-changed=.git/{path}");
        }
    }
    println!("cargo:rerun-if-env-changed=ATTRSYNC_BUILD_COMMIT");
    let commit = std::env::var("ATTRSYNC_BUILD_COMMIT").ok().or_else(|| {
        let output = Command::new("git")
            .args(["rev-parse", "--short=9", "HEAD"])
            .output()
            .ok()?;
        let commit = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !commit.trim().is_empty()).then(|| commit.trim().to_owned())
    });
    let version = match commit {
        Some(commit) => format!("{} ({commit})", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    };
    println!("cargo:rustc-env=ATTRSYNC_VERSION={version}");
}
