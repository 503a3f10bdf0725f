//! The command line as a new user and a CI script meet it: exit codes of usage errors, a
//! closed stdout, Ctrl-C at the prompt, and the messages around them.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use attrsync::emulator::DEMO_SECRET_KEY;

use crate::common::{self, Repo, Server, SETTINGS};

/// A repository whose config points at `server`, declaring `users` in one file.
fn repo_for(server: &Server, users: &str) -> Repo {
    let settings = SETTINGS.replace("region: singapore", &format!("endpoint: {}", server.url()));
    let repo = Repo::new(&[("attrsync.yaml", &settings)]);
    repo.mkdir("users");
    repo.write("users/a.yaml", users);
    repo
}

/// Runs `attrsync ARGS` in `repo` with the emulator's key.
fn run_with_key(repo: &Repo, args: &[&str]) -> common::Output {
    let mut command = repo.command(args);
    command.env("TIM_SECRET_KEY", DEMO_SECRET_KEY);
    common::run(command)
}

mod exit_codes {
    use super::*;

    #[test]
    fn a_usage_error_exits_1_never_the_2_of_changes_present() {
        let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Mary: {city: Oslo}\n")]);
        for args in [
            &["plan", "--detailed-exitcode", "--bogus"][..],
            &["plan", "--format", "yaml"],
            &["no-such-command"],
            &[],
        ] {
            let out = repo.run(args);
            out.expect_code(1);
            assert!(out.stderr.contains("--help"), "{args:?}: {}", out.stderr);
        }
        // The same plan without the typo has changes: 2.
        repo.run(&["plan", "--detailed-exitcode"]).expect_code(2);
    }

    #[test]
    fn help_and_version_succeed_on_stdout() {
        let repo = Repo::new(&[]);
        for args in [
            &["--help"][..],
            &["plan", "--help"],
            &["-h"],
            &["--version"],
            &["help"],
        ] {
            let out = repo.run(args);
            out.expect_code(0);
            assert!(!out.stdout.is_empty(), "{args:?}");
        }
    }
}

mod closed_stdout {
    use super::*;

