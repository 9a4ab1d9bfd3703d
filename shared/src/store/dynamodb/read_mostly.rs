//! The read-mostly empty poll (`POLL_MODE=read-mostly`).
//!
//! By default every poll is one conditional `UpdateItem` (a write unit):
//! it keeps `last_seen_at` and the poll limiter's state exact. An empty
//! poll is the request a fleet makes most, and a strongly consistent read
//! costs a fifth of a write (on-demand, us-east-1), so this mode answers
//! most polls with one `GetItem` instead:
//! - **last seen** is written when this function instance has not written
//!   it for the client in the last [`LAST_SEEN_EVERY`]: then the poll is the
//!   usual `UpdateItem`. `last_seen_at` is at most that old, per instance.
//! - **the poll limit** is kept in this instance's memory (the same GCRA),
//!   and a refused poll makes no request at all. Each instance enforces the
//!   limit on its own, so a client spreading its polls over `n` instances
//!   gets at most `n` times the limit: the function's concurrency bounds
//!   the cost of a misbehaving client (set `ReservedConcurrency` for a hard
//!   bound), and API Gateway's route throttling bounds the fleet's.
//! - **what a poll returns** does not change: the read is strongly
//!   consistent, so it sees every message appended before it, and a
//!   rotated or deleted client's token stops at once, as before.

use super::clients::{client_state, is_current};
use super::DynamoStore;
use crate::clock::Timestamp;
use crate::config::ConfigError;
use crate::domain::ClientId;
use crate::rate_limit::{Decision, PollRateLimit};
use crate::store::{StoreResult, Touch};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How old a read-mostly poll lets `last_seen_at` get (per instance).
pub const LAST_SEEN_EVERY: Duration = Duration::from_secs(60);

/// Clients an instance remembers at most; past it, it forgets them all
/// (their next poll writes, and their limit starts afresh in this instance).
const REMEMBERED: usize = 50_000;

/// The variable that chooses the mode: `exact` (default) or `read-mostly`.
pub const POLL_MODE: &str = "POLL_MODE";

/// How a poll records the contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollMode {
    /// One `UpdateItem` per poll: exact last seen and a limit shared by
    /// every instance.
    #[default]
    Exact,
    /// One strongly consistent `GetItem` for most polls (see the module).
    ReadMostly,
}

impl PollMode {
    /// The mode `POLL_MODE` names (unset: exact). Read-mostly needs a poll
    /// limit: it is what keeps a client that polls without pause from
    /// costing a read per request.
    pub fn from_setting(
        value: Option<&str>,
        poll_limit: Option<&str>,
    ) -> Result<PollMode, ConfigError> {
        match value.map(str::trim) {
            None | Some("") | Some("exact") => Ok(PollMode::Exact),
            Some("read-mostly") if poll_limit.map(str::trim) == Some("0") => Err(ConfigError(
                format!("{POLL_MODE}=read-mostly needs a poll rate limit (POLL_RATE_LIMIT is 0)"),
            )),
            Some("read-mostly") => Ok(PollMode::ReadMostly),
            Some(other) => Err(ConfigError(format!(
                "{POLL_MODE} must be exact or read-mostly, not {other:?}"
            ))),
        }
    }
}

/// What this instance remembers of a client.
#[derive(Debug, Clone, Copy, Default)]
struct Sighting {
    /// The poll limiter's theoretical arrival time.
    tat: Option<Timestamp>,
    /// When this instance last wrote the client's `last_seen_at`.
    written: Option<Timestamp>,
}

/// The per-instance memory of the read-mostly mode.
#[derive(Debug, Default)]
pub(super) struct Sightings {
    clients: Mutex<HashMap<ClientId, Sighting>>,
}

/// What a poll must do after the limiter allowed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contact {
    Write,
    Read,
}

