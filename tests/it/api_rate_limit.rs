//! The client's rate limiter in real time against the emulator's own limit: a burst never
//! exceeds the rate in any second, and a fault-free run at the documented limit is never
//! throttled while sustaining at least 95 % of it.

use attrsync::api::{Client, ClientConfig, SecretKey};
use attrsync::emulator::{Emulator, EmulatorConfig, RunningEmulator, DEMO_SECRET_KEY};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Sends `calls` get_attr_name calls with at most `in_flight` at a time; returns the elapsed
/// time and how many failed.
async fn drive(client: &Client, calls: usize, in_flight: usize) -> (Duration, usize) {
    let permits = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..calls {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let client = client.clone();
        tasks.spawn(async move {
            let result = client.get_attr_name().await;
            drop(permit);
            result
        });
    }
    let failures = tasks
        .join_all()
        .await
        .into_iter()
        .filter(Result::is_err)
        .count();
    (started.elapsed(), failures)
}

/// The largest number of calls the emulator saw arrive within any 1000 ms.
fn busiest_second(emulator: &RunningEmulator) -> usize {
    let arrivals: Vec<u64> = emulator.state().log.iter().map(|call| call.at_ms).collect();
    arrivals
        .iter()
        .enumerate()
        .map(|(i, &from)| {
            arrivals[i..]
                .iter()
                .take_while(|&&at| at < from + 1000)
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn setup(rate: u32, latency: Duration) -> (RunningEmulator, Client) {
    let emulator = Emulator::start(
        EmulatorConfig {
            rate_limit: rate,
            latency,
            ..EmulatorConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let client = Client::new(ClientConfig {
        rate_limit: rate,
        ..ClientConfig::new(
            emulator.base_url(),
            1_400_000_000,
            "administrator",
            SecretKey::new(DEMO_SECRET_KEY),
        )
    })
    .unwrap();
    (emulator, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbounded_burst_never_exceeds_the_rate_in_any_second() {
    let rate = 40;
    let calls = 130;
    let (emulator, client) = setup(rate, Duration::ZERO).await;
    let (elapsed, failures) = drive(&client, calls, calls).await;
    assert_eq!(failures, 0);
    assert_eq!(emulator.state().calls["get_attr_name"].throttled, 0);
    assert!(
        busiest_second(&emulator) <= rate as usize,
        "{}",
        busiest_second(&emulator)
    );
    let minimum = Duration::from_secs_f64((calls - 1) as f64 / f64::from(rate));
    assert!(
        elapsed >= minimum,
        "{calls} calls in {elapsed:?} < {minimum:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_the_documented_limit_never_draw_a_60007() {
    let calls = 300;
    let (emulator, client) = setup(100, Duration::from_millis(30)).await;
    let (elapsed, failures) = drive(&client, calls, 8).await;
    let per_second = (calls - 1) as f64 / elapsed.as_secs_f64();
    assert_eq!(failures, 0);
    assert_eq!(emulator.state().calls["get_attr_name"].throttled, 0);
    // Throughput (≥ 95 calls/s) is a benchmark (benches/apply.sh), not a timed test; the
    // ceiling is correctness.
    assert!(per_second <= 100.0, "{per_second:.1} calls/s");
}
