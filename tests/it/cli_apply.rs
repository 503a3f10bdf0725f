//! `attrsync apply`, end to end: the real binary against the emulator over HTTP on loopback,
//! with a real sled snapshot. Each test is one scenario a user relies on.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use attrsync::api::Endpoint;
use attrsync::emulator::{EmulatorConfig, FailMode, Faults, SetAttrMode, DEMO_SECRET_KEY};
use common::{Output, Repo, Server, SET_ATTR};

/// A repo pointing at `server`, with `extra` settings appended.
fn config_repo(server: &Server, extra: &str, files: &[(&str, &str)]) -> Repo {
    repo_at(&server.url(), extra, files)
}

/// A repo pointing at the API at `url`, with `extra` settings appended.
fn repo_at(url: &str, extra: &str, files: &[(&str, &str)]) -> Repo {
    let settings = format!(
        "sdkappid: 1400000000\nidentifier: administrator\nendpoint: {url}\nattributes: [sex, city, tier]\n{extra}"
    );
    let repo = Repo::new(&[("attrsync.yaml", &settings)]);
    repo.mkdir("users");
    for (path, content) in files {
        repo.write(path, content);
    }
    repo
}

/// Runs `attrsync ARGS` with the emulator's key.
fn run(repo: &Repo, args: &[&str]) -> Output {
    let mut command = repo.command(args);
    command.env("TIM_SECRET_KEY", DEMO_SECRET_KEY);
    common::run(command)
}

fn apply(repo: &Repo, extra: &[&str]) -> Output {
    let mut args = vec!["apply", "--auto-approve"];
    args.extend_from_slice(extra);
    run(repo, &args)
}

/// The snapshot, as `state export` writes it: user → recorded attributes (users only in doubt,
/// with nothing recorded, are left out; [`in_doubt`] lists them).
fn snapshot(repo: &Repo) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = run(repo, &["state", "export"]);
    out.success();
    out.stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|value| {
            value.get("in_doubt").is_none() || !value["attrs"].as_object().unwrap().is_empty()
        })
        .map(|value| {
            let attrs = value["attrs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (value["user"].as_str().unwrap().to_owned(), attrs)
        })
        .collect()
}

/// The users `state export` shows in doubt, with the attributes the server may hold.
fn in_doubt(repo: &Repo) -> BTreeMap<String, serde_json::Value> {
    let out = run(repo, &["state", "export"]);
    out.success();
    out.stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|value| value.get("in_doubt").is_some())
        .map(|value| {
            (
                value["user"].as_str().unwrap().to_owned(),
                value["in_doubt"]["maybe"].clone(),
            )
        })
        .collect()
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Asserts the invariant: every user the snapshot records has those attributes on the server.
#[track_caller]
fn assert_snapshot_is_accepted(repo: &Repo, server: &Server) {
    let live = server.users();
    for (user, recorded) in snapshot(repo) {
        let on_server = live.get(&user).cloned().unwrap_or_default();
        for (name, value) in &recorded {
            assert_eq!(
                on_server.get(name),
                Some(value),
                "the snapshot claims {user}.{name}={value} but the server has {on_server:?}"
            );
        }
    }
}

/// `count` users, one line each, in a flow mapping.
fn many_users(count: usize) -> String {
    let mut text = String::from("users:\n");
    for i in 0..count {
        text.push_str(&format!(
            "  u{i:05}: {{sex: {}, city: C{}}}\n",
            if i % 2 == 0 { "female" } else { "male" },
            i % 7
        ));
    }
    text
}

const MARY: &str = "users:\n  Mary: {sex: female, city: NewYork, tier: gold}\n  xiaoming: {sex: male, city: ShenZhen}\n";

#[test]
fn first_apply_creates_everyone_and_the_second_sends_nothing() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    let out = apply(&repo, &[]);
    out.success();
    assert!(
        out.stdout
            .contains("Plan: 2 to create, 0 to update, 0 to delete."),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("Apply complete: 2 created, 0 updated, 0 deleted, 0 failed."),
        "{}",
        out.stdout
    );
    assert_eq!(
        server.users()["Mary"],
        attrs(&[("sex", "female"), ("city", "NewYork"), ("tier", "gold")])
    );
    assert_eq!(
        server.users()["xiaoming"],
        attrs(&[("sex", "male"), ("city", "ShenZhen")])
    );
    assert_eq!(snapshot(&repo), server.users());

    let calls = server.calls("set_attr") + server.calls("remove_attr");
    let again = apply(&repo, &[]);
    again.success();
    assert!(again.stdout.contains("No changes."), "{}", again.stdout);
    assert_eq!(
        server.calls("set_attr") + server.calls("remove_attr"),
        calls,
        "a no-change apply sends nothing"
    );
}

