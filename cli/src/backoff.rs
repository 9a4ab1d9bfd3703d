//! The short-poll schedule from `docs/api.md`, as a pure state machine.
//!
//! Start at 3 s. After an empty poll (204), wait the delay, then add 3 s, up to
//! 30 s (3, 6, 9, … 30, 30, …). After messages, reset to 3 s (or poll again at
//! once when the page was full). On 429, and on a 503 that carries one, wait
//! `Retry-After` without touching the delay. Network errors and other 5xx
//! back off like an empty poll.
//!
//! Jitter: every interval of that schedule is multiplied by a random factor
//! in [0.9, 1.1] ([`jittered`]), so a fleet that restarts together does not
//! poll in lockstep. A `Retry-After` is a floor: the wait is that long plus
//! up to 10 % more, never less.
//!
//! Nothing here sleeps or reads a clock, so the schedule is tested directly;
//! the jitter draw is passed in ([`Backoff::next_wait`]).

use std::time::Duration;

/// The smallest and largest factor [`jittered`] multiplies an interval by.
pub const JITTER_MIN: f64 = 0.9;
pub const JITTER_MAX: f64 = 1.1;

/// `base` multiplied by a factor in [0.9, 1.1]; `unit` (clamped to [0, 1])
/// is a uniform draw that picks the factor linearly.
pub fn jittered(base: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    base.mul_f64(JITTER_MIN + (JITTER_MAX - JITTER_MIN) * unit)
}

