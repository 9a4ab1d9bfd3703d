//! The storage port.
//!
//! Shaped after DynamoDB's access patterns so that every method is one or two
//! key-addressed requests there: clients keyed by id, a fingerprint lookup,
//! and per-client message sequences keyed `(client_id, seq)`.
//!
//! The one rule every adapter must keep: a message with sequence `n + 1`
//! becomes visible only after `n` is, so a reader whose cursor passes `n + 1`
//! can never have skipped `n`. Adapters allocate the sequence number and
//! write the message in one atomic step; because the message's ciphertext
//! depends on its sequence number (it is bound into the AAD), the caller
//! hands over a [`Sealer`] that builds the message once the number is known.
//!
//! All adapters are held to the same contract suite in
//! `shared/tests/store_contract/`.

#[cfg(feature = "aws")]
pub mod dynamodb;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use crate::clock::Timestamp;
use crate::crypto::Sealed;
use crate::domain::{ClientId, Seq};
use crate::rate_limit::{PollRateLimit, WindowLimit};
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// Transient failures (throttling, conflicts, 5xx, timeouts, a busy
    /// database) outlasted the retry budget: the same call may succeed
    /// later, and nothing was half-done.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("could not seal the message: {0}")]
    Seal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What registration stores for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub id: ClientId,
    pub name: Option<String>,
    /// The personal key, wrapped under the server's key-wrapping key.
    pub wrapped_key: Vec<u8>,
    pub created_at: Timestamp,
    /// The credential generation: 0 at registration, one more at every
    /// rotation. Only tokens of this generation are accepted.
    pub generation: u32,
    /// Personal keys of earlier generations that unacknowledged messages
    /// may still be sealed under; polls re-seal those under the current key.
    pub retired_keys: Vec<RetiredKey>,
}

/// The most retired keys a client keeps.
pub const MAX_RETIRED_KEYS: usize = 8;

/// A personal key replaced by a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey {
    pub generation: u32,
    /// Wrapped, like the current key.
    pub wrapped_key: Vec<u8>,
    pub retired_at: Timestamp,
}

impl RetiredKey {
    /// How adapters keep a record's retired keys: one JSON text, since
    /// both stores hold them as one opaque value on the client's row.
    pub fn encode_all(keys: &[RetiredKey]) -> String {
        let list: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "generation": k.generation,
                    "wrapped_key": crate::crypto::encode_base64(&k.wrapped_key),
                    "retired_at": k.retired_at.millis(),
                })
            })
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    pub fn decode_all(text: &str) -> StoreResult<Vec<RetiredKey>> {
        let corrupt = || StoreError::Corrupt("retired keys".into());
        let list: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|_| corrupt())?;
        list.iter()
            .map(|v| {
                Some(RetiredKey {
                    generation: u32::try_from(v.get("generation")?.as_u64()?).ok()?,
                    wrapped_key: crate::crypto::decode_base64(v.get("wrapped_key")?.as_str()?)?,
                    retired_at: Timestamp(v.get("retired_at")?.as_i64()?),
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(corrupt)
    }

    /// The retired keys a rotation keeps: those unacknowledged messages
    /// use (`in_use`), always; those retired since `keep_since` (a fan-out
    /// may still be sealing with them), up to [`MAX_RETIRED_KEYS`] in all;
    /// and the key being retired now.
    ///
    /// Only the grace-period keys are trimmed, so rotating in a loop cannot
    /// grow the client's row towards DynamoDB's item limit while no message
    /// ever loses its key: in-use keys grow only with publishes between
    /// rotations, which the client alone cannot cause.
    pub fn after_rotation(
        record: &ClientRecord,
        now: Timestamp,
        keep_since: Timestamp,
        in_use: &HashSet<u32>,
    ) -> Vec<RetiredKey> {
        let needed = |k: &RetiredKey| in_use.contains(&k.generation);
        let mut kept: Vec<RetiredKey> = record
            .retired_keys
            .iter()
            .filter(|k| k.retired_at >= keep_since || needed(k))
            .cloned()
            .collect();
        // Oldest grace-period keys first, while over the bound (the one
        // retired now comes on top).
        let mut excess = (kept.len() + 1).saturating_sub(MAX_RETIRED_KEYS);
        kept.retain(|k| {
            if excess > 0 && !needed(k) {
                excess -= 1;
                false
            } else {
                true
            }
        });
        kept.push(RetiredKey {
            generation: record.generation,
            wrapped_key: record.wrapped_key.clone(),
            retired_at: now,
        });
        kept
    }
}

impl ClientRecord {
    /// The wrapped personal key a message sealed under `generation` needs.
    pub fn wrapped_key_of(&self, generation: u32) -> Option<&[u8]> {
        if generation == self.generation {
            return Some(&self.wrapped_key);
        }
        self.retired_keys
            .iter()
            .find(|k| k.generation == generation)
            .map(|k| k.wrapped_key.as_slice())
    }
}

/// A client as an authenticated request finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientState {
    pub record: ClientRecord,
    /// The acknowledged cursor: every message up to here has been received.
    pub acked: Seq,
    /// The newest inbox message's sequence number (0 when none yet).
    pub head: Seq,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub client: ClientRecord,
    /// False when the fingerprint was already registered and `client` is
    /// the existing one.
    pub created: bool,
}

/// The outcome of an authenticated contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touch {
    Known(ClientState),
    RateLimited { retry_after: Duration },
    UnknownClient,
}

