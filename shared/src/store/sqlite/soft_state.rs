//! What an empty poll needs, in memory: the one process that owns the
//! database file keeps each active client's row here, so a poll that finds
//! nothing new touches no file and takes no write lock.
//!
//! Two kinds of state live in an entry:
//! - **Committed state** (the record, the acknowledged cursor, the inbox
//!   head): a copy of what the file holds. Every write that changes it
//!   updates the copy while it still holds the connection, after its
//!   transaction commits, so a request that starts after another's
//!   response sees that write, and a copy loaded from the file can never
//!   overwrite a newer one.
//! - **Soft state** (last seen, the rate limiters' TATs): changed here
//!   first and written behind in batches. After a crash the file may be
//!   up to one write-behind interval old for these: a rate limit forgets
//!   that much of a client's history and `last_seen_at` is that much
//!   older. Nothing a client was told depends on them.

use crate::clock::Timestamp;
use crate::domain::{ClientId, Seq};
use crate::rate_limit::Decision;
use crate::store::{Bucket, ClientRecord, ClientState, RateCharge, Touch};
use std::collections::HashMap;
use std::sync::Mutex;

/// One client's row as the file holds it, with its soft state as it is
/// now (ahead of the file while `dirty`).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub record: ClientRecord,
    pub acked: Seq,
    pub head: Seq,
    pub soft: Soft,
    pub dirty: bool,
}

/// The columns written behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Soft {
    pub last_seen: Option<i64>,
    pub poll_tat: Option<i64>,
    pub send_tat: Option<i64>,
}

impl Entry {
    /// One authenticated contact: charged to its bucket (a refused one
    /// changes nothing) and seen at `now`.
    fn touch(&mut self, generation: u32, now: Timestamp, charge: Option<RateCharge>) -> Touch {
        if self.record.generation != generation {
            return Touch::UnknownClient;
        }
        if let Some(charge) = charge {
            let tat = match charge.bucket {
                Bucket::Poll => &mut self.soft.poll_tat,
                Bucket::Send => &mut self.soft.send_tat,
            };
            match charge.limit.decide(tat.map(Timestamp), now) {
                Decision::Deny { retry_after } => return Touch::RateLimited { retry_after },
                Decision::Allow { new_tat } => *tat = Some(new_tat.millis()),
            }
        }
        self.soft.last_seen = Some(self.soft.last_seen.unwrap_or(0).max(now.millis()));
        self.dirty = true;
        Touch::Known(ClientState {
            record: self.record.clone(),
            acked: self.acked,
            head: self.head,
        })
    }
}

/// The entries, at most `capacity` of them (past it, clean entries are
/// dropped and loaded again when their client next polls).
pub(super) struct SoftState {
    entries: Mutex<HashMap<ClientId, Entry>>,
    capacity: usize,
}

