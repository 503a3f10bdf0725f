//! The client's rate limiter on tokio's paused clock: spacing, the per-second cap, throughput.

use attrsync::api::RateLimiter;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Starts `calls` acquisitions at once from separate tasks and returns their start times, sorted.
async fn burst(limiter: Arc<RateLimiter>, calls: usize) -> Vec<Instant> {
    let mut tasks = JoinSet::new();
    for _ in 0..calls {
        let limiter = Arc::clone(&limiter);
        tasks.spawn(async move {
            limiter.acquire().await;
            Instant::now()
        });
    }
    let mut starts = tasks.join_all().await;
    starts.sort();
    starts
}

/// The largest number of starts inside any half-open one-second window.
fn busiest_second(starts: &[Instant]) -> usize {
    starts
        .iter()
        .enumerate()
        .map(|(i, &from)| {
            starts[i..]
                .iter()
                .take_while(|&&at| at < from + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn n_calls_take_at_least_n_minus_one_over_rate_seconds() {
    for rate in [1, 7, 50, 100] {
        let calls = 3 * rate as usize + 1;
        let started = Instant::now();
        let starts = burst(Arc::new(RateLimiter::new(rate)), calls).await;
        let elapsed = *starts.last().unwrap() - started;
        let minimum = Duration::from_secs_f64((calls - 1) as f64 / f64::from(rate));
        assert!(
            elapsed >= minimum,
            "rate {rate}: {calls} calls took {elapsed:?} < {minimum:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_never_exceeds_the_rate_in_any_second() {
    for rate in [1, 3, 10, 100] {
        let starts = burst(Arc::new(RateLimiter::new(rate)), 5 * rate as usize).await;
        assert!(busiest_second(&starts) <= rate as usize, "rate {rate}");
    }
}

#[tokio::test(start_paused = true)]
async fn sustained_throughput_is_at_least_95_percent_of_the_rate() {
    let rate = 100;
    let calls = 1000;
    let started = Instant::now();
    let starts = burst(Arc::new(RateLimiter::new(rate)), calls).await;
    let elapsed = (*starts.last().unwrap() - started).as_secs_f64();
    let per_second = (calls - 1) as f64 / elapsed;
    assert!(per_second >= 95.0, "{per_second:.1} calls/s");
    assert!(per_second <= 100.0, "{per_second:.1} calls/s");
}

#[tokio::test(start_paused = true)]
async fn an_idle_limiter_does_not_save_up_a_burst() {
    let limiter = Arc::new(RateLimiter::new(10));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let starts = burst(limiter, 3).await;
    // Evenly spaced even after a long pause: no accumulated tokens.
    assert!(starts[1] - starts[0] >= Duration::from_millis(100));
    assert!(starts[2] - starts[1] >= Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn two_concurrent_bursts_share_one_limit() {
    let limiter = Arc::new(RateLimiter::new(20));
    let (a, b) = tokio::join!(
        burst(Arc::clone(&limiter), 40),
        burst(Arc::clone(&limiter), 40)
    );
    let mut all: Vec<Instant> = a.into_iter().chain(b).collect();
    all.sort();
    assert!(busiest_second(&all) <= 20);
}
