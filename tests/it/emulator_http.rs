//! The emulator as a server, spoken to with hand-made requests: official UserSigs, every
//! documented rejection, persistence, seeded faults, and the `attrsync emulator` command.

use attrsync::api::usersig;
use attrsync::api::SecretKey;
use attrsync::emulator::{Clock, Emulator, EmulatorConfig, FailMode, RunningEmulator, StateReport};
use serde_json::{json, Value};
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const K1: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
const K2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const T: u64 = 1_700_000_000;

/// UserSigs made by the official libraries (`docs/api.md`, "UserSig") for vector A (K1, xiaojun,
/// 1400000000) and vector B (K2, administrator, 88888888).
const A_SIGS: [&str; 4] = [
    "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkKjIT87NK82CSxSnZiQUFmSlAKUMTAyiAyqVWFGQWpYJkTE1NjRDiJZm5YFFzNPXFmekgG3zKHM1T9D3LzdODi-OKs8vCqpxcAvydnV2SSv2cy03cPcpDnA2SMgu0nUxslWoBHdYzUg__",
    "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwhWZiflZpXlQqeKU7MSCgswUJStDEwMogMiUZOamKlkZmqOKplYUZBaBxE1NTY3gosWZ6UpWSj5ljuYp*p7l5unBxXnF2WVhVU4uAf7Ozi5JpX7O5SbuHuUhzgZJmQXaTia2SrUAohcx8g__",
    "eAEArABT-3siVExTLnZlciI6IjIuMCIsIlRMUy5pZGVudGlmaWVyIjoieGlhb2p1biIsIlRMUy5zZGthcHBpZCI6MTQwMDAwMDAwMCwiVExTLmV4cGlyZSI6MTU1NTIwMDAsIlRMUy50aW1lIjoxNzAwMDAwMDAwLCJUTFMuc2lnIjoiTHZBN2QvSXc3Z1NzbnNrdlZ6QkRQT0NDRGJ1TkN3NEdId1RDMGJpcCtCND0ifQoBAAD--9-DMfw_",
    "eAEBqwBU-3siVExTLnZlciI6IjIuMCIsIlRMUy5pZGVudGlmaWVyIjoieGlhb2p1biIsIlRMUy5zZGthcHBpZCI6MTQwMDAwMDAwMCwiVExTLmV4cGlyZSI6MTU1NTIwMDAsIlRMUy50aW1lIjoxNzAwMDAwMDAwLCJUTFMuc2lnIjoiTHZBN2QvSXc3Z1NzbnNrdlZ6QkRQT0NDRGJ1TkN3NEdId1RDMGJpcCtCND0ifa3HMfI_",
];
const B_SIGS: [&str; 4] = [
    "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkElNyM-Myi0uKEkvyi2BKilOyEwsKMlOACiygACqTWlGQWZQKEjczMTCACpZk5oKEDM0NoABmTGY6yAqLijJP-QjvYkeXVEt353JjN8sgkyjtwiT-oJDkJH3HMrOKqiTj1GDTIl8LW6VaAPODNJs_",
    "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwokpuZl5mcUlRYkl*UVQBcUp2YkFBZkpSlYWUAARL8nMTVWyMjQ3gAKIaGpFQWZRqpKVhZkJTKg4M13JSsmiosxTP8K72NEl1dLdudzYzTLIJEq7MMk-KCQ5Sd*xzKyiKsk4Ndi0yNfCVqkWAGSzMzs_",
    "eAEArQBS-3siVExTLnZlciI6IjIuMCIsIlRMUy5pZGVudGlmaWVyIjoiYWRtaW5pc3RyYXRvciIsIlRMUy5zZGthcHBpZCI6ODg4ODg4ODgsIlRMUy5leHBpcmUiOjg2NDAwLCJUTFMudGltZSI6MTcwMDAwMDAwMCwiVExTLnNpZyI6Ijh4dkkvWEtzQURlOUdDdzNGOVI0WitxYk9SVGNiL0F2Nnh6YjNlUzVyTTg9In0KAQAA--*nbjNF",
    "eAEBrABT-3siVExTLnZlciI6IjIuMCIsIlRMUy5pZGVudGlmaWVyIjoiYWRtaW5pc3RyYXRvciIsIlRMUy5zZGthcHBpZCI6ODg4ODg4ODgsIlRMUy5leHBpcmUiOjg2NDAwLCJUTFMudGltZSI6MTcwMDAwMDAwMCwiVExTLnNpZyI6Ijh4dkkvWEtzQURlOUdDdzNGOVI0WitxYk9SVGNiL0F2Nnh6YjNlUzVyTTg9In10KTM7",
];

