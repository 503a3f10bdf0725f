//! The daemon's endpoints and manual triggers, and how it shares the snapshot with the CLI.

use crate::watch_support;

use std::collections::BTreeMap;

use serde_json::Value;
use watch_support::{Daemon, Emulator, Repo};

/// A metric family from the exposition: its type and its samples (`name{labels}` → value).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: BTreeMap<String, f64>,
}

/// Parses the OpenMetrics text format strictly: HELP/TYPE/UNIT before a family's samples,
/// sample names that belong to their family's type, well-formed labels and values, cumulative
/// histogram buckets that end at `+Inf` = `_count`, and `# EOF` last. Panics on any deviation.
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition must end with # EOF"
    );
    let valid_name = |name: &str| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in &lines[..lines.len() - 1] {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, name, rest) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
            );
            assert!(valid_name(name), "bad metric name in {line:?}");
            match keyword {
                "TYPE" => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "gaugehistogram",
                        "unknown",
                    ];
                    assert!(known.contains(&rest), "unknown type in {line:?}");
                    assert!(!families.contains_key(name), "family {name} declared twice");
                    families.insert(
                        name.to_owned(),
                        Family {
                            kind: rest.to_owned(),
                            ..Family::default()
                        },
                    );
                    current = Some(name.to_owned());
                }
                "HELP" => assert!(!rest.is_empty(), "empty help in {line:?}"),
                "UNIT" => assert!(
                    name.ends_with(&format!("_{rest}")),
                    "the name must end with its unit: {line:?}"
                ),
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let family_name = current
            .clone()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}")),
            ),
            None => (series, ""),
        };
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (key, quoted) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("bad label {pair:?}"));
            assert!(valid_name(key), "bad label name {key:?}");
            assert!(
                quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                "unquoted label value {pair:?}"
            );
        }
        let family = families.get_mut(&family_name).unwrap();
        let suffixes: &[&str] = match family.kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        assert!(
            suffixes.iter().any(|s| name == format!("{family_name}{s}")),
            "sample {name} does not belong to the {} family {family_name}",
            family.kind
        );
        assert!(
            value.is_finite() || name.ends_with("_bucket"),
            "non-finite value in {line:?}"
        );
        assert!(
            family.samples.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    for (name, family) in &families {
        if family.kind == "histogram" {
            let buckets: Vec<f64> = family
                .samples
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{name}_bucket")))
                .map(|(_, v)| *v)
                .collect();
            assert!(!buckets.is_empty(), "{name} has no buckets");
            let inf = family.samples[&format!("{name}_bucket{{le=\"+Inf\"}}")];
            assert_eq!(
                inf,
                family.samples[&format!("{name}_count")],
                "{name}: +Inf bucket != count"
            );
            assert!(
                buckets.iter().all(|b| *b <= inf),
                "{name}: buckets are not cumulative"
            );
        }
    }
    families
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write(
        "people.yaml",
        "users:\n  Mary: {city: Lima}\n  Bob: {tier: gold}\n",
    );
    let daemon = Daemon::start(&repo, &[]);
    assert_eq!(
        daemon.wait_reconciles(1)["result"],
        "success",
        "{}",
        daemon.log()
    );

    let (status, content_type, body) = daemon.http("GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let families = parse_exposition(&body);
    let value = |family: &str, series: &str| {
        families[family]
            .samples
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    assert_eq!(
        value(
            "attrsync_reconciles",
            "attrsync_reconciles_total{result=\"success\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            "attrsync_reconciles",
            "attrsync_reconciles_total{result=\"failure\"}"
        ),
        0.0
    );
    assert_eq!(
        families["attrsync_reconcile_duration_seconds"].kind,
        "histogram"
    );
    assert_eq!(
        value(
            "attrsync_reconcile_duration_seconds",
            "attrsync_reconcile_duration_seconds_count"
        ),
        1.0
    );
    assert_eq!(
        value("attrsync_users_applied", "attrsync_users_applied_total"),
        2.0
    );
    assert_eq!(
        value("attrsync_users_failed", "attrsync_users_failed_total"),
        0.0
    );
    assert_eq!(
        value(
            "attrsync_api_calls",
            "attrsync_api_calls_total{endpoint=\"set_attr\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        value("attrsync_api_retries", "attrsync_api_retries_total"),
        0.0
    );
    assert_eq!(
        value("attrsync_api_throttled", "attrsync_api_throttled_total"),
        0.0
    );
    assert!(
        value(
            "attrsync_last_success_timestamp_seconds",
            "attrsync_last_success_timestamp_seconds"
        ) > 1.7e9
    );
    assert_eq!(
        value("attrsync_pending_changes", "attrsync_pending_changes"),
        0.0
    );
    assert_eq!(
        value("attrsync_desired_users", "attrsync_desired_users"),
        2.0
    );
}

#[test]
fn health_readiness_plan_and_manual_triggers() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("people.yaml", "users:\n  Mary: {city: Lima}\n");
    let daemon = Daemon::start(&repo, &[]);
    daemon.wait_reconciles(1);
    assert_eq!(daemon.http("GET", "/healthz").0, 200);
    let (status, _, body) = daemon.http("GET", "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    // GET /plan is computed now: after the apply, nothing is pending.
    let (status, content_type, body) = daemon.http("GET", "/plan");
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let plan: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plan["format_version"], 1);
    assert_eq!(plan["summary"]["unchanged"], 1);
    assert_eq!(plan["changes"], serde_json::json!([]));

    let (status, _, _) = daemon.http("POST", "/reconcile");
    assert_eq!(status, 202);
    assert_eq!(daemon.wait_reconciles(2)["trigger"], "http");
    daemon.signal("HUP");
    let hangup = daemon.wait_reconciles(3);
    assert_eq!(hangup["trigger"], "sighup");
    // Manual resyncs of an unchanged repository re-parse nothing and send nothing.
    assert_eq!(hangup["files_changed"], 0);
    assert_eq!(hangup["create"], 0);
    assert_eq!(emulator.set_attr_ok().0, 1);
    assert_eq!(daemon.http("GET", "/plan").0, 200);
    assert_eq!(daemon.http("GET", "/reconcile").0, 405);
}

#[test]
fn the_cli_is_told_which_daemon_holds_the_snapshot() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("people.yaml", "users:\n  Mary: {city: Lima}\n");
    let daemon = Daemon::start(&repo, &[]);
    daemon.wait_reconciles(1);
    for command in [&["plan"][..], &["apply", "--auto-approve"]] {
        let output = repo.cli(command);
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("pid {}", daemon.pid())),
            "{stderr}"
        );
        assert!(stderr.contains("attrsync watch"), "{stderr}");
        assert!(
            stderr.contains(&format!("GET http://{}/plan", daemon.addr)),
            "{stderr}"
        );
    }
}

