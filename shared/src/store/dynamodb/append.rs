//! How an append is written: read the head, then one transaction that
//! advances the head if it has not moved, puts the message, and puts the
//! idempotency marker if it does not exist yet. A message that expires
//! (`expires_at`, ms) also flags an inbox for cleanup's expiry pass, in the
//! same update of the client (`inbox_expiring`, see `cleanup.rs`).

use super::call::{backend, built, reason_code, send, Transaction};
use super::cleanup::EXPIRING;
use super::clients::{is_deleted, DELETED};
use super::item::*;
use super::{head_attribute, marker_id, DynamoStore};
use crate::domain::{ClientId, Seq};
use crate::retry;
use crate::store::*;
use aws_sdk_dynamodb::types::{
    Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};

/// How long an idempotency marker lives: longer than SQS keeps a message
/// (14 days at most), so no redelivery can outlive its marker.
const DEDUP_TTL_SECS: i64 = 15 * 24 * 3600;

fn duplicate(item: &Item, dedup: &Dedup) -> StoreResult<Appended> {
    Ok(Appended::Duplicate {
        seq: get_n(item, "seq")?,
        same_content: get_b(item, "digest")? == dedup.digest,
    })
}

impl DynamoStore {
    async fn read_head(&self, mailbox: Mailbox, id: ClientId) -> StoreResult<Option<Seq>> {
        let out = send("GetItem", || {
            self.client
                .get_item()
                .table_name(&self.tables.clients)
                .key("client_id", s(id.to_string()))
                .projection_expression("#h, #deleted")
                .expression_attribute_names("#h", head_attribute(mailbox))
                .expression_attribute_names("#deleted", DELETED)
                .consistent_read(true)
                .send()
        })
        .await?;
        match out.item {
            None => Ok(None),
            Some(item) if is_deleted(&item) => Ok(None),
            Some(item) => Ok(Some(get_n(&item, head_attribute(mailbox))?)),
        }
    }

    async fn read_marker(&self, marker: &str) -> StoreResult<Option<Item>> {
        let out = send("GetItem", || {
            self.client
                .get_item()
                .table_name(&self.tables.dedup)
                .key("dedup_id", s(marker))
                .consistent_read(true)
                .send()
        })
        .await?;
        Ok(out.item)
    }

    pub(super) async fn append_message(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        dedup: Dedup,
        seal: Sealer,
    ) -> StoreResult<Appended> {
        let client_key = id.to_string();
        let marker = marker_id(id, mailbox, &dedup.key);
        let head_name = head_attribute(mailbox);
        let mut round = 0;
        loop {
            let Some(head) = self.read_head(mailbox, id).await? else {
                return Ok(Appended::UnknownClient);
            };
            let seq = head + 1;
            let message = seal(seq)?;
            // An inbox message that expires flags the client for cleanup,
            // from the lowest such message on (see `cleanup.rs`).
            let flag = mailbox == Mailbox::Inbox && message.expires_at.is_some();
            let advance = Update::builder()
                .table_name(&self.tables.clients)
                .key("client_id", s(&client_key))
                // A client marked deleted takes no more messages: its
                // deletion is removing them.
                .condition_expression("#h = :head AND attribute_not_exists(#deleted)")
                .expression_attribute_names("#h", head_name)
                .expression_attribute_names("#deleted", DELETED)
                .expression_attribute_values(":head", n(head))
                .expression_attribute_values(":next", n(seq));
            let advance = if flag {
                advance
                    .update_expression("SET #h = :next, #flag = if_not_exists(#flag, :next)")
                    .expression_attribute_names("#flag", EXPIRING)
            } else {
                advance.update_expression("SET #h = :next")
            };
            let advance = built(advance.build())?;
            let mut put_message = Put::builder();
            if let Some(expires_at) = message.expires_at {
                put_message = put_message.item("expires_at", n(expires_at.millis()));
            }
            let put_message = built(
                put_message
                    .table_name(self.messages_table(mailbox))
                    .item("client_id", s(&client_key))
                    .item("seq", n(seq))
                    .item("kind", s(&message.kind))
                    .item("nonce", b(message.body.nonce.to_vec()))
                    .item("ciphertext", b(message.body.ciphertext.clone()))
                    .item("tag", b(message.body.tag.to_vec()))
                    .item("created_at", n(message.created_at.millis()))
                    .item("key_generation", n(message.key_generation))
                    .item("dedup_key", s(&dedup.key))
                    .condition_expression("attribute_not_exists(seq)")
                    .build(),
            )?;
            let put_marker = built(
                Put::builder()
                    .table_name(&self.tables.dedup)
                    .item("dedup_id", s(&marker))
                    .item("seq", n(seq))
                    .item("digest", b(dedup.digest.to_vec()))
                    .item(
                        "expires_at",
                        n(message.created_at.millis() / 1000 + DEDUP_TTL_SECS),
                    )
                    .condition_expression("attribute_not_exists(dedup_id)")
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .build(),
            )?;
            let items = vec![
                TransactWriteItem::builder().update(advance).build(),
                TransactWriteItem::builder().put(put_message).build(),
                TransactWriteItem::builder().put(put_marker).build(),
            ];
            let reasons = match self.transact(items).await? {
                Transaction::Committed => return Ok(Appended::Stored { seq }),
                Transaction::Cancelled(reasons) => reasons,
            };
            if reason_code(&reasons, 2) == "ConditionalCheckFailed" {
                // Stored before, under this key (by an earlier delivery of
                // the same job, or a retried send).
                return match &reasons[2].item {
                    Some(item) => duplicate(item, &dedup),
                    None => match self.read_marker(&marker).await? {
                        Some(item) => duplicate(&item, &dedup),
                        None => Err(StoreError::Backend(format!(
                            "marker {marker} both exists and does not"
                        ))),
                    },
                };
            }
            if reason_code(&reasons, 0) != "ConditionalCheckFailed" {
                return Err(StoreError::Backend(format!(
                    "append cancelled: {reasons:?}"
                )));
            }
            // Another writer took `seq` first: take the next number.
            if !retry::pause(round).await {
                return Err(StoreError::Unavailable(
                    "append kept losing races for the next sequence number".into(),
                ));
            }
            round += 1;
        }
    }

    /// The sequence numbers the markers for `dedup_key` of the recipients
    /// among `ids` hold. The markers outlive the messages (they expire by
    /// TTL after 15 days, as publish statuses do). One `BatchGetItem` per
    /// 100 ids; `consistent` for the fan-out, which must not miss a marker
    /// written a moment ago, eventually consistent (half the read units)
    /// for a status count.
    pub(super) async fn marker_seqs(
        &self,
        mailbox: Mailbox,
        ids: &[ClientId],
        dedup_key: &str,
        consistent: bool,
    ) -> StoreResult<std::collections::HashMap<ClientId, Seq>> {
        let by_marker: std::collections::HashMap<String, ClientId> = ids
            .iter()
            .map(|id| (marker_id(*id, mailbox, dedup_key), *id))
            .collect();
        let keys = by_marker
            .keys()
            .map(|m| Item::from([("dedup_id".to_string(), s(m))]))
            .collect();
        let found = self
            .batch_get(&self.tables.dedup, keys, Some("dedup_id, seq"), consistent)
            .await?;
        found
            .iter()
            .map(|item| {
                let marker = get_s(item, "dedup_id")?;
                let id = by_marker.get(&marker).copied().ok_or_else(|| {
                    backend(std::io::Error::other(format!("unasked marker {marker}")))
                })?;
                Ok((id, get_n(item, "seq")?))
            })
            .collect()
    }
}
