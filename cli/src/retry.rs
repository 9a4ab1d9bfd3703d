//! Retrying a request that is safe to repeat: `send` (the same body, so the
//! same nonce) and `publish` (the same body under the same `Idempotency-Key`).
//!
//! Network errors, 5xx and 429 are retried a bounded number of times. The
//! wait is the server's `Retry-After` when it sent one (429, 503
//! `unavailable`), else a capped exponential backoff (1, 2, 4, 8, 10, 10 … s)
//! with jitter, so that many clients cut off by the same outage do not all
//! come back in the same instant.

use std::future::Future;
use std::time::Duration;

use crate::api::ApiError;
use crate::backoff::jitter_unit;

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first backoff; it doubles with every retry, up to `max_backoff`.
    pub base: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured. A server that asks for more ends
    /// the retries: the error (which shows the Retry-After) is returned.
    pub max_retry_after: Duration,
    /// Retry only errors that carry a `Retry-After` (429, 503 `unavailable`):
    /// the server said the request will work later and when. Network errors
    /// and other 5xx are returned at once.
    pub only_when_asked: bool,
}

impl Retry {
    /// `retries` retries with the default schedule.
    pub fn new(retries: u32) -> Retry {
        Retry {
            retries,
            base: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            only_when_asked: false,
        }
    }

    /// The same, retrying only errors that carry a `Retry-After`.
    pub fn only_when_asked(self) -> Retry {
        Retry {
            only_when_asked: true,
            ..self
        }
    }