/// Which of a client's rate limits a contact is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Poll,
    Send,
}

/// One request's charge against a client's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCharge {
    pub bucket: Bucket,
    pub limit: PollRateLimit,
}

/// A rotation of a client's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub id: ClientId,
    /// The generation of the token that asked; the rotation happens only
    /// while it is still the current one.
    pub from_generation: u32,
    /// The new personal key, wrapped.
    pub wrapped_key: Vec<u8>,
    /// A new fingerprint hash, replacing the old one in the lookup.
    pub fingerprint: Option<[u8; 32]>,
    pub now: Timestamp,
    /// Retired keys retired at or after this are kept even when no
    /// unacknowledged message is sealed under them, because a fan-out that
    /// loaded the client before the rotation may still append with them.
    pub keep_retired_since: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotated {
    /// The record as it now is (generation one higher).
    Rotated(ClientRecord),
    /// The client is unknown, deleted, or already past that generation.
    Stale,
    /// The new fingerprint belongs to another client.
    FingerprintTaken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    Unknown,
}

/// The outcome of counting a request in a fixed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Allowed,
    Full { retry_after: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The cursor after the ack (never lower than before).
    Acked {
        cursor: Seq,
    },
    /// The id acknowledged is past the newest message.
    BeyondHead {
        head: Seq,
    },
    UnknownClient,
}

/// Which of a client's two message sequences an operation works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mailbox {
    /// Server-to-client messages: what polls return.
    Inbox,
    /// Client-to-server messages: what sends store.
    Outbox,
}

/// Makes an append idempotent: a second append with the same key for the
/// same client stores nothing and reports the first one's sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedup {
    pub key: String,
    /// A digest of the content; lets the caller tell a retry of the same
    /// message from a different message reusing the key.
    pub digest: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored { seq: Seq },
    Duplicate { seq: Seq, same_content: bool },
    UnknownClient,
}

/// A message ready to be stored at a given position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub kind: String,
    pub body: Sealed,
    pub created_at: Timestamp,
    /// The credential generation whose personal key sealed `body` (0 for
    /// messages sealed under a server key).
    pub key_generation: u32,
    /// From this time on the message is never delivered (publish
    /// `ttl_secs`); `None`: it never expires.
    pub expires_at: Option<Timestamp>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: Seq,
    pub kind: String,
    pub body: Sealed,
    pub created_at: Timestamp,
    pub key_generation: u32,
    /// See [`NewMessage::expires_at`]. Once cleanup has seen an expired,
    /// unacknowledged message, only its position and expiry are kept:
    /// `kind` is empty and the ciphertext has no bytes (a tombstone), so a
    /// page can tell an expired id from one still being written.
    pub expires_at: Option<Timestamp>,
}