#[test]
fn one_edited_attribute_is_one_call_carrying_one_user() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", &many_users(250))]);
    apply(&repo, &[]).success();
    assert_eq!(server.calls("set_attr"), 3, "250 users in batches of 100");
    repo.write(
        "users/a.yaml",
        many_users(250).replace(
            "u00123: {sex: male, city: C4}",
            "u00123: {sex: male, city: Paris}",
        ),
    );
    let out = apply(&repo, &[]);
    out.success();
    assert!(
        out.stdout.contains("~ city: \"C4\" → \"Paris\""),
        "{}",
        out.stdout
    );
    let state = server.state();
    let last = state.log.last().unwrap();
    assert_eq!((last.endpoint.as_str(), last.accounts), ("set_attr", 1));
    assert_eq!(state.calls["set_attr"].total, 4);
    assert_eq!(state.users["u00123"]["city"], "Paris");
}

#[test]
fn a_removed_attribute_is_sent_with_remove_attr() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    apply(&repo, &[]).success();
    repo.write("users/a.yaml", MARY.replace(", tier: gold", ""));
    let out = apply(&repo, &[]);
    out.success();
    assert!(out.stdout.contains("- tier: \"gold\""), "{}", out.stdout);
    assert_eq!(server.calls("remove_attr"), 1);
    assert_eq!(
        server.calls("set_attr"),
        1,
        "nothing to set: only the removal is sent"
    );
    assert_eq!(
        server.users()["Mary"],
        attrs(&[("sex", "female"), ("city", "NewYork")])
    );
    assert_eq!(
        snapshot(&repo)["Mary"],
        attrs(&[("sex", "female"), ("city", "NewYork")])
    );
}

#[test]
fn a_removed_user_is_orphaned_then_pruned() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    apply(&repo, &[]).success();
    repo.write(
        "users/a.yaml",
        "users:\n  Mary: {sex: female, city: NewYork, tier: gold}\n",
    );

    let out = apply(&repo, &[]);
    out.success();
    assert!(
        out.stdout.contains("? xiaoming is orphaned"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("No changes."), "{}", out.stdout);
    assert_eq!(
        server.calls("remove_attr"),
        0,
        "without prune an orphan is left alone"
    );
    assert!(server.users().contains_key("xiaoming"));

    let out = apply(&repo, &["--prune"]);
    out.success();
    assert!(
        out.stdout.contains("- xiaoming will be deleted"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("0 created, 0 updated, 1 deleted"),
        "{}",
        out.stdout
    );
    assert!(
        !server.users().contains_key("xiaoming"),
        "{:?}",
        server.users()
    );
    assert!(!snapshot(&repo).contains_key("xiaoming"));
}

#[test]
fn a_mass_delete_is_refused_unless_allowed() {
    let server = Server::default();
    let repo = config_repo(
        &server,
        "max_deletes: 2\n",
        &[("users/a.yaml", &many_users(5)), ("users/b.yaml", MARY)],
    );
    apply(&repo, &[]).success();
    repo.remove("users/a.yaml");
    let before = server.calls("remove_attr");
    let out = apply(&repo, &["--prune"]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("the plan deletes 5 users, more than max_deletes (2)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--allow-mass-delete"), "{}", out.stderr);
    assert_eq!(server.calls("remove_attr"), before, "nothing was sent");
    assert_eq!(snapshot(&repo).len(), 7);

    apply(&repo, &["--prune", "--allow-mass-delete"]).success();
    assert_eq!(server.users().len(), 2);
}

#[test]
fn an_emptied_config_is_refused_unless_allowed() {
    let server = Server::default();
    let repo = config_repo(&server, "prune: true\n", &[("users/a.yaml", MARY)]);
    apply(&repo, &[]).success();
    repo.remove("users/a.yaml");
    let out = apply(&repo, &[]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("declares no users but the snapshot holds 2"),
        "{}",
        out.stderr
    );
    apply(&repo, &["--allow-empty"]).success();
    assert!(server.users().is_empty());
}

#[test]
fn twenty_percent_faults_converge() {
    let server = Server::start(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into(), "tier".into()],
        fail_rate: 0.2,
        fail_mode: FailMode::Mixed,
        seed: 7,
        ..EmulatorConfig::default()
    });
    let repo = config_repo(
        &server,
        "batch_size: 20\n",
        &[("users/a.yaml", &many_users(600))],
    );
    let out = apply(&repo, &[]);
    out.success();
    assert!(out.stdout.contains("600 created"), "{}", out.stdout);
    let state = server.state();
    assert!(
        state.calls["set_attr"].injected > 0,
        "faults were injected: {:?}",
        state.calls["set_attr"]
    );
    assert_eq!(state.users.len(), 600);
    assert_eq!(
        snapshot(&repo),
        state.users,
        "the snapshot equals the server"
    );
    assert!(apply(&repo, &[]).success().stdout.contains("No changes."));
}

