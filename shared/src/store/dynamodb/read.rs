//! Reading a mailbox: a strongly consistent `Query` on `(client_id, seq)`,
//! continued across DynamoDB's 1 MB pages until the count or byte limit.
//! One `Query` per 1 MB of messages read.

use super::call::send;
use super::item::*;
use super::DynamoStore;
use crate::clock::Timestamp;
use crate::crypto::Sealed;
use crate::domain::{ClientId, Seq};
use crate::store::*;

/// A message item as a [`StoredMessage`]. Cleanup removes the body of an
/// expired, unacknowledged message (`ciphertext`, `nonce`, `tag` and
/// `kind`; see `cleanup.rs`): such a tombstone reads with an empty `kind`
/// and an empty body.
pub(super) fn stored_message(item: &Item, id: ClientId) -> StoreResult<StoredMessage> {
    let seq: Seq = get_n(item, "seq")?;
    let corrupt = || StoreError::Corrupt(format!("message {seq} of {id}"));
    let body = if item.contains_key("ciphertext") {
        Sealed {
            ciphertext: get_b(item, "ciphertext")?,
            nonce: get_b(item, "nonce")?.try_into().map_err(|_| corrupt())?,
            tag: get_b(item, "tag")?.try_into().map_err(|_| corrupt())?,
        }
    } else {
        Sealed {
            ciphertext: Vec::new(),
            nonce: Default::default(),
            tag: Default::default(),
        }
    };
    Ok(StoredMessage {
        seq,
        kind: opt_s(item, "kind")?.unwrap_or_default(),
        body,
        created_at: Timestamp(get_n(item, "created_at")?),
        // Items from before rotation existed lack it.
        key_generation: opt_n(item, "key_generation")?.unwrap_or(0),
        expires_at: opt_n(item, "expires_at")?.map(Timestamp),
    })
}

impl DynamoStore {
    pub(super) async fn read_messages(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        after: Seq,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>> {
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let mut start: Option<Item> = None;
        loop {
            let want = limit.count as usize - messages.len();
            let out = send("Query", || {
                self.client
                    .query()
                    .table_name(self.messages_table(mailbox))
                    .key_condition_expression("client_id = :c AND seq > :after")
                    .expression_attribute_values(":c", s(id.to_string()))
                    .expression_attribute_values(":after", n(after))
                    .consistent_read(true)
                    .limit(want as i32)
                    .set_exclusive_start_key(start.clone())
                    .send()
            })
            .await?;
            for item in out.items.unwrap_or_default() {
                let message = stored_message(&item, id)?;
                bytes += message.body.ciphertext.len();
                if !messages.is_empty() && bytes > limit.bytes {
                    return Ok(messages);
                }
                messages.push(message);
            }
            match out.last_evaluated_key {
                // A page can stop short of the limit at 1 MB; keep reading.
                Some(key) if !key.is_empty() && messages.len() < limit.count as usize => {
                    start = Some(key)
                }
                _ => return Ok(messages),
            }
        }
    }
}
