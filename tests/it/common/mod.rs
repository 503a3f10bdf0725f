//! A config repository in a temporary directory, and the real `attrsync` binary run against it.
//!
//! The `cli_*` modules (and some others) of the integration tests use parts of it.

// Each test crate compiles its own copy of this module and uses only some of the helpers.
#![allow(dead_code)]

pub mod yaml;
pub use yaml::yaml;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use attrsync::api::Endpoint;
use attrsync::emulator::{
    Emulator, EmulatorConfig, FailMode, Faults, RunningEmulator, SetAttrMode, StateReport,
};

/// The `attrsync.yaml` most tests use: one app, three attributes, everything else default.
pub const SETTINGS: &str = "\
sdkappid: 1400000000
identifier: administrator
region: singapore
attributes: [sex, city, tier]
";

/// The app id in [`SETTINGS`].
pub const SDKAPPID: u64 = 1_400_000_000;

/// How long one run of the binary may take before the test fails. Every command here is
/// offline and finishes in milliseconds; the limit only turns a hang into a failure.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What one run of the binary did.
#[derive(Debug)]
pub struct Output {
    /// The exit code.
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Output {
    /// Panics with both streams unless the run exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the run succeeded.
    #[track_caller]
    pub fn success(&self) -> &Self {
        self.expect_code(0)
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// A config repository on disk, deleted when dropped.
pub struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    /// A repository holding `files`, each `(path relative to the repository, content)`.
    pub fn new(files: &[(&str, &str)]) -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        };
        for (path, content) in files {
            repo.write(path, content);
        }
        repo
    }

    /// A repository with [`SETTINGS`], an empty `users/` and then `files`.
    pub fn with_users(files: &[(&str, &str)]) -> Repo {
        let repo = Repo::new(&[("attrsync.yaml", SETTINGS)]);
        repo.mkdir("users");
        for (path, content) in files {
            repo.write(path, content);
        }
        repo
    }

    /// The repository's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` inside the repository.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }

    /// Writes (or overwrites) a file, creating its parent directories.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self
    }

    /// Creates a directory (and its parents).
    pub fn mkdir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.path(rel)).unwrap_or_else(|e| panic!("create {rel}: {e}"));
        self
    }

    /// Removes a file.
    pub fn remove(&self, rel: &str) -> &Self {
        std::fs::remove_file(self.path(rel)).unwrap_or_else(|e| panic!("remove {rel}: {e}"));
        self
    }

    /// Reads a file as text.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// A `Command` for the binary, run inside the repository with `NO_COLOR=1` and no
    /// inherited logging or secret settings; for tests that need to add to it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_attrsync"));
        command
            .args(args)
            .current_dir(self.dir())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("TIM_SECRET_KEY");
        command
    }

    /// Runs `attrsync ARGS` inside the repository; fails the test if it runs over [`TIMEOUT`].
    pub fn run(&self, args: &[&str]) -> Output {
        run(self.command(args))
    }

    /// Replaces the snapshot with `users` through `attrsync state import`.
    #[track_caller]
    pub fn seed(&self, users: &[(&str, &[(&str, &str)])]) {
        let lines: String = users
            .iter()
            .map(|(user, attrs)| {
                let attrs: serde_json::Map<String, serde_json::Value> = attrs
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), (*value).into()))
                    .collect();
                format!("{}\n", serde_json::json!({ "user": user, "attrs": attrs }))
            })
            .collect();
        self.write("seed.jsonl", lines);
        self.run(&["state", "import", "seed.jsonl"]).success();
        self.remove("seed.jsonl");
    }

    /// The snapshot's serial, as `plan --format json` reports it.
    #[track_caller]
    pub fn serial(&self) -> u64 {
        let plan = self.run(&["plan", "--format", "json", "--allow-empty"]);
        plan.success().json()["snapshot_serial"]
            .as_u64()
            .expect("snapshot_serial is a number")
    }
}

/// Runs `command` with piped output, killing it and failing the test after [`TIMEOUT`].
#[track_caller]
pub fn run(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the attrsync binary");
    // One thread per pipe; both report when their pipe closes, which happens when the process
    // exits, so waiting for both (with a deadline) is waiting for the process.
    let (done, finished) = mpsc::channel();
    let pipes: [(bool, Box<dyn std::io::Read + Send>); 2] = [
        (true, Box::new(child.stdout.take().expect("piped stdout"))),
        (false, Box::new(child.stderr.take().expect("piped stderr"))),
    ];
    for (is_stdout, mut pipe) in pipes {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = done.send((is_stdout, bytes));
        });
    }
    let deadline = Instant::now() + TIMEOUT;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        match finished.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((true, bytes)) => stdout = bytes,
            Ok((false, bytes)) => stderr = bytes,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "attrsync {:?} did not finish within {TIMEOUT:?}",
                    command.get_args().collect::<Vec<_>>()
                );
            }
        }
    }
    let status = child.wait().expect("wait for attrsync");
    Output {
        code: status
            .code()
            .expect("attrsync exited normally, not by a signal"),
        stdout: String::from_utf8(stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(stderr).expect("stderr is UTF-8"),
    }
}

