//! The client-side rate limiter: never more than `rate` calls start in any one-second window.
//!
//! Two mechanisms work together:
//!
//! 1. **Evenly spaced slots.** Each caller reserves the next slot, `spacing` after the previous
//!    one (a token bucket of depth one), and sleeps until it. Slots are absolute instants, so a
//!    late timer wake-up does not push later slots back and the sustained rate stays at
//!    `rate / (1 s + JITTER_ALLOWANCE)` — 98/s at 100/s.
//! 2. **A sliding log of the last `rate` actual start times.** Timers wake up late, and a late
//!    start followed by an on-time one squeezes two starts closer than `spacing`. Before a call
//!    starts, the log is checked under the lock; if `rate` calls already started within the
//!    window, the caller waits for the oldest to leave it. This is what makes the guarantee hold
//!    on actual start times, not just on planned ones.
//!
//! The window is one second plus [`JITTER_ALLOWANCE`], because the server counts arrivals, not
//! our start times: the allowance absorbs differences in network and scheduling delay between
//! two requests 100 calls apart, so a fault-free run at the documented limit is never throttled.
//!
//! Time is tokio time, so tests can run with paused time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The server's documented limit: calls per second, per API.
pub const MAX_RATE: u32 = 100;

/// Extra width of the limiter's window beyond one second (see the module docs).
pub const JITTER_ALLOWANCE: Duration = Duration::from_millis(20);

/// A limiter shared by every call of one client.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    window: Duration,
    spacing: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The earliest instant the next reserved slot may have.
    next_slot: Instant,
    /// Start times of the last `rate` calls, oldest first.
    recent_starts: VecDeque<Instant>,
}

impl RateLimiter {
    /// A limiter allowing `rate` calls per second (clamped to `1..=MAX_RATE`).
    pub fn new(rate: u32) -> Self {
        let rate = rate.clamp(1, MAX_RATE);
        let window = Duration::from_secs(1) + JITTER_ALLOWANCE;
        Self {
            rate,
            window,
            spacing: window / rate,
            state: Mutex::new(State {
                next_slot: Instant::now(),
                recent_starts: VecDeque::with_capacity(rate as usize + 1),
            }),
        }
    }

    /// Calls per second this limiter allows.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Waits until one more call may start, and counts it as started.
    ///
    /// Cancel-safe in the conservative direction: a caller dropped while waiting forfeits its
    /// slot, which lowers the rate briefly but never raises it.
    pub async fn acquire(&self) {
        let slot = {
            let mut state = self.lock();
            let slot = state.next_slot.max(Instant::now());
            state.next_slot = slot + self.spacing;
            slot
        };
        if slot > Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
        loop {
            let wait_until = {
                let mut state = self.lock();
                let now = Instant::now();
                match state.recent_starts.front() {
                    Some(&oldest)
                        if state.recent_starts.len() >= self.rate as usize
                            && now < oldest + self.window =>
                    {
                        oldest + self.window
                    }
                    _ => {
                        state.recent_starts.push_back(now);
                        while state.recent_starts.len() > self.rate as usize {
                            state.recent_starts.pop_front();
                        }
                        return;
                    }
                }
            };
            tokio::time::sleep_until(wait_until).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one assignment.
        crate::sync::lock(&self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_sliding_log_holds_when_slots_are_skipped() {
        let limiter = RateLimiter::new(5);
        let first = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // Pretend the slot schedule was lost (as after a long stall): only the log can stop a
        // sixth start inside the window of the first five.
        limiter.lock().next_slot = Instant::now();
        limiter.acquire().await;
        assert!(
            Instant::now() >= first + limiter.window,
            "{:?}",
            Instant::now() - first
        );
    }

    #[test]
    fn rate_is_clamped_to_the_documented_range() {
        assert_eq!(RateLimiter::new(0).rate(), 1);
        assert_eq!(RateLimiter::new(500).rate(), MAX_RATE);
    }
}
