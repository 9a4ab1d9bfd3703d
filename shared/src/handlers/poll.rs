//! `GET /messages/poll`: answers at once with the messages after a cursor,
//! or "nothing new". One store call when there is nothing new (the client
//! row carries the newest sequence number), two when there is.
//!
//! A page is the unbroken run of ids right after the cursor, and its JSON
//! body stays within [`MAX_POLL_BODY_BYTES`] (at least one message when
//! one is pending). Unbroken matters because a store's range read may see
//! message `n + 1` while `n` is still committing (a DynamoDB `Query` is
//! only read-committed against transactions): a page that skipped `n`
//! would move the client's cursor past it for good.
//!
//! Expired messages (publish `ttl_secs`) are left out but covered: their ids
//! stay taken, and `next_cursor` moves past them, so a page may even hold no
//! message at all. They are told from a message still being written because
//! their rows stay (cleanup keeps an expired message's position as a
//! tombstone until the cursor passes it).

use super::auth::ClientAuth;
use super::input::{query_number, query_pairs};
use crate::clock::Timestamp;
use crate::crypto::encode_base64;
use crate::crypto::{canonical_aad, open, seal, ServerKeys};
use crate::domain::{Seq, DEFAULT_POLL_LIMIT, MAX_POLL_BODY_BYTES, MAX_POLL_LIMIT};
use crate::envelope::delivered_aad;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{self, PollOutcome};
use crate::store::{Bucket, ClientRecord, Mailbox, RateCharge, ReadLimit, StoredMessage, Touch};
use crate::App;
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollInput {
    /// `None`: start after the client's acknowledged cursor.
    pub cursor: Option<Seq>,
    pub limit: u32,
}