/// The server [`SETTINGS`] point at: snapshots opened by tests must record it.
pub const TARGET: attrsync::model::Target =
    attrsync::model::Target::Region(attrsync::model::Region::Singapore);

/// Opens the snapshot at `dir` for the app and server of [`SETTINGS`].
pub fn open_store(dir: &Path, holder: &attrsync::state::Holder) -> attrsync::state::SledDb {
    attrsync::state::SledDb::open(
        dir,
        attrsync::state::Binding {
            sdkappid: SDKAPPID,
            target: &TARGET,
        },
        holder,
    )
    .expect("open the snapshot")
}

/// Records `writes` in `store` as one commit, as if the server had accepted them.
pub fn record(
    store: &attrsync::state::SledDb,
    writes: &[(attrsync::model::UserId, Option<attrsync::model::Attrs>)],
    applied_at: u64,
) -> u64 {
    store
        .commit(&attrsync::state::Commit {
            record: writes.to_vec(),
            applied_at,
            ..attrsync::state::Commit::default()
        })
        .expect("commit to the snapshot")
}

/// A request as [`Canned`] saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// `POST`, `GET`, …
    pub method: String,
    /// The path and query.
    pub target: String,
    /// The body.
    pub body: String,
}

/// A purpose-built HTTP server on loopback that answers every request with what `answer`
/// returns (a whole HTTP/1.1 response), for the answers the emulator never gives: a captive
/// portal's `{}`, redirects, 429, oversized bodies, odd field types.
pub struct Canned {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<SeenRequest>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Canned {
    /// Starts the server; `answer` gets each request and returns the raw response.
    pub fn start(answer: impl Fn(&SeenRequest) -> Vec<u8> + Send + 'static) -> Canned {
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen_in, stop_in) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop_in.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.is_empty() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().unwrap_or_default().to_owned();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                let _ = std::io::Read::read_exact(&mut reader, &mut body);
                let request = SeenRequest {
                    method,
                    target,
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let response = answer(&request);
                seen_in.lock().unwrap().push(request);
                let _ = stream.write_all(&response);
                let _ = stream.flush();
            }
        });
        Canned { addr, seen, stop }
    }

    /// A `200 OK` response with a JSON body.
    pub fn json(body: &str) -> Vec<u8> {
        Self::response(
            "200 OK",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// A whole response: status line, headers, body, `Connection: close`.
    pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests answered so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so the thread sees the flag and ends.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

thread_local! {
    /// What `set_attr` does on the servers this test thread starts: every scenario runs once
    /// with the emulator merging (the default) and once replacing (module `replace_mode`),
    /// since the documentation does not say which the real server does.
    pub static SET_ATTR: std::cell::Cell<SetAttrMode> = const { std::cell::Cell::new(SetAttrMode::Merge) };
}

/// An emulator running in this test process, on its own runtime.
pub struct Server {
    pub runtime: tokio::runtime::Runtime,
    emulator: Option<RunningEmulator>,
}

impl Server {
    pub fn start(mut config: EmulatorConfig) -> Server {
        config.set_attr = SET_ATTR.with(std::cell::Cell::get);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let emulator = runtime
            .block_on(Emulator::start(config, "127.0.0.1:0"))
            .expect("start the emulator");
        Server {
            runtime,
            emulator: Some(emulator),
        }
    }

    pub fn default() -> Server {
        Server::start(EmulatorConfig {
            attributes: vec!["sex".into(), "city".into(), "tier".into()],
            ..EmulatorConfig::default()
        })
    }

    pub fn url(&self) -> String {
        self.emulator.as_ref().unwrap().base_url()
    }

    pub fn state(&self) -> StateReport {
        self.emulator.as_ref().unwrap().state()
    }

    pub fn users(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.state().users
    }

    /// Calls of `endpoint` so far.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.state().calls.get(endpoint).map_or(0, |c| c.total)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.emulator.as_ref().unwrap().set_faults(faults);
    }

    /// Every `endpoint` call is answered with `mode`, from now on.
    pub fn fail_every(&self, endpoint: Endpoint, mode: FailMode) {
        self.set_faults(Faults {
            rate: 1.0,
            mode,
            endpoints: vec![endpoint],
        });
    }

    /// Waits (polling, with a deadline) until the server holds `value` for `user`.`name`.
    #[track_caller]
    pub fn wait_for(&self, user: &str, name: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .users()
            .get(user)
            .and_then(|a| a.get(name))
            .map(String::as_str)
            != Some(value)
        {
            assert!(
                Instant::now() < deadline,
                "the server never held {user}.{name} = {value}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(emulator) = self.emulator.take() {
            self.runtime.block_on(emulator.shutdown());
        }
    }
}