    /// Runs `attrsync ARGS` with a stdout whose reader is gone before anything is written.
    fn run_into_closed_pipe(repo: &Repo, args: &[&str]) -> (i32, String) {
        let mut child = repo
            .command(args)
            .env("TIM_SECRET_KEY", DEMO_SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        let code = status
            .code()
            .unwrap_or_else(|| panic!("{args:?} ended by a signal: {status:?}\n{stderr}"));
        (code, stderr)
    }

    #[test]
    fn plan_state_list_and_validate_end_quietly() {
        let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Mary: {city: Oslo}\n")]);
        repo.seed(&[("Mary", &[("city", "Lima")])]);
        for args in [
            &["plan"][..],
            &["plan", "--format", "json"],
            &["state", "list"],
            &["state", "export"],
            &["state", "show", "Mary"],
            &["validate"],
        ] {
            let (code, stderr) = run_into_closed_pipe(&repo, args);
            assert_eq!((code, stderr.as_str()), (0, ""), "{args:?}");
        }
    }

    #[test]
    fn an_apply_whose_stdout_closed_sends_nothing_and_says_so() {
        let server = Server::default();
        let repo = repo_for(&server, "users:\n  Mary: {city: Oslo}\n");
        let (code, stderr) = run_into_closed_pipe(&repo, &["apply", "--auto-approve"]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains("stdout was closed before the apply started: nothing was sent"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(server.calls("set_attr"), 0);
    }
}

mod wrong_endpoint {
    use super::*;

    /// A repository whose config points at `url`, with one user to create.
    fn repo_at(url: &str) -> Repo {
        let settings = SETTINGS.replace("region: singapore", &format!("endpoint: {url}"));
        let repo = Repo::new(&[("attrsync.yaml", &settings)]);
        repo.mkdir("users");
        repo.write("users/a.yaml", "users:\n  Mary: {city: Oslo}\n");
        repo
    }

    #[test]
    fn nothing_listening_fails_in_a_few_quick_attempts_before_the_plan_is_shown() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let repo = repo_at(&url);
        let started = Instant::now();
        let out = run_with_key(&repo, &["apply", "--auto-approve"]);
        out.expect_code(1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            out.stderr
                .contains(&format!("cannot reach the Tencent Cloud IM API at {url}")),
            "{}",
            out.stderr
        );
        assert!(!out.stdout.contains("will perform"), "{}", out.stdout);
        assert_eq!(repo.run(&["state", "list"]).stdout, "");
    }

    #[test]
    fn a_server_that_is_not_tencent_im_is_asked_once() {
        // What `python3 -m http.server` answers to a POST.
        let canned = common::Canned::start(|_| {
            common::Canned::response(
                "501 Unsupported method ('POST')",
                &[("Content-Type", "text/html")],
                b"<html><body><h1>Error response</h1></body></html>",
            )
        });
        let repo = repo_at(&canned.url());
        let out = run_with_key(&repo, &["apply", "--auto-approve"]);
        out.expect_code(1);
        assert!(
            out.stderr.contains("did not answer like Tencent Cloud IM")
                && out.stderr.contains(&canned.url()),
            "{}",
            out.stderr
        );
        assert_eq!(canned.seen().len(), 1, "{:?}", canned.seen());
        assert!(!out.stdout.contains("will perform"), "{}", out.stdout);
    }
}

mod prompt {
    use super::*;

    /// `attrsync apply` on a terminal (`script` gives it one): the prompt is shown, then
    /// `keys` are typed. Returns the exit code, the terminal's output, and how long the
    /// process took after the keys.
    fn apply_on_a_terminal(repo: &Repo, keys: &[u8]) -> (i32, String, Duration) {
        let command = format!("{} apply", env!("CARGO_BIN_EXE_attrsync"));
        let mut child = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .current_dir(repo.dir())
            .env("TIM_SECRET_KEY", DEMO_SECRET_KEY)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script(1) from util-linux runs");
        let mut terminal = child.stdout.take().unwrap();
        let (chunks, received) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = terminal.read(&mut buffer) {
                if chunks.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let read_until = |seen: &mut Vec<u8>, what: &str| {
            let deadline = Instant::now() + common::TIMEOUT;
            while !String::from_utf8_lossy(seen).contains(what) {
                match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(chunk) => seen.extend(chunk),
                    Err(_) => panic!(
                        "no {what:?} on the terminal:\n{}",
                        String::from_utf8_lossy(seen)
                    ),
                }
            }
        };
        read_until(&mut seen, "Only 'yes' will be accepted");
        let typed = Instant::now();
        child.stdin.as_mut().unwrap().write_all(keys).unwrap();
        child.stdin.as_mut().unwrap().flush().unwrap();
        let mut status = None;
        crate::watch_support::wait_until_within(
            "apply ends after the keys were typed",
            common::TIMEOUT,
            || {
                status = child.try_wait().unwrap();
                status.is_some()
            },
        );
        let status = status.expect("the wait ended when it exited");
        let took = typed.elapsed();
        while let Ok(chunk) = received.recv_timeout(Duration::from_secs(1)) {
            seen.extend(chunk);
        }
        let code = status.code().expect("script exits with the child's code");
        (code, String::from_utf8_lossy(&seen).into_owned(), took)
    }

    #[test]
    fn ctrl_c_at_the_confirmation_prompt_cancels_at_once_with_130() {
        let server = Server::default();
        let repo = repo_for(&server, "users:\n  Mary: {city: Oslo}\n");
        // ^C on a terminal: the line discipline sends SIGINT to attrsync.
        let (code, terminal, took) = apply_on_a_terminal(&repo, b"\x03");
        assert_eq!(code, 130, "{terminal}");
        assert!(
            terminal.contains("Apply cancelled: nothing was sent."),
            "{terminal}"
        );
        assert!(!terminal.contains("stopping: no new batches"), "{terminal}");
        // At once, not after Enter: the process would wait forever otherwise.
        assert!(took < common::TIMEOUT, "{took:?}");
        assert_eq!(server.calls("set_attr"), 0);
        assert_eq!(repo.run(&["state", "list"]).stdout, "");
    }

    #[test]
    fn yes_applies_and_anything_else_cancels() {
        let server = Server::default();
        let repo = repo_for(&server, "users:\n  Mary: {city: Oslo}\n");
        let (code, terminal, _) = apply_on_a_terminal(&repo, b"no\r");
        assert_eq!(code, 1, "{terminal}");
        assert!(terminal.contains("Apply cancelled"), "{terminal}");
        assert_eq!(server.calls("set_attr"), 0);
        let (code, terminal, _) = apply_on_a_terminal(&repo, b"yes\r");
        assert_eq!(code, 0, "{terminal}");
        assert_eq!(server.calls("set_attr"), 1);
    }
}

mod wording {
    use super::*;

    #[test]
    fn a_user_id_with_a_space_is_quoted_in_the_text_plan() {
        let repo = Repo::with_users(&[(
            "users/a.yaml",
            "users:\n  \"mary smith\": {city: Oslo}\n  Bob: {city: Rome}\n",
        )]);
        let out = repo.run(&["plan"]);
        out.success();
        assert!(
            out.stdout.contains("+ \"mary smith\" will be created"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("+ Bob will be created"),
            "{}",
            out.stdout
        );
    }

    #[test]
    fn one_call_is_one_call() {
        let server = Server::default();
        let repo = repo_for(&server, "users:\n  Mary: {city: Oslo}\n");
        let out = run_with_key(&repo, &["apply", "--auto-approve"]);
        out.success();
        assert!(
            out.stdout.contains("  1 call, 0 retries, 0 throttled"),
            "{}",
            out.stdout
        );
    }
}

mod references {
    use std::path::Path;

    /// Every file under `dir` (recursively) with one of `extensions`.
    fn files(dir: &Path, extensions: &[&str], found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, extensions, found);
            } else if path
                .extension()
                .is_some_and(|e| extensions.contains(&e.to_str().unwrap_or("")))
            {
                found.push(path);
            }
        }
    }

