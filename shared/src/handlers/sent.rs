//! `GET /clients/{client_id}/sent`: what a client sent, for the admin, in
//! ascending id order. The server opens its at-rest seal and answers with
//! the plaintext type, payload and aad (the admin reads over TLS).
//!
//! A page is bounded by count and by bytes like a poll's, and it never
//! steps over a message still being written: a gap in the ids is crossed
//! only when the message after it is old enough that nothing before it can
//! still be in flight (ids below it were removed by retention).

use super::auth::AdminAuth;
use super::input::{query_number, query_pairs};
use super::send::{open_sent, SentMessage};
use crate::clock::Timestamp;
use crate::domain::{ClientId, Seq, DEFAULT_POLL_LIMIT, MAX_POLL_BODY_BYTES, MAX_POLL_LIMIT};
use crate::error::ApiError;
use crate::store::{Mailbox, ReadLimit, StoredMessage};
use crate::App;
use serde::Serialize;
use serde_json::{Map, Value};

/// A message written this long ago has committed (or its write failed and
/// was retried under the same id) long since: the request budget is 6 s.
const SETTLED_MS: i64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentInput {
    pub after: Seq,
    pub limit: u32,
}

impl SentInput {
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let pairs = query_pairs(query);
        Ok(SentInput {
            after: query_number(&pairs, "after", 0..=i64::MAX as u64, Some(0))?.unwrap_or(0),
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SentView {
    pub id: Seq,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Value,
    pub aad: Map<String, Value>,
    pub created_at: String,
}

impl From<SentMessage> for SentView {
    fn from(m: SentMessage) -> SentView {
        SentView {
            id: m.id,
            kind: m.kind,
            payload: m.payload,
            aad: m.aad,
            created_at: m.created_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SentPage {
    Messages {
        messages: Vec<SentView>,
        next_after: Seq,
    },
    Nothing,
}

fn no_such_client() -> ApiError {
    ApiError::no_such("no such client")
}

pub async fn read_sent(
    app: &App,
    _admin: &AdminAuth,
    client_id: &str,
    input: SentInput,
) -> Result<SentPage, ApiError> {
    let id = ClientId::parse(client_id).ok_or_else(no_such_client)?;
    // Base64 is not involved here, but JSON escaping can grow a payload;
    // read a little less than a page may hold.
    let limit = ReadLimit {
        count: input.limit,
        bytes: MAX_POLL_BODY_BYTES / 4 * 3,
    };
    let stored = app
        .store
        .read_page(Mailbox::Outbox, id, input.after, limit)
        .await?;
    let messages = page(app, id, input.after, stored)?;
    let Some(next_after) = messages.last().map(|m| m.id) else {
        // Nothing new, or no such client: one more call tells which.
        return if app.store.load_clients(&[id]).await?.is_empty() {
            Err(no_such_client())
        } else {
            Ok(SentPage::Nothing)
        };
    };
    Ok(SentPage::Messages {
        messages,
        next_after,
    })
}

/// The bytes of `{"messages":[],"next_after":<u64>}` around the messages.
const ENVELOPE_BYTES: usize = 64;

fn page(
    app: &App,
    id: ClientId,
    after: Seq,
    stored: Vec<StoredMessage>,
) -> Result<Vec<SentView>, ApiError> {
    let settled_before = app.clock.now().plus_millis(-SETTLED_MS);
    let mut messages = Vec::with_capacity(stored.len());
    let mut bytes = ENVELOPE_BYTES;
    let mut previous = after;
    for m in stored {
        if m.seq > previous + 1 && !settled(m.created_at, settled_before) {
            tracing::info!(client_id = %id, missing = previous + 1, "sent page stops before a message still being written");
            break;
        }
        let view = SentView::from(open_sent(app.keys(), id, &m)?);
        bytes += serde_json::to_vec(&view).map_or(usize::MAX, |v| v.len()) + 1;
        if !messages.is_empty() && bytes > MAX_POLL_BODY_BYTES {
            break;
        }
        previous = m.seq;
        messages.push(view);
    }
    Ok(messages)
}

fn settled(created_at: Timestamp, settled_before: Timestamp) -> bool {
    created_at < settled_before
}