impl PollInput {
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let pairs = query_pairs(query);
        Ok(PollInput {
            cursor: query_number(&pairs, "cursor", 0..=i64::MAX as u64, None)?,
            limit: query_number(
                &pairs,
                "limit",
                1..=u64::from(MAX_POLL_LIMIT),
                Some(u64::from(DEFAULT_POLL_LIMIT)),
            )?
            .unwrap_or(u64::from(DEFAULT_POLL_LIMIT)) as u32,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveredMessage {
    pub id: Seq,
    #[serde(rename = "type")]
    pub kind: String,
    pub ciphertext: String,
    pub nonce: String,
    pub tag: String,
    pub aad: Map<String, Value>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    Messages {
        messages: Vec<DeliveredMessage>,
        next_cursor: Seq,
    },
    Nothing,
}

pub async fn poll(app: &App, client: &ClientAuth, input: PollInput) -> Result<Polled, ApiError> {
    let polled = poll_inbox(app, client, input).await;
    match &polled {
        Ok(Polled::Nothing) => metrics::poll(PollOutcome::Empty),
        Ok(Polled::Messages { .. }) => metrics::poll(PollOutcome::Messages),
        Err(e) if e.code == ErrorCode::RateLimited => metrics::poll(PollOutcome::RateLimited),
        Err(_) => {}
    }
    polled
}

async fn poll_inbox(app: &App, client: &ClientAuth, input: PollInput) -> Result<Polled, ApiError> {
    let id = client.id();
    let state = match app
        .store
        .touch_client(
            id,
            client.generation(),
            app.clock.now(),
            app.poll_rate_limit.map(|limit| RateCharge {
                bucket: Bucket::Poll,
                limit,
            }),
        )
        .await?
    {
        Touch::Known(state) => state,
        Touch::RateLimited { retry_after } => return Err(ApiError::rate_limited(retry_after)),
        Touch::UnknownClient => return Err(ApiError::unauthorized()),
    };
    let after = input.cursor.unwrap_or(state.acked);
    if state.head <= after {
        return Ok(Polled::Nothing);
    }
    // Base64 makes the body a third larger than the sealed bytes; read
    // little more than a page can hold.
    let limit = ReadLimit {
        count: input.limit,
        bytes: MAX_POLL_BODY_BYTES / 4 * 3,
    };
    let mut stored = app
        .store
        .read_page(Mailbox::Inbox, id, after, limit)
        .await?;
    // A message sealed for a generation newer than this poll's token (the
    // client rotated while the poll was under way) is for the new
    // credentials: the page ends before it, and the next poll gets it.
    if let Some(newer) = stored
        .iter()
        .position(|m| m.key_generation > state.record.generation)
    {
        stored.truncate(newer);
    }
    let now = app.clock.now();
    current_key(app.keys(), &state.record, &mut stored, now);
    let (messages, covered) = page(id, after, state.acked, stored, now);
    if covered == after {
        return Ok(Polled::Nothing);
    }
    Ok(Polled::Messages {
        messages,
        next_cursor: covered,
    })
}

/// Re-seals, under the client's current personal key, the messages sealed
/// under a key its credentials have since rotated away from, so a rotated
/// client reads everything with its one key. Pure computation: nothing is
/// written back, and it only happens for messages pending at a rotation.
/// A message that cannot be re-sealed (its retired key was dropped) is
/// logged and handed out as stored: the client reports it undecryptable
/// and moves on, rather than every poll failing on it.
fn current_key(
    keys: &ServerKeys,
    record: &ClientRecord,
    stored: &mut [StoredMessage],
    now: Timestamp,
) {
    let stale = |m: &&mut StoredMessage| m.key_generation != record.generation && !m.expired(now);
    if !stored.iter_mut().any(|m| stale(&m)) {
        return;
    }
    let Ok(current) = keys.unwrap_personal_key(record.id, &record.wrapped_key) else {
        tracing::error!(client_id = %record.id, "personal key does not unwrap (wrong WRAPPING_KEY?)");
        return;
    };
    for m in stored.iter_mut().filter(stale) {
        let aad = canonical_aad(&delivered_aad(record.id, m.created_at, m.seq));
        let plaintext = record
            .wrapped_key_of(m.key_generation)
            .and_then(|wrapped| keys.unwrap_personal_key(record.id, wrapped).ok())
            .zip(aad.as_ref().ok())
            .and_then(|(old, aad)| open(&old, &m.body, aad).ok());
        match (plaintext, aad) {
            (Some(plaintext), Ok(aad)) => {
                m.body = seal(&current, &plaintext, &aad);
                m.key_generation = record.generation;
            }
            _ => tracing::error!(
                client_id = %record.id,
                message_id = m.seq,
                key_generation = m.key_generation,
                "a message sealed before a rotation cannot be re-sealed; delivering it as stored"
            ),
        }
    }
}

/// The bytes of `{"messages":[],"next_cursor":<u64>}` around the messages.
const ENVELOPE_BYTES: usize = 64;

/// The contiguous run of messages right after `after`, within the body
/// limit, with expired ones left out, and the id the run covers up to. Ids
/// at or below the acknowledged cursor may be gone (cleanup removed them),
/// so only a gap above it stops the page.
fn page(
    id: crate::domain::ClientId,
    after: Seq,
    acked: Seq,
    stored: Vec<StoredMessage>,
    now: Timestamp,
) -> (Vec<DeliveredMessage>, Seq) {
    let mut messages = Vec::with_capacity(stored.len());
    let mut bytes = ENVELOPE_BYTES;
    let mut previous = after;
    for m in stored {
        if m.seq > previous + 1 && m.seq - 1 > acked {
            tracing::info!(client_id = %id, missing = previous + 1, "page stops before a message still being written");
            break;
        }
        if m.expired(now) {
            previous = m.seq;
            continue;
        }
        let message = DeliveredMessage {
            id: m.seq,
            kind: m.kind,
            ciphertext: encode_base64(&m.body.ciphertext),
            nonce: encode_base64(&m.body.nonce),
            tag: encode_base64(&m.body.tag),
            aad: delivered_aad(id, m.created_at, m.seq),
            created_at: m.created_at.to_rfc3339(),
        };
        // One more comma between messages.
        bytes += serde_json::to_vec(&message).map_or(usize::MAX, |v| v.len()) + 1;
        if !messages.is_empty() && bytes > MAX_POLL_BODY_BYTES {
            break;
        }
        previous = m.seq;
        messages.push(message);
    }
    (messages, previous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Sealed;
    use crate::domain::ClientId;

    fn stored(seq: Seq, expires_at: Option<i64>) -> StoredMessage {
        StoredMessage {
            seq,
            kind: "t".into(),
            body: Sealed {
                ciphertext: vec![1, 2, 3],
                nonce: [0; 12],
                tag: [0; 16],
            },
            created_at: Timestamp(1),
            key_generation: 0,
            expires_at: expires_at.map(Timestamp),
        }
    }

    fn ids(messages: &[DeliveredMessage]) -> Vec<Seq> {
        messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn expired_messages_are_left_out_but_covered() {
        let (id, now) = (ClientId::new(), Timestamp(100));
        let (messages, covered) = page(
            id,
            0,
            0,
            vec![stored(1, Some(100)), stored(2, Some(101)), stored(3, None)],
            now,
        );
        assert_eq!((ids(&messages), covered), (vec![2, 3], 3));
        // A page of nothing but expired messages still moves the cursor.
        let (messages, covered) = page(
            id,
            4,
            4,
            vec![stored(5, Some(50)), stored(6, Some(99))],
            now,
        );
        assert_eq!((ids(&messages), covered), (vec![], 6));
        // An expired message does not excuse a gap after it.
        let (messages, covered) = page(id, 0, 0, vec![stored(1, Some(50)), stored(3, None)], now);
        assert_eq!((ids(&messages), covered), (vec![], 1));
    }
}