impl StoredMessage {
    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// How much one read may return: at most `count` messages, and it stops
/// before the message whose sealed bytes would take the total past
/// `bytes` (the first message is always returned, whatever its size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimit {
    pub count: u32,
    pub bytes: usize,
}

impl ReadLimit {
    pub fn count(count: u32) -> ReadLimit {
        ReadLimit {
            count,
            bytes: usize::MAX,
        }
    }
}

/// What a publish with an `Idempotency-Key` remembers of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRecord {
    pub publish_id: String,
    pub recipients: u64,
    /// A digest of the request, telling a retry from a different publish
    /// that reuses the key.
    pub digest: [u8; 32],
    pub created_at: Timestamp,
}

/// The outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key was free (or its record had expired): it is ours now.
    Claimed,
    /// The key is held by an earlier publish; `completed` says whether all
    /// of its jobs were handed to the queue.
    Held {
        record: PublishRecord,
        completed: bool,
    },
}

/// What cleanup removes: acknowledged inbox messages created before
/// `acked_before`, and sent (outbox) messages created before `sent_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    pub acked_before: Timestamp,
    pub sent_before: Timestamp,
    /// Idempotency keys claimed before this are forgotten.
    pub keys_before: Timestamp,
    /// Unacknowledged inbox messages whose `expires_at` is at or before
    /// this become tombstones (see [`StoredMessage::expires_at`]).
    pub now: Timestamp,
    /// Publish records ([`PublishHeader`], pages) created before this are
    /// forgotten (the DynamoDB store leaves that to the table's TTL).
    pub publishes_before: Timestamp,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub inbox: u64,
    pub outbox: u64,
    /// Expired messages whose bodies were removed.
    pub expired: u64,
    /// False when the run stopped at its deadline; the next run resumes.
    pub finished: bool,
}

/// Builds the message for a sequence number. An adapter may call it more
/// than once (with a new number) when it loses a race and retries.
pub type Sealer = Arc<dyn Fn(Seq) -> Result<NewMessage, StoreError> + Send + Sync>;

/// A client as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    pub id: ClientId,
    pub name: Option<String>,
    pub created_at: Timestamp,
    pub last_seen_at: Option<Timestamp>,
    /// The newest sent (outbox) id, 0 when none.
    pub sent_head: Seq,
    /// The client's tags, sorted.
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPage {
    pub clients: Vec<ClientSummary>,
    /// Opaque to callers; present when more clients follow.
    pub next: Option<String>,
}

/// Who a publish is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// The ids the publish named (`to_client_ids`); `count` distinct ones.
    Clients { count: u64 },
    /// Every client carrying any of these tags (`to_tags`), in the order
    /// given.
    Tags(Vec<String>),
    /// Every client (`to_all`).
    All,
}

impl Audience {
    /// How adapters keep an audience: one JSON text, the request's form.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Audience::Clients { count } => serde_json::json!({ "to_client_ids": count }),
            Audience::Tags(tags) => serde_json::json!({ "to_tags": tags }),
            Audience::All => serde_json::json!({ "to_all": true }),
        }
    }

    pub fn from_json(value: &serde_json::Value) -> Option<Audience> {
        if let Some(count) = value.get("to_client_ids") {
            return Some(Audience::Clients {
                count: count.as_u64()?,
            });
        }
        if let Some(tags) = value.get("to_tags") {
            let tags = tags
                .as_array()?
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()?;
            return Some(Audience::Tags(tags));
        }
        (value.get("to_all") == Some(&serde_json::Value::Bool(true))).then_some(Audience::All)
    }
}

/// What a publish's status is computed from, saved when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishHeader {
    pub publish_id: String,
    pub kind: String,
    /// When the publish was accepted. Clients registered later are not in
    /// a tag or everyone audience.
    pub created_at: Timestamp,
    pub audience: Audience,
    pub expires_at: Option<Timestamp>,
    /// Known once every recipient is on a page: at once for
    /// `to_client_ids`, at the end of the fan-out's enumeration otherwise.
    pub enumerated: Option<Enumerated>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enumerated {
    pub pages: u32,
    pub recipients: u64,
}