#[test]
fn users_in_the_error_list_are_reported_and_not_recorded() {
    let server = Server::start(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into(), "tier".into()],
        unknown_users: vec!["ghost".into()],
        ..EmulatorConfig::default()
    });
    let repo = config_repo(
        &server,
        "",
        &[("users/a.yaml", &format!("{MARY}  ghost: {{sex: male}}\n"))],
    );
    let out = apply(&repo, &[]);
    out.expect_code(1);
    assert!(
        out.stdout
            .contains("Apply finished with errors: 2 created, 0 updated, 0 deleted, 1 failed."),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("- ghost: error 70107"),
        "{}",
        out.stdout
    );
    let recorded = snapshot(&repo);
    assert!(
        recorded.contains_key("Mary") && !recorded.contains_key("ghost"),
        "{recorded:?}"
    );

    let json = apply(&repo, &["--format", "json"]);
    json.expect_code(1);
    let report = json.json();
    assert_eq!(report["failed"][0]["user"], "ghost");
    assert_eq!(report["failed"][0]["code"], 70107);
    assert_eq!(report["created"], 0, "only ghost is still planned");
}

#[test]
fn a_missing_attribute_name_fails_preflight_before_any_write() {
    let server = Server::start(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into()],
        ..EmulatorConfig::default()
    });
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    let out = apply(&repo, &[]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("the app has no attribute named tier"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("attrsync attributes push"),
        "{}",
        out.stderr
    );
    assert_eq!(server.calls("set_attr"), 0);

    let list = run(&repo, &["attributes", "list"]);
    list.success();
    assert_eq!(
        list.stdout,
        "2 attribute names registered on the app (8 slots free):\n  \
         slot 0: sex (account type 0; in attributes)\n  \
         slot 1: city (account type 0; in attributes)\n\
         Not registered yet: tier; `attrsync attributes push` registers it.\n"
    );

    let push = run(&repo, &["attributes", "push", "--auto-approve"]);
    push.success();
    assert!(push.stdout.contains("+ slot 2: tier"), "{}", push.stdout);
    assert_eq!(
        server.state().attr_names["0"],
        "sex",
        "existing slots are untouched"
    );
    apply(&repo, &[]).success();
    assert_eq!(server.users()["Mary"]["tier"], "gold");
}

#[test]
fn a_saved_plan_is_applied_exactly_and_refused_once_stale() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    run(&repo, &["plan", "--out", "tfplan.json"]).success();
    let out = run(&repo, &["apply", "tfplan.json"]);
    out.success();
    assert!(out.stdout.contains("2 created"), "{}", out.stdout);

    run(&repo, &["plan", "--out", "second.json"]).success();
    repo.write("users/a.yaml", MARY.replace("gold", "platinum"));
    let stale = run(&repo, &["apply", "second.json"]);
    stale.expect_code(1);
    assert!(
        stale.stderr.contains("the saved plan is stale"),
        "{}",
        stale.stderr
    );
    assert!(
        stale.stderr.contains("desired state changed"),
        "{}",
        stale.stderr
    );

    run(&repo, &["plan", "--out", "third.json"]).success();
    apply(&repo, &[]).success();
    let moved = run(&repo, &["apply", "third.json"]);
    moved.expect_code(1);
    assert!(
        moved
            .stderr
            // Each batch is two commits: marked in doubt before sending, settled after.
            .contains("the snapshot moved from serial 2 to 4"),
        "{}",
        moved.stderr
    );
}

#[test]
fn apply_without_a_terminal_needs_auto_approve() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    let out = run(&repo, &["apply"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("stdin is not a terminal"),
        "{}",
        out.stderr
    );
    assert_eq!(server.calls("set_attr"), 0);
}

