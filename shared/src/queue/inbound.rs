//! The inbound port: every message a client sends is also announced on a
//! queue, so the stack owner's own code can react at once instead of
//! polling `GET /clients/{client_id}/sent`.
//!
//! A [`SentNotice`] names the message (`client_id`, `id`), its plaintext
//! `type` and when it was stored; it never carries the payload, which the
//! admin reads with `/sent`. On AWS the notices go to a FIFO queue
//! ([`super::SqsInbound`]): one message group per client keeps each
//! client's notices in order, and the deduplication id
//! `<client_id>:<id>` makes SQS drop the repeat of a notice sent again
//! within its 5-minute window (a retried send, a retried `SendMessage`).
//! The embedded server has no inbound queue: notifications are an AWS
//! feature.

use super::QueueError;
use crate::clock::Timestamp;
use crate::domain::{ClientId, Seq};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// "This client sent message `id`": what the inbound queue carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentNotice {
    pub client_id: ClientId,
    /// The message's id in the client's outbox (what `/sent` pages by).
    pub id: Seq,
    /// The plaintext `type` of the message.
    pub kind: String,
    /// When the message was stored (the `created_at` `/sent` shows).
    pub created_at: Timestamp,
}

/// The JSON form of a notice, in this field order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticeWire {
    client_id: String,
    id: Seq,
    #[serde(rename = "type")]
    kind: String,
    created_at: String,
}

impl SentNotice {
    /// `{"client_id", "id", "type", "created_at"}`; `created_at` in the
    /// API's RFC 3339 form (`2026-11-25T23:50:12.517Z`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&NoticeWire {
            client_id: self.client_id.to_string(),
            id: self.id,
            kind: self.kind.clone(),
            created_at: self.created_at.to_rfc3339(),
        })
        .expect("serializing a notice cannot fail")
    }

    pub fn from_json(text: &str) -> Result<SentNotice, String> {
        let wire: NoticeWire = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(SentNotice {
            client_id: ClientId::parse(&wire.client_id)
                .ok_or_else(|| format!("client_id {:?} is not a UUID", wire.client_id))?,
            id: wire.id,
            kind: wire.kind,
            created_at: Timestamp::parse_rfc3339(&wire.created_at)
                .ok_or_else(|| format!("created_at {:?} is not RFC 3339", wire.created_at))?,
        })
    }

    /// The FIFO message group: one per client, so each client's notices
    /// arrive in the order its messages were stored, and clients do not
    /// wait on each other.
    pub fn group_id(&self) -> String {
        self.client_id.to_string()
    }

    /// The FIFO deduplication id, the same for every notice of one
    /// message: `<client_id>:<id>` (at most 57 of the 128 characters SQS
    /// allows).
    pub fn deduplication_id(&self) -> String {
        format!("{}:{}", self.client_id, self.id)
    }
}

#[async_trait]
pub trait Inbound: Send + Sync + 'static {
    /// Puts the notice on the queue. `Ok` means it is there (or a notice of
    /// the same message was, moments ago). [`QueueError::Unavailable`]:
    /// transient failures outlasted the retry budget, and sending the same
    /// notice again later is safe; [`QueueError::Refused`]: the queue said
    /// no for good (missing queue, no permission).
    async fn notify(&self, notice: SentNotice) -> Result<(), QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> SentNotice {
        SentNotice {
            client_id: ClientId::parse("3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13").unwrap(),
            id: 42,
            kind: "battery".into(),
            created_at: Timestamp(1_764_114_612_517),
        }
    }

    #[test]
    fn the_wire_form_is_the_documented_one() {
        let n = notice();
        assert_eq!(
            n.to_json(),
            r#"{"client_id":"3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13","id":42,"type":"battery","created_at":"2025-11-25T23:50:12.517Z"}"#
        );
        assert_eq!(SentNotice::from_json(&n.to_json()).unwrap(), n);
        // No payload, and nothing else either.
        assert!(SentNotice::from_json(
            r#"{"client_id":"3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13","id":1,"type":"t","created_at":"2025-11-25T23:50:12.517Z","payload":1}"#
        )
        .is_err());
        assert!(SentNotice::from_json("{}").is_err());
    }

    #[test]
    fn one_group_per_client_and_one_dedup_id_per_message() {
        let n = notice();
        assert_eq!(n.group_id(), "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13");
        assert_eq!(
            n.deduplication_id(),
            "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13:42"
        );
        // Another type or time does not make it another message.
        let again = SentNotice {
            kind: "other".into(),
            created_at: Timestamp(0),
            ..n.clone()
        };
        assert_eq!(again.deduplication_id(), n.deduplication_id());
        let next = SentNotice {
            id: 43,
            ..n.clone()
        };
        assert_ne!(next.deduplication_id(), n.deduplication_id());
        // SQS allows 128 characters; the longest id fits.
        let longest = SentNotice {
            id: u64::MAX,
            ..n.clone()
        };
        assert!(longest.deduplication_id().len() <= 128);
    }
}
