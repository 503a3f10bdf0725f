//! Helpers for the `watch` tests: the real `attrsync` binary as child processes (an emulator
//! and a daemon), a config repository in a temporary directory, and polling with deadlines.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_attrsync");
/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);

/// Polls `condition` every 25 ms until it holds; panics with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Like [`wait_until`], with a deadline of its own for conditions that take longer.
pub fn wait_until_within(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting until {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// One HTTP/1.1 request (the tests need no client beyond this): returns status and body.
pub fn http(method: &str, addr: &str, path: &str) -> (u16, String, String) {
    let (status, head, body) = request(method, addr, path, &[]);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body)
}

/// One HTTP/1.1 request with extra header lines (`Name: value`): returns the status, the
/// header block and the body.
pub fn request(method: &str, addr: &str, path: &str, headers: &[&str]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// Kills the child when the test ends, passed or failed.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `attrsync emulator` as a child process.
pub struct Emulator {
    _child: Guard,
    pub addr: String,
}

impl Emulator {
    /// Starts an emulator for the demo app with attributes sex, city, tier, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "emulator",
                "--listen",
                "127.0.0.1:0",
                "--attributes",
                "sex,city,tier",
            ])
            .args(extra)
            .env_remove("TIM_SECRET_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the attrsync binary starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Self {
            _child: Guard(child),
            addr: line.trim().to_owned(),
        }
    }

    /// `GET /_emulator/state`.
    pub fn state(&self) -> Value {
        let (status, _, body) = http("GET", &self.addr, "/_emulator/state");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The user's attributes on the server.
    pub fn user(&self, user: &str) -> Option<BTreeMap<String, String>> {
        serde_json::from_value(self.state()["users"][user].clone()).ok()
    }

    /// `set_attr` calls answered OK, and the users they carried.
    pub fn set_attr_ok(&self) -> (usize, usize) {
        let state = self.state();
        let calls: Vec<&Value> = state["log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["endpoint"] == "set_attr" && c["code"] == 0)
            .collect();
        (
            calls.len(),
            calls
                .iter()
                .map(|c| c["accounts"].as_u64().unwrap() as usize)
                .sum(),
        )
    }
}

/// A config repository in a temporary directory, pointing at an emulator.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    /// `attrsync.yaml` for `emulator` with `extra` settings lines, and an empty `users/`.
    pub fn new(emulator: &Emulator, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("attrsync.yaml"),
            format!(
                "sdkappid: 1400000000\nidentifier: administrator\nendpoint: http://{}\nattributes: [sex, city, tier]\n{extra}",
                emulator.addr
            ),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("users")).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn users(&self) -> PathBuf {
        self.dir.path().join("users")
    }

    /// Writes `users/<name>` in place.
    pub fn write(&self, name: &str, text: &str) {
        let path = self.users().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Runs `attrsync --dir REPO ARGS…` to completion.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--dir")
            .arg(self.path())
            .args(args)
            .env("TIM_SECRET_KEY", attrsync::emulator::DEMO_SECRET_KEY)
            .output()
            .unwrap()
    }
}

/// `attrsync watch` as a child process, with its JSON log lines collected.
pub struct Daemon {
    child: Guard,
    lines: Arc<Mutex<Vec<Value>>>,
    /// The bound `--listen` address.
    pub addr: String,
}

impl Daemon {
    /// Starts `attrsync --dir REPO --log-format json watch --listen 127.0.0.1:0 --interval 1h`
    /// with `--debounce 100ms` unless `extra` sets it, and waits for the listen address.
    pub fn start(repo: &Repo, extra: &[&str]) -> Self {
        Self::start_with(repo, extra, &[])
    }

    /// [`Daemon::start`] with `env` set, and `--listen` from `extra` when it has one.
    pub fn start_with(repo: &Repo, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command.arg("--dir").arg(repo.path()).args([
            "--log-format",
            "json",
            "watch",
            "--interval",
            "1h",
        ]);
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--debounce") {
            command.args(["--debounce", "100ms"]);
        }
        let mut child = command
            .args(extra)
            .env("TIM_SECRET_KEY", attrsync::emulator::DEMO_SECRET_KEY)
            .env("RUST_LOG", "attrsync=info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the attrsync binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(value);
            }
        });
        let mut daemon = Self {
            child: Guard(child),
            lines,
            addr: String::new(),
        };
        wait_until("the daemon logs its listen address", || {
            daemon.lines().iter().any(|l| l["address"].is_string())
        });
        daemon.addr = daemon
            .lines()
            .iter()
            .find_map(|l| l["address"].as_str().map(str::to_owned))
            .unwrap();
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Every log line so far (JSON objects; anything else as a string).
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// The log so far, for assertion messages.
    pub fn log(&self) -> String {
        self.lines()
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The per-reconcile log lines (they carry `trigger` and `result`).
    pub fn reconciles(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["trigger"].is_string() && l["result"].is_string())
            .collect()
    }

    /// Waits for the `n`-th reconcile line and returns it.
    pub fn wait_reconciles(&self, n: usize) -> Value {
        wait_until(&format!("reconcile #{n} is logged"), || {
            self.reconciles().len() >= n
        });
        self.reconciles()[n - 1].clone()
    }

    /// Sends a signal with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit (panics after the deadline) and returns its status and
    /// how long it took.
    pub fn wait_exit(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the daemon did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// `GET`/`POST` on the daemon's endpoints.
    pub fn http(&self, method: &str, path: &str) -> (u16, String, String) {
        http(method, &self.addr, path)
    }
}