#[test]
fn refresh_shows_drift_and_plans_against_live_values() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    apply(&repo, &[]).success();
    // Someone changes Mary on the server behind attrsync's back.
    let client_repo = config_repo(
        &server,
        "",
        &[("users/a.yaml", "users:\n  Mary: {city: Paris}\n")],
    );
    apply(&client_repo, &[]).success();

    let plain = run(&repo, &["plan"]);
    assert!(
        plain.stdout.contains("No changes."),
        "without --refresh the snapshot is trusted"
    );
    let out = run(&repo, &["plan", "--refresh"]);
    out.success();
    assert!(
        out.stdout.contains("1 user changed outside attrsync"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("~ city: \"NewYork\" → \"Paris\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("Plan: 0 to create, 1 to update, 0 to delete."),
        "{}",
        out.stdout
    );
    let json = run(&repo, &["plan", "--refresh", "--format", "json"]).json();
    assert_eq!(json["drift"][0]["user"], "Mary");
    let markdown = run(&repo, &["plan", "--refresh", "--format", "markdown"]);
    assert!(
        markdown
            .stdout
            .contains("#### Drift\n\n1 user changed outside attrsync"),
        "{}",
        markdown.stdout
    );
    assert!(
        markdown
            .stdout
            .contains("-city: \"NewYork\"\n+city: \"Paris\""),
        "{}",
        markdown.stdout
    );
    assert_eq!(
        json["drift"][0]["attrs"]["city"],
        serde_json::json!({"snapshot": "NewYork", "live": "Paris"})
    );
}

#[test]
fn import_seeds_the_snapshot_from_the_server() {
    let server = Server::default();
    let writer = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    apply(&writer, &[]).success();
    let fresh = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    let out = run(&fresh, &["import"]);
    out.success();
    assert!(out.stdout.contains("Imported 2 users"), "{}", out.stdout);
    assert_eq!(snapshot(&fresh), server.users());
    assert!(run(&fresh, &["plan"]).stdout.contains("No changes."));
}

/// Starts `attrsync apply` in the background and waits until the server has seen `calls`
/// set_attr calls, so a signal lands mid-apply.
fn start_slow_apply(repo: &Repo, server: &Server, calls: u64) -> std::process::Child {
    let mut command: Command = repo.command(&["apply", "--auto-approve"]);
    command
        .env("TIM_SECRET_KEY", DEMO_SECRET_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.calls("set_attr") < calls {
        assert!(Instant::now() < deadline, "the apply did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn slow_repo(server: &Server) -> Repo {
    // 5 calls a second and 10 users a call: 400 users take about 8 s.
    config_repo(
        server,
        "rate_limit: 5\nbatch_size: 10\n",
        &[("users/a.yaml", &many_users(400))],
    )
}

#[test]
fn sigterm_mid_apply_finishes_in_flight_batches_and_exits_143() {
    let server = Server::default();
    let repo = slow_repo(&server);
    let child = start_slow_apply(&repo, &server, 3);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("Apply interrupted"), "{stdout}");
    assert!(stdout.contains("not sent"), "{stdout}");
    let recorded = snapshot(&repo);
    assert!(
        !recorded.is_empty() && recorded.len() < 400,
        "{} recorded",
        recorded.len()
    );
    assert_eq!(
        recorded,
        server.users(),
        "every accepted batch was recorded, nothing else"
    );
}

#[test]
fn kill_9_mid_apply_then_apply_again_converges() {
    let server = Server::default();
    let repo = slow_repo(&server);
    let mut child = start_slow_apply(&repo, &server, 4);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_snapshot_is_accepted(&repo, &server);
    let before = server.calls("set_attr");
    let recorded = snapshot(&repo).len() as u64;
    // Speed up the rest: the resumed apply sends only what is missing.
    repo.write(
        "attrsync.yaml",
        repo.read("attrsync.yaml")
            .replace("rate_limit: 5", "rate_limit: 100"),
    );
    let out = apply(&repo, &[]);
    out.success();
    let resent = server.calls("set_attr") - before;
    let missing = (400 - recorded).div_ceil(10);
    assert!(
        resent <= missing + 16,
        "resent {resent} calls for {missing} missing batches"
    );
    assert_eq!(snapshot(&repo), server.users());
    assert_eq!(server.users().len(), 400);
}

/// Runs `attrsync apply --auto-approve` in the background.
fn spawn_apply(repo: &Repo) -> std::process::Child {
    let mut command: Command = repo.command(&["apply", "--auto-approve"]);
    command
        .env("TIM_SECRET_KEY", DEMO_SECRET_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.spawn().unwrap()
}

fn signal(child: &std::process::Child, name: &str) {
    let sent = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

const MARY_NEW_YORK: &str = "users:\n  Mary: {sex: female, city: NewYork}\n";
const MARY_BOSTON: &str = "users:\n  Mary: {sex: female, city: Boston}\n";

/// After a write whose answer never came, the user is in doubt: reverting the YAML must still
/// send the old value back, since the server may hold the new one.
#[track_caller]
fn assert_in_doubt_then_healed(repo: &Repo, server: &Server) {
    assert_eq!(in_doubt(repo)["Mary"]["city"], "Boston");
    assert_eq!(
        snapshot(repo)["Mary"]["city"],
        "NewYork",
        "the snapshot still records only what was confirmed"
    );
    server.set_faults(Faults::default());
    repo.write("users/a.yaml", MARY_NEW_YORK);
    let plan = run(repo, &["plan"]);
    plan.success();
    assert!(
        plan.stdout
            .contains("! Mary is in doubt: a write was sent and no answer confirmed or refused it"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("Plan: 0 to create, 0 to update, 0 to delete, 1 to re-send (in doubt)."),
        "{}",
        plan.stdout
    );
    let json = run(repo, &["plan", "--format", "json"]).json();
    assert_eq!(json["changes"][0]["action"], "resend");
    assert!(json["changes"][0]["in_doubt"]["reason"].is_string());
    let markdown = run(repo, &["plan", "--format", "markdown"]).stdout;
    assert!(markdown.contains("in doubt"), "{markdown}");

    apply(repo, &[]).success();
    assert_eq!(
        server.users()["Mary"],
        attrs(&[("sex", "female"), ("city", "NewYork")])
    );
    assert!(in_doubt(repo).is_empty());
    assert_eq!(snapshot(repo), server.users());
    assert!(run(repo, &["plan"]).stdout.contains("No changes."));
}

#[test]
fn a_write_whose_answer_was_lost_is_in_doubt_and_a_revert_still_heals_it() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY_NEW_YORK)]);
    apply(&repo, &[]).success();
    // The server applies every set_attr, then closes the connection without an answer.
    server.fail_every(Endpoint::SetAttr, FailMode::Drop);
    repo.write("users/a.yaml", MARY_BOSTON);
    let child = spawn_apply(&repo);
    server.wait_for("Mary", "city", "Boston");
    // Interrupted while it retries the write it never heard back about.
    signal(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("[in doubt:"), "{stdout}");
    assert_in_doubt_then_healed(&repo, &server);
}

#[test]
fn kill_9_while_a_write_is_in_flight_leaves_it_in_doubt() {
    let server = Server::start(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into(), "tier".into()],
        latency: Duration::from_secs(1),
        ..EmulatorConfig::default()
    });
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY_NEW_YORK)]);
    apply(&repo, &[]).success();
    repo.write("users/a.yaml", MARY_BOSTON);
    let mut child = spawn_apply(&repo);
    // The server applies the write at once and answers a second later: kill before that.
    server.wait_for("Mary", "city", "Boston");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_in_doubt_then_healed(&repo, &server);
}

