//! Retention on DynamoDB: a parallel scan of the clients table in
//! segments, each resuming where the last run stopped, and per client a
//! `Query` that reads only the messages it is about to delete.
//!
//! Each client item remembers how far its mailboxes have been purged
//! (`inbox_purged`, `outbox_purged`). Messages are numbered without gaps
//! and numbered in creation order, so everything at or below that mark is
//! gone, and the purge reads forward from it with the key condition
//! `seq BETWEEN mark + 1 AND limit` (the cursor for the inbox, so an
//! unacknowledged message is never even read; the head for the outbox),
//! stopping at the first message too young to delete. Expired idempotency
//! keys and markers go by the dedup table's TTL, and so do publish status
//! records (`publishes.rs`: `Cutoffs::publishes_before` needs nothing
//! here). A client marked deleted whose deletion was interrupted is
//! finished here (see `lifecycle.rs`).
//!
//! Expired messages: an append of an expiring inbox message flags its
//! client (`inbox_expiring`: the lowest sequence number that may hold a
//! message still to expire; `append.rs`), so only flagged clients cost
//! anything more. For those, a consistent `Query` per 100 messages above
//! the cursor (and from the flag on), then one conditional `UpdateItem`
//! per expired message that removes its body and type (a tombstone: the
//! position stays, so later ids are not mistaken for gaps), and one
//! `UpdateItem` that moves the flag to the lowest expiring message still
//! to come, or removes it when none is left above the cursor. A flagged
//! client with a long-lived expiring message and many unacknowledged
//! messages after it is read again each run, up to its head.

use super::call::{built, send};
use super::clients::is_deleted;
use super::item::*;
use super::DynamoStore;
use crate::clock::Timestamp;
use crate::domain::{ClientId, Seq};
use crate::retry;
use crate::store::*;
use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
use std::time::Duration;

/// Scan segments purged at once.
const SEGMENTS: i32 = 4;
/// Clients per scan page.
const SCAN_PAGE: i32 = 100;
/// Messages read (and deleted) per query page: one `BatchWriteItem`.
const BATCH_WRITE_MAX: usize = 25;
/// Messages read per query page when looking for expired ones.
const EXPIRY_PAGE: i32 = 100;
/// The client attribute that flags an inbox with messages that may still
/// expire: the lowest sequence number from which to look (`append.rs` sets
/// it with the first expiring message, the expiry pass moves or removes it).
pub(super) const EXPIRING: &str = "inbox_expiring";
/// A segment stops starting clients this long before the deadline, to
/// save its position and return.
const STOP_MARGIN: Duration = Duration::from_secs(5);

fn mark_attribute(mailbox: Mailbox) -> &'static str {
    match mailbox {
        Mailbox::Inbox => "inbox_purged",
        Mailbox::Outbox => "outbox_purged",
    }
}

fn position_id(segment: i32) -> String {
    format!("cleanup#segment#{segment}/{SEGMENTS}")
}

impl DynamoStore {
    pub(super) async fn purge_expired(&self, cutoffs: Cutoffs) -> StoreResult<Purged> {
        let runs = (0..SEGMENTS).map(|segment| self.purge_segment(segment, cutoffs));
        let mut total = Purged {
            finished: true,
            ..Purged::default()
        };
        for done in futures_util::future::join_all(runs).await {
            let done = done?;
            total.inbox += done.inbox;
            total.outbox += done.outbox;
            total.expired += done.expired;
            total.finished &= done.finished;
        }
        Ok(total)
    }

