//! Nothing secret leaks: the logs and errors of failing calls never contain the key or a UserSig,
//! and the daemon's token and database passwords stay out of logs, errors and `Debug` output.

use attrsync::api::usersig;
use attrsync::api::{ApiError, Client, ClientConfig, SecretKey, UserAttrs};
use attrsync::emulator::{Clock, Emulator, EmulatorConfig, FailMode};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SDKAPPID: u64 = 1_400_000_000;
const ADMIN: &str = "administrator";
/// The client's key; the emulator holds a different one where a test needs 70009.
const CLIENT_KEY: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

/// A `MakeWriter` that appends every log line to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends every log event of this thread, TRACE included, to the returned buffer while the
/// guard lives.
fn capture_every_log() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs failing calls of every kind and returns everything they printed, logged or returned.
async fn failing_calls_output() -> String {
    let mut output = Vec::new();
    let key = SecretKey::new(CLIENT_KEY);
    let scenarios = [
        // Wrong key on the server side: 70009.
        EmulatorConfig {
            secret_key: SecretKey::new("f".repeat(64)),
            ..EmulatorConfig::default()
        },
        // Expired: 70001.
        EmulatorConfig {
            secret_key: key.clone(),
            clock: Clock::Offset(3 * 86_400),
            ..EmulatorConfig::default()
        },
        EmulatorConfig {
            secret_key: key.clone(),
            fail_rate: 1.0,
            fail_mode: FailMode::InternalError,
            ..EmulatorConfig::default()
        },
        EmulatorConfig {
            secret_key: key.clone(),
            fail_rate: 1.0,
            fail_mode: FailMode::BadGateway,
            ..EmulatorConfig::default()
        },
        EmulatorConfig {
            secret_key: key.clone(),
            fail_rate: 1.0,
            fail_mode: FailMode::Drop,
            ..EmulatorConfig::default()
        },
        EmulatorConfig {
            secret_key: key.clone(),
            latency: Duration::from_secs(2),
            ..EmulatorConfig::default()
        },
        // Unregistered attribute: 90033.
        EmulatorConfig {
            secret_key: key.clone(),
            ..EmulatorConfig::default()
        },
    ];
    for emulator_config in scenarios {
        let emulator = Emulator::start(emulator_config, "127.0.0.1:0")
            .await
            .unwrap();
        let config = ClientConfig {
            request_timeout: Duration::from_millis(300),
            ..ClientConfig::new(emulator.base_url(), SDKAPPID, ADMIN, key.clone())
        };
        output.push(format!("{config:?}"));
        let client = Client::new(config).unwrap();
        output.push(format!("{client:?}"));
        let user = UserAttrs {
            account: "Mary".into(),
            attrs: [("mood".to_owned(), "ok".to_owned())].into(),
        };
        let err: ApiError = client.set_attr(&[user]).await.unwrap_err();
        output.push(format!(
            "{err}\n{err:?}\n{:#}",
            anyhow::Error::new(err.clone())
        ));
        emulator.shutdown().await;
    }
    // Nothing listening any more: a connection error.
    let client = Client::new(ClientConfig::new(
        "http://127.0.0.1:9",
        SDKAPPID,
        ADMIN,
        key,
    ))
    .unwrap();
    let err = client.get_attr_name().await.unwrap_err();
    output.push(format!("{err}\n{err:?}"));
    output.join("\n")
}

#[tokio::test]
async fn failing_calls_never_log_or_report_the_key_or_a_usersig() {
    let (captured, _guard) = capture_every_log();

    let started = unix_now();
    let errors = failing_calls_output().await;
    let finished = unix_now();
    eprintln!("{errors}");
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("call failed"),
        "the client logs its failures:\n{logs}"
    );
    assert!(
        errors.contains("70009") && errors.contains("70001"),
        "{errors}"
    );

    // Every UserSig the client can have signed during the run (one per second at most).
    let key = SecretKey::new(CLIENT_KEY);
    let usersigs: Vec<String> = (started..=finished)
        .map(|time| usersig::sign(SDKAPPID, ADMIN, &key, time, 86_400))
        .collect();
    for (name, text) in [("logs", &logs), ("errors", &errors)] {
        assert!(
            !text.contains(CLIENT_KEY),
            "the key leaked into the {name}:\n{text}"
        );
        assert!(
            !text.contains("usersig="),
            "a URL leaked into the {name}:\n{text}"
        );
        for usersig in &usersigs {
            assert!(
                !text.contains(usersig.as_str()),
                "a UserSig leaked into the {name}:\n{text}"
            );
            // Any long fragment of it would be as bad.
            assert!(
                !text.contains(&usersig[..24]),
                "part of a UserSig leaked into the {name}:\n{text}"
            );
        }
    }
}

/// The daemon's bearer token, and a database password, that must never be printed.
const TOKEN: &str = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0";
const DB_PASSWORD: &str = "Db-Pa55w0rd-that-must-not-print";

#[tokio::test]
async fn the_daemon_token_and_database_passwords_never_reach_logs_or_errors() {
    use attrsync::model::{PostgresUrl, StateLocation, Target};
    use attrsync::state::{Access, Binding, Holder, OnOtherTarget};
    let (captured, _guard) = capture_every_log();

    let mut output = Vec::new();
    let token = attrsync::watch::ListenToken::new(TOKEN).unwrap();
    output.push(format!("{token:?}"));
    // Nothing listens on this port: every connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for text in [
        format!("postgres://attrsync:{DB_PASSWORD}@127.0.0.1:{port}/state?sslmode=disable"),
        format!("postgres://127.0.0.1:{port}/state?password={DB_PASSWORD}&sslmode=disable"),
        format!("postgresql://attrsync:{DB_PASSWORD}@127.0.0.1:notaport/state"),
        format!("postgres://attrsync:{DB_PASSWORD}@127.0.0.1:{port}/state?sslmode=require"),
    ] {
        let url = PostgresUrl::new(&text).expect("a PostgreSQL URL");
        let location = StateLocation::Postgres(url.clone());
        output.push(format!("{url} {url:?} {location} {location:?}"));
        let binding = Binding {
            sdkappid: SDKAPPID,
            target: &Target::Embedded,
        };
        for access in [
            Access::Read,
            Access::Write {
                lock_timeout: Duration::ZERO,
            },
        ] {
            let err = attrsync::state::open(
                &location,
                binding,
                &Holder::default(),
                OnOtherTarget::Refuse,
                access,
            )
            .await
            .expect_err("no database answers");
            let report = anyhow::Error::new(err);
            output.push(format!("{report}\n{report:#}\n{report:?}"));
        }
    }
    let output = output.join("\n");
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    eprintln!("{output}\n{logs}");
    assert!(output.contains("postgres://"), "{output}");
    for (name, text) in [("logs", &logs), ("errors", &output)] {
        assert!(
            !text.contains(TOKEN),
            "the token leaked into the {name}:\n{text}"
        );
        assert!(
            !text.contains(DB_PASSWORD),
            "a database password leaked into the {name}:\n{text}"
        );
    }
}