#[test]
fn an_answer_that_is_not_tencent_ims_records_nothing() {
    // get_attr_name answers like the server; set_attr gets a captive portal's `{}`.
    let canned = common::Canned::start(|request| {
        if request.target.contains("get_attr_name") {
            common::Canned::json(
                r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","AttrNames":{"0":"sex","1":"city","2":"tier"}}"#,
            )
        } else {
            common::Canned::json("{}")
        }
    });
    let repo = repo_at(&canned.url(), "", &[("users/a.yaml", MARY)]);
    let out = apply(&repo, &[]);
    out.expect_code(1);
    assert!(
        out.stdout.contains(
            "Apply finished with errors: 0 created, 0 updated, 0 deleted, 2 failed (2 in doubt)."
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("the endpoint did not answer like Tencent Cloud IM: it has no ActionStatus: HTTP 200 OK, content type application/json, body starts: `{}`"),
        "{}",
        out.stdout
    );
    assert!(snapshot(&repo).is_empty(), "nothing is recorded as applied");
    assert_eq!(
        in_doubt(&repo).len(),
        2,
        "whatever answered may have passed the write on"
    );
}

#[test]
fn a_redirect_is_never_followed() {
    let canned = common::Canned::start(|request| {
        if request.method == "POST" {
            common::Canned::response("302 Found", &[("Location", "/landing")], b"")
        } else {
            common::Canned::json("{}")
        }
    });
    let repo = repo_at(&canned.url(), "", &[("users/a.yaml", MARY)]);
    let out = apply(&repo, &[]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("HTTP 302 Found, redirecting to /landing; attrsync never follows redirects"),
        "{}",
        out.stderr
    );
    let seen = canned.seen();
    assert!(
        seen.iter()
            .all(|r| r.method == "POST" && !r.target.contains("landing")),
        "{seen:?}"
    );
    assert!(snapshot(&repo).is_empty());
}

#[test]
fn a_snapshot_of_another_server_is_refused_until_imported() {
    let first = Server::default();
    let second = Server::default();
    let repo = config_repo(&first, "", &[("users/a.yaml", MARY)]);
    apply(&repo, &[]).success();
    repo.write(
        "attrsync.yaml",
        repo.read("attrsync.yaml")
            .replace(&first.url(), &second.url()),
    );
    // The plan a reviewer sees calls the change out; apply refuses it.
    let plan = run(&repo, &["plan"]);
    plan.success();
    for needle in [first.url(), second.url()] {
        assert!(plan.stdout.contains(&needle), "{needle}: {}", plan.stdout);
    }
    assert!(plan.stderr.contains("attrsync import"), "{}", plan.stderr);
    let out = apply(&repo, &[]);
    out.expect_code(1);
    for needle in [first.url(), second.url(), "attrsync import".to_owned()] {
        assert!(out.stderr.contains(&needle), "{needle}: {}", out.stderr);
    }
    assert_eq!(second.calls("set_attr"), 0);
    // Adopting the new server replaces what the snapshot knew about the old one.
    let import = run(&repo, &["import"]);
    import.success();
    assert!(
        import.stdout.contains("it now records"),
        "{}",
        import.stdout
    );
    let plan = run(&repo, &["plan"]);
    assert!(
        plan.stdout
            .contains("Plan: 2 to create, 0 to update, 0 to delete."),
        "{}",
        plan.stdout
    );
    apply(&repo, &[]).success();
    assert_eq!(second.users(), first.users());
}

#[test]
fn a_hand_edited_saved_plan_is_refused() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    apply(&repo, &[]).success();
    repo.write("users/a.yaml", MARY.replace("gold", "platinum"));
    run(&repo, &["plan", "--out", "plan.json"]).success();
    let calls = server.calls("set_attr");
    let mut plan: serde_json::Value = serde_json::from_str(&repo.read("plan.json")).unwrap();
    plan["changes"][0]["attrs"]["tier"]["after"] = "diamond".into();
    plan["changes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"user": "intruder", "action": "create",
            "attrs": {"tier": {"before": null, "after": "gold"}}}));
    repo.write("plan.json", plan.to_string());
    let out = run(&repo, &["apply", "plan.json"]);
    out.expect_code(1);
    for needle in [
        "the saved plan is stale or was edited",
        "user \"Mary\" differs",
        "\"diamond\"",
        "user \"intruder\" is in the saved plan",
        "nothing was applied",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    assert_eq!(server.calls("set_attr"), calls);
    assert_eq!(server.users()["Mary"]["tier"], "gold");
}

