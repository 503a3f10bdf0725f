//! `attrsync watch` as a child process against the emulator: edits, rename-saves, bursts,
//! invalid configs, recreated folders and SIGTERM during a long apply.

use crate::watch_support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use watch_support::{wait_until, Daemon, Emulator, Repo};

fn attrs(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[test]
fn an_edit_is_applied() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write(
        "people.yaml",
        "users:\n  Mary: {sex: female, city: NewYork}\n",
    );
    let daemon = Daemon::start(&repo, &[]);
    wait_until("Mary is created", || {
        emulator.user("Mary") == attrs(&[("city", "NewYork"), ("sex", "female")])
    });

    repo.write(
        "people.yaml",
        "users:\n  Mary: {sex: female, city: Boston}\n",
    );
    wait_until("Mary moves to Boston", || {
        emulator.user("Mary") == attrs(&[("city", "Boston"), ("sex", "female")])
    });
    let edit = daemon.wait_reconciles(2);
    assert_eq!(edit["trigger"], "files", "{}", daemon.log());
    assert_eq!(edit["result"], "success");
    assert_eq!(edit["files_changed"], 1);
    assert_eq!(edit["update"], 1);
    assert_eq!(edit["applied"], 1);
    // The log names who changed and which attributes, not the values.
    assert_eq!(edit["changes"], "Mary (updated: city)", "{edit}");
    let message = edit["message"].as_str().unwrap();
    assert!(
        message.ends_with("Applied 1 user: Mary (updated: city)."),
        "{message}"
    );
    assert!(!message.contains("Boston"), "{message}");
}

#[test]
fn a_reconcile_names_the_first_twenty_users_it_changed_then_counts() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    let users: String = (0..25)
        .map(|i| format!("  u{i:02}: {{city: Lima}}\n"))
        .collect();
    repo.write(
        "people.yaml",
        &format!("users:\n{users}  mary smith: {{sex: female}}\n"),
    );
    let daemon = Daemon::start(&repo, &[]);
    let first = daemon.wait_reconciles(1);
    assert_eq!(first["result"], "success", "{}", daemon.log());
    let changes = first["changes"].as_str().unwrap();
    // By user id; an id with a space is quoted.
    assert!(
        changes.starts_with("\"mary smith\" (created: sex); u00 (created: city);"),
        "{changes}"
    );
    assert!(
        changes.ends_with("u18 (created: city); and 6 more"),
        "{changes}"
    );
    repo.write(
        "people.yaml",
        &format!("users:\n{users}  mary smith: {{sex: male}}\n"),
    );
    let second = daemon.wait_reconciles(2);
    assert_eq!(
        second["changes"], "\"mary smith\" (updated: sex)",
        "{second}"
    );
}

#[test]
fn without_its_secret_key_the_daemon_exits_1_at_start_naming_the_variable() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("people.yaml", "users:\n  Mary: {city: Lima}\n");
    let mut daemon = Daemon::start_with(&repo, &[], &[("TIM_SECRET_KEY", "")]);
    let (status, _) = daemon.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("export TIM_SECRET_KEY=") && log.contains("then start the daemon again"),
        "{log}"
    );
    assert_eq!(emulator.state()["calls"]["get_attr_name"]["total"], 0);
}

#[test]
fn a_rejected_key_shows_on_readyz_and_in_one_line_per_backoff_step() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("people.yaml", "users:\n  Mary: {city: Lima}\n");
    let mut daemon = Daemon::start_with(&repo, &[], &[("TIM_SECRET_KEY", "not-the-key")]);
    let second = daemon.wait_reconciles(2);
    assert_eq!(second["result"], "failure", "{second}");
    assert_eq!(second["trigger"], "retry", "{second}");
    let (status, _, body) = daemon.http("GET", "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("70009"), "{body}");
    // Each failed attempt is one warning that says when the next one comes.
    let failures: Vec<Value> = daemon
        .reconciles()
        .into_iter()
        .filter(|l| l["result"] == "failure")
        .collect();
    assert!(
        failures
            .iter()
            .all(|l| l["level"] == "WARN" && l["retry_in_ms"].is_u64()),
        "{failures:?}"
    );
    assert_eq!(failures[0]["retry_in_ms"], 1000);
    assert_eq!(failures[1]["retry_in_ms"], 2000);
    // Unlike a missing key, a rejected one may be fixed while it runs (a rotated key is
    // picked up by a restart, the console may re-enable the app): the daemon keeps trying.
    assert!(daemon.alive());
}

