//! The one retry policy for every storage and queue call, on every backend.
//!
//! Clouds fail in passing: DynamoDB throttles, cancels transactions that
//! collide, answers 500, and sometimes loses the response to a write that
//! did happen; SQLite is busy while another writer holds the file. Each
//! adapter says which of its failures are worth another attempt (the tables
//! in [`aws`] and [`sqlite`], written as data and tested row by row), and
//! hands the attempts to [`run`]. The loop waits with capped exponential
//! backoff and full jitter (the Amazon Builders' Library's "Timeouts,
//! retries, and backoff with jitter"), and stops when the next attempt could
//! not finish before the deadline of the work it serves: an HTTP request's
//! budget, or the fan-out invocation's deadline, set with [`within`].
//!
//! Only this layer retries. The AWS SDK's own retries are switched off
//! ([`aws::sdk_retry_config`]), so a throttled call is never retried at two
//! layers at once, and a write whose outcome is unknown is retried by code
//! that knows how to make the retry harmless (see the DynamoDB store).
//!
//! Giving up is [`crate::store::StoreError::Unavailable`] (or the queue's
//! equivalent), which clients see as 503 `unavailable` with `Retry-After`.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use crate::metrics;
use std::future::Future;
use std::time::{Duration, Instant};

/// Whether a failed attempt is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Throttling, a conflict, a server error, a timeout, a lost
    /// connection: the same request may well succeed in a moment.
    Transient,
    /// The request itself is wrong, or the data says no: repeating it
    /// gives the same answer.
    Permanent,
}

/// One failed attempt, classified.
#[derive(Debug)]
pub struct Failed<E> {
    pub class: Class,
    pub error: E,
}

impl<E> Failed<E> {
    pub fn transient(error: E) -> Self {
        Failed {
            class: Class::Transient,
            error,
        }
    }

    pub fn permanent(error: E) -> Self {
        Failed {
            class: Class::Permanent,
            error,
        }
    }
}

/// How the attempts ended, when they did not succeed.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// A permanent failure: returned at once.
    Permanent(E),
    /// Transient failures until the deadline left no room for another try.
    Exhausted { last: E, attempts: u32 },
}

/// Capped exponential backoff with full jitter: the wait before retry `n`
/// is uniform in `[0, min(cap, base * 2^n)]`, so writers that collided
/// spread out instead of colliding again in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

/// The backoff every storage and queue call uses.
pub const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(25),
    cap: Duration::from_secs(1),
};

/// How long an HTTP request may spend retrying storage when nothing else
/// says: well inside the functions' 10 s timeout and API Gateway's 30 s,
/// leaving room for the work around the retries.
pub const REQUEST_BUDGET: Duration = Duration::from_secs(6);

/// Longest a single attempt may take before it counts as timed out.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

impl Backoff {
    /// The ceiling of the wait before retry number `retry` (0-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let grown = self.base.saturating_mul(1u32 << retry.min(16));
        grown.min(self.cap)
    }

    /// A wait drawn uniformly from `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry).as_micros() as u64;
        let draw = u64::from_le_bytes(crate::crypto::random_bytes::<8>());
        Duration::from_micros(draw % (ceiling + 1))
    }
}

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with every storage and queue retry inside it bounded by
/// `deadline`. Tasks spawned inside do not inherit it: wrap them too.
pub async fn within<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// The deadline of the work in progress, if one was set.
pub fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Runs `attempt` until it succeeds, fails permanently, or the deadline
/// (the enclosing [`within`], else [`REQUEST_BUDGET`] from now) leaves no
/// room for another try. `attempt` receives the 0-based attempt number.
///
/// Each attempt is also cut off at [`ATTEMPT_TIMEOUT`] or the deadline,
/// whichever comes first; a cut-off attempt counts as transient with the
/// error `on_timeout` makes. A cut-off write may still have happened:
/// callers whose writes are not naturally idempotent make them so (see the
/// DynamoDB store's client request tokens).
pub async fn run<T, E, Fut>(
    mut attempt: impl FnMut(u32) -> Fut,
    on_timeout: impl Fn() -> E,
) -> Result<T, GaveUp<E>>
where
    Fut: Future<Output = Result<T, Failed<E>>>,
{
    let deadline = deadline().unwrap_or_else(|| Instant::now() + REQUEST_BUDGET);
    let mut number = 0u32;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), attempt(number)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failed::transient(on_timeout())),
        };
        let failed = match outcome {
            Ok(value) => return Ok(value),
            Err(failed) => failed,
        };
        if failed.class == Class::Permanent {
            return Err(GaveUp::Permanent(failed.error));
        }
        let wait = BACKOFF.delay(number);
        number += 1;
        // Another attempt needs the wait plus a little time to run.
        if Instant::now() + wait + MIN_ATTEMPT >= deadline {
            metrics::storage_unavailable();
            return Err(GaveUp::Exhausted {
                last: failed.error,
                attempts: number,
            });
        }
        metrics::storage_retry(metrics::Retry::Repeat);
        tokio::time::sleep(wait).await;
    }
}