#[test]
fn attributes_push_keeps_every_registered_slots_account_type() {
    use attrsync::api::{AttrSlot, Client, ClientConfig, SecretKey};
    let server = Server::start(EmulatorConfig::default());
    let client = Client::new(ClientConfig::new(
        server.url(),
        1_400_000_000,
        "administrator",
        SecretKey::new(DEMO_SECRET_KEY),
    ))
    .unwrap();
    let registration = BTreeMap::from([(
        0,
        AttrSlot {
            name: "sex".into(),
            account_type: 1,
        },
    )]);
    server
        .runtime
        .block_on(client.set_attr_name(&registration))
        .unwrap();
    let repo = config_repo(&server, "", &[("users/a.yaml", "users: {}\n")]);
    let out = run(&repo, &["attributes", "push", "--auto-approve"]);
    out.success();
    let slots = server.runtime.block_on(client.get_attr_name()).unwrap();
    assert_eq!(
        slots[&0].account_type, 1,
        "the RegistrationID slot kept its type"
    );
    assert_eq!(
        slots.values().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["sex", "city", "tier"]
    );
}

#[test]
fn users_the_server_cannot_read_are_left_as_they_were() {
    let server = Server::start(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into(), "tier".into()],
        unknown_users: vec!["ghost".into()],
        ..EmulatorConfig::default()
    });
    let repo = config_repo(
        &server,
        "",
        &[(
            "users/a.yaml",
            "users:\n  Mary: {city: Rome}\n  ghost: {city: Oslo}\n",
        )],
    );
    repo.write(
        "seed.jsonl",
        "{\"user\":\"ghost\",\"attrs\":{\"city\":\"Oslo\"}}\n",
    );
    run(&repo, &["state", "import", "seed.jsonl"]).success();
    let import = run(&repo, &["import"]);
    import.success();
    assert!(
        import
            .stdout
            .contains("1 user could not be read and is left as it was:\n  - ghost: error 70107"),
        "{}",
        import.stdout
    );
    assert_eq!(snapshot(&repo)["ghost"], attrs(&[("city", "Oslo")]));
    let refresh = run(&repo, &["plan", "--refresh"]);
    refresh.success();
    assert!(
        refresh.stdout.contains("nothing changed outside attrsync"),
        "ghost is not drift: {}",
        refresh.stdout
    );
    assert!(
        refresh
            .stderr
            .contains("could not read ghost from the server (error 70107"),
        "{}",
        refresh.stderr
    );
}

