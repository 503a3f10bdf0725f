//! The PostgreSQL backend end to end: the real binary, the emulator over HTTP, and a real
//! PostgreSQL shared by several checkouts, as CI runners and daemons on different machines
//! share it.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attrsync::emulator::DEMO_SECRET_KEY;

use crate::common::{self, Output, Repo, Server};

/// A password that must never be printed.
const PASSWORD: &str = "Sup3rSecretPassw0rd";

/// `url` with [`PASSWORD`] in it (the test cluster trusts every local connection).
fn with_password(url: &str) -> String {
    url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1)
}

/// A checkout of the config repository for `server`, its snapshot at `ATTRSYNC_STATE`.
struct Checkout {
    repo: Repo,
    state: String,
}

impl Checkout {
    fn new(server: &Server, state: &str, extra: &str, users: &str) -> Checkout {
        let settings = format!(
            "sdkappid: 1400000000\nidentifier: administrator\nendpoint: {}\nattributes: [sex, city, tier]\n{extra}",
            server.url()
        );
        let repo = Repo::new(&[("attrsync.yaml", &settings), ("users/all.yaml", users)]);
        Checkout {
            repo,
            state: state.to_owned(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.repo.command(args);
        command
            .env("ATTRSYNC_STATE", &self.state)
            .env("TIM_SECRET_KEY", DEMO_SECRET_KEY);
        command
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> Output {
        let out = common::run(self.command(args));
        assert!(
            !out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD),
            "the database password was printed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        out
    }

    /// Starts `attrsync ARGS` in the background; only its stderr is kept (a full stdout pipe
    /// nobody reads would stall it).
    fn spawn(&self, args: &[&str]) -> Child {
        let mut command = self.command(args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command.spawn().unwrap()
    }

    /// The plan as JSON.
    #[track_caller]
    fn plan(&self) -> serde_json::Value {
        self.run(&["plan", "--format", "json"]).success().json()
    }

    /// The snapshot: user → attributes, and the users in doubt.
    #[track_caller]
    fn snapshot(&self) -> (BTreeMap<String, BTreeMap<String, String>>, Vec<String>) {
        let out = self.run(&["state", "export"]);
        out.success();
        let mut users = BTreeMap::new();
        let mut doubt = Vec::new();
        for line in out.stdout.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let user = value["user"].as_str().unwrap().to_owned();
            if value.get("in_doubt").is_some_and(|d| !d.is_null()) {
                doubt.push(user.clone());
            }
            let attrs: BTreeMap<String, String> =
                serde_json::from_value(value["attrs"].clone()).unwrap_or_default();
            users.insert(user, attrs);
        }
        (users, doubt)
    }
}

/// A checkout whose apply of 300 users takes about 6 s (5 calls a second, 10 users a call).
fn slow(server: &Server, state: &str) -> Checkout {
    Checkout::new(
        server,
        state,
        "rate_limit: 5\nbatch_size: 10\n",
        &users(300),
    )
}

/// The server holds exactly what the snapshot records, and nobody is in doubt.
#[track_caller]
fn assert_converged(checkout: &Checkout, server: &Server) {
    let (recorded, doubt) = checkout.snapshot();
    assert!(doubt.is_empty(), "{doubt:?}");
    assert_eq!(server.users(), recorded);
}

fn users(count: usize) -> String {
    let mut text = String::from("users:\n");
    for i in 0..count {
        text.push_str(&format!("  u{i:04}: {{sex: female, city: C{}}}\n", i % 7));
    }
    text
}

/// Waits (polling, with a deadline) until the server has had `calls` set_attr calls.
#[track_caller]
fn wait_for_calls(server: &Server, calls: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.calls("set_attr") < calls {
        assert!(Instant::now() < deadline, "the apply did not get going");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to exit; returns its exit code and what it wrote on stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = child.wait().unwrap();
    (status.code(), stderr)
}

fn kill(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Every user the snapshot records (and does not doubt) holds exactly that on the server.
#[track_caller]
fn assert_no_lie(checkout: &Checkout, server: &Server) {
    let (recorded, doubt) = checkout.snapshot();
    let live = server.users();
    for (user, attrs) in &recorded {
        if doubt.contains(user) {
            continue;
        }
        assert_eq!(
            live.get(user).cloned().unwrap_or_default(),
            *attrs,
            "the snapshot claims {user} holds {attrs:?}"
        );
    }
}

#[test]
fn two_checkouts_in_different_directories_share_one_snapshot() {
    let cluster = crate::require_postgres!();
    let server = Server::default();
    let url = cluster.database();
    let first = Checkout::new(&server, &with_password(&url), "", &users(250));
    // The second names the database in attrsync.yaml, the first in ATTRSYNC_STATE.
    let second = Checkout {
        repo: Repo::new(&[]),
        state: String::new(),
    };
    second.repo.write(
        "attrsync.yaml",
        format!("{}state: {url}\n", first.repo.read("attrsync.yaml")),
    );
    second.repo.write("users/all.yaml", users(250));
    let second = Checkout {
        state: url.clone(),
        ..second
    };

    first.run(&["apply", "--auto-approve"]).success();
    assert_eq!(server.users().len(), 250);
    let plan = second.plan();
    assert_eq!(plan["summary"]["create"], 0, "{plan}");
    assert_eq!(plan["summary"]["update"], 0, "{plan}");
    let serial = plan["snapshot_serial"].as_u64().unwrap();
    assert!(serial > 0);

    // A change applied from the second is seen by the first.
    second.repo.write(
        "users/all.yaml",
        users(250).replace(
            "u0003: {sex: female, city: C3}",
            "u0003: {sex: male, city: C3}",
        ),
    );
    second.run(&["apply", "--auto-approve"]).success();
    first
        .repo
        .write("users/all.yaml", second.repo.read("users/all.yaml"));
    let plan = first.plan();
    assert_eq!(plan["summary"]["update"], 0, "{plan}");
    assert!(plan["snapshot_serial"].as_u64().unwrap() > serial);
}

#[test]
fn a_second_apply_fails_at_once_naming_the_holder_or_waits_with_a_lock_timeout() {
    let cluster = crate::require_postgres!();
    let server = Server::default();
    let url = with_password(&cluster.database());
    // 5 calls a second, 10 users a call: 300 users take about 6 s.
    let slow = slow(&server, &url);
    let other = Checkout::new(&server, &url, "", &users(300));
    let running = slow.spawn(&["apply", "--auto-approve"]);
    wait_for_calls(&server, 2);

    let refused = other.run(&["apply", "--auto-approve"]);
    refused.expect_code(1);
    assert!(
        refused.stderr.contains(&format!("pid {}", running.id()))
            && refused.stderr.contains("`attrsync apply`")
            && refused.stderr.contains("lock ID")
            && refused.stderr.contains("--lock-timeout"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("postgres:***@"),
        "{}",
        refused.stderr
    );

    let waited = other.run(&["apply", "--auto-approve", "--lock-timeout", "60s"]);
    waited.success();
    let (code, stderr) = finish(running);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(server.users().len(), 300);
    assert_no_lie(&other, &server);
}

#[test]
fn a_killed_apply_leaves_no_lie_and_the_next_run_converges() {
    let cluster = crate::require_postgres!();
    let server = Server::default();
    let url = cluster.database();
    let checkout = Checkout::new(
        &server,
        &url,
        "rate_limit: 10\nbatch_size: 10\n",
        &users(300),
    );
    let running = checkout.spawn(&["apply", "--auto-approve"]);
    wait_for_calls(&server, 8);
    kill(&running, "-KILL");
    finish(running);
    assert_no_lie(&checkout, &server);
    // The killed session's lock is gone with it.
    checkout
        .run(&["apply", "--auto-approve", "--lock-timeout", "10s"])
        .success();
    assert_converged(&checkout, &server);
    assert_eq!(server.users().len(), 300);
}

#[test]
fn a_force_unlocked_apply_stops_and_its_next_write_is_refused() {
    let cluster = crate::require_postgres!();
    let server = Server::default();
    let url = cluster.database();
    let slow = slow(&server, &url);
    let running = slow.spawn(&["apply", "--auto-approve"]);
    wait_for_calls(&server, 2);
    let refused = slow.run(&["apply", "--auto-approve"]);
    let lock_id = refused
        .stderr
        .split("lock ID ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no lock ID in: {}", refused.stderr))
        .to_owned();

    let unlocked = slow.run(&["state", "unlock", &lock_id, "--force"]);
    unlocked.success();
    assert!(unlocked.stdout.contains("released"), "{}", unlocked.stdout);
    let (code, stderr) = finish(running);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("lock"), "{stderr}");
    assert!(server.users().len() < 300, "it stopped before the end");
    assert_no_lie(&slow, &server);
    slow.run(&["apply", "--auto-approve"]).success();
    assert_eq!(server.users().len(), 300);
    assert!(slow.snapshot().1.is_empty());

    let unknown = slow.run(&["state", "unlock", "0123456789abcdef", "--force"]);
    unknown.expect_code(1);
    assert!(
        unknown.stderr.contains("no lock with ID"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn migrate_sled_to_postgres_and_back() {
    let cluster = crate::require_postgres!();
    let server = Server::default();
    let url = with_password(&cluster.database());
    let local = Checkout::new(&server, "state", "", &users(120));
    local.run(&["apply", "--auto-approve"]).success();
    let (before, _) = local.snapshot();
    let serial = local.plan()["snapshot_serial"].as_u64().unwrap();

    let moved = local.run(&["state", "migrate", "--to", &url]);
    moved.success();
    assert!(
        moved.stdout.contains("Migrated 120 users"),
        "{}",
        moved.stdout
    );
    assert!(moved.stdout.contains("sha256:"), "{}", moved.stdout);
    // The directory refuses to be used; the database has everything, serial included.
    let stale = local.run(&["plan"]);
    stale.expect_code(1);
    assert!(
        stale
            .stderr
            .contains("was migrated to postgres://postgres:***@"),
        "{}",
        stale.stderr
    );
    let shared = Checkout {
        repo: Repo::new(&[]),
        state: url.clone(),
    };
    shared
        .repo
        .write("attrsync.yaml", local.repo.read("attrsync.yaml"));
    shared.repo.write("users/all.yaml", users(120));
    let plan = shared.plan();
    assert_eq!(plan["summary"]["create"], 0, "{plan}");
    assert!(plan["snapshot_serial"].as_u64().unwrap() >= serial);
    assert_eq!(shared.snapshot().0, before);

    // And back into a new directory.
    shared.run(&["state", "migrate", "--to", "back"]).success();
    let back = Checkout {
        repo: shared.repo,
        state: "back".to_owned(),
    };
    assert_eq!(back.snapshot().0, before);
    assert_eq!(back.plan()["summary"]["create"], 0);
    let gone = Checkout {
        repo: Repo::new(&[]),
        state: url,
    };
    gone.repo
        .write("attrsync.yaml", back.repo.read("attrsync.yaml"));
    gone.repo.write("users/all.yaml", users(120));
    gone.run(&["plan"]).expect_code(1);
}

#[test]
fn a_database_crash_mid_apply_stops_it_without_a_lie_and_the_next_run_converges() {
    let Some(cluster) = crate::pg_support::private_cluster() else {
        return;
    };
    let server = Server::default();
    let url = cluster.database();
    let slow = slow(&server, &url);
    let running = slow.spawn(&["apply", "--auto-approve"]);
    wait_for_calls(&server, 3);
    let crashed_at = Instant::now();
    cluster.crash_restart();
    let (code, stderr) = finish(running);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        crashed_at.elapsed() < Duration::from_secs(20),
        "it stopped within seconds"
    );
    assert!(
        stderr.contains("snapshot"),
        "it says what happened: {stderr}"
    );
    assert_no_lie(&slow, &server);
    slow.run(&["apply", "--auto-approve"]).success();
    assert_converged(&slow, &server);
}

#[test]
fn a_plan_saved_on_one_machine_is_stale_once_another_has_applied() {
    let cluster = crate::require_postgres!();
    let server = Server::default();
    let url = cluster.database();
    let reviewer = Checkout::new(&server, &url, "", &users(20));
    let merger = Checkout::new(&server, &url, "", &users(20));
    reviewer.run(&["plan", "--out", "plan.json"]).success();
    merger.run(&["apply", "--auto-approve"]).success();
    let stale = reviewer.run(&["apply", "plan.json", "--auto-approve"]);
    stale.expect_code(1);
    assert!(stale.stderr.contains("serial"), "{}", stale.stderr);
}

#[test]
fn the_database_password_stays_out_of_verbose_logs_and_errors() {
    let cluster = crate::require_postgres!();
    let server = Server::default();
    let url = with_password(&cluster.database());
    let checkout = Checkout::new(&server, &url, "", &users(5));
    // Checkout::run fails the test if the password appears anywhere in the output.
    checkout
        .run(&["-vv", "--log-format", "json", "apply", "--auto-approve"])
        .success();
    checkout.run(&["-vv", "plan"]).success();
    // A database that does not answer, and a URL that does not parse.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for state in [
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/x?sslmode=disable"),
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:notaport/x"),
        format!("postgres://127.0.0.1:{port}/x?password={PASSWORD}&sslmode=disable"),
    ] {
        let broken = Checkout::new(&server, &state, "", &users(1));
        let out = broken.run(&["-vv", "plan"]);
        out.expect_code(1);
        assert!(out.stderr.contains("postgres://"), "{}", out.stderr);
    }
}

#[test]
fn a_change_of_server_is_called_out_in_every_plan_and_a_plan_saved_for_the_old_one_is_stale() {
    let cluster = crate::require_postgres!();
    let (old, new) = (Server::default(), Server::default());
    let url = cluster.database();
    let before = Checkout::new(&old, &url, "", &users(3));
    before.run(&["plan", "--out", "plan.json"]).success();
    before.run(&["apply", "--auto-approve"]).success();
    // The pull request points the config at another server.
    let after = Checkout::new(&new, &url, "", &users(3));
    let change = format!(
        "Endpoint change: this app's last write went to {}; this plan sends the admin UserSig to {}.",
        old.url(),
        new.url()
    );
    let text = after.run(&["plan"]);
    text.success();
    assert!(text.stdout.starts_with(&change), "{}", text.stdout);
    let markdown = after.run(&["plan", "--format", "markdown"]);
    assert!(
        markdown.stdout.starts_with(&format!("> **{change}**")),
        "{}",
        markdown.stdout
    );
    let json = after.plan();
    assert_eq!(json["endpoint"], new.url());
    assert_eq!(
        json["endpoint_change"],
        serde_json::json!({"from": old.url(), "to": new.url()})
    );
    // Each server has its own snapshot: everyone is new to the new one.
    assert_eq!(json["summary"]["create"], 3);
    // A plan reviewed for the old server is not applied to the new one.
    std::fs::copy(before.repo.path("plan.json"), after.repo.path("plan.json")).unwrap();
    let stale = after.run(&["apply", "plan.json", "--auto-approve"]);
    stale.expect_code(1);
    assert!(
        stale.stderr.contains(&format!(
            "it sends to {}, attrsync.yaml now points at {}",
            old.url(),
            new.url()
        )),
        "{}",
        stale.stderr
    );
    assert_eq!(new.calls("set_attr"), 0);
    // Once the new server is written, it is where the last write went: no more call-out.
    after.run(&["apply", "--auto-approve"]).success();
    let settled = after.plan();
    assert!(settled.get("endpoint_change").is_none(), "{settled}");
    assert!(!after.run(&["plan"]).stdout.contains("Endpoint change"));
}