#[test]
fn plan_only_logs_the_plan_and_applies_nothing() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("people.yaml", "users:\n  Mary: {city: Lima}\n");
    let daemon = Daemon::start(&repo, &["--plan-only"]);
    let first = daemon.wait_reconciles(1);
    assert_eq!(first["result"], "success", "{}", daemon.log());
    assert_eq!(first["create"], 1);
    let logged = daemon.lines().into_iter().find_map(|l| {
        l["message"]
            .as_str()
            .filter(|m| m.starts_with("plan-only: the plan is"))
            .map(str::to_owned)
    });
    let logged = logged.unwrap_or_else(|| panic!("the plan is logged:\n{}", daemon.log()));
    assert!(
        logged.contains("Mary") && logged.contains("Lima"),
        "{logged}"
    );
    let plan: Value = serde_json::from_str(&daemon.http("GET", "/plan").2).unwrap();
    assert_eq!(plan["summary"]["create"], 1);

    repo.write(
        "people.yaml",
        "users:\n  Mary: {city: Lima}\n  Bob: {tier: gold}\n",
    );
    let second = daemon.wait_reconciles(2);
    assert_eq!(second["create"], 2);
    let state = emulator.state();
    assert_eq!(
        state["calls"]["set_attr"]["total"], 0,
        "plan-only sent something"
    );
    assert_eq!(
        state["calls"]["get_attr_name"]["total"], 0,
        "plan-only needs no server"
    );
}

#[test]
fn a_state_directory_removed_under_the_daemon_makes_it_not_ready() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("people.yaml", "users:\n  Mary: {city: Lima}\n");
    let daemon = Daemon::start(&repo, &["--drift-budget", "0"]);
    daemon.wait_reconciles(1);
    assert_eq!(daemon.http("GET", "/readyz").0, 200);
    std::fs::remove_dir_all(repo.path().join("state")).unwrap();
    daemon.http("POST", "/reconcile");
    let failed = daemon.wait_reconciles(2);
    assert_eq!(failed["result"], "failure", "{}", daemon.log());
    let (status, _, body) = daemon.http("GET", "/readyz");
    assert_eq!(status, 503);
    assert!(
        body.contains("was removed or replaced while attrsync was using it"),
        "{body}"
    );
}

#[test]
fn a_listen_address_other_machines_reach_needs_a_token() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    let out = repo.cli(&["watch", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0") && stderr.contains("--listen-token-env"),
        "{stderr}"
    );
}