#[test]
fn a_snapshot_put_back_from_an_older_copy_is_refused() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    apply(&repo, &[]).success();
    let copy = tempfile::tempdir().unwrap();
    for name in ["conf", "db"] {
        std::fs::copy(repo.path("state").join(name), copy.path().join(name)).unwrap();
    }
    repo.write("users/a.yaml", MARY.replace("gold", "platinum"));
    apply(&repo, &[]).success();
    for name in ["conf", "db"] {
        std::fs::copy(copy.path().join(name), repo.path("state").join(name)).unwrap();
    }
    // The old copy says Mary is gold; the server holds platinum: no plan may say so.
    let out = run(&repo, &["plan"]);
    out.expect_code(1);
    assert!(out.stderr.contains("went back in time"), "{}", out.stderr);
    assert!(out.stderr.contains("attrsync import"), "{}", out.stderr);
    assert_eq!(run(&repo, &["state", "export"]).code, 1);
}

#[test]
fn a_state_directory_removed_during_an_apply_stops_it() {
    let server = Server::default();
    let repo = slow_repo(&server);
    let child = start_slow_apply(&repo, &server, 2);
    std::fs::remove_dir_all(repo.path("state")).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("was removed or replaced while attrsync was using it"),
        "{stdout}"
    );
    assert!(
        server.calls("set_attr") < 40,
        "it stopped dispatching: {} calls",
        server.calls("set_attr")
    );
}

#[test]
fn an_update_sends_the_full_desired_set() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    apply(&repo, &[]).success();
    repo.write("users/a.yaml", MARY.replace("gold", "platinum"));
    apply(&repo, &[]).success();
    // Whether set_attr merges or replaces (this test runs under both), the unchanged
    // attributes are still there.
    assert_eq!(
        server.users()["Mary"],
        attrs(&[("sex", "female"), ("city", "NewYork"), ("tier", "platinum")])
    );
    let log = server.state().log;
    let last = log
        .iter()
        .rev()
        .find(|call| call.endpoint == "set_attr")
        .unwrap();
    assert_eq!(last.accounts, 1, "one user, in one call");
}

/// Every scenario again, with an emulator whose `set_attr` replaces a user's attributes.
mod replace_mode {
    use super::*;

    macro_rules! replace_mode {
        ($($scenario:ident),* $(,)?) => {$(
            #[test]
            fn $scenario() {
                SET_ATTR.with(|mode| mode.set(SetAttrMode::Replace));
                super::$scenario();
            }
        )*};
    }

    replace_mode!(
        first_apply_creates_everyone_and_the_second_sends_nothing,
        one_edited_attribute_is_one_call_carrying_one_user,
        a_removed_attribute_is_sent_with_remove_attr,
        a_removed_user_is_orphaned_then_pruned,
        a_mass_delete_is_refused_unless_allowed,
        an_emptied_config_is_refused_unless_allowed,
        twenty_percent_faults_converge,
        users_in_the_error_list_are_reported_and_not_recorded,
        a_saved_plan_is_applied_exactly_and_refused_once_stale,
        import_seeds_the_snapshot_from_the_server,
        kill_9_mid_apply_then_apply_again_converges,
        a_write_whose_answer_was_lost_is_in_doubt_and_a_revert_still_heals_it,
        kill_9_while_a_write_is_in_flight_leaves_it_in_doubt,
        an_update_sends_the_full_desired_set,
    );
}