/// The demo app every other test uses.
const SDKAPPID: u64 = 1_400_000_000;
const ADMIN: &str = "administrator";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn demo_usersig() -> String {
    let key = SecretKey::new(attrsync::emulator::DEMO_SECRET_KEY);
    usersig::sign(SDKAPPID, ADMIN, &key, now(), 3600)
}

async fn start(config: EmulatorConfig) -> RunningEmulator {
    Emulator::start(config, "127.0.0.1:0")
        .await
        .expect("emulator starts")
}

/// POSTs `body` to `command` with exactly the given query pairs and returns the JSON answer.
async fn post_raw(
    emulator: &RunningEmulator,
    command: &str,
    query: &[(&str, &str)],
    body: &str,
) -> Value {
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let url = format!(
        "{}/v4/timpush/{command}?{}",
        emulator.base_url(),
        query.join("&")
    );
    let answer = reqwest::Client::new()
        .post(url)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

/// POSTs with a correct query string for the demo app.
async fn post(emulator: &RunningEmulator, command: &str, body: &str) -> Value {
    let sdkappid = SDKAPPID.to_string();
    let sig = demo_usersig();
    post_raw(emulator, command, &query(&sdkappid, ADMIN, &sig), body).await
}

fn code(answer: &Value) -> u64 {
    answer["ErrorCode"].as_u64().unwrap()
}

/// A complete query string.
fn query<'a>(
    sdkappid: &'a str,
    identifier: &'a str,
    usersig: &'a str,
) -> [(&'static str, &'a str); 5] {
    [
        ("sdkappid", sdkappid),
        ("identifier", identifier),
        ("usersig", usersig),
        ("random", "1"),
        ("contenttype", "json"),
    ]
}

#[tokio::test]
async fn official_library_usersigs_are_accepted_at_their_time_and_tampered_ones_are_not() {
    let vectors = [
        (SDKAPPID, "xiaojun", K1, A_SIGS),
        (88_888_888, ADMIN, K2, B_SIGS),
    ];
    for (sdkappid, identifier, key, sigs) in vectors {
        let emulator = start(EmulatorConfig {
            sdkappid,
            secret_key: SecretKey::new(key),
            clock: Clock::Fixed(T),
            ..EmulatorConfig::default()
        })
        .await;
        let sdkappid = sdkappid.to_string();
        for sig in sigs {
            let answer = post_raw(
                &emulator,
                "get_attr_name",
                &query(&sdkappid, identifier, sig),
                "{}",
            )
            .await;
            assert_eq!(answer["ActionStatus"], "OK", "{sig}: {answer}");
            // Tampered: the tail (checksum and signature bytes) replaced.
            let tampered = format!("{}AAAAAAA_", &sig[..sig.len() - 8]);
            let answer = post_raw(
                &emulator,
                "get_attr_name",
                &query(&sdkappid, identifier, &tampered),
                "{}",
            )
            .await;
            assert!([70003, 70009].contains(&code(&answer)), "{answer}");
        }
        // A well-formed forgery: the official document with `TLS.time` moved by one second,
        // re-encoded. Only the HMAC can catch it.
        let mut forged = usersig::decode(sigs[0]).unwrap();
        forged.time += 1;
        let forged = usersig::encode(&forged, flate2::Compression::default());
        let answer = post_raw(
            &emulator,
            "get_attr_name",
            &query(&sdkappid, identifier, &forged),
            "{}",
        )
        .await;
        assert_eq!(code(&answer), 70009, "{answer}");
    }
}

#[tokio::test]
async fn official_usersigs_are_rejected_after_expiry_and_for_another_identifier() {
    let emulator = start(EmulatorConfig {
        secret_key: SecretKey::new(K1),
        clock: Clock::Fixed(T + 15_552_000 + 1),
        ..EmulatorConfig::default()
    })
    .await;
    let sdkappid = SDKAPPID.to_string();
    let expired = post_raw(
        &emulator,
        "get_attr_name",
        &query(&sdkappid, "xiaojun", A_SIGS[0]),
        "{}",
    )
    .await;
    assert_eq!(code(&expired), 70001);
    let other = post_raw(
        &emulator,
        "get_attr_name",
        &query(&sdkappid, "admin", A_SIGS[0]),
        "{}",
    )
    .await;
    assert_eq!(code(&other), 70013);
    let wrong_app = post_raw(
        &emulator,
        "get_attr_name",
        &query("88888888", "xiaojun", A_SIGS[0]),
        "{}",
    )
    .await;
    assert_eq!(code(&wrong_app), 70014);
}

