//! `GET /messages/poll`: answers at once with the messages after a cursor,
//! or "nothing new". One store call when there is nothing new (the client
//! row carries the newest sequence number), two when there is.

use super::auth::ClientAuth;
use super::input::{query_number, query_pairs};
use crate::crypto::encode_base64;
use crate::domain::{Seq, DEFAULT_POLL_LIMIT, MAX_POLL_LIMIT};
use crate::envelope::delivered_aad;
use crate::error::ApiError;
use crate::store::{Mailbox, Touch};
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
    let id = client.id();
    let state = match app
        .store
        .touch_client(id, app.clock.now(), app.poll_rate_limit)
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
    let stored = app
        .store
        .read(Mailbox::Inbox, id, after, input.limit)
        .await?;
    let Some(last) = stored.last().map(|m| m.seq) else {
        return Ok(Polled::Nothing);
    };
    let messages = stored
        .into_iter()
        .map(|m| DeliveredMessage {
            id: m.seq,
            kind: m.kind,
            ciphertext: encode_base64(&m.body.ciphertext),
            nonce: encode_base64(&m.body.nonce),
            tag: encode_base64(&m.body.tag),
            aad: delivered_aad(id, m.created_at, m.seq),
            created_at: m.created_at.to_rfc3339(),
        })
        .collect();
    Ok(Polled::Messages {
        messages,
        next_cursor: last,
    })
}