#[test]
fn plan_refresh_and_import_resolve_doubt_by_reading_the_server() {
    let server = Server::start(EmulatorConfig {
        attributes: vec!["sex".into(), "city".into(), "tier".into()],
        latency: Duration::from_millis(500),
        ..EmulatorConfig::default()
    });
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY_NEW_YORK)]);
    apply(&repo, &[]).success();
    let killed_mid_write = |yaml: &str, city: &str| {
        repo.write("users/a.yaml", yaml);
        let mut child = spawn_apply(&repo);
        server.wait_for("Mary", "city", city);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(in_doubt(&repo).contains_key("Mary"));
    };

    killed_mid_write(MARY_BOSTON, "Boston");
    let refresh = run(&repo, &["plan", "--refresh"]);
    refresh.success();
    assert!(
        refresh
            .stderr
            .contains("1 user in doubt was read back from the server"),
        "{}",
        refresh.stderr
    );
    assert!(in_doubt(&repo).is_empty());
    assert_eq!(snapshot(&repo)["Mary"]["city"], "Boston");
    assert!(run(&repo, &["plan"]).stdout.contains("No changes."));

    killed_mid_write(MARY_NEW_YORK, "NewYork");
    run(&repo, &["import"]).success();
    assert!(in_doubt(&repo).is_empty());
    assert_eq!(snapshot(&repo), server.users());
}

#[test]
fn target_plans_and_applies_only_the_matching_users() {
    let server = Server::default();
    let repo = config_repo(
        &server,
        "",
        &[(
            "users/a.yaml",
            "users:\n  team-a: {city: Oslo}\n  team-b: {city: Rome}\n  Mary: {city: Lima}\n",
        )],
    );
    let plan = run(&repo, &["plan", "--target", "team-*", "--format", "json"]);
    let plan = plan.success().json();
    assert_eq!(plan["targets"], serde_json::json!(["team-*"]));
    assert_eq!(plan["summary"]["create"], 2);
    let text = run(&repo, &["plan", "--target", "team-*"]);
    assert!(
        text.stdout.starts_with(
            "Partial plan: only users matching --target team-*. Changes to other users are neither shown nor applied."
        ),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains("Mary"), "{}", text.stdout);
    // A typo is not silently "no changes".
    let typo = run(&repo, &["plan", "--target", "tema-*"]);
    assert!(
        typo.stderr
            .contains("--target tema-* matches no user of the config or the snapshot"),
        "{}",
        typo.stderr
    );

    apply(&repo, &["--target", "Mary"]).success();
    assert_eq!(server.users().keys().collect::<Vec<_>>(), ["Mary"]);
    // A saved partial plan applies exactly its users, and says it is partial when shown.
    run(&repo, &["plan", "--target", "team-a", "--out", "plan.json"]).success();
    assert!(run(&repo, &["show", "plan.json"])
        .stdout
        .starts_with("Partial plan"));
    run(&repo, &["apply", "plan.json"]).success();
    assert_eq!(
        server.users().keys().collect::<Vec<_>>(),
        ["Mary", "team-a"]
    );
    let rest = run(&repo, &["plan", "--format", "json"]).success().json();
    assert_eq!(rest["summary"]["create"], 1, "{rest}");
    assert!(rest.get("targets").is_none());
    // --target does not go with a saved plan, which keeps its own.
    run(&repo, &["apply", "plan.json", "--target", "Mary"]).expect_code(1);
}

#[test]
fn apply_refresh_puts_back_what_changed_outside_attrsync() {
    let server = Server::default();
    let repo = config_repo(&server, "", &[("users/a.yaml", MARY)]);
    apply(&repo, &[]).success();
    let city = || server.users()["Mary"]["city"].clone();
    assert_eq!(city(), "NewYork");
    // Someone changes Mary on the server behind attrsync's back.
    let other = config_repo(
        &server,
        "",
        &[("users/a.yaml", "users:\n  Mary: {city: Paris}\n")],
    );
    apply(&other, &[]).success();
    assert_eq!(city(), "Paris");
    // A plain apply trusts the snapshot: nothing to do.
    let plain = apply(&repo, &[]);
    assert!(plain.stdout.contains("No changes."), "{}", plain.stdout);
    assert_eq!(city(), "Paris");
    let refreshed = apply(&repo, &["--refresh"]);
    refreshed.success();
    assert!(
        refreshed
            .stderr
            .contains("1 user changed outside attrsync since the last apply"),
        "{}",
        refreshed.stderr
    );
    assert!(
        refreshed.stdout.contains("~ city: \"Paris\" → \"NewYork\""),
        "{}",
        refreshed.stdout
    );
    assert_eq!(city(), "NewYork");
    assert_eq!(snapshot(&repo)["Mary"]["city"], "NewYork");
    run(&repo, &["apply", "plan.json", "--refresh"]).expect_code(1);
}