impl SoftState {
    pub fn new(capacity: usize) -> SoftState {
        SoftState {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Entry>> {
        // Every change below is a plain field update that cannot panic
        // half-way, so a poisoned lock still guards consistent entries.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The contact, when the client's entry is here; `None` means load it.
    pub fn touch(
        &self,
        id: ClientId,
        generation: u32,
        now: Timestamp,
        charge: Option<RateCharge>,
    ) -> Option<Touch> {
        self.entries()
            .get_mut(&id)
            .map(|entry| entry.touch(generation, now, charge))
    }

    /// Keeps `loaded` (just read from the file, by a caller holding the
    /// connection) unless an entry is already here, and applies the contact
    /// to whichever is kept. Whether the cache is full is for the caller
    /// to check first ([`SoftState::is_full`]).
    pub fn load_and_touch(
        &self,
        id: ClientId,
        loaded: Entry,
        generation: u32,
        now: Timestamp,
        charge: Option<RateCharge>,
    ) -> Touch {
        self.entries()
            .entry(id)
            .or_insert(loaded)
            .touch(generation, now, charge)
    }

    pub fn is_full(&self) -> bool {
        self.entries().len() >= self.capacity
    }

    /// Drops every entry with nothing to write back; dirty ones stay.
    pub fn evict_clean(&self) {
        self.entries().retain(|_, entry| entry.dirty);
    }

    /// A message was appended to the client's inbox at `head`.
    pub fn appended(&self, id: ClientId, head: Seq) {
        if let Some(entry) = self.entries().get_mut(&id) {
            entry.head = entry.head.max(head);
        }
    }

    /// The client's cursor moved to `acked`, seen at `now` (written with
    /// the cursor, so not dirty on its account).
    pub fn acknowledged(&self, id: ClientId, acked: Seq, now: Timestamp) {
        if let Some(entry) = self.entries().get_mut(&id) {
            entry.acked = entry.acked.max(acked);
            entry.soft.last_seen = Some(entry.soft.last_seen.unwrap_or(0).max(now.millis()));
        }
    }

    /// The client's credentials rotated to `record`.
    pub fn rotated(&self, record: &ClientRecord) {
        if let Some(entry) = self.entries().get_mut(&record.id) {
            entry.record = record.clone();
        }
    }

    pub fn remove(&self, id: ClientId) {
        self.entries().remove(&id);
    }

    /// The soft state of every dirty entry, which is clean from now on.
    pub fn take_dirty(&self) -> Vec<(ClientId, Soft)> {
        self.entries()
            .iter_mut()
            .filter(|(_, entry)| entry.dirty)
            .map(|(id, entry)| {
                entry.dirty = false;
                (*id, entry.soft)
            })
            .collect()
    }

    /// A write-back of `ids` failed: write them again next time. Their
    /// entries hold the newest values, so writing those is still right.
    pub fn write_failed(&self, ids: impl IntoIterator<Item = ClientId>) {
        let mut entries = self.entries();
        for id in ids {
            if let Some(entry) = entries.get_mut(&id) {
                entry.dirty = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::PollRateLimit;

    fn entry(generation: u32) -> Entry {
        Entry {
            record: ClientRecord {
                id: ClientId::parse("3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13").unwrap(),
                name: None,
                wrapped_key: vec![1; 60],
                created_at: Timestamp(1),
                generation,
                retired_keys: Vec::new(),
            },
            acked: 2,
            head: 5,
            soft: Soft::default(),
            dirty: false,
        }
    }

    fn charge(per_minute: u32) -> Option<RateCharge> {
        Some(RateCharge {
            bucket: Bucket::Poll,
            limit: PollRateLimit::per_minute(per_minute).unwrap(),
        })
    }

    #[test]
    fn a_contact_is_charged_seen_and_written_behind_once() {
        let state = SoftState::new(10);
        let e = entry(0);
        let id = e.record.id;
        assert!(state.touch(id, 0, Timestamp(1_000), None).is_none());
        let touched = state.load_and_touch(id, e, 0, Timestamp(1_000), charge(2));
        assert!(
            matches!(&touched, Touch::Known(s) if s.acked == 2 && s.head == 5),
            "{touched:?}"
        );
        assert!(matches!(
            state.touch(id, 0, Timestamp(2_000), charge(2)),
            Some(Touch::Known(_))
        ));
        // Two a minute, both spent: refused, and not seen.
        assert!(matches!(
            state.touch(id, 0, Timestamp(3_000), charge(2)),
            Some(Touch::RateLimited { .. })
        ));
        let dirty = state.take_dirty();
        assert_eq!(dirty.len(), 1);
        assert_eq!(dirty[0].1.last_seen, Some(2_000));
        assert_eq!(dirty[0].1.poll_tat, Some(61_000));
        assert!(state.take_dirty().is_empty(), "clean after a write-back");
    }

    #[test]
    fn committed_changes_reach_the_entry_and_old_tokens_stop() {
        let state = SoftState::new(10);
        let e = entry(0);
        let id = e.record.id;
        state.load_and_touch(id, e.clone(), 0, Timestamp(1), None);
        state.appended(id, 9);
        state.appended(id, 7);
        state.acknowledged(id, 6, Timestamp(2));
        let Some(Touch::Known(s)) = state.touch(id, 0, Timestamp(3), None) else {
            panic!("known")
        };
        assert_eq!((s.head, s.acked), (9, 6), "heads and cursors only grow");
        state.rotated(&ClientRecord {
            generation: 1,
            ..e.record.clone()
        });
        assert!(matches!(
            state.touch(id, 0, Timestamp(4), None),
            Some(Touch::UnknownClient)
        ));
        assert!(matches!(
            state.touch(id, 1, Timestamp(4), None),
            Some(Touch::Known(_))
        ));
        // A copy loaded later never replaces the one kept.
        state.load_and_touch(id, entry(0), 1, Timestamp(5), None);
        let Some(Touch::Known(s)) = state.touch(id, 1, Timestamp(6), None) else {
            panic!("known")
        };
        assert_eq!((s.record.generation, s.head), (1, 9));
        state.remove(id);
        assert!(state.touch(id, 1, Timestamp(7), None).is_none());
    }

    #[test]
    fn eviction_keeps_what_is_not_written_yet() {
        let state = SoftState::new(2);
        let mut a = entry(0);
        let mut b = entry(0);
        a.record.id = ClientId::parse("00000000-0000-4000-8000-000000000001").unwrap();
        b.record.id = ClientId::parse("00000000-0000-4000-8000-000000000002").unwrap();
        let (ida, idb) = (a.record.id, b.record.id);
        state.load_and_touch(ida, a, 0, Timestamp(1), None);
        state.load_and_touch(idb, b, 0, Timestamp(1), None);
        assert!(state.is_full());
        let written = state.take_dirty();
        assert_eq!(written.len(), 2);
        state.touch(idb, 0, Timestamp(2), None);
        state.evict_clean();
        assert!(
            state.touch(ida, 0, Timestamp(3), None).is_none(),
            "clean: evicted"
        );
        assert!(
            state.touch(idb, 0, Timestamp(3), None).is_some(),
            "dirty: kept"
        );
        state.write_failed([ida, idb]);
        assert_eq!(state.take_dirty().len(), 1, "only what is still here");
    }
}