/// A uniform draw from [0, 1) from the OS random source. `rand` is not a
/// dependency of the CLI, so this uses `pigeonhole::crypto::random_bytes`
/// (which the shared crate already has for keys and nonces).
pub fn jitter_unit() -> f64 {
    let bytes = pigeonhole::crypto::random_bytes::<8>();
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// What the last poll came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    /// 204: nothing new.
    Empty,
    /// 200: the messages were handled. `full_page` when the page held `limit`
    /// messages, so more may be waiting.
    Messages { full_page: bool },
    /// 429 `rate_limited`, or 503 `unavailable`, with its `Retry-After`.
    RetryAfter { wait: Duration },
    /// A network error, or a 5xx without `Retry-After`.
    Failed,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    max: Duration,
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    /// The first delay, and what every empty poll adds.
    pub const STEP: Duration = Duration::from_secs(3);
    /// The schedule never waits longer than this (10 steps).
    pub const MAX: Duration = Duration::from_secs(30);

    /// The documented schedule: 3 s steps up to 30 s.
    pub fn new() -> Backoff {
        Backoff {
            step: Backoff::STEP,
            max: Backoff::MAX,
            delay: Backoff::STEP,
        }
    }

    /// The same shape (step, 2×step, … 10×step) with another step; the
    /// hidden `--interval-base-ms` flag uses it to make tests fast.
    pub fn with_step(step: Duration) -> Backoff {
        let step = step.max(Duration::from_millis(1));
        Backoff {
            step,
            max: step * 10,
            delay: step,
        }
    }

    /// The delay the next empty poll will wait.
    pub fn current(&self) -> Duration {
        self.delay
    }

    /// Feeds one poll's outcome in and returns how long to wait before the
    /// next poll.
    pub fn next_delay(&mut self, outcome: PollOutcome) -> Duration {
        match outcome {
            PollOutcome::Empty | PollOutcome::Failed => {
                let wait = self.delay;
                self.delay = (self.delay + self.step).min(self.max);
                wait
            }
            PollOutcome::Messages { full_page } => {
                self.delay = self.step;
                if full_page {
                    Duration::ZERO
                } else {
                    self.delay
                }
            }
            PollOutcome::RetryAfter { wait } => wait,
        }
    }

    /// What the poll loops wait: [`Backoff::next_delay`] with jitter. With
    /// `unit` a uniform draw from [0, 1), an interval of the schedule is
    /// multiplied by a factor in [0.9, 1.1]; a `Retry-After` is a floor, so
    /// it becomes that wait times [1.0, 1.1]; "poll again at once" stays 0.
    pub fn next_wait(&mut self, outcome: PollOutcome, unit: f64) -> Duration {
        let base = self.next_delay(outcome);
        match outcome {
            PollOutcome::RetryAfter { .. } => jittered(base, 0.5 + unit.clamp(0.0, 1.0) / 2.0),
            _ => jittered(base, unit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> u64 {
        d.as_secs()
    }

    #[test]
    fn empty_polls_climb_by_three_seconds_to_thirty() {
        let mut b = Backoff::new();
        assert_eq!(b.current(), Duration::from_secs(3));
        let waits: Vec<u64> = (0..13)
            .map(|_| secs(b.next_delay(PollOutcome::Empty)))
            .collect();
        assert_eq!(waits, [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 30, 30, 30]);
        assert_eq!(b.current(), Backoff::MAX);
    }

    #[test]
    fn messages_reset_to_three_seconds() {
        let mut b = Backoff::new();
        for _ in 0..7 {
            b.next_delay(PollOutcome::Empty);
        }
        assert_eq!(secs(b.current()), 24);
        let wait = b.next_delay(PollOutcome::Messages { full_page: false });
        assert_eq!(secs(wait), 3);
        let waits: Vec<u64> = (0..3)
            .map(|_| secs(b.next_delay(PollOutcome::Empty)))
            .collect();
        assert_eq!(waits, [3, 6, 9]);
    }

    #[test]
    fn a_full_page_polls_again_at_once_and_still_resets() {
        let mut b = Backoff::new();
        for _ in 0..20 {
            b.next_delay(PollOutcome::Empty);
        }
        assert_eq!(
            b.next_delay(PollOutcome::Messages { full_page: true }),
            Duration::ZERO
        );
        assert_eq!(secs(b.next_delay(PollOutcome::Empty)), 3);
    }

    #[test]
    fn failures_back_off_like_empty_polls() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = [PollOutcome::Failed, PollOutcome::Empty, PollOutcome::Failed]
            .into_iter()
            .map(|o| secs(b.next_delay(o)))
            .collect();
        assert_eq!(waits, [3, 6, 9]);
        for _ in 0..20 {
            b.next_delay(PollOutcome::Failed);
        }
        assert_eq!(secs(b.next_delay(PollOutcome::Failed)), 30);
    }

    #[test]
    fn retry_after_is_waited_and_keeps_the_delay() {
        let mut b = Backoff::new();
        b.next_delay(PollOutcome::Empty);
        b.next_delay(PollOutcome::Empty);
        assert_eq!(secs(b.current()), 9);
        let wait = Duration::from_secs(42);
        assert_eq!(b.next_delay(PollOutcome::RetryAfter { wait }), wait);
        assert_eq!(secs(b.current()), 9);
        assert_eq!(secs(b.next_delay(PollOutcome::Empty)), 9);
    }

    #[test]
    fn jittered_intervals_stay_within_ten_percent_and_differ() {
        // Step n of the schedule (3 s · n, up to 30 s), over many draws.
        for n in 1..=12u32 {
            let base = Backoff::STEP * n.min(10);
            let lo = base.mul_f64(JITTER_MIN);
            let hi = base.mul_f64(JITTER_MAX);
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..500 {
                let mut b = Backoff::new();
                for _ in 1..n {
                    b.next_wait(PollOutcome::Empty, jitter_unit());
                }
                let wait = b.next_wait(PollOutcome::Empty, jitter_unit());
                assert!(lo <= wait && wait <= hi, "step {n}: {wait:?}");
                seen.insert(wait);
            }
            assert!(seen.len() > 100, "step {n}: draws differ ({})", seen.len());
        }
        // The ends of the draw are the ends of the range.
        let base = Duration::from_secs(30);
        assert_eq!(jittered(base, 0.0), Duration::from_secs(27));
        assert_eq!(jittered(base, 1.0), Duration::from_secs(33));
        assert_eq!(jittered(base, 7.0), Duration::from_secs(33));
        assert_eq!(jittered(base, -1.0), Duration::from_secs(27));
        // Jitter does not change the schedule underneath.
        let mut b = Backoff::new();
        b.next_wait(PollOutcome::Empty, 0.0);
        assert_eq!(secs(b.current()), 6);
        b.next_wait(PollOutcome::Messages { full_page: false }, 1.0);
        assert_eq!(secs(b.current()), 3);
    }

    #[test]
    fn retry_after_is_a_floor_under_jitter() {
        let wait = Duration::from_secs(20);
        for _ in 0..500 {
            let mut b = Backoff::new();
            let got = b.next_wait(PollOutcome::RetryAfter { wait }, jitter_unit());
            assert!(wait <= got && got <= wait.mul_f64(JITTER_MAX), "{got:?}");
        }
        let mut b = Backoff::new();
        assert_eq!(b.next_wait(PollOutcome::RetryAfter { wait }, 0.0), wait);
        // Poll again at once stays at once.
        assert_eq!(
            b.next_wait(PollOutcome::Messages { full_page: true }, 1.0),
            Duration::ZERO
        );
    }

    #[test]
    fn a_scaled_schedule_keeps_its_shape() {
        let mut b = Backoff::with_step(Duration::from_millis(100));
        let waits: Vec<u128> = (0..12)
            .map(|_| b.next_delay(PollOutcome::Empty).as_millis())
            .collect();
        assert_eq!(
            waits,
            [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1000, 1000]
        );
        assert_eq!(
            b.next_delay(PollOutcome::Messages { full_page: false })
                .as_millis(),
            100
        );
    }
}