/// One page of a publish's recipients, numbered from 0. A page is written
/// once: its recipients never change afterwards, so a redelivered
/// enumeration step finds what the first attempt chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientPage {
    pub number: u32,
    pub recipients: Vec<ClientId>,
    /// Where the enumeration continues after this page (an
    /// [`AudiencePage::next`] token); `None` on the last page and on the
    /// pages of a `to_client_ids` publish.
    pub next: Option<String>,
    /// Set once the step for the next page has been enqueued, so that a
    /// redelivered step does not enqueue it twice.
    pub continued: bool,
}

/// A publish as its status call reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishState {
    pub header: PublishHeader,
    /// Every page written so far, in page order.
    pub pages: Vec<RecipientPage>,
}

/// A page of an audience, as the fan-out enumerates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudiencePage {
    /// Distinct across the whole enumeration; may be empty even when more
    /// follow (everything on this stretch was filtered out).
    pub recipients: Vec<ClientId>,
    /// Opaque; present when more clients follow.
    pub next: Option<String>,
}

/// One forward move of a client's acknowledged cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckMark {
    pub cursor: Seq,
    pub at: Timestamp,
}

/// How many of its latest cursor moves a client keeps ([`AckState`]).
pub const ACK_HISTORY: usize = 4;

/// A client's acknowledged cursor and its latest moves: enough to tell,
/// without a write per message, whether a message was acknowledged before
/// it expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckState {
    pub acked: Seq,
    /// Newest first, at most [`ACK_HISTORY`].
    pub history: Vec<AckMark>,
}

impl AckState {
    /// Whether the cursor had passed `seq` at time `at`: `None` when the
    /// history does not reach back that far.
    pub fn acked_by(&self, seq: Seq, at: Timestamp) -> Option<bool> {
        if self.acked < seq {
            return Some(false);
        }
        match self.history.iter().find(|m| m.at <= at) {
            Some(mark) => Some(mark.cursor >= seq),
            // Every known move is later than `at`: before the oldest of
            // them the cursor stood lower, and if the history is complete
            // (fewer moves than it keeps), at 0.
            None if self.history.len() < ACK_HISTORY => Some(false),
            None => None,
        }
    }

    /// The history after the cursor moved to `cursor` at `at`.
    pub fn after_move(history: &[AckMark], cursor: Seq, at: Timestamp) -> Vec<AckMark> {
        std::iter::once(AckMark { cursor, at })
            .chain(history.iter().copied())
            .take(ACK_HISTORY)
            .collect()
    }