impl Sightings {
    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Sighting>> {
        // Plain field updates: a poisoned lock still guards whole values.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges the poll to the instance's limiter; `Err` when refused.
    fn charge(
        &self,
        id: ClientId,
        limit: PollRateLimit,
        now: Timestamp,
    ) -> Result<Contact, Duration> {
        let mut clients = self.clients();
        if clients.len() >= REMEMBERED && !clients.contains_key(&id) {
            clients.clear();
        }
        let sighting = clients.entry(id).or_default();
        match limit.decide(sighting.tat, now) {
            Decision::Deny { retry_after } => Err(retry_after),
            Decision::Allow { new_tat } => {
                sighting.tat = Some(new_tat);
                let fresh = sighting.written.is_some_and(|at| {
                    now.millis() - at.millis() < LAST_SEEN_EVERY.as_millis() as i64
                });
                Ok(if fresh { Contact::Read } else { Contact::Write })
            }
        }
    }

    fn written(&self, id: ClientId, at: Timestamp) {
        if let Some(sighting) = self.clients().get_mut(&id) {
            sighting.written = Some(at);
        }
    }

    fn forget(&self, id: ClientId) {
        self.clients().remove(&id);
    }
}

impl DynamoStore {
    /// A poll's contact in read-mostly mode: a refusal without a request,
    /// one `GetItem` most of the time, one `UpdateItem` of `last_seen_at`
    /// when this instance has not written it for [`LAST_SEEN_EVERY`].
    pub(super) async fn touch_read_mostly(
        &self,
        id: ClientId,
        generation: u32,
        now: Timestamp,
        limit: PollRateLimit,
    ) -> StoreResult<Touch> {
        let contact = match self.sightings.charge(id, limit, now) {
            Ok(contact) => contact,
            Err(retry_after) => return Ok(Touch::RateLimited { retry_after }),
        };
        let item = match contact {
            Contact::Write => {
                let item = self.record_contact(id, generation, now).await?;
                if item.is_some() {
                    self.sightings.written(id, now);
                }
                item
            }
            Contact::Read => match self.client_item(&id.to_string()).await? {
                Some(item) if is_current(&item, generation)? => Some(item),
                _ => None,
            },
        };
        match item {
            Some(item) => Ok(Touch::Known(client_state(&item)?)),
            None => {
                self.sightings.forget(id);
                Ok(Touch::UnknownClient)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_is_exact_unless_asked_and_needs_a_limit() {
        assert_eq!(PollMode::from_setting(None, None).unwrap(), PollMode::Exact);
        assert_eq!(
            PollMode::from_setting(Some("read-mostly"), Some("120")).unwrap(),
            PollMode::ReadMostly
        );
        assert!(PollMode::from_setting(Some("read-mostly"), Some("0")).is_err());
        let err = PollMode::from_setting(Some("lazy"), None).unwrap_err();
        assert!(err.0.contains("exact or read-mostly"), "{err}");
    }

    #[test]
    fn polls_write_once_a_minute_and_the_limit_refuses_without_a_request() {
        let sightings = Sightings::default();
        let id = ClientId::parse("3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13").unwrap();
        let limit = PollRateLimit::per_minute(3).unwrap();
        assert_eq!(
            sightings.charge(id, limit, Timestamp(0)),
            Ok(Contact::Write)
        );
        sightings.written(id, Timestamp(0));
        assert_eq!(
            sightings.charge(id, limit, Timestamp(1_000)),
            Ok(Contact::Read)
        );
        assert_eq!(
            sightings.charge(id, limit, Timestamp(2_000)),
            Ok(Contact::Read)
        );
        assert!(sightings.charge(id, limit, Timestamp(3_000)).is_err());
        assert_eq!(
            sightings.charge(id, limit, Timestamp(60_000)),
            Ok(Contact::Write),
            "a minute after the last write"
        );
        sightings.forget(id);
        assert_eq!(
            sightings.charge(id, limit, Timestamp(61_000)),
            Ok(Contact::Write)
        );
    }
}
