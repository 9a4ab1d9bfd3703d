//! The per-client poll rate limit, as a generic cell rate algorithm (GCRA).
//!
//! GCRA is a token bucket kept in a single number, the "theoretical arrival
//! time" (TAT): each allowed request pushes it one emission interval into
//! the future, and a request is refused while the TAT would run more than
//! one window ahead of now. A single number per client is what makes the
//! limit cheap to keep in a store row, next to the client's other state, and
//! update in the same write. The decision lives here, once; stores only keep
//! the number.

use crate::clock::Timestamp;
use std::time::Duration;

const WINDOW_MS: i64 = 60_000;

/// `limit` requests per minute, with a burst of `limit`, refilling evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollRateLimit {
    per_minute: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; store this as the new TAT.
    Allow { new_tat: Timestamp },
    /// Refused; nothing changes.
    Deny { retry_after: Duration },
}

impl PollRateLimit {
    /// `None` for 0, which means unlimited.
    pub fn per_minute(limit: u32) -> Option<PollRateLimit> {
        (limit > 0).then_some(PollRateLimit { per_minute: limit })
    }

    fn interval_ms(&self) -> i64 {
        (WINDOW_MS / i64::from(self.per_minute)).max(1)
    }

    pub fn decide(&self, tat: Option<Timestamp>, now: Timestamp) -> Decision {
        let base = match tat {
            Some(t) if t > now => t,
            _ => now,
        };
        let new_tat = base.plus_millis(self.interval_ms());
        let ahead = new_tat.millis() - now.millis();
        if ahead <= WINDOW_MS {
            Decision::Allow { new_tat }
        } else {
            let wait_ms = ahead - WINDOW_MS;
            // Retry-After is whole seconds; round up so a client that obeys
            // it is never refused again for the same reason.
            let secs = ((wait_ms + 999) / 1000).max(1) as u64;
            Decision::Deny {
                retry_after: Duration::from_secs(secs),
            }
        }
    }
}

/// `limit` requests per key in each fixed minute, for limits whose key is
/// not a client (registrations per source address): a counter per window
/// costs one conditional write per request and expires by itself, where a
/// GCRA would need a read-modify-write. A fixed window lets up to twice the
/// limit through around a window's edge, which is fine for its purpose,
/// slowing floods down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimit {
    per_minute: u32,
}

impl WindowLimit {
    /// `None` for 0, which means unlimited.
    pub fn per_minute(limit: u32) -> Option<WindowLimit> {
        (limit > 0).then_some(WindowLimit { per_minute: limit })
    }

    pub fn limit(&self) -> u32 {
        self.per_minute
    }

    /// The window `now` falls in.
    pub fn window(&self, now: Timestamp) -> i64 {
        now.millis().div_euclid(WINDOW_MS)
    }

    /// How long until the window after `now`'s begins, in whole seconds
    /// rounded up.
    pub fn retry_after(&self, now: Timestamp) -> Duration {
        let ends = (self.window(now) + 1) * WINDOW_MS;
        let secs = ((ends - now.millis() + 999) / 1000).max(1) as u64;
        Duration::from_secs(secs)
    }

    /// When a window's counter can be forgotten.
    pub fn expires_at(&self, now: Timestamp) -> Timestamp {
        Timestamp((self.window(now) + 2) * WINDOW_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(limit: &PollRateLimit, tat: &mut Option<Timestamp>, now: i64) -> Decision {
        let d = limit.decide(*tat, Timestamp(now));
        if let Decision::Allow { new_tat } = d {
            *tat = Some(new_tat);
        }
        d
    }

    #[test]
    fn allows_a_burst_of_the_limit_then_refuses() {
        let limit = PollRateLimit::per_minute(120).unwrap();
        let mut tat = None;
        for i in 0..120 {
            assert!(
                matches!(run(&limit, &mut tat, 1_000), Decision::Allow { .. }),
                "poll {i}"
            );
        }
        assert_eq!(
            run(&limit, &mut tat, 1_000),
            Decision::Deny {
                retry_after: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn refills_evenly() {
        let limit = PollRateLimit::per_minute(60).unwrap();
        let mut tat = None;
        for _ in 0..60 {
            run(&limit, &mut tat, 0);
        }
        assert!(matches!(run(&limit, &mut tat, 0), Decision::Deny { .. }));
        // One emission interval (1 s) later exactly one more is allowed.
        assert!(matches!(
            run(&limit, &mut tat, 1_000),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            run(&limit, &mut tat, 1_000),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn retry_after_covers_the_wait() {
        let limit = PollRateLimit::per_minute(5).unwrap();
        let mut tat = None;
        for _ in 0..5 {
            run(&limit, &mut tat, 0);
        }
        // Interval is 12 s: the next slot opens 12 s after the burst.
        assert_eq!(
            run(&limit, &mut tat, 0),
            Decision::Deny {
                retry_after: Duration::from_secs(12)
            }
        );
        assert_eq!(
            run(&limit, &mut tat, 11_500),
            Decision::Deny {
                retry_after: Duration::from_secs(1)
            }
        );
        assert!(matches!(
            run(&limit, &mut tat, 12_000),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn idle_clients_start_with_a_full_bucket() {
        let limit = PollRateLimit::per_minute(2).unwrap();
        let mut tat = Some(Timestamp(0));
        assert!(matches!(
            run(&limit, &mut tat, 600_000),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            run(&limit, &mut tat, 600_000),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            run(&limit, &mut tat, 600_000),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn zero_means_unlimited() {
        assert_eq!(PollRateLimit::per_minute(0), None);
    }

    #[test]
    fn windows_are_whole_minutes() {
        let limit = WindowLimit::per_minute(5).unwrap();
        assert_eq!(WindowLimit::per_minute(0), None);
        let t = Timestamp(120_000 + 59_001);
        assert_eq!(limit.window(t), 2);
        assert_eq!(limit.window(Timestamp(180_000)), 3);
        assert_eq!(limit.retry_after(t), Duration::from_secs(1));
        assert_eq!(
            limit.retry_after(Timestamp(120_000)),
            Duration::from_secs(60)
        );
        assert_eq!(limit.expires_at(t), Timestamp(240_000));
    }
}