    /// The backoff before retry `attempt` (1-based), before jitter:
    /// base, 2·base, 4·base … at most `max_backoff`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        (self.base * (1u32 << doublings)).min(self.max_backoff)
    }

    /// The wait before retry `attempt` after `err`, with `unit` (in [0, 1))
    /// as the jitter draw; `None` when `err` must not be retried now.
    ///
    /// - With a `Retry-After`: that long, plus up to a quarter of it (at most
    ///   1 s) of jitter; `None` when it is over `max_retry_after`.
    /// - Otherwise "equal jitter": between half the backoff and all of it.
    pub fn delay(&self, attempt: u32, err: &ApiError, unit: f64) -> Option<Duration> {
        if !err.is_retryable() || attempt == 0 || attempt > self.retries {
            return None;
        }
        let unit = unit.clamp(0.0, 1.0);
        match err.retry_after() {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(wait + (wait / 4).min(Duration::from_secs(1)).mul_f64(unit)),
            None if self.only_when_asked => None,
            None => {
                let backoff = self.backoff(attempt);
                Some(backoff / 2 + (backoff / 2).mul_f64(unit))
            }
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retries run out.
    /// `note(error, wait, attempt)` is called before each wait (to tell the
    /// user); the last error is returned as it is.
    pub async fn run<T, F, Fut>(
        &self,
        mut op: F,
        mut note: impl FnMut(&ApiError, Duration, u32),
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    attempt += 1;
                    let Some(wait) = self.delay(attempt, &e, jitter_unit()) else {
                        return Err(e);
                    };
                    note(&e, wait, attempt);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// A wait as people read it: `1 s`, `1.4 s`.
pub fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16, retry_after: Option<u64>) -> ApiError {
        ApiError::Server {
            status,
            code: format!("http_{status}"),
            message: "scripted".into(),
            retry_after,
        }
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let r = Retry::new(9);
        let secs: Vec<u64> = (1..=7).map(|a| r.backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(r.backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn backoff_waits_are_jittered_between_half_and_all_of_it() {
        let r = Retry::new(4);
        let e = server(502, None);
        assert_eq!(r.delay(3, &e, 0.0), Some(Duration::from_secs(2)));
        assert_eq!(r.delay(3, &e, 0.5), Some(Duration::from_secs(3)));
        let top = r.delay(3, &e, 0.999_999).unwrap();
        assert!(top < Duration::from_secs(4) && top > Duration::from_millis(3990));
        // A network error backs off the same way.
        assert_eq!(
            r.delay(1, &ApiError::Network("reset".into()), 0.0),
            Some(Duration::from_millis(500))
        );
        // Real draws stay in [0, 1).
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }

    #[test]
    fn retry_after_is_honoured_on_503_and_429() {
        let r = Retry::new(4);
        for status in [503, 429] {
            let e = server(status, Some(7));
            assert_eq!(
                r.delay(1, &e, 0.0),
                Some(Duration::from_secs(7)),
                "{status}"
            );
            // Jitter adds at most a quarter, at most 1 s: never earlier than asked.
            assert_eq!(r.delay(4, &e, 0.999_999).unwrap().as_secs(), 7);
        }
        let e = server(503, Some(1));
        let wait = r.delay(1, &e, 0.999_999).unwrap();
        assert!(wait >= Duration::from_secs(1) && wait < Duration::from_millis(1250));
        // Longer than we are willing to wait: give up and report it.
        assert_eq!(r.delay(1, &server(503, Some(61)), 0.0), None);
        assert_eq!(
            r.delay(1, &server(503, Some(60)), 0.0),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn only_when_asked_retries_just_what_carries_retry_after() {
        let r = Retry::new(3).only_when_asked();
        assert_eq!(
            r.delay(1, &server(429, Some(2)), 0.0),
            Some(Duration::from_secs(2))
        );
        // A 429 without the header still says "later": 1 s.
        assert_eq!(
            r.delay(1, &server(429, None), 0.0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            r.delay(1, &server(503, Some(3)), 0.0),
            Some(Duration::from_secs(3))
        );
        assert_eq!(r.delay(1, &server(503, None), 0.0), None);
        assert_eq!(r.delay(1, &server(502, None), 0.0), None);
        assert_eq!(r.delay(1, &ApiError::Network("refused".into()), 0.0), None);
        assert_eq!(
            r.delay(4, &server(429, Some(2)), 0.0),
            None,
            "out of retries"
        );
    }

    #[test]
    fn only_transient_errors_are_retried_and_only_so_often() {
        let r = Retry::new(2);
        for status in [500, 502, 503, 504, 429] {
            assert!(r.delay(1, &server(status, None), 0.0).is_some(), "{status}");
        }
        for status in [400, 401, 404, 413, 422] {
            assert_eq!(r.delay(1, &server(status, None), 0.0), None, "{status}");
        }
        assert!(r.delay(2, &server(500, None), 0.0).is_some());
        assert_eq!(r.delay(3, &server(500, None), 0.0), None, "out of retries");
        assert_eq!(Retry::new(0).delay(1, &server(500, None), 0.0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_then_returns_the_result_or_the_last_error() {
        let r = Retry::new(3);
        let mut calls = 0;
        let mut notes = Vec::new();
        let got = r
            .run(
                || {
                    calls += 1;
                    let n = calls;
                    async move {
                        match n {
                            1 => Err(server(503, Some(2))),
                            2 => Err(ApiError::Network("reset".into())),
                            _ => Ok(n),
                        }
                    }
                },
                |e, wait, attempt| notes.push((e.to_string(), wait, attempt)),
            )
            .await;
        assert_eq!(got.unwrap(), 3);
        assert_eq!(notes.len(), 2);
        assert!(notes[0].1 >= Duration::from_secs(2) && notes[0].2 == 1);
        assert!(notes[1].1 >= Duration::from_millis(1000) && notes[1].2 == 2);

        let mut calls = 0;
        let got: Result<(), _> = r
            .run(
                || {
                    calls += 1;
                    async { Err(server(422, None)) }
                },
                |_, _, _| panic!("a 422 is not retried"),
            )
            .await;
        assert!(matches!(got, Err(ApiError::Server { status: 422, .. })));
        assert_eq!(calls, 1);

        let mut calls = 0;
        let got: Result<(), _> = r
            .run(
                || {
                    calls += 1;
                    async { Err(server(500, None)) }
                },
                |_, _, _| {},
            )
            .await;
        assert!(got.is_err());
        assert_eq!(calls, 4, "the first attempt and three retries");
    }

    #[test]
    fn waits_read_as_seconds() {
        assert_eq!(seconds(Duration::from_secs(3)), "3 s");
        assert_eq!(seconds(Duration::from_millis(1400)), "1.4 s");
    }
}
