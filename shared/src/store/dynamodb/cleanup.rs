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
//! keys and markers go by the dedup table's TTL. A client marked deleted
//! whose deletion was interrupted is finished here (see `lifecycle.rs`).

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
                         deleted_at, fingerprint_hash",
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

    pub(super) async fn delete_messages(
        &self,
        mailbox: Mailbox,
        client_key: &str,
        seqs: &[Seq],
    ) -> StoreResult<()> {
        let table = self.messages_table(mailbox).to_string();
        let mut requests = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let delete = built(
                DeleteRequest::builder()
                    .key("client_id", s(client_key))
                    .key("seq", n(*seq))
                    .build(),
            )?;
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