    async fn purge_segment(&self, segment: i32, cutoffs: Cutoffs) -> StoreResult<Purged> {
        let mut purged = Purged::default();
        let mut start = self.load_position(segment).await?;
        loop {
            if retry::deadline_within(STOP_MARGIN) {
                self.save_position(segment, start.as_ref()).await?;
                return Ok(purged);
            }
            let page = send("Scan", || {
                self.client
                    .scan()
                    .table_name(&self.tables.clients)
                    .projection_expression(
                        "client_id, acked, outbox_head, inbox_purged, outbox_purged, \
                         deleted_at, fingerprint_hash, tags, inbox_expiring",
                    )
                    .segment(segment)
                    .total_segments(SEGMENTS)
                    .limit(SCAN_PAGE)
                    .set_exclusive_start_key(start.clone())
                    .send()
            })
            .await?;
            for client in page.items.unwrap_or_default() {
                let Some(id) = ClientId::parse(&get_s(&client, "client_id")?) else {
                    continue;
                };
                if is_deleted(&client) {
                    // A deletion that was interrupted: finish it.
                    if self.finish_deletion(id, &client).await? {
                        tracing::info!(client_id = %id, "finished deleting a client");
                    }
                    continue;
                }
                let inbox_mark = opt_n(&client, "inbox_purged")?.unwrap_or(0);
                let outbox_mark = opt_n(&client, "outbox_purged")?.unwrap_or(0);
                let acked: Seq = get_n(&client, "acked")?;
                let sent: Seq = opt_n(&client, "outbox_head")?.unwrap_or(0);
                purged.inbox += self
                    .purge_mailbox(Mailbox::Inbox, id, inbox_mark, acked, cutoffs.acked_before)
                    .await?;
                purged.outbox += self
                    .purge_mailbox(Mailbox::Outbox, id, outbox_mark, sent, cutoffs.sent_before)
                    .await?;
                if let Some(flag) = opt_n::<Seq>(&client, EXPIRING)? {
                    purged.expired += self.expire_messages(id, acked, flag, cutoffs.now).await?;
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => {
                    // The segment is done: the next run starts it afresh.
                    self.save_position(segment, None).await?;
                    purged.finished = true;
                    return Ok(purged);
                }
            }
        }
    }

    /// Deletes one mailbox's messages in `(mark, upto]` that were created
    /// before `cutoff`, oldest first, and moves the mark past them.
    async fn purge_mailbox(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        mark: Seq,
        upto: Seq,
        cutoff: Timestamp,
    ) -> StoreResult<u64> {
        let client_key = id.to_string();
        let mut next = mark + 1;
        let mut deleted = 0u64;
        while next <= upto {
            let out = send("Query", || {
                self.client
                    .query()
                    .table_name(self.messages_table(mailbox))
                    .key_condition_expression("client_id = :c AND seq BETWEEN :from AND :upto")
                    .projection_expression("seq, created_at")
                    // Strongly consistent: a message missed here would be
                    // skipped by the mark for good.
                    .consistent_read(true)
                    .expression_attribute_values(":c", s(&client_key))
                    .expression_attribute_values(":from", n(next))
                    .expression_attribute_values(":upto", n(upto))
                    .limit(BATCH_WRITE_MAX as i32)
                    .send()
            })
            .await?;
            let items = out.items.unwrap_or_default();
            let mut doomed: Vec<Seq> = Vec::with_capacity(items.len());
            let mut young = false;
            for item in &items {
                if Timestamp(get_n(item, "created_at")?) >= cutoff {
                    young = true;
                    break;
                }
                doomed.push(get_n(item, "seq")?);
            }
            if !doomed.is_empty() {
                self.delete_messages(mailbox, &client_key, &doomed).await?;
                deleted += doomed.len() as u64;
                next = doomed[doomed.len() - 1] + 1;
            }
            if young || items.len() < BATCH_WRITE_MAX {
                break;
            }
        }
        if deleted > 0 {
            let attribute = mark_attribute(mailbox);
            let update = self
                .update_client(id)
                .update_expression("SET #m = :m")
                .condition_expression(
                    "attribute_exists(client_id) AND (attribute_not_exists(#m) OR #m < :m)",
                )
                .expression_attribute_names("#m", attribute)
                .expression_attribute_values(":m", n(next - 1));
            // A failed condition means another run got further: fine.
            self.conditional_update(update).await?.ok();
        }
        Ok(deleted)
    }

    /// Turns the expired messages of a client flagged `inbox_expiring`
    /// into tombstones: those above the cursor (`acked`) from the flag on,
    /// read a query page at a time. Then moves the flag to the lowest
    /// expiring message still to come, or removes it when there is none
    /// (on the condition that no message was appended since the query,
    /// whose flag it would be removing). Returns how many it turned; at
    /// the deadline it stops and leaves the flag for the next run.
    async fn expire_messages(
        &self,
        id: ClientId,
        acked: Seq,
        flag: Seq,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let client_key = id.to_string();
        let from = flag.max(acked + 1);
        // The newest message the query saw (or `from - 1`: none).
        let mut seen = from - 1;
        let mut still_to_expire: Option<Seq> = None;
        let mut expired = 0u64;
        let mut start: Option<Item> = None;
        loop {
            if retry::deadline_within(STOP_MARGIN) {
                return Ok(expired);
            }
            let out = send("Query", || {
                self.client
                    .query()
                    .table_name(&self.tables.messages)
                    .key_condition_expression("client_id = :c AND seq >= :from")
                    .projection_expression("seq, #exp, #nonce")
                    .expression_attribute_names("#exp", "expires_at")
                    .expression_attribute_names("#nonce", "nonce")
                    // Strongly consistent: removing the flag relies on
                    // having seen every message.
                    .consistent_read(true)
                    .expression_attribute_values(":c", s(&client_key))
                    .expression_attribute_values(":from", n(from))
                    .limit(EXPIRY_PAGE)
                    .set_exclusive_start_key(start.clone())
                    .send()
            })
            .await?;
            let mut doomed = Vec::new();
            for item in out.items.unwrap_or_default() {
                let seq: Seq = get_n(&item, "seq")?;
                seen = seen.max(seq);
                let Some(at) = opt_n::<i64>(&item, "expires_at")? else {
                    continue;
                };
                if !item.contains_key("nonce") {
                    continue; // a tombstone already
                }
                if Timestamp(at) <= now {
                    doomed.push(seq);
                } else {
                    still_to_expire.get_or_insert(seq);
                }
            }
            for chunk in doomed.chunks(BATCH_WRITE_MAX) {
                let updates = chunk
                    .iter()
                    .map(|seq| self.tombstone(&client_key, *seq, now));
                for done in futures_util::future::join_all(updates).await {
                    expired += u64::from(done?);
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        let update = self.update_client(id);
        let update = match still_to_expire {
            Some(next) if next == flag => return Ok(expired),
            Some(next) => update
                .update_expression("SET #flag = :next")
                .condition_expression(
                    "attribute_exists(client_id) AND attribute_not_exists(deleted_at)",
                )
                .expression_attribute_values(":next", n(next)),
            None => update
                .update_expression("REMOVE #flag")
                .condition_expression("attribute_exists(client_id) AND inbox_head <= :seen")
                .expression_attribute_values(":seen", n(seen)),
        };
        // A failed condition: a client deleted meanwhile, or a message
        // appended since the query; the flag stays for the next run.
        self.update_if(update.expression_attribute_names("#flag", EXPIRING))
            .await?;
        Ok(expired)
    }

    /// Removes an expired message's body and type, keeping its position:
    /// one `UpdateItem`, on the condition that the message still exists
    /// with its body (deleted or turned by another run meanwhile: false).
    async fn tombstone(&self, client_key: &str, seq: Seq, now: Timestamp) -> StoreResult<bool> {
        let update = self
            .client
            .update_item()
            .table_name(&self.tables.messages)
            .key("client_id", s(client_key))
            .key("seq", n(seq))
            .update_expression("REMOVE #ciphertext, #nonce, #tag, #kind")
            .condition_expression("attribute_exists(#nonce) AND #exp <= :now")
            .expression_attribute_names("#ciphertext", "ciphertext")
            .expression_attribute_names("#nonce", "nonce")
            .expression_attribute_names("#tag", "tag")
            .expression_attribute_names("#kind", "kind")
            .expression_attribute_names("#exp", "expires_at")
            .expression_attribute_values(":now", n(now.millis()));
        self.update_if(update).await
    }

    pub(super) async fn delete_messages(
        &self,
        mailbox: Mailbox,
        client_key: &str,
        seqs: &[Seq],
    ) -> StoreResult<()> {
        let keys = seqs
            .iter()
            .map(|seq| {
                Item::from([
                    ("client_id".to_string(), s(client_key)),
                    ("seq".to_string(), n(*seq)),
                ])
            })
            .collect();
        self.batch_delete(self.messages_table(mailbox), keys).await
    }

    /// Deletes up to 25 items of one table by key: one `BatchWriteItem`,
    /// and one more per round of unprocessed items.
    pub(super) async fn batch_delete(&self, table: &str, keys: Vec<Item>) -> StoreResult<()> {
        let table = table.to_string();
        let mut requests = Vec::with_capacity(keys.len());
        for key in keys {
            let delete = built(DeleteRequest::builder().set_key(Some(key)).build())?;
            requests.push(WriteRequest::builder().delete_request(delete).build());
        }
        let mut round = 0;
        while !requests.is_empty() {
            let out = send("BatchWriteItem", || {
                self.client
                    .batch_write_item()
                    .request_items(&table, requests.clone())
                    .send()
            })
            .await?;
            requests = out
                .unprocessed_items
                .unwrap_or_default()
                .remove(&table)
                .unwrap_or_default();
            if !requests.is_empty() {
                if !retry::pause(round).await {
                    return Err(StoreError::Unavailable(
                        "BatchWriteItem kept returning unprocessed items".into(),
                    ));
                }
                round += 1;
            }
        }
        Ok(())
    }

    async fn load_position(&self, segment: i32) -> StoreResult<Option<Item>> {
        let out = send("GetItem", || {
            self.client
                .get_item()
                .table_name(&self.tables.dedup)
                .key("dedup_id", s(position_id(segment)))
                .consistent_read(true)
                .send()
        })
        .await?;
        let position = out
            .item
            .as_ref()
            .map(|i| opt_s(i, "position"))
            .transpose()?;
        Ok(position
            .flatten()
            .map(|id| Item::from([("client_id".to_string(), s(id))])))
    }

    async fn save_position(&self, segment: i32, start: Option<&Item>) -> StoreResult<()> {
        let position = start.map(|key| get_s(key, "client_id")).transpose()?;
        send("PutItem", || {
            let mut put = self
                .client
                .put_item()
                .table_name(&self.tables.dedup)
                .item("dedup_id", s(position_id(segment)));
            if let Some(position) = &position {
                put = put.item("position", s(position));
            }
            put.send()
        })
        .await?;
        Ok(())
    }
}
