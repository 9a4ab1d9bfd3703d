//! `GET /messages/publish/{publish_id}` (admin): how far a publish got.
//!
//! Nothing is counted while messages flow: no write per delivery, poll or
//! ack. A status call reads the publish's pages of recipients, the
//! idempotency markers the fan-out left (one per delivered recipient, with
//! the message's id there) and the recipients' acknowledged cursors, and
//! classifies each recipient. What that costs is in `docs/architecture.md`.

use super::auth::AdminAuth;
use super::input::{query_number, query_pairs};
use crate::clock::Timestamp;
use crate::domain::{ClientId, Seq};
use crate::error::ApiError;
use crate::store::{AckState, Mailbox, PublishState};
use crate::App;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;

pub const DEFAULT_RECIPIENT_LIMIT: u32 = 100;
pub const MAX_RECIPIENT_LIMIT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInput {
    /// Also list recipients: `limit` of them from `offset`.
    pub recipients: Option<RecipientWindow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientWindow {
    pub offset: usize,
    pub limit: u32,
}

impl StatusInput {
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let pairs = query_pairs(query);
        let wanted = query_number(&pairs, "recipients", 0..=1, Some(0))? == Some(1);
        if !wanted {
            return Ok(StatusInput { recipients: None });
        }
        let limit = query_number(
            &pairs,
            "limit",
            1..=u64::from(MAX_RECIPIENT_LIMIT),
            Some(u64::from(DEFAULT_RECIPIENT_LIMIT)),
        )?
        .unwrap_or(u64::from(DEFAULT_RECIPIENT_LIMIT)) as u32;
        let offset = match pairs.iter().rev().find(|(k, _)| k == "page_token") {
            None => 0,
            Some((_, token)) if token.is_empty() => 0,
            Some((_, token)) => decode_token(token).ok_or_else(|| {
                ApiError::validation("page_token is not a token this endpoint issued")
            })?,
        };
        Ok(StatusInput {
            recipients: Some(RecipientWindow { offset, limit }),
        })
    }
}

/// Page tokens are a position in the publish's recipient list; the prefix
/// keeps them from being mistaken for a count.
fn encode_token(offset: usize) -> String {
    format!("r{offset}")
}