#[test]
fn atomic_rename_saves_are_applied_every_time() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("people.yaml", "users:\n  Mary: {tier: free}\n");
    let daemon = Daemon::start(&repo, &[]);
    wait_until("Mary is created", || {
        emulator.user("Mary") == attrs(&[("tier", "free")])
    });

    // As vim and most editors save: write a temporary file, keep a backup, rename over the
    // original. A watch on the file would go deaf after the first save; the directory's not.
    for tier in ["gold", "platinum", "free"] {
        let temp = repo.users().join(".people.yaml.swp");
        std::fs::write(&temp, format!("users:\n  Mary: {{tier: {tier}}}\n")).unwrap();
        std::fs::copy(
            repo.users().join("people.yaml"),
            repo.users().join("people.yaml~"),
        )
        .unwrap();
        std::fs::rename(&temp, repo.users().join("people.yaml")).unwrap();
        wait_until(&format!("Mary's tier becomes {tier}"), || {
            emulator.user("Mary") == attrs(&[("tier", tier)])
        });
    }
    assert!(
        daemon.reconciles().iter().all(|r| r["result"] == "success"),
        "{}",
        daemon.log()
    );
}

#[test]
fn fifty_files_changed_at_once_are_one_reconcile() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("seed.yaml", "users:\n  seed: {tier: free}\n");
    let daemon = Daemon::start(&repo, &["--debounce", "300ms"]);
    daemon.wait_reconciles(1);

    // What a `git pull` does: 50 files written one after another, in two folders.
    for i in 0..50 {
        repo.write(
            &format!("team{}/u{i:02}.yaml", i % 2),
            &format!("users:\n  u{i:02}: {{tier: gold}}\n"),
        );
    }
    wait_until("all 50 users are on the server", || {
        emulator.state()["users"].as_object().unwrap().len() == 51
    });
    // Absence, without guessing a wait: a manual reconcile is an observable point after the
    // burst; between startup and it there is exactly one reconcile, triggered by the files.
    daemon.http("POST", "/reconcile");
    wait_until("the manual reconcile is logged", || {
        daemon.reconciles().iter().any(|r| r["trigger"] == "http")
    });
    let reconciles = daemon.reconciles();
    let before_manual: Vec<&Value> = reconciles
        .iter()
        .take_while(|r| r["trigger"] != "http")
        .collect();
    assert_eq!(before_manual.len(), 2, "{}", daemon.log());
    let burst = before_manual[1];
    assert_eq!(burst["trigger"], "files");
    assert_eq!(burst["files_changed"], 50);
    assert_eq!(burst["create"], 50);
    // One batch carried all 50 (the seed user went first, alone).
    assert_eq!(emulator.set_attr_ok(), (2, 51));
}