#[test]
fn with_a_token_plan_metrics_and_reconcile_need_it_and_health_does_not() {
    const TOKEN: &str = "t0ken-that-must-not-leak";
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("a.yaml", "users:\n  Mary: {sex: female}\n");
    let daemon = Daemon::start_with(
        &repo,
        &["--listen", "0.0.0.0:0", "--listen-token-env", "WATCH_TOKEN"],
        // Everything logged, hyper's internals included: the token must not appear anywhere.
        &[("WATCH_TOKEN", TOKEN), ("RUST_LOG", "trace")],
    );
    daemon.wait_reconciles(1);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    for path in ["/plan", "/metrics"] {
        let (status, head, _) = watch_support::request("GET", &daemon.addr, path, &[]);
        assert_eq!(status, 401, "{path}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        let wrong =
            watch_support::request("GET", &daemon.addr, path, &["Authorization: Bearer nope"]);
        assert_eq!(wrong.0, 401, "{path}");
        let right = watch_support::request("GET", &daemon.addr, path, &[bearer.as_str()]);
        assert_eq!(right.0, 200, "{path}");
        assert!(!right.2.contains(TOKEN));
    }
    assert_eq!(
        watch_support::request("POST", &daemon.addr, "/reconcile", &[]).0,
        401
    );
    assert_eq!(daemon.http("GET", "/healthz").0, 200);
    assert_eq!(daemon.http("GET", "/readyz").0, 200);
    assert!(!daemon.log().contains(TOKEN), "the token is never logged");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use std::io::{Read as _, Write as _};
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    let daemon = Daemon::start(&repo, &[]);
    let mut stream = std::net::TcpStream::connect(&daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(watch_support::DEADLINE))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut rest = Vec::new();
    // The server closes the connection (after an optional 408) instead of waiting forever.
    let closed = stream.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "the connection was closed by the server: {closed:?}"
    );
}

#[test]
fn reconcile_requests_during_a_backoff_make_no_api_call() {
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    repo.write("a.yaml", "users:\n  Mary: {sex: female}\n");
    // A wrong key: every reconcile fails at the server (70009), and the daemon backs off.
    let daemon = Daemon::start_with(&repo, &[], &[("TIM_SECRET_KEY", "not-the-key")]);
    let first = daemon.wait_reconciles(1);
    assert_eq!(first["result"], "failure", "{first}");
    let calls = |emulator: &Emulator| {
        emulator.state()["calls"]["get_attr_name"]["total"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = calls(&emulator);
    let mut refused = 0;
    for _ in 0..20 {
        let (status, head, _) = watch_support::request("POST", &daemon.addr, "/reconcile", &[]);
        if status == 429 {
            refused += 1;
            assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
        }
    }
    assert!(refused > 0, "a backing-off daemon answers 429");
    // At most the one retry its own backoff allows, not one call per request.
    assert!(
        calls(&emulator) <= before + 2,
        "{} calls after {before}",
        calls(&emulator)
    );
}

/// The process's peak resident set (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line");
    kib * 1024
}

#[test]
fn many_concurrent_plan_requests_cost_no_more_memory_than_one() {
    const USERS: usize = 30_000;
    const CLIENTS: usize = 16;
    let emulator = Emulator::start(&[]);
    let repo = Repo::new(&emulator, "");
    let users: String = (0..USERS)
        .map(|i| format!("  user{i:06}: {{sex: female, city: NewYork, tier: gold}}\n"))
        .collect();
    repo.write("many.yaml", &format!("users:\n{users}"));
    // Nothing is applied, so /plan holds every user: a plan of several megabytes.
    let daemon = Daemon::start(&repo, &["--plan-only"]);
    daemon.wait_reconciles(1);
    let before = peak_rss(daemon.pid());
    let start = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let answers: Vec<(u16, usize)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let start = std::sync::Arc::clone(&start);
                let addr = daemon.addr.clone();
                scope.spawn(move || {
                    start.wait();
                    let (status, _, body) = watch_support::http("GET", &addr, "/plan");
                    (status, body.len())
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let plan_bytes = answers[0].1 as u64;
    assert!(plan_bytes > 5_000_000, "a plan of {plan_bytes} bytes");
    for answer in &answers {
        assert_eq!(*answer, (200, plan_bytes as usize));
    }
    // One plan computed, one copy served to all: the peak grows by a small multiple of one
    // plan, not by one per client (each client costs at least the plan's size otherwise).
    let growth = peak_rss(daemon.pid()).saturating_sub(before);
    assert!(
        growth < 3 * plan_bytes,
        "{CLIENTS} concurrent /plan requests grew the peak by {growth} bytes, for a plan of {plan_bytes}"
    );
}
