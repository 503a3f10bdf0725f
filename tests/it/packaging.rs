//! What ships beside the binary, parsed rather than run: the Dockerfile, the release and CI
//! workflows, the CI example for config repositories, the licences and the changelog.

use std::path::Path;

use serde_json::Value;

use crate::common::yaml;

/// A file of the repository, as text.
fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `run:` script of a workflow's jobs, joined.
fn scripts(workflow: &Value) -> String {
    let mut all = String::new();
    for job in workflow["jobs"].as_object().unwrap().values() {
        for step in job["steps"].as_array().unwrap() {
            if let Some(run) = step["run"].as_str() {
                all.push_str(run);
                all.push('\n');
            }
        }
    }
    all
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_as_a_non_root_user_in_a_small_one() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].contains(" AS build"), "{}", stages[0]);
    assert!(
        stages[1].contains("distroless"),
        "a small runtime image: {}",
        stages[1]
    );
    assert!(dockerfile.contains("cargo build --release --locked"));
    let runtime = &instructions[instructions.iter().position(|l| l == stages[1]).unwrap()..];
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
    assert!(runtime.contains(&r#"ENTRYPOINT ["/usr/local/bin/attrsync"]"#));
    assert!(runtime.iter().any(|l| l.starts_with("COPY --from=build")));
    // The build context leaves out what would bloat it or leak a snapshot into the image.
    let ignored = read(".dockerignore");
    for entry in ["target", ".git", "state"] {
        assert!(
            ignored
                .lines()
                .any(|l| l.trim_start_matches('/').starts_with(entry)),
            "{entry}"
        );
    }
}

#[test]
fn a_tag_releases_linux_and_macos_binaries_with_checksums() {
    let release = yaml(&read(".github/workflows/release.yml"));
    assert_eq!(release["on"]["push"]["tags"], serde_json::json!(["v*"]));
    let targets: Vec<&str> = release["jobs"]["build"]["strategy"]["matrix"]["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    for target in [
        "x86_64-unknown-linux-gnu",
        "aarch64-unknown-linux-gnu",
        "x86_64-apple-darwin",
        "aarch64-apple-darwin",
    ] {
        assert!(targets.contains(&target), "{target}: {targets:?}");
    }
    let run = scripts(&release);
    assert!(
        run.contains("cargo build --release --locked --target"),
        "{run}"
    );
    assert!(
        run.contains(".sha256") && run.contains("gh release create"),
        "{run}"
    );
    // Only the publishing job may write.
    assert_eq!(release["permissions"]["contents"], "read");
    assert_eq!(
        release["jobs"]["release"]["permissions"]["contents"],
        "write"
    );
}

#[test]
fn ci_runs_the_script_readme_names() {
    let ci = yaml(&read(".github/workflows/ci.yml"));
    assert!(scripts(&ci).contains("bash .ci/run"));
    assert!(read("README.md").contains("bash .ci/run"));
}

#[test]
fn the_ci_example_installs_a_verified_release_instead_of_compiling() {
    let example = read("examples/ci/github-actions.yml");
    let workflow = yaml(&example);
    let run = scripts(&workflow);
    assert!(!run.contains("cargo install"), "{run}");
    assert!(
        run.contains("releases/download") && run.contains("sha256sum -c"),
        "{run}"
    );
    // No tag is pinned in the file: the version is a repository variable.
    assert_eq!(
        workflow["env"]["ATTRSYNC_VERSION"],
        "${{ vars.ATTRSYNC_VERSION }}"
    );
    assert!(
        run.contains("::error::set the repository variables"),
        "{run}"
    );
}

#[test]
fn the_licence_files_match_cargo_toml() {
    let manifest = read("Cargo.toml");
    assert!(manifest.contains(r#"license = "MIT OR Apache-2.0""#));
    assert!(read("LICENSE-MIT").starts_with("MIT License"));
    let apache = read("LICENSE-APACHE");
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0, January 2004"));
    assert!(apache.contains("END OF TERMS AND CONDITIONS"));
}

#[test]
fn the_changelog_keeps_an_unreleased_section() {
    let changelog = read("CHANGELOG.md");
    assert!(changelog.starts_with("# Changelog"));
    assert!(changelog.contains("## [Unreleased]"));
}
