//! A throwaway PostgreSQL for the tests: one cluster per test binary, started on first use
//! with `initdb` and `pg_ctl` (as the `postgres` user when running as root) in a temporary
//! directory, listening on a free loopback port and a unix socket there; a fresh database per
//! test. A watchdog process stops the cluster and removes its directory once this test binary
//! exits, however it exits.
//!
//! Where no PostgreSQL is installed the tests that need one say so and pass, except under
//! `CI=true`, where a missing PostgreSQL is a failure: `.ci/run` installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A running cluster.
pub struct Cluster {
    /// Its data and socket directory.
    pub dir: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Where its binaries are.
    pub bin: PathBuf,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The binaries of the newest installed PostgreSQL (`PGBIN` wins).
fn find_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PGBIN") {
        return Some(PathBuf::from(bin));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // SAFETY-free check: root's home directory owner is uid 0; `id -u` is simplest.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as `postgres` when we are root (initdb refuses root).
fn run_as_owner(bin: &Path, args: &[&str]) -> std::process::Output {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

fn start_shared() -> Option<Cluster> {
    let bin = find_bin();
    if bin.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): CI must install the `postgresql` package"
        );
        eprintln!("PostgreSQL is not installed: skipping the tests that need it");
    }
    Some(start(bin?, "shared", ""))
}

/// Starts a cluster from `bin` in a new temporary directory named after `name`, with `extra`
/// server options (`-c name=value …`); files the options name go in the cluster's directory,
/// written by `prepare` before the server starts.
fn start(bin: PathBuf, name: &str, extra: &str) -> Cluster {
    start_prepared(bin, name, extra, |_| {})
}

fn start_prepared(bin: PathBuf, name: &str, extra: &str, prepare: impl FnOnce(&Path)) -> Cluster {
    let dir = std::env::temp_dir().join(format!("attrsync-pg-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "cannot chown {}", dir.display());
    }
    let data = dir.join("data");
    let out = run_as_owner(
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
    );
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prepare(&dir);
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 {extra}",
        dir.display()
    );
    let log = dir.join("server.log");
    let out = run_as_owner(
        &bin.join("pg_ctl"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "30",
            "-o",
            &options,
            "start",
        ],
    );
    assert!(
        out.status.success(),
        "pg_ctl start failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Stop the cluster when this process is gone, whatever way it goes: the watchdog outlives
    // this process on purpose, so it is never waited for.
    let owner = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {owner}{pg_ctl} -D {data} -m immediate -w stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    // `setsid`: in a session of its own, so that killing this test's process group (a
    // timeout, Ctrl-C) does not take the watchdog with it.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the cluster's watchdog starts");
    Cluster { dir, port, bin }
}

/// The test cluster, started on first use; `None` where PostgreSQL is not installed (and
/// not under CI).
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER.get_or_init(start_shared).as_ref()
}

/// A cluster of the caller's own, for tests that restart it; `None` as for [`cluster`].
pub fn private_cluster() -> Option<Cluster> {
    let shared = cluster()?;
    let name = format!("private{}", DATABASES.fetch_add(1, Ordering::SeqCst));
    Some(start(shared.bin.clone(), &name, ""))
}

/// A cluster of the caller's own that also accepts TLS, with a self-signed certificate for
/// `localhost` (made with `openssl`); `None` as for [`cluster`].
pub fn private_cluster_with_tls() -> Option<Cluster> {
    let shared = cluster()?;
    let name = format!("tls{}", DATABASES.fetch_add(1, Ordering::SeqCst));
    let options = "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key";
    Some(start_prepared(shared.bin.clone(), &name, options, |dir| {
        let data = dir.join("data");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(data.join("server.key"))
            .arg("-out")
            .arg(data.join("server.crt"))
            .stdin(Stdio::null())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for file in ["server.key", "server.crt"] {
            let path = data.join(file);
            if is_root() {
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&path)
                    .status()
                    .unwrap();
            }
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }))
}

impl Cluster {
    /// The URL of database `name` (as the `postgres` superuser, over TCP).
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// A new, empty database; returns its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(&name)
            .stdin(Stdio::null())
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// Runs `sql` on database `url` (without TLS) and returns its rows.
    pub async fn execute(&self, url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connects to the test cluster");
        let task = tokio::spawn(connection);
        let rows = client.query(sql, &[]).await.expect(sql);
        drop(client);
        let _ = task.await;
        rows
    }

    /// Restarts the server at once, as a crash would (`pg_ctl restart -m immediate`): every
    /// session ends, open transactions roll back, locks are gone.
    pub fn crash_restart(&self) {
        let data = self.dir.join("data");
        // With a log file: the server must not inherit (and hold open) our output pipes.
        let log = self.dir.join("server.log");
        let out = run_as_owner(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "restart",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The test cluster, or returns from the calling test after saying why it is skipped.
#[macro_export]
macro_rules! require_postgres {
    () => {
        match $crate::pg_support::cluster() {
            Some(cluster) => cluster,
            None => return,
        }
    };
}