#[test]
fn an_invalid_edit_is_logged_applies_nothing_and_recovers_once_fixed() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write(
        "people.yaml",
        "users:\n  Mary: {sex: female}\n  Bob: {city: Lima}\n",
    );
    let mut daemon = Daemon::start(&repo, &[]);
    wait_until("the first sync", || emulator.set_attr_ok().1 == 2);

    // A valid change to Bob next to two mistakes: none of it may reach the server.
    repo.write(
        "people.yaml",
        "users:\n  Mary: {sex: NO}\n  Bob: {city: Paris, hair: red}\n",
    );
    wait_until("both problems are logged", || {
        let lines = daemon.lines();
        let located = |at: &str| {
            lines.iter().any(|l| {
                l["location"]
                    .as_str()
                    .is_some_and(|loc| loc.starts_with(at))
            })
        };
        located("users/people.yaml:2:") && located("users/people.yaml:3:")
    });
    let failed = daemon
        .reconciles()
        .into_iter()
        .find(|r| r["result"] == "failure")
        .expect("a failed reconcile");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("invalid (2 problems)"),
        "{failed}"
    );
    assert_eq!(failed["retry_in_ms"], 1000);
    assert!(daemon.alive());
    let (status, _, body) = daemon.http("GET", "/readyz");
    assert_eq!(status, 503);
    assert!(body.contains("the config is invalid"), "{body}");
    // The backoff retries meanwhile; still nothing is sent.
    wait_until("a retry", || {
        daemon.reconciles().iter().any(|r| r["trigger"] == "retry")
    });
    assert_eq!(emulator.set_attr_ok().1, 2);
    assert_eq!(emulator.user("Bob"), attrs(&[("city", "Lima")]));

    repo.write(
        "people.yaml",
        "users:\n  Mary: {sex: \"NO\"}\n  Bob: {city: Paris}\n",
    );
    wait_until("the fix is applied", || {
        emulator.user("Bob") == attrs(&[("city", "Paris")])
    });
    assert_eq!(emulator.user("Mary"), attrs(&[("sex", "NO")]));
    wait_until("the daemon is ready again", || {
        daemon.http("GET", "/readyz").0 == 200
    });
}

#[test]
fn a_deleted_and_recreated_users_folder_is_watched_again() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("a/people.yaml", "users:\n  Mary: {tier: free}\n");
    let daemon = Daemon::start(&repo, &[]);
    wait_until("Mary is created", || emulator.user("Mary").is_some());

    std::fs::remove_dir_all(repo.users()).unwrap();
    wait_until("the missing folder fails a reconcile", || {
        daemon.reconciles().iter().any(|r| r["result"] == "failure")
    });
    repo.write("a/people.yaml", "users:\n  Mary: {tier: gold}\n");
    wait_until("the edit in the new folder is applied", || {
        emulator.user("Mary") == attrs(&[("tier", "gold")])
    });
    // And the new folder keeps being watched.
    repo.write("a/people.yaml", "users:\n  Mary: {tier: platinum}\n");
    wait_until("a second edit is applied", || {
        emulator.user("Mary") == attrs(&[("tier", "platinum")])
    });
}

