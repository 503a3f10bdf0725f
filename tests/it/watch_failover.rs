//! Several `attrsync watch` daemons on one PostgreSQL snapshot: one is active, the others
//! stand by (healthy, serving `/plan` and `/metrics`, calling nothing), and a standby takes
//! over when the active one is killed or hangs.

use std::time::{Duration, Instant};

use crate::watch_support::{wait_until, Daemon, Emulator, Repo};

/// `/readyz`'s body.
fn readyz(daemon: &Daemon) -> String {
    daemon.http("GET", "/readyz").2
}

/// The `attrsync_leader` gauge.
fn leader(daemon: &Daemon) -> String {
    let metrics = daemon.http("GET", "/metrics").2;
    metrics
        .lines()
        .find(|l| l.starts_with("attrsync_leader "))
        .unwrap_or_else(|| panic!("no attrsync_leader in:\n{metrics}"))
        .to_owned()
}

/// Two daemons on one snapshot, the first active and the second standing by.
fn pair(url: &str) -> (Emulator, Repo, Daemon, Daemon) {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, &format!("state: {url}\n"));
    repo.write("a.yaml", "users:\n  Mary: {sex: female}\n");
    let first = Daemon::start(&repo, &[]);
    wait_until("the first daemon is active", || readyz(&first) == "ready\n");
    let second = Daemon::start(&repo, &[]);
    wait_until("the second daemon stands by", || {
        readyz(&second).starts_with("standby:")
    });
    (emulator, repo, first, second)
}

#[test]
fn one_daemon_is_active_and_a_standby_takes_over_after_a_kill() {
    let cluster = crate::require_postgres!();
    let (emulator, repo, first, mut second) = pair(&cluster.database());
    assert_eq!(leader(&first), "attrsync_leader 1");
    assert_eq!(leader(&second), "attrsync_leader 0");
    let body = readyz(&second);
    assert!(body.contains(&format!("pid {}", first.pid())), "{body}");
    assert_eq!(second.http("GET", "/plan").0, 200, "a standby serves /plan");
    assert_eq!(emulator.user("Mary").unwrap()["sex"], "female");
    assert!(
        !second.log().contains("\"connected\""),
        "a standby never connects to the API:\n{}",
        second.log()
    );

    first.signal("KILL");
    let killed = Instant::now();
    wait_until("the standby takes over", || readyz(&second) == "ready\n");
    eprintln!("failover after kill -9: {:?}", killed.elapsed());
    assert_eq!(leader(&second), "attrsync_leader 1");
    repo.write("b.yaml", "users:\n  Bob: {sex: male}\n");
    wait_until("the new active daemon applies a change", || {
        emulator.user("Bob").is_some()
    });
    assert!(second.alive());
}

#[test]
fn a_hung_daemon_is_replaced_and_calls_nothing_once_it_wakes() {
    let cluster = crate::require_postgres!();
    let (emulator, repo, mut first, second) = pair(&cluster.database());
    first.signal("STOP");
    let stopped = Instant::now();
    // The server ends the silent session after 10 s; the standby then takes over.
    crate::watch_support::wait_until_within(
        "the standby takes over from the hung daemon",
        Duration::from_secs(30),
        || readyz(&second) == "ready\n",
    );
    eprintln!("failover after SIGSTOP: {:?}", stopped.elapsed());
    repo.write("b.yaml", "users:\n  Bob: {sex: male}\n");
    wait_until("the new active daemon applies a change", || {
        emulator.user("Bob").is_some()
    });
    let calls = emulator.state()["calls"]["set_attr"]["total"].clone();

    // Woken up, the old one finds its lock gone and stands by instead of writing.
    first.signal("CONT");
    repo.write("c.yaml", "users:\n  Ann: {sex: female}\n");
    wait_until("the new active daemon applies the next change", || {
        emulator.user("Ann").is_some()
    });
    wait_until("the woken daemon stands by", || {
        readyz(&first).starts_with("standby:")
    });
    assert!(first.alive());
    let after = emulator.state()["calls"]["set_attr"]["total"].clone();
    assert_eq!(
        after.as_u64().unwrap(),
        calls.as_u64().unwrap() + 1,
        "only the active daemon wrote Ann"
    );
}
