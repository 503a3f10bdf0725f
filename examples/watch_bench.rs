//! Benchmarks `attrsync watch` with a large config repository against the emulator.
//!
//! ```text
//! cargo build --release --bin attrsync --example watch_bench
//! target/release/examples/watch_bench [--users 100000] [--files 10] [--edits 20] [--idle-secs 60] [--drift-users 20] [--drift-budget 10]
//! ```
//!
//! Starts `attrsync emulator` and `attrsync watch --debounce 300ms` (the release binary next to
//! this example, or `ATTRSYNC_BIN`) as child processes on a repository of `--users` users in
//! `--files` files, waits for the first sync, then:
//! - **edit latency**: rewrites one file with one user's attribute changed (temporary file +
//!   rename, as git does) and times until the emulator answers `get_attr` with the new value,
//!   `--edits` times, one edit at a time; prints the median and the maximum;
//! - **idle cost**: the daemon's CPU time (utime + stime from `/proc`) over `--idle-secs`
//!   seconds with nothing to do, and its resident memory (now and peak). The drift scan runs
//!   with its defaults (10 % of the rate limit, a pass at most every 30 s), so this is the cost
//!   of an idle daemon that also watches for drift;
//! - **drift repair**: changes `--drift-users` users' city on the emulator directly, behind the
//!   daemon's back, and times until every one of them is back to its declared value
//!   (`--drift-budget` is passed to the daemon; with 0 there is no scan, so no repair).

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use support::{binary, Guard};

use attrsync::api::{Client, ClientConfig, SecretKey};
use attrsync::emulator::DEMO_SECRET_KEY;

const CITIES: [&str; 8] = [
    "NewYork", "ShenZhen", "Boston", "Paris", "Tokyo", "Berlin", "Lagos", "Lima",
];
/// How often the edit's arrival is checked: 50 get_attr calls per second, half the
/// emulator's per-endpoint limit. The measured latency is at most this much late.
const PROBE_EVERY: Duration = Duration::from_millis(20);

struct Args {
    users: usize,
    files: usize,
    edits: usize,
    idle_secs: u64,
    drift_users: usize,
    drift_budget: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        users: 100_000,
        files: 10,
        edits: 20,
        idle_secs: 60,
        drift_users: 20,
        drift_budget: 10,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || {
            raw.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--users" => args.users = value(),
            "--files" => args.files = value(),
            "--edits" => args.edits = value(),
            "--idle-secs" => args.idle_secs = value() as u64,
            "--drift-users" => args.drift_users = value(),
            "--drift-budget" => args.drift_budget = value(),
            other => panic!("unknown argument {other}; see the module documentation"),
        }
    }
    args
}

/// One user's line; `generation` changes the city.
fn user_line(user: usize, generation: usize) -> String {
    let sex = if user % 2 == 0 { "female" } else { "male" };
    format!(
        "  user{user:08}: {{sex: {sex}, city: {}, tier: gold}}\n",
        CITIES[(user + generation) % CITIES.len()]
    )
}

fn write_file(users_dir: &Path, file: usize, lines: &[String]) {
    let path = users_dir.join(format!("part-{file:03}.yaml"));
    let temp = users_dir.join(format!(".part-{file:03}.yaml.tmp"));
    std::fs::write(&temp, format!("users:\n{}", lines.concat())).expect("write a user file");
    std::fs::rename(&temp, &path).expect("rename a user file into place");
}