    #[test]
    fn code_and_docs_cite_only_files_in_the_repository() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = vec![root.join("README.md")];
        for dir in ["src", "tests", "docs", "examples", "benches"] {
            files(
                &root.join(dir),
                &["rs", "md", "sh", "yml", "yaml"],
                &mut found,
            );
        }
        // Written in two halves, so that this file does not cite them either.
        let outside = [
            ["REFERENCE", ".md"].concat(),
            ["DESIGN", ".md"].concat(),
            ["../", "shared/"].concat(),
        ];
        for path in &found {
            let text = std::fs::read_to_string(path).unwrap();
            for needle in &outside {
                assert!(
                    !text.contains(needle.as_str()),
                    "{} cites {needle}, which is not in the repository: point it at docs/",
                    path.display()
                );
            }
        }
        // And the docs it points at exist.
        for doc in ["docs/api.md", "docs/architecture.md"] {
            assert!(root.join(doc).is_file(), "{doc}");
        }
    }
}

mod silent_mistakes {
    use super::*;

    #[test]
    fn an_empty_users_dir_is_a_warning_in_validate_plan_and_apply() {
        let repo = Repo::with_users(&[]);
        let expected =
            "warning: users has no user files (*.yaml, *.yml): the config declares no users";
        let validate = repo.run(&["validate"]);
        validate.success();
        assert!(validate.stderr.starts_with(expected), "{}", validate.stderr);
        let plan = repo.run(&["plan"]);
        plan.success();
        assert!(plan.stderr.starts_with(expected), "{}", plan.stderr);
        assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
        // Files that declare nobody.
        repo.write("users/a.yaml", "users: {}\n");
        let plan = repo.run(&["plan"]);
        assert!(
            plan.stderr
                .contains("warning: the 1 user file under users declare no users"),
            "{}",
            plan.stderr
        );
    }

    #[test]
    fn a_mistyped_state_says_no_snapshot_is_there() {
        let server = Server::default();
        let repo = repo_for(&server, "users:\n  Mary: {city: Oslo}\n");
        run_with_key(&repo, &["apply", "--auto-approve"]).success();
        // The right snapshot: nothing to say.
        let right = repo.run(&["plan"]);
        assert_eq!(right.stderr, "");
        let wrong = repo.run(&["--state", "stat", "plan"]);
        wrong.success();
        assert!(
            wrong.stderr.contains(
                "there is no snapshot at stat: every declared user is planned as a create"
            ) && wrong.stderr.contains("check --state"),
            "{}",
            wrong.stderr
        );
        assert!(wrong.stdout.contains("1 to create"), "{}", wrong.stdout);
    }
}

mod tooling {
    use super::*;

    #[test]
    fn completions_for_every_shell() {
        let repo = Repo::new(&[]);
        for (shell, marker) in [
            ("bash", "_attrsync()"),
            ("zsh", "#compdef attrsync"),
            ("fish", "complete -c attrsync"),
            ("powershell", "Register-ArgumentCompleter"),
            ("elvish", "edit:completion:arg-completer[attrsync]"),
        ] {
            let out = repo.run(&["completions", shell]);
            out.success();
            assert!(
                out.stdout.contains(marker),
                "{shell}: {}",
                &out.stdout[..200.min(out.stdout.len())]
            );
            assert!(out.stdout.contains("detailed-exitcode"), "{shell}");
        }
        repo.run(&["completions", "tcsh"]).expect_code(1);
    }