    /// How adapters keep the history: `"cursor:at,cursor:at"`, newest
    /// first.
    pub fn encode_history(history: &[AckMark]) -> String {
        history
            .iter()
            .map(|m| format!("{}:{}", m.cursor, m.at.millis()))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn decode_history(text: &str) -> StoreResult<Vec<AckMark>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        text.split(',')
            .map(|mark| {
                let (cursor, at) = mark.split_once(':')?;
                Some(AckMark {
                    cursor: cursor.parse().ok()?,
                    at: Timestamp(at.parse().ok()?),
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StoreError::Corrupt("acknowledgement history".into()))
    }
}

/// A page token that an adapter could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPageToken;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores `candidate` under `fingerprint`, unless the fingerprint is
    /// already registered, in which case the existing client is returned.
    /// Concurrent calls with one fingerprint create one client.
    async fn register_client(
        &self,
        fingerprint: [u8; 32],
        candidate: ClientRecord,
    ) -> StoreResult<Registration>;

    /// Records an authenticated request at `now` (last seen) and, when a
    /// charge is given, charges it to that bucket. A refused request
    /// changes nothing. A client whose credential generation is not
    /// `generation` (rotated or deleted) is unknown.
    async fn touch_client(
        &self,
        id: ClientId,
        generation: u32,
        now: Timestamp,
        charge: Option<RateCharge>,
    ) -> StoreResult<Touch>;

    /// Rotates a client's credentials: one generation up, a new personal
    /// key (the old one kept as retired while messages may need it), and
    /// optionally a new fingerprint.
    async fn rotate_client(&self, rotation: Rotation) -> StoreResult<Rotated>;

    /// Deletes a client: its record, fingerprint entry, tags, inbox and
    /// outbox.
    /// Its tokens stop working before anything else is removed; a deletion
    /// interrupted part-way is finished by the next [`Store::purge`].
    async fn delete_client(&self, id: ClientId) -> StoreResult<Deleted>;

    /// Counts one request under `key` in the current fixed window of
    /// `limit`, unless the window is full. At most one write.
    async fn count_request(
        &self,
        key: &str,
        limit: WindowLimit,
        now: Timestamp,
    ) -> StoreResult<Counted>;

    /// Fetches clients by id; unknown ids are left out.
    async fn load_clients(&self, ids: &[ClientId]) -> StoreResult<Vec<ClientRecord>>;

    /// Appends to one of a client's mailboxes at the next sequence number.
    async fn append(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        dedup: Dedup,
        seal: Sealer,
    ) -> StoreResult<Appended>;

    /// Which of `ids` already hold a message appended under `dedup_key`:
    /// lets a redelivered fan-out job skip them before sealing anything.
    async fn already_appended(
        &self,
        mailbox: Mailbox,
        ids: &[ClientId],
        dedup_key: &str,
    ) -> StoreResult<HashSet<ClientId>>;

    /// Messages with `seq > after`, ascending, within `limit`. Reads are
    /// strongly consistent. The result may have gaps where a message is
    /// still being written; callers that must not skip check contiguity.
    async fn read_page(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        after: Seq,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>>;

    /// At most `count` messages with `seq > after`, whatever their size.
    async fn read(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        after: Seq,
        count: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.read_page(mailbox, id, after, ReadLimit::count(count))
            .await
    }

    /// Moves the acknowledged cursor forward to `upto` (never backwards),
    /// adds the move to the client's [`AckState::history`] and records the
    /// contact at `now`; like [`Store::touch_client`], only
    /// for the client's current credential generation.
    async fn acknowledge(
        &self,
        id: ClientId,
        generation: u32,
        upto: Seq,
        now: Timestamp,
    ) -> StoreResult<AckOutcome>;

    /// Clients `limit` at a time, each exactly once across pages, in the
    /// store's own order.
    async fn list_clients(
        &self,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>>;

    /// Replaces a client's tags (already validated, distinct, sorted);
    /// `None` when the client is unknown or deleted.
    async fn set_tags(&self, id: ClientId, tags: &[String]) -> StoreResult<Option<Vec<String>>>;

    /// Like [`Store::list_clients`], only the clients carrying `tag`, found
    /// through the tag's own index (never a scan of every client).
    async fn list_tagged(
        &self,
        tag: &str,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>>;

    /// Up to `limit` clients of a tag or everyone audience
    /// ([`Audience::Clients`] is never enumerated), in pages, each client
    /// once across the whole enumeration, leaving out clients created after
    /// `registered_by` and deleted ones. A client carrying several of the
    /// tags counts under the first of them, in the order given.
    async fn audience_page(
        &self,
        audience: &Audience,
        registered_by: Timestamp,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<AudiencePage, BadPageToken>>;

    /// Saves a publish's header, unless one is saved under its id already
    /// (a retried publish keeps the first).
    async fn save_publish(&self, header: &PublishHeader) -> StoreResult<()>;

    /// Saves a page of a publish's recipients unless that page number is
    /// saved already, and returns the page as stored (the earlier one, if
    /// any). The publish's header is saved first: records are forgotten
    /// through it.
    async fn save_recipient_page(
        &self,
        publish_id: &str,
        page: RecipientPage,
    ) -> StoreResult<RecipientPage>;

    /// Records that the step after page `number` is enqueued.
    async fn mark_page_continued(&self, publish_id: &str, number: u32) -> StoreResult<()>;

    /// Records that the enumeration ended; the first call wins, like
    /// pages are written once.
    async fn finish_enumeration(&self, publish_id: &str, enumerated: Enumerated)
        -> StoreResult<()>;

    /// The header and every page saved so far; `None` for an unknown (or
    /// forgotten) publish id.
    async fn load_publish(&self, publish_id: &str) -> StoreResult<Option<PublishState>>;

    /// For the recipients among `ids` holding a message appended under
    /// `dedup_key`, its sequence number. Unlike [`Store::already_appended`]
    /// this is also right after cleanup removed the message.
    async fn appended_seqs(
        &self,
        mailbox: Mailbox,
        ids: &[ClientId],
        dedup_key: &str,
    ) -> StoreResult<std::collections::HashMap<ClientId, Seq>>;

    /// The acknowledgement state of the known, undeleted clients among
    /// `ids` (others are left out).
    async fn ack_states(
        &self,
        ids: &[ClientId],
    ) -> StoreResult<std::collections::HashMap<ClientId, AckState>>;

    /// Claims a publish idempotency key at `now`, unless an unexpired
    /// record holds it (records older than `expired_before` are free).
    async fn claim_publish_key(
        &self,
        key: &str,
        record: PublishRecord,
        expired_before: Timestamp,
    ) -> StoreResult<KeyClaim>;

    /// Marks a claimed key's publish as fully enqueued.
    async fn complete_publish_key(&self, key: &str) -> StoreResult<()>;

    /// Retention: deletes acknowledged inbox messages and sent messages
    /// older than the cutoffs, turns expired unacknowledged inbox messages
    /// into tombstones (the position stays, the body goes), forgets expired
    /// idempotency keys and old publish records. Never removes an
    /// unacknowledged inbox message that has not expired. Stops early at the
    /// deadline set with [`crate::retry::within`], if any; a later call
    /// resumes.
    async fn purge(&self, cutoffs: Cutoffs) -> StoreResult<Purged>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u32, retired: &[(u32, i64)]) -> ClientRecord {
        ClientRecord {
            id: ClientId::new(),
            name: None,
            wrapped_key: vec![generation as u8],
            created_at: Timestamp(0),
            generation,
            retired_keys: retired
                .iter()
                .map(|&(generation, at)| RetiredKey {
                    generation,
                    wrapped_key: vec![generation as u8],
                    retired_at: Timestamp(at),
                })
                .collect(),
        }
    }

    fn generations(keys: &[RetiredKey]) -> Vec<u32> {
        keys.iter().map(|k| k.generation).collect()
    }

    #[test]
    fn rotation_keeps_needed_and_recent_keys_and_retires_the_current_one() {
        let r = record(3, &[(0, 10), (1, 20), (2, 500)]);
        let kept =
            RetiredKey::after_rotation(&r, Timestamp(1000), Timestamp(100), &HashSet::from([0]));
        // 0 is in use, 1 is neither, 2 is recent, 3 is retired now.
        assert_eq!(generations(&kept), [0, 2, 3]);
        assert_eq!(kept[2].retired_at, Timestamp(1000));
        assert_eq!(kept[2].wrapped_key, vec![3]);
    }

    #[test]
    fn rotating_in_a_loop_never_drops_a_key_a_message_needs() {
        let mut r = record(0, &[]);
        for now in 1..=40 {
            let kept =
                RetiredKey::after_rotation(&r, Timestamp(now), Timestamp(0), &HashSet::from([0]));
            r = ClientRecord {
                generation: r.generation + 1,
                wrapped_key: vec![r.generation as u8 + 1],
                retired_keys: kept,
                ..r
            };
            assert!(r.retired_keys.len() <= MAX_RETIRED_KEYS);
            assert!(r.wrapped_key_of(0).is_some(), "after {now} rotations");
        }
        assert_eq!(r.retired_keys.last().unwrap().generation, 39);
    }

    #[test]
    fn retired_keys_survive_their_encoding() {
        let r = record(5, &[(1, 10), (4, 20)]);
        let text = RetiredKey::encode_all(&r.retired_keys);
        assert_eq!(RetiredKey::decode_all(&text).unwrap(), r.retired_keys);
        assert!(RetiredKey::decode_all("[{\"generation\": -1}]").is_err());
    }
}