#[tokio::test]
async fn each_missing_query_parameter_is_60002() {
    let emulator = start(EmulatorConfig::default()).await;
    let sdkappid = SDKAPPID.to_string();
    let sig = demo_usersig();
    let full = query(&sdkappid, ADMIN, &sig);
    assert_eq!(
        code(&post_raw(&emulator, "get_attr_name", &full, "{}").await),
        0
    );
    for missing in 0..full.len() {
        let mut query = full.to_vec();
        let (name, _) = query.remove(missing);
        let answer = post_raw(&emulator, "get_attr_name", &query, "{}").await;
        assert_eq!(code(&answer), 60002, "without {name}: {answer}");
        assert_eq!(answer["ActionStatus"], "FAIL");
    }
    let mut not_json = full.to_vec();
    not_json[4] = ("contenttype", "xml");
    assert_eq!(
        code(&post_raw(&emulator, "get_attr_name", &not_json, "{}").await),
        60002
    );
}

#[tokio::test]
async fn bodies_are_checked_as_documented() {
    let emulator = start(EmulatorConfig {
        attributes: vec!["sex".into()],
        ..EmulatorConfig::default()
    })
    .await;
    assert_eq!(code(&post(&emulator, "set_attr", "not json").await), 90001);
    assert_eq!(
        code(&post(&emulator, "get_attr_name", "").await),
        90001,
        "the body must not be empty"
    );
    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"To_Account": format!("u{i}"), "Attrs": {"sex": "x"}}))
        .collect();
    let body = json!({ "UserAttrs": too_many }).to_string();
    assert_eq!(code(&post(&emulator, "set_attr", &body).await), 90018);
    let accounts: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let body = json!({ "To_Account": accounts }).to_string();
    assert_eq!(code(&post(&emulator, "get_attr", &body).await), 90018);
    let body = json!({"UserAttrs": [{"To_Account": "Mary", "Attrs": {"mood": "ok"}}]}).to_string();
    assert_eq!(code(&post(&emulator, "set_attr", &body).await), 90033);
    let body = json!({"AttrNames": {"10": "eleventh"}}).to_string();
    assert_eq!(code(&post(&emulator, "set_attr_name", &body).await), 90033);
    let body = json!({"AttrNames": {"3": "sex"}}).to_string();
    assert_eq!(
        code(&post(&emulator, "set_attr_name", &body).await),
        90033,
        "one slot per name"
    );
    assert_eq!(code(&post(&emulator, "no_such_api", "{}").await), 60009);
    assert!(emulator.state().users.is_empty());
}

#[tokio::test]
async fn the_documented_sample_bodies_work() {
    let emulator = start(EmulatorConfig::default()).await;
    let names =
        r#"{"AttrNames":{"0":"sex","1":"city","2":"country"},"AttrTypes":{"0":0,"1":0,"2":1}}"#;
    assert_eq!(code(&post(&emulator, "set_attr_name", names).await), 0);
    let read = post(&emulator, "get_attr_name", "{}").await;
    assert_eq!(
        read["AttrNames"],
        json!({"0": "sex", "1": "city", "2": "country"})
    );
    assert_eq!(read["AttrTypes"], json!({"0": 0, "1": 0, "2": 1}));
    let set = r#"{"UserAttrs":[{"To_Account":"Mary","Attrs":{"sex":"female","city":"NewYork"}},
                              {"To_Account":"xiaoming","Attrs":{"sex":"male","city":"ShenZhen"}}]}"#;
    let answer = post(&emulator, "set_attr", set).await;
    assert_eq!(
        answer,
        json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""})
    );
    let remove = r#"{"UserAttrs":[{"To_Account":"Mary","Attrs":["sex","city"]}]}"#;
    assert_eq!(code(&post(&emulator, "remove_attr", remove).await), 0);
    let read = post(
        &emulator,
        "get_attr",
        r#"{"To_Account":["Mary","xiaoming"]}"#,
    )
    .await;
    assert_eq!(
        read["UserAttrs"],
        json!([{"To_Account": "Mary", "Attrs": {}},
               {"To_Account": "xiaoming", "Attrs": {"city": "ShenZhen", "sex": "male"}}])
    );
}