/// (user + system) CPU seconds and (RSS, peak RSS) in MiB of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn memory_mib(pid: u32) -> (f64, f64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn main() {
    let args = parse_args();
    let work = tempfile::tempdir().expect("a temporary directory");
    // A private copy: another build in a shared target directory cannot swap it mid-run.
    let bin = work.path().join("attrsync");
    std::fs::copy(binary(), &bin)
        .expect("copy the attrsync binary (build it with --release first)");
    let help = Command::new(&bin)
        .args(["watch", "--help"])
        .output()
        .expect("run attrsync");
    assert!(
        help.status.success(),
        "{} has no `watch` command: rebuild it",
        bin.display()
    );

    let (_emulator, addr) = support::emulator(&bin, &[]);

    let repo = work.path().join("repo");
    let users_dir = repo.join("users");
    std::fs::create_dir_all(&users_dir).unwrap();
    std::fs::write(
        repo.join("attrsync.yaml"),
        format!("sdkappid: 1400000000\nidentifier: administrator\nendpoint: http://{addr}\nattributes: [sex, city, tier]\n"),
    )
    .unwrap();
    let per_file = args.users.div_ceil(args.files);
    let mut files: Vec<Vec<String>> = (0..args.files)
        .map(|f| {
            (f * per_file..((f + 1) * per_file).min(args.users))
                .map(|u| user_line(u, 0))
                .collect()
        })
        .collect();
    for (f, lines) in files.iter().enumerate() {
        write_file(&users_dir, f, lines);
    }
    println!(
        "repository: {} users in {} files under {}",
        args.users,
        args.files,
        repo.display()
    );

    let started = Instant::now();
    let daemon = Command::new(&bin)
        .arg("--dir")
        .arg(&repo)
        .args([
            "--log-format",
            "json",
            "watch",
            "--debounce",
            "300ms",
            "--interval",
            "5m",
            "--drift-budget",
            &args.drift_budget.to_string(),
        ])
        .env("TIM_SECRET_KEY", DEMO_SECRET_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start attrsync watch");
    let pid = daemon.id();
    let mut daemon = Guard(daemon);
    let (reconciled_tx, reconciled_rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = daemon.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                if value["result"].is_string() {
                    let _ = reconciled_tx.send(value);
                }
            }
        }
    });
    let first = reconciled_rx
        .recv_timeout(Duration::from_secs(600))
        .expect("the first sync finishes");
    assert_eq!(first["result"], "success", "{first}");
    println!(
        "first sync: {} users created in {:.1}s (daemon start to reconciled)",
        first["applied"],
        started.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Client::new(ClientConfig::new(
        format!("http://{addr}"),
        1_400_000_000,
        "administrator".to_owned(),
        SecretKey::new(DEMO_SECRET_KEY),
    ))
    .expect("a client for the emulator");

    // Each edit moves its user one city further, so the value always changes.
    let mut generations = std::collections::HashMap::<usize, usize>::new();
    let mut latencies = Vec::with_capacity(args.edits);
    for edit in 1..=args.edits {
        // Spread the edits over the files and users; each changes one user's city.
        let file = edit % args.files;
        let index = (edit * 7919) % files[file].len();
        let user = file * per_file + index;
        let generation = generations.entry(user).or_default();
        *generation += 1;
        files[file][index] = user_line(user, *generation);
        let expected = CITIES[(user + *generation) % CITIES.len()];
        write_file(&users_dir, file, &files[file]);
        let written = Instant::now();
        let account = format!("user{user:08}");
        loop {
            let answer = runtime
                .block_on(client.get_attr(std::slice::from_ref(&account)))
                .expect("get_attr");
            if answer
                .attrs
                .get(&account)
                .and_then(|a| a.get("city"))
                .map(String::as_str)
                == Some(expected)
            {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(30),
                "edit {edit} never arrived"
            );
            std::thread::sleep(PROBE_EVERY);
        }
        let latency = written.elapsed();
        // Let the reconcile's log line arrive before the next edit, so edits never overlap.
        let line = reconciled_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the edit's reconcile is logged");
        println!(
            "edit {edit:2}: {:4} ms  (reconcile {} ms, {} file re-parsed)",
            latency.as_millis(),
            line["duration_ms"],
            line["files_changed"]
        );
        latencies.push(latency);
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    println!(
        "edit → emulator: median {} ms, max {} ms over {} edits (debounce 300 ms, probe every {} ms)",
        median.as_millis(),
        latencies.last().unwrap().as_millis(),
        latencies.len(),
        PROBE_EVERY.as_millis()
    );

    // Idle: let the last reconcile's allocations settle, then measure a quiet window.
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let used = cpu_seconds(pid) - before;
    let (rss, peak) = memory_mib(pid);
    println!(
        "idle {}s: {:.2}s CPU ({:.3}% of one core); RSS {:.0} MiB (peak {:.0} MiB)",
        args.idle_secs,
        used,
        used / args.idle_secs as f64 * 100.0,
        rss,
        peak
    );

    if args.drift_users > 0 && args.drift_budget > 0 {
        // Spread over the users; each moves to a city no file declares.
        let drifted: Vec<String> = (0..args.drift_users)
            .map(|i| format!("user{:08}", i * (args.users / args.drift_users)))
            .collect();
        let changes: Vec<attrsync::api::UserAttrs> = drifted
            .iter()
            .map(|account| attrsync::api::UserAttrs {
                account: account.clone(),
                attrs: [("city".to_owned(), "Atlantis".to_owned())].into(),
            })
            .collect();
        for batch in changes.chunks(100) {
            // The benchmark's own connection may have gone stale while idle: try again.
            let mut attempts = 0;
            while let Err(error) = runtime.block_on(client.set_attr(batch)) {
                attempts += 1;
                assert!(attempts < 3, "set_attr behind the daemon's back: {error}");
            }
        }
        let changed = Instant::now();
        loop {
            let answer = runtime
                .block_on(client.get_attr(&drifted))
                .expect("get_attr");
            let left = drifted
                .iter()
                .filter(|a| {
                    answer
                        .attrs
                        .get(*a)
                        .and_then(|x| x.get("city"))
                        .map(String::as_str)
                        == Some("Atlantis")
                })
                .count();
            if left == 0 {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(600),
                "{left} drifted users were never repaired"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "drift: {} users changed behind the daemon's back were all repaired {:.1}s later \
             (--drift-budget {}, --drift-pass-every 30s)",
            args.drift_users,
            changed.elapsed().as_secs_f64(),
            args.drift_budget,
        );
    }
    drop(daemon);
}