    #[test]
    fn man_pages_for_the_tool_and_each_command() {
        let repo = Repo::new(&[]);
        let out = repo.run(&["man", "--out", "man/man1"]);
        out.success();
        for page in [
            "attrsync",
            "attrsync-plan",
            "attrsync-apply",
            "attrsync-state-export",
            "attrsync-watch",
        ] {
            let text = std::fs::read_to_string(repo.path(&format!("man/man1/{page}.1")))
                .unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.contains(".TH"), "{page}");
            assert!(text.contains(page), "{page}");
        }
        assert!(!repo.path("man/man1/attrsync-help.1").exists());
        let pages = std::fs::read_dir(repo.path("man/man1")).unwrap().count();
        assert_eq!(
            out.stdout,
            format!("Wrote {pages} man pages to man/man1.\n")
        );
        assert!(pages > 20, "{pages}");
    }

    #[test]
    fn the_version_names_the_commit_when_built_from_a_checkout() {
        let out = Repo::new(&[]).run(&["--version"]);
        out.success();
        let version = concat!("attrsync ", env!("CARGO_PKG_VERSION"));
        assert!(out.stdout.starts_with(version), "{}", out.stdout);
        let head = Command::new("git")
            .args(["rev-parse", "--short=9", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output();
        if let Some(head) = head.ok().filter(|h| h.status.success()) {
            let commit = String::from_utf8(head.stdout).unwrap();
            assert_eq!(out.stdout, format!("{version} ({})\n", commit.trim()));
        }
    }

    #[test]
    fn no_color_turns_colour_off_on_a_terminal() {
        let repo = Repo::with_users(&[("users/a.yaml", "users:\n  Mary: {city: Oslo}\n")]);
        let on_a_terminal = |flags: &str| {
            let command = format!("{} {flags} plan", env!("CARGO_BIN_EXE_attrsync"));
            let out = Command::new("script")
                .args(["-qec", &command, "/dev/null"])
                .current_dir(repo.dir())
                .env_remove("NO_COLOR")
                .stdin(Stdio::null())
                .output()
                .expect("script(1) runs");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(
            on_a_terminal("").contains("\x1b["),
            "colour on a terminal by default"
        );
        let plain = on_a_terminal("--no-color");
        assert!(!plain.contains("\x1b["), "{plain:?}");
        assert!(plain.contains("Mary will be created"), "{plain}");
    }
}

mod init {
    use super::*;

    #[test]
    fn init_writes_a_starter_repository_that_validates_and_plans() {
        let repo = Repo::new(&[(".gitignore", "/target\n")]);
        let out = repo.run(&["init", "new"]);
        out.success();
        assert!(
            out.stdout.starts_with("Created a config repository in new"),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("attributes push"), "{}", out.stdout);
        let validate = repo.run(&["--dir", "new", "validate"]);
        assert_eq!(
            validate.success().stdout,
            "The config is valid: 2 users in 1 file, 3 attributes.\n"
        );
        assert!(repo
            .read("new/attrsync.yaml")
            .contains("# The app's SDKAppID"));
        assert_eq!(repo.read("new/.gitignore"), "# attrsync's local snapshot (sled): what this machine last applied. Not configuration.\n/state/\n");
        let plan = repo.run(&["--dir", "new", "plan"]);
        assert!(
            plan.success().stdout.contains("Plan: 2 to create"),
            "{}",
            plan.stdout
        );
        // The current directory by default (--dir), and an existing .gitignore is kept.
        repo.run(&["init"]).success();
        assert_eq!(
            repo.read(".gitignore"),
            "/target\n# attrsync's local snapshot (sled): what this machine last applied. Not configuration.\n/state/\n"
        );
        repo.run(&["validate"]).success();
    }

    #[test]
    fn init_never_overwrites_a_config() {
        let repo = Repo::new(&[("attrsync.yaml", "sdkappid: 1\n")]);
        let out = repo.run(&["init"]);
        out.expect_code(1);
        assert!(
            out.stderr.contains("attrsync.yaml already exists"),
            "{}",
            out.stderr
        );
        assert_eq!(repo.read("attrsync.yaml"), "sdkappid: 1\n");
        assert!(!repo.path("users").exists());
    }
}
