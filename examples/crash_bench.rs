//! Kills `attrsync apply` with SIGKILL at random moments and checks that the snapshot never
//! lies, then that one more apply converges, including after the YAML was reverted.
//!
//! ```text
//! cargo build --release --bin attrsync --example crash_bench
//! target/release/examples/crash_bench [--trials 50] [--users 2000] [--fail-rate 0] [--seed 1]
//! ```
//!
//! One `attrsync emulator` (30 ms latency, optionally `--fail-rate` mixed faults on the writes)
//! serves every trial; the release binary next to this example is used (or `ATTRSYNC_BIN`).
//! Each trial writes a new desired state (about a third of the users change city; every third
//! trial instead reverts to the desired state two trials back, so values the server may hold
//! from a killed write are asked for again), starts `apply --auto-approve`, kills it with
//! SIGKILL after a random 0–2 s (the apply sends 20 users a call at 25 calls/s, so most kills
//! land mid-apply), and then compares `state export` with the server:
//!
//! - a **lie** is a user the snapshot records (not in doubt) with attributes the server does
//!   not hold — there must be none;
//! - users **in doubt** are counted (they are what the next apply re-sends in full).
//!
//! Then it runs `apply` to completion (without faults) and checks **convergence**: the server
//! holds exactly the desired state, the snapshot equals the server, nobody is in doubt.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::binary;

type Users = BTreeMap<String, BTreeMap<String, String>>;

const CITIES: [&str; 6] = ["NewYork", "ShenZhen", "Boston", "Paris", "Tokyo", "Lima"];
const DEMO_KEY: &str = "de70de70de70de70de70de70de70de70de70de70de70de70de70de70de70de70";

struct Args {
    trials: usize,
    users: usize,
    fail_rate: f64,
    seed: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        trials: 50,
        users: 2000,
        fail_rate: 0.0,
        seed: 1,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--trials" => args.trials = value.parse().expect("--trials N"),
            "--users" => args.users = value.parse().expect("--users N"),
            "--fail-rate" => args.fail_rate = value.parse().expect("--fail-rate P"),
            "--seed" => args.seed = value.parse().expect("--seed N"),
            other => panic!("unknown argument {other}; see the module documentation"),
        }
    }
    args
}

/// `GET path` on `addr`, the body.
fn get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the emulator");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let body = raw.split_once("\r\n\r\n").expect("an HTTP answer").1;
    if raw
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, tail) = rest.split_once("\r\n").expect("a chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
            if size == 0 {
                return out;
            }
            out.push_str(&tail[..size]);
            rest = &tail[size + 2..];
        }
    }
    body.to_owned()
}

fn server_users(addr: &str) -> Users {
    let state: serde_json::Value =
        serde_json::from_str(&get(addr, "/_emulator/state")).expect("the emulator's state");
    serde_json::from_value(state["users"].clone()).expect("users")
}