#[test]
fn sigterm_during_a_long_apply_exits_0_with_a_consistent_snapshot() {
    const USERS: usize = 600;
    // 120 calls of 5 users, each answered after 300 ms: a few seconds of work.
    let emulator = Emulator::start(&["--latency", "300"]);
    let repo = Repo::new(&emulator, "batch_size: 5\n");
    let mut text = String::from("users:\n");
    for i in 0..USERS {
        text.push_str(&format!("  u{i:04}: {{city: Lima, tier: gold}}\n"));
    }
    repo.write("many.yaml", &text);
    let mut daemon = Daemon::start(&repo, &[]);
    wait_until("the apply is under way", || emulator.set_attr_ok().0 >= 1);

    daemon.signal("TERM");
    let (status, took) = daemon.wait_exit();
    assert!(status.success(), "exit {status:?}; log:\n{}", daemon.log());
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let last = daemon
        .reconciles()
        .pop()
        .expect("the interrupted reconcile is logged");
    assert_eq!(last["result"], "interrupted", "{}", daemon.log());
    // Users the shutdown left unsent did not fail.
    assert_eq!(last["failed"], 0, "{last}");
    assert!(last["not_sent"].as_u64().unwrap() > 0, "{last}");
    assert!(
        last["message"].as_str().unwrap().contains("not sent"),
        "{last}"
    );

    // Consistent: every user the snapshot records is on the server with those attributes, and
    // the batches that were in flight were recorded (the apply stopped part-way).
    let export = repo.cli(&["state", "export"]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let recorded: Vec<Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let server = emulator.state()["users"].clone();
    assert!(
        !recorded.is_empty() && recorded.len() < USERS,
        "{} recorded",
        recorded.len()
    );
    for entry in &recorded {
        assert_eq!(
            server[entry["user"].as_str().unwrap()],
            entry["attrs"],
            "{entry}"
        );
    }
    assert_eq!(
        recorded.len(),
        server.as_object().unwrap().len(),
        "accepted but not recorded"
    );

    // A restart resumes: the rest is sent, nothing accepted is sent twice.
    let mut again = Daemon::start(&repo, &[]);
    let resumed = again.wait_reconciles(1);
    assert_eq!(resumed["result"], "success", "{}", again.log());
    assert_eq!(
        resumed["create"].as_u64().unwrap() as usize,
        USERS - recorded.len()
    );
    assert_eq!(emulator.state()["users"].as_object().unwrap().len(), USERS);
    assert_eq!(emulator.set_attr_ok().1, USERS);
    again.signal("TERM");
    assert!(again.wait_exit().0.success());
}

/// Sets `city` of `users` on the emulator directly, as another tool would, behind the daemon's
/// back.
fn change_behind_its_back(emulator: &Emulator, users: &[String], city: &str) {
    use attrsync::api::{Client, ClientConfig, SecretKey, UserAttrs};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Client::new(ClientConfig::new(
        format!("http://{}", emulator.addr),
        1_400_000_000,
        "administrator",
        SecretKey::new(attrsync::emulator::DEMO_SECRET_KEY),
    ))
    .unwrap();
    let changes: Vec<UserAttrs> = users
        .iter()
        .map(|user| UserAttrs {
            account: user.clone(),
            attrs: [("city".to_owned(), city.to_owned())].into(),
        })
        .collect();
    let outcome = runtime.block_on(client.set_attr(&changes)).unwrap();
    assert!(outcome.is_complete());
}

/// `count` users `u000…` living in Rome, in one file.
fn rome(count: usize) -> String {
    let mut text = String::from("users:\n");
    for i in 0..count {
        text.push_str(&format!("  u{i:03}: {{city: Rome}}\n"));
    }
    text
}

fn metric(daemon: &Daemon, name: &str) -> f64 {
    let (_, _, body) = daemon.http("GET", "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{body}"))
}

#[test]
fn users_changed_behind_its_back_are_found_and_repaired() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("people.yaml", &rome(300));
    let daemon = Daemon::start(&repo, &["--drift-pass-every", "200ms"]);
    wait_until("every user is created", || emulator.set_attr_ok().1 == 300);
    let changed: Vec<String> = (0..5).map(|i| format!("u{:03}", i * 60)).collect();
    change_behind_its_back(&emulator, &changed, "Paris");
    wait_until("the drifted users are back in Rome", || {
        changed
            .iter()
            .all(|user| emulator.user(user) == attrs(&[("city", "Rome")]))
    });
    assert!(metric(&daemon, "attrsync_drift_users_total") >= 5.0);
    let lines = daemon.lines();
    for user in &changed {
        assert!(
            lines.iter().any(|l| l["user"] == user.as_str()
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("drift:"))),
            "{user}: {}",
            daemon.log()
        );
    }
    assert!(
        daemon.reconciles().iter().any(|r| r["trigger"] == "drift"),
        "{}",
        daemon.log()
    );
    // The repair can come before the pass that found it has read its last page.
    wait_until("a drift pass is finished", || {
        metric(&daemon, "attrsync_drift_last_pass_timestamp_seconds") > 0.0
    });
}

#[test]
fn with_no_self_heal_drift_is_only_reported() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("people.yaml", &rome(20));
    let daemon = Daemon::start(&repo, &["--drift-pass-every", "200ms", "--no-self-heal"]);
    wait_until("every user is created", || emulator.set_attr_ok().1 == 20);
    change_behind_its_back(&emulator, &["u007".to_owned()], "Paris");
    wait_until("the drift is counted", || {
        metric(&daemon, "attrsync_drift_users_total") >= 1.0
    });
    assert_eq!(emulator.user("u007"), attrs(&[("city", "Paris")]));
    assert_eq!(
        emulator.set_attr_ok().1,
        21,
        "nothing was re-sent: 20 created, 1 changed by the test"
    );
}