/// Waits before the next round of a loop that is not a plain repeat (a
/// race lost to another writer, which must re-read before trying again).
/// Returns false, without waiting, when the deadline leaves no room.
pub async fn pause(retry: u32) -> bool {
    let deadline = deadline().unwrap_or_else(|| Instant::now() + REQUEST_BUDGET);
    let wait = BACKOFF.delay(retry);
    if retry >= MAX_ROUNDS || Instant::now() + wait + MIN_ATTEMPT >= deadline {
        metrics::storage_unavailable();
        return false;
    }
    metrics::storage_retry(metrics::Retry::Reread);
    tokio::time::sleep(wait).await;
    true
}

/// Whether less than `margin` is left before the deadline (never, when no
/// deadline is set): long-running loops stop starting new work then.
pub fn deadline_within(margin: Duration) -> bool {
    deadline().is_some_and(|d| Instant::now() + margin >= d)
}

/// A loop of [`pause`]s gives up after this many rounds even with time
/// left: many lost races in a row mean something other than contention.
const MAX_ROUNDS: u32 = 64;

/// Less time than this left is not worth starting an attempt in.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn the_backoff_ceiling_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
        };
        let ceilings: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(100));
        for n in 0..50 {
            assert!(b.delay(n % 7) <= b.ceiling(n % 7));
        }
    }

    #[test]
    fn full_jitter_spreads_waits_over_the_whole_range() {
        let waits: Vec<Duration> = (0..200).map(|_| BACKOFF.delay(10)).collect();
        let low = waits.iter().filter(|w| **w < BACKOFF.cap / 4).count();
        let high = waits.iter().filter(|w| **w > BACKOFF.cap * 3 / 4).count();
        assert!(low > 10 && high > 10, "{low} low, {high} high of 200");
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result: Result<u32, GaveUp<&str>> = run(
            |n| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Err(Failed::transient("busy"))
                    } else {
                        Ok(n)
                    }
                }
            },
            || "timeout",
        )
        .await;
        assert_eq!(result, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn retries_and_give_ups_are_counted() {
        let recorder = crate::metrics::emf::EmfRecorder::new("s", "f");
        let _local = ::metrics::set_default_local_recorder(&recorder);
        let _: Result<u32, GaveUp<&str>> = run(
            |n| async move {
                if n < 2 {
                    Err(Failed::transient("busy"))
                } else {
                    Ok(n)
                }
            },
            || "timeout",
        )
        .await;
        assert!(pause(0).await);
        assert!(!pause(MAX_ROUNDS).await);
        let lines = recorder.handle().take_lines(0);
        let total = |name: &str| -> u64 {
            lines
                .iter()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter_map(|d| d.get(name).and_then(|v| v.as_u64()))
                .sum()
        };
        // Two repeats and one reread; one give-up.
        assert_eq!(total("StorageRetries"), 3, "{lines:?}");
        assert_eq!(total("StorageUnavailable"), 1, "{lines:?}");
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), GaveUp<&str>> = run(
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(Failed::permanent("bad request")) }
            },
            || "timeout",
        )
        .await;
        assert_eq!(result, Err(GaveUp::Permanent("bad request")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retries_stop_at_the_deadline() {
        let started = Instant::now();
        let result: Result<(), GaveUp<&str>> = within(
            started + Duration::from_millis(300),
            run(
                |_| async { Err(Failed::transient("throttled")) },
                || "timeout",
            ),
        )
        .await;
        match result {
            Err(GaveUp::Exhausted { last, attempts }) => {
                assert_eq!(last, "throttled");
                assert!(attempts >= 2, "{attempts} attempts");
            }
            other => panic!("expected exhaustion, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_millis(300));
    }

    #[tokio::test]
    async fn an_attempt_that_hangs_is_cut_off_at_the_deadline() {
        let started = Instant::now();
        let result: Result<(), GaveUp<&str>> = within(
            started + Duration::from_millis(200),
            run(
                |_| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(())
                },
                || "timed out",
            ),
        )
        .await;
        assert!(matches!(
            result,
            Err(GaveUp::Exhausted {
                last: "timed out",
                ..
            })
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