/// `state export`: recorded users, and users in doubt.
fn exported(bin: &Path, repo: &Path) -> (Users, Vec<String>) {
    let out = Command::new(bin)
        .arg("--dir")
        .arg(repo)
        .args(["state", "export"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "state export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut recorded = Users::new();
    let mut doubt = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let user = value["user"].as_str().unwrap().to_owned();
        if value.get("in_doubt").is_some() {
            doubt.push(user);
        } else {
            recorded.insert(
                user,
                serde_json::from_value(value["attrs"].clone()).unwrap(),
            );
        }
    }
    (recorded, doubt)
}

fn write_desired(repo: &Path, desired: &Users) {
    let mut text = String::from("users:\n");
    for (user, attrs) in desired {
        let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        text.push_str(&format!("  {user}: {{{}}}\n", attrs.join(", ")));
    }
    std::fs::write(repo.join("users/all.yaml"), text).unwrap();
}

fn apply(bin: &Path, repo: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--dir")
        .arg(repo)
        .args(["-q", "apply", "--auto-approve"])
        .env("TIM_SECRET_KEY", DEMO_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn main() {
    let args = parse_args();
    let bin = binary();
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let work = tempfile::tempdir().unwrap();
    let fail_rate = args.fail_rate.to_string();
    let (_emulator, addr) = support::emulator(
        &bin,
        &[
            "--latency",
            "30",
            "--fail-rate",
            &fail_rate,
            "--fail-endpoints",
            "set_attr,remove_attr",
            "--seed",
            &args.seed.to_string(),
        ],
    );
    let repo = work.path().join("repo");
    std::fs::create_dir_all(repo.join("users")).unwrap();
    std::fs::write(
        repo.join("attrsync.yaml"),
        format!(
            "sdkappid: 1400000000\nidentifier: administrator\nendpoint: http://{addr}\n\
             attributes: [sex, city, tier]\nbatch_size: 20\nrate_limit: 25\n"
        ),
    )
    .unwrap();
    println!(
        "crash_bench: {} trials, {} users, emulator {addr} (30 ms latency, write fault rate {})",
        args.trials, args.users, args.fail_rate
    );

    let mut history: Vec<Users> = Vec::new();
    let (mut lies, mut max_doubt, mut total_doubt) = (0usize, 0usize, 0usize);
    let (mut converged_trials, mut diverged) = (0usize, 0usize);
    for trial in 1..=args.trials {
        let reverted = trial % 3 == 0 && history.len() >= 2;
        let desired: Users = if reverted {
            history[history.len() - 2].clone()
        } else {
            (0..args.users)
                .map(|i| {
                    let city = match history.last() {
                        Some(last) if rng.u8(..3) != 0 => last[&format!("u{i:05}")]["city"].clone(),
                        _ => CITIES[rng.usize(..CITIES.len())].to_owned(),
                    };
                    let sex = if i % 2 == 0 { "female" } else { "male" };
                    let mut attrs = BTreeMap::from([
                        ("sex".to_owned(), sex.to_owned()),
                        ("city".to_owned(), city),
                    ]);
                    if rng.u8(..4) == 0 {
                        attrs.insert("tier".to_owned(), "gold".to_owned());
                    }
                    (format!("u{i:05}"), attrs)
                })
                .collect()
        };
        write_desired(&repo, &desired);
        history.push(desired.clone());

        let kill_after = Duration::from_millis(rng.u64(0..2000));
        let started = Instant::now();
        let mut child = apply(&bin, &repo).spawn().expect("start attrsync apply");
        let mut killed = false;
        while started.elapsed() < kill_after {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed = true;
        }
        child.wait().unwrap();

        let server = server_users(&addr);
        let (recorded, doubt) = exported(&bin, &repo);
        let trial_lies: Vec<&String> = recorded
            .iter()
            .filter(|(user, attrs)| server.get(*user) != Some(*attrs) && !attrs.is_empty())
            .map(|(user, _)| user)
            .collect();
        lies += trial_lies.len();
        max_doubt = max_doubt.max(doubt.len());
        total_doubt += doubt.len();

        // One more apply, to completion.
        let status = apply(&bin, &repo).status().unwrap();
        let server = server_users(&addr);
        let (recorded, doubt_after) = exported(&bin, &repo);
        // With faults on the writes, one more apply may fail again: only the absence of lies
        // is required then.
        let converged =
            status.success() && server == desired && recorded == server && doubt_after.is_empty();
        if converged {
            converged_trials += 1;
        } else if args.fail_rate == 0.0 {
            diverged += 1;
        }
        println!(
            "trial {trial:3}: {} after {:4} ms{}: {} lies, {:4} in doubt; next apply {}",
            if killed { "killed" } else { "finished" },
            kill_after.as_millis(),
            if reverted { " (reverted YAML)" } else { "" },
            trial_lies.len(),
            doubt.len(),
            if converged {
                "converged".to_owned()
            } else {
                format!("did NOT converge (exit {:?})", status.code())
            }
        );
        if !trial_lies.is_empty() {
            println!("  lies: {:?}", &trial_lies[..trial_lies.len().min(5)]);
        }
    }
    println!(
        "== {} trials: {lies} users whose snapshot value differs from the server without being in doubt; \
         {total_doubt} in doubt in all (at most {max_doubt} in one trial); {converged_trials} of {} converged with one more apply{}",
        args.trials,
        args.trials,
        if args.fail_rate > 0.0 { " (not required while the faults go on)" } else { "" }
    );
    if lies > 0 || diverged > 0 {
        std::process::exit(1);
    }
}