fn decode_token(token: &str) -> Option<usize> {
    token.strip_prefix('r')?.parse().ok()
}

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    Pending,
    Delivered,
    Acknowledged,
    Expired,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientStatus {
    pub client_id: String,
    pub message_id: Option<Seq>,
    pub status: RecipientState,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublishStatus {
    pub publish_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: String,
    pub audience: Value,
    pub expires_at: Option<String>,
    pub recipients: Option<u64>,
    /// Recipients whose inbox holds (or held) the message: acknowledged
    /// ones included.
    pub delivered: u64,
    pub acknowledged: u64,
    pub expired: u64,
    pub unknown: u64,
    pub pending: u64,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_status: Option<Vec<RecipientStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

fn no_such_publish() -> ApiError {
    ApiError::no_such("no such publish (unknown, or older than its status is kept)")
}

pub async fn publish_status(
    app: &App,
    _admin: &AdminAuth,
    publish_id: &str,
    input: StatusInput,
) -> Result<PublishStatus, ApiError> {
    // Ids are UUIDs; anything else cannot name a publish.
    let publish_id = uuid::Uuid::parse_str(publish_id)
        .map_err(|_| no_such_publish())?
        .to_string();
    let state = app
        .store
        .load_publish(&publish_id)
        .await?
        .ok_or_else(no_such_publish)?;
    let recipients = distinct_recipients(&state);
    let seqs = app
        .store
        .appended_seqs(
            Mailbox::Inbox,
            &recipients,
            &format!("publish:{publish_id}"),
        )
        .await?;
    let acks = app.store.ack_states(&recipients).await?;
    let now = app.clock.now();
    let header = &state.header;
    let statuses: Vec<RecipientStatus> = recipients
        .iter()
        .map(|id| {
            let seq = seqs.get(id).copied();
            RecipientStatus {
                client_id: id.to_string(),
                message_id: seq,
                status: classify(seq, acks.get(id), header.expires_at, now),
            }
        })
        .collect();
    let count = |s: RecipientState| statuses.iter().filter(|r| r.status == s).count() as u64;
    let acknowledged = count(RecipientState::Acknowledged);
    let pending = count(RecipientState::Pending);
    let settled = statuses.len() as u64 - pending;
    let state_name = match header.enumerated {
        Some(_) if pending == 0 => "done",
        _ if settled == 0 => "queued",
        _ => "delivering",
    };
    let (recipient_status, next_page_token) = match input.recipients {
        None => (None, None),
        Some(window) => {
            let end = window
                .offset
                .saturating_add(window.limit as usize)
                .min(statuses.len());
            let page = statuses
                .get(window.offset.min(end)..end)
                .unwrap_or_default()
                .to_vec();
            // More may follow while an audience is still being enumerated,
            // so the token is handed out then even at the current end.
            let more = end < statuses.len() || header.enumerated.is_none();
            (Some(page), more.then(|| encode_token(end)))
        }
    };
    Ok(PublishStatus {
        publish_id,
        kind: header.kind.clone(),
        created_at: header.created_at.to_rfc3339(),
        audience: header.audience.to_json(),
        expires_at: header.expires_at.map(Timestamp::to_rfc3339),
        recipients: header.enumerated.map(|e| e.recipients),
        delivered: count(RecipientState::Delivered) + acknowledged,
        acknowledged,
        expired: count(RecipientState::Expired),
        unknown: count(RecipientState::Unknown),
        pending,
        state: state_name,
        recipient_status,
        next_page_token,
    })
}

/// Every recipient once, in page order (a client whose tags changed while
/// its audience was enumerated could be on two pages).
fn distinct_recipients(state: &PublishState) -> Vec<ClientId> {
    let mut seen = HashSet::new();
    state
        .pages
        .iter()
        .flat_map(|p| p.recipients.iter().copied())
        .filter(|id| seen.insert(*id))
        .collect()
}

/// One recipient's state, from the message id the fan-out gave it (if it
/// got that far), its acknowledgement state (none: no such client now) and
/// the message's expiry.
pub fn classify(
    seq: Option<Seq>,
    ack: Option<&AckState>,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> RecipientState {
    let Some(ack) = ack else {
        return RecipientState::Unknown;
    };
    let expired_at = expires_at.filter(|at| *at <= now);
    match (seq, expired_at) {
        (None, Some(_)) => RecipientState::Expired,
        (None, None) => RecipientState::Pending,
        (Some(seq), None) if ack.acked >= seq => RecipientState::Acknowledged,
        (Some(_), None) => RecipientState::Delivered,
        // The cursor moves past expired ids too (a client acknowledges the
        // pages that skipped them), so what counts is whether it had
        // passed the message when it expired. A history too short to tell
        // gives the client the benefit of the doubt.
        (Some(seq), Some(at)) => match ack.acked_by(seq, at) {
            Some(false) => RecipientState::Expired,
            Some(true) | None => RecipientState::Acknowledged,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AckMark;

    fn ack(acked: Seq, history: &[(Seq, i64)]) -> AckState {
        AckState {
            acked,
            history: history
                .iter()
                .map(|&(cursor, at)| AckMark {
                    cursor,
                    at: Timestamp(at),
                })
                .collect(),
        }
    }

    #[test]
    fn recipients_are_classified_by_marker_cursor_and_expiry() {
        use RecipientState::*;
        let now = Timestamp(10_000);
        let a = ack(5, &[(5, 9_000), (3, 2_000)]);
        assert_eq!(classify(None, None, None, now), Unknown);
        assert_eq!(classify(Some(4), None, None, now), Unknown);
        assert_eq!(classify(None, Some(&a), None, now), Pending);
        assert_eq!(
            classify(None, Some(&a), Some(Timestamp(9_999)), now),
            Expired
        );
        assert_eq!(classify(Some(6), Some(&a), None, now), Delivered);
        assert_eq!(classify(Some(5), Some(&a), None, now), Acknowledged);
        // Not yet expired: the cursor decides.
        assert_eq!(
            classify(Some(6), Some(&a), Some(Timestamp(20_000)), now),
            Delivered
        );
        // Expired: acknowledged only if the cursor had passed it by then.
        assert_eq!(
            classify(Some(3), Some(&a), Some(Timestamp(5_000)), now),
            Acknowledged
        );
        assert_eq!(
            classify(Some(4), Some(&a), Some(Timestamp(5_000)), now),
            Expired
        );
        assert_eq!(
            classify(Some(6), Some(&a), Some(Timestamp(5_000)), now),
            Expired
        );
        // A full history that starts after the expiry cannot tell.
        let busy = ack(9, &[(9, 9_000), (8, 8_000), (7, 7_000), (6, 6_000)]);
        assert_eq!(
            classify(Some(5), Some(&busy), Some(Timestamp(5_000)), now),
            Acknowledged
        );
        // A short one can: the cursor was at 0 before its first move.
        let fresh = ack(9, &[(9, 9_000)]);
        assert_eq!(
            classify(Some(5), Some(&fresh), Some(Timestamp(5_000)), now),
            Expired
        );
    }

    #[test]
    fn recipient_pages_are_read_from_the_query() {
        assert_eq!(StatusInput::from_query(None).unwrap().recipients, None);
        let input = StatusInput::from_query(Some("recipients=1&limit=5&page_token=r10")).unwrap();
        assert_eq!(
            input.recipients,
            Some(RecipientWindow {
                offset: 10,
                limit: 5
            })
        );
        assert!(StatusInput::from_query(Some("recipients=1&page_token=10")).is_err());
        assert!(StatusInput::from_query(Some("recipients=1&limit=1001")).is_err());
        assert!(StatusInput::from_query(Some("recipients=2")).is_err());
    }
}