#[tokio::test]
async fn the_state_endpoint_reports_users_counts_and_log() {
    let emulator = start(EmulatorConfig {
        attributes: vec!["sex".into()],
        ..EmulatorConfig::default()
    })
    .await;
    post(
        &emulator,
        "set_attr",
        r#"{"UserAttrs":[{"To_Account":"Mary","Attrs":{"sex":"female"}}]}"#,
    )
    .await;
    post(&emulator, "set_attr", "oops").await;
    let url = format!("{}/_emulator/state", emulator.base_url());
    let raw: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(raw["users"], json!({"Mary": {"sex": "female"}}));
    assert_eq!(raw["attr_names"], json!({"0": "sex"}));
    assert_eq!(raw["calls"]["set_attr"]["total"], 2);
    assert_eq!(raw["calls"]["set_attr"]["ok"], 1);
    assert_eq!(raw["calls"]["set_attr"]["failed"], 1);
    assert_eq!(raw["log"][0]["accounts"], 1);
    assert_eq!(raw["log"][1]["code"], 90001);
    let typed: StateReport = serde_json::from_value(raw).unwrap();
    assert_eq!(typed, emulator.state());
}

#[tokio::test]
async fn data_survives_a_restart_with_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmulatorConfig {
        attributes: vec!["sex".into()],
        data_dir: Some(dir.path().join("emulator")),
        ..EmulatorConfig::default()
    };
    let first = start(config.clone()).await;
    post(&first, "set_attr_name", r#"{"AttrNames":{"1":"city"}}"#).await;
    post(
        &first,
        "set_attr",
        r#"{"UserAttrs":[{"To_Account":"Mary","Attrs":{"sex":"female","city":"Oslo"}}]}"#,
    )
    .await;
    first.shutdown().await;

    let second = start(config).await;
    let state = second.state();
    assert_eq!(state.users["Mary"]["city"], "Oslo");
    assert_eq!(
        state.attr_names.values().collect::<Vec<_>>(),
        ["sex", "city"]
    );
    let read = post(&second, "get_attr", r#"{"To_Account":["Mary"]}"#).await;
    assert_eq!(read["UserAttrs"][0]["Attrs"]["sex"], "female");
}

#[tokio::test]
async fn fault_injection_repeats_with_the_same_seed() {
    async fn faults(seed: u64) -> Vec<Option<String>> {
        let emulator = start(EmulatorConfig {
            fail_rate: 0.5,
            fail_mode: FailMode::Mixed,
            seed,
            ..EmulatorConfig::default()
        })
        .await;
        for _ in 0..30 {
            // Dropped connections and 502s are expected here; only the log matters.
            let url = format!("{}/v4/timpush/get_attr_name", emulator.base_url());
            let _ = reqwest::Client::new().post(url).body("{}").send().await;
        }
        emulator
            .state()
            .log
            .into_iter()
            .map(|call| call.fault)
            .collect()
    }
    let first = faults(7).await;
    assert_eq!(first, faults(7).await);
    assert_ne!(first, faults(8).await);
    for kind in ["91000", "502", "drop"] {
        assert!(
            first.iter().any(|fault| fault.as_deref() == Some(kind)),
            "{kind} in {first:?}"
        );
    }
    assert!(first.iter().any(Option::is_none));
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let emulator = start(EmulatorConfig {
        latency: Duration::from_millis(150),
        ..EmulatorConfig::default()
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(code(&post(&emulator, "get_attr_name", "{}").await), 0);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn the_command_prints_its_address_first_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_attrsync"))
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--attributes",
            "sex,city",
        ])
        .env_remove("TIM_SECRET_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let addr: std::net::SocketAddr = first_line
        .trim()
        .parse()
        .expect("first line is the address");
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state: Value = runtime.block_on(async {
        reqwest::get(format!("http://{addr}/_emulator/state"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(state["attr_names"], json!({"0": "sex", "1": "city"}));
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("TIM_SECRET_KEY is not set"), "{stderr}");
}
