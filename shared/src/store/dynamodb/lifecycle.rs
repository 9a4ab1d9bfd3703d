//! Rotating and deleting clients.
//!
//! A rotation reads the client item, works out which retired keys it keeps
//! (a `Query` of the unacknowledged messages' key generations, only when
//! there are retired keys to decide about), and writes on the condition
//! that the generation is still the one it read: a plain `UpdateItem`, or
//! with a new fingerprint one `TransactWriteItems` that also puts the new
//! fingerprint entry and deletes the old one.
//!
//! A deletion first marks the client item (`deleted_at`, generation
//! `u32::MAX`), which every token's condition refuses from then on and
//! which stops appends; then deletes its tag entries, its messages in
//! `BatchWriteItem`s, its fingerprint entry and, last, the item itself.
//! The mark is what lets `purge` find and finish a deletion that was
//! interrupted.

use super::call::{built, reason_code, send, Transaction};
use super::clients::{
    client_record, current_condition, generation_of, is_current, is_deleted, DELETED,
};
use super::item::*;
use super::tags::{entry_key, tags_of};
use super::DynamoStore;
use crate::clock::{Clock, SystemClock};
use crate::domain::{ClientId, Seq};
use crate::retry;
use crate::store::*;
use aws_sdk_dynamodb::types::{
    Delete, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use std::time::Duration;

/// Message keys deleted per `BatchWriteItem` (DynamoDB's maximum).
const BATCH_WRITE_MAX: usize = 25;
/// `BatchWriteItem`s of one deletion in flight at once.
const DELETE_PARALLELISM: usize = 4;
/// Deleting messages stops this long before the deadline; `purge` finishes.
const DELETE_MARGIN: Duration = Duration::from_secs(2);

/// What a rotation writes on the client item.
struct NewCredentials<'a> {
    rotation: &'a Rotation,
    next: u32,
    retired: String,
    fingerprint: Option<Vec<u8>>,
}

impl NewCredentials<'_> {
    fn update_expression(&self) -> &'static str {
        if self.fingerprint.is_some() {
            "SET #gen = :next, wrapped_key = :wk, retired_keys = :rk, fingerprint_hash = :fp"
        } else {
            "SET #gen = :next, wrapped_key = :wk, retired_keys = :rk"
        }
    }

    /// Whether `item` is the client as this rotation leaves it: then a
    /// failed condition only says that an earlier attempt of this very
    /// rotation (whose response was lost) went through. The new wrapped
    /// key is fresh randomness, so no other write leaves the same.
    fn applied_in(&self, item: &Item) -> StoreResult<bool> {
        Ok(!is_deleted(item)
            && generation_of(item)? == self.next
            && opt_b(item, "wrapped_key")?.as_deref() == Some(&self.rotation.wrapped_key[..]))
    }
}

impl DynamoStore {
    pub(super) async fn rotate(&self, rotation: Rotation) -> StoreResult<Rotated> {
        let id = rotation.id;
        let from = rotation.from_generation;
        let Some(item) = self.client_item(&id.to_string()).await? else {
            return Ok(Rotated::Stale);
        };
        // u32::MAX marks deleted clients; no rotation may reach it.
        if !is_current(&item, from)? || from >= u32::MAX - 1 {
            return Ok(Rotated::Stale);
        }
        let old = client_record(&item)?;
        // Which generations unacknowledged messages are sealed under only
        // matters for keys retired before: the one retired now is kept.
        let in_use = if old.retired_keys.is_empty() {
            HashSet::new()
        } else {
            let acked: Seq = get_n(&item, "acked")?;
            let head: Seq = get_n(&item, "inbox_head")?;
            self.generations_in_use(id, acked, head).await?
        };
        let retired_keys =
            RetiredKey::after_rotation(&old, rotation.now, rotation.keep_retired_since, &in_use);
        let old_fingerprint = opt_b(&item, "fingerprint_hash")?;
        let fingerprint = rotation
            .fingerprint
            .map(|f| f.to_vec())
            .filter(|f| old_fingerprint.as_ref() != Some(f));
        let new = NewCredentials {
            rotation: &rotation,
            next: from + 1,
            retired: RetiredKey::encode_all(&retired_keys),
            fingerprint,
        };
        let rotated = ClientRecord {
            generation: new.next,
            wrapped_key: rotation.wrapped_key.clone(),
            retired_keys,
            ..old
        };
        match &new.fingerprint {
            None => self.rotate_in_place(&new, rotated).await,
            Some(fingerprint) => {
                self.rotate_with_fingerprint(&new, fingerprint, old_fingerprint, rotated)
                    .await
            }
        }
    }

    /// The key generations of the inbox messages in `(acked, head]`.
    async fn generations_in_use(
        &self,
        id: ClientId,
        acked: Seq,
        head: Seq,
    ) -> StoreResult<HashSet<u32>> {
        let mut found = HashSet::new();
        if head <= acked {
            return Ok(found);
        }
        let mut start: Option<Item> = None;
        loop {
            let out = send("Query", || {
                self.client
                    .query()
                    .table_name(&self.tables.messages)
                    .key_condition_expression("client_id = :c AND seq BETWEEN :from AND :upto")
                    // A tombstone (no body: see `cleanup.rs`) needs no key.
                    .projection_expression("key_generation, nonce")
                    .expression_attribute_values(":c", s(id.to_string()))
                    .expression_attribute_values(":from", n(acked + 1))
                    .expression_attribute_values(":upto", n(head))
                    .consistent_read(true)
                    .set_exclusive_start_key(start.clone())
                    .send()
            })
            .await?;
            for item in out.items.unwrap_or_default() {
                if item.contains_key("nonce") {
                    found.insert(opt_n(&item, "key_generation")?.unwrap_or(0));
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(found),
            }
        }
    }

    /// A rotation that keeps the fingerprint: one conditional `UpdateItem`.
    async fn rotate_in_place(
        &self,
        new: &NewCredentials<'_>,
        rotated: ClientRecord,
    ) -> StoreResult<Rotated> {
        let from = new.rotation.from_generation;
        let update = self
            .update_client(new.rotation.id)
            .update_expression(new.update_expression())
            .condition_expression(current_condition(from))
            .expression_attribute_names("#gen", "generation")
            .expression_attribute_values(":gen", n(from))
            .expression_attribute_values(":next", n(new.next))
            .expression_attribute_values(":wk", b(new.rotation.wrapped_key.clone()))
            .expression_attribute_values(":rk", s(&new.retired));
        match self.conditional_update(update).await? {
            Ok(item) => Ok(Rotated::Rotated(client_record(&item)?)),
            Err(Some(item)) if new.applied_in(&item)? => Ok(Rotated::Rotated(rotated)),
            Err(_) => Ok(Rotated::Stale),
        }
    }

    /// A rotation to a new fingerprint: one transaction puts the new entry
    /// (unless another live client holds it), deletes the old one, and
    /// updates the client item on the condition of its generation.
    async fn rotate_with_fingerprint(
        &self,
        new: &NewCredentials<'_>,
        fingerprint: &[u8],
        old_fingerprint: Option<Vec<u8>>,
        rotated: ClientRecord,
    ) -> StoreResult<Rotated> {
        let id = new.rotation.id.to_string();
        let from = new.rotation.from_generation;
        // The entry of a dead client may be taken over.
        let mut replacing: Option<String> = None;
        let mut old_entry = old_fingerprint;
        let mut round = 0;
        loop {
            let mut items = Vec::with_capacity(3);
            let put = Put::builder()
                .table_name(&self.tables.fingerprints)
                .item("fingerprint_hash", b(fingerprint.to_vec()))
                .item("client_id", s(&id))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            let put = match &replacing {
                None => put
                    .condition_expression(
                        "attribute_not_exists(fingerprint_hash) OR client_id = :me",
                    )
                    .expression_attribute_values(":me", s(&id)),
                Some(dead) => put
                    .condition_expression("client_id = :dead")
                    .expression_attribute_values(":dead", s(dead)),
            };
            items.push(
                TransactWriteItem::builder()
                    .put(built(put.build())?)
                    .build(),
            );
            if let Some(old) = &old_entry {
                let delete = Delete::builder()
                    .table_name(&self.tables.fingerprints)
                    .key("fingerprint_hash", b(old.clone()))
                    .condition_expression(
                        "attribute_not_exists(fingerprint_hash) OR client_id = :me",
                    )
                    .expression_attribute_values(":me", s(&id));
                items.push(
                    TransactWriteItem::builder()
                        .delete(built(delete.build())?)
                        .build(),
                );
            }
            let update = Update::builder()
                .table_name(&self.tables.clients)
                .key("client_id", s(&id))
                .update_expression(new.update_expression())
                .condition_expression(current_condition(from))
                .expression_attribute_names("#gen", "generation")
                .expression_attribute_values(":gen", n(from))
                .expression_attribute_values(":next", n(new.next))
                .expression_attribute_values(":wk", b(new.rotation.wrapped_key.clone()))
                .expression_attribute_values(":rk", s(&new.retired))
                .expression_attribute_values(":fp", b(fingerprint.to_vec()))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            items.push(
                TransactWriteItem::builder()
                    .update(built(update.build())?)
                    .build(),
            );
            let last = items.len() - 1;
            let reasons = match self.transact(items).await? {
                Transaction::Committed => return Ok(Rotated::Rotated(rotated)),
                Transaction::Cancelled(reasons) => reasons,
            };
            if reason_code(&reasons, last) == "ConditionalCheckFailed" {
                let item = match &reasons[last].item {
                    Some(item) => Some(item.clone()),
                    None => self.client_item(&id).await?,
                };
                return match item {
                    Some(item) if new.applied_in(&item)? => Ok(Rotated::Rotated(rotated)),
                    _ => Ok(Rotated::Stale),
                };
            }
            if reason_code(&reasons, 0) == "ConditionalCheckFailed" {
                let holder = match &reasons[0].item {
                    Some(item) => opt_s(item, "client_id")?,
                    None => self.fingerprint_holder(fingerprint).await?,
                };
                replacing = match holder {
                    Some(holder) if holder == id => None,
                    Some(holder) => match self.live_holder(&holder, fingerprint).await? {
                        Some(_) => return Ok(Rotated::FingerprintTaken),
                        None => Some(holder),
                    },
                    None => None,
                };
            } else if old_entry.is_some() && reason_code(&reasons, 1) == "ConditionalCheckFailed" {
                // The old entry names another client now: not ours to delete.
                old_entry = None;
            } else {
                return Err(StoreError::Backend(format!(
                    "rotation cancelled: {reasons:?}"
                )));
            }
            if round > 0 && !retry::pause(round - 1).await {
                return Err(StoreError::Unavailable(
                    "rotation kept racing for the fingerprint".into(),
                ));
            }
            round += 1;
        }
    }

    pub(super) async fn delete(&self, id: ClientId) -> StoreResult<Deleted> {
        // Tells this deletion's own mark from an earlier one when a retry
        // after a lost response finds the item already marked.
        let mark = uuid::Uuid::new_v4().to_string();
        let update = self
            .update_client(id)
            .update_expression("SET #deleted = :now, deleted_by = :mark, #gen = :max")
            .condition_expression("attribute_exists(client_id) AND attribute_not_exists(#deleted)")
            .expression_attribute_names("#deleted", DELETED)
            .expression_attribute_names("#gen", "generation")
            .expression_attribute_values(":now", n(SystemClock.now().millis()))
            .expression_attribute_values(":mark", s(&mark))
            .expression_attribute_values(":max", n(u32::MAX));
        let (item, outcome) = match self.conditional_update(update).await? {
            Ok(item) => (item, Deleted::Deleted),
            Err(None) => return Ok(Deleted::Unknown),
            Err(Some(old)) => {
                let ours = opt_s(&old, "deleted_by")?.as_deref() == Some(mark.as_str());
                (
                    old,
                    if ours {
                        Deleted::Deleted
                    } else {
                        Deleted::Unknown
                    },
                )
            }
        };
        // Already deleted, maybe half-way: finish it either way. Once the
        // mark is written the client is revoked, so a failure to clear up
        // now is not the operator's problem: `purge` finishes the job, and
        // answering 503 would only make a retry answer 404.
        if let Err(error) = self.finish_deletion(id, &item).await {
            tracing::warn!(client_id = %id, %error, "deleted client's data left for cleanup to remove");
        }
        Ok(outcome)
    }

    /// Removes what is left of a client marked deleted: its tag entries
    /// (first, so that audiences stop finding it soon), its messages, its
    /// fingerprint entry, then its item. Returns false when it stopped at
    /// the deadline (the mark stays, and the next `purge` goes on).
    ///
    /// The tag entries are the ones the item names (`item` must hold its
    /// `tags`): no tags can be set once the client is marked, so those are
    /// all. One `BatchWriteItem` when it has tags (at most 20), none else.
    pub(super) async fn finish_deletion(&self, id: ClientId, item: &Item) -> StoreResult<bool> {
        let client_key = id.to_string();
        let tags = tags_of(item)?;
        if !tags.is_empty() {
            let keys = tags.iter().map(|tag| entry_key(tag, &client_key)).collect();
            self.batch_delete(&self.tables.audiences, keys).await?;
        }
        for mailbox in [Mailbox::Inbox, Mailbox::Outbox] {
            if !self.delete_mailbox(mailbox, id).await? {
                return Ok(false);
            }
        }
        if let Some(fingerprint) = opt_b(item, "fingerprint_hash")? {
            // Not when the entry names another client already (one that
            // registered with the fingerprint in the meantime).
            let delete = self
                .client
                .delete_item()
                .table_name(&self.tables.fingerprints)
                .key("fingerprint_hash", b(fingerprint))
                .condition_expression("client_id = :me")
                .expression_attribute_values(":me", s(&client_key));
            self.conditional_delete(delete).await?;
        }
        let delete = self
            .client
            .delete_item()
            .table_name(&self.tables.clients)
            .key("client_id", s(&client_key))
            .condition_expression("attribute_exists(#deleted)")
            .expression_attribute_names("#deleted", DELETED);
        self.conditional_delete(delete).await?;
        Ok(true)
    }

    /// Deletes every message of one of a deleted client's mailboxes (no
    /// append can add one once the client is marked).
    async fn delete_mailbox(&self, mailbox: Mailbox, id: ClientId) -> StoreResult<bool> {
        let client_key = id.to_string();
        loop {
            if retry::deadline_within(DELETE_MARGIN) {
                return Ok(false);
            }
            let out = send("Query", || {
                self.client
                    .query()
                    .table_name(self.messages_table(mailbox))
                    .key_condition_expression("client_id = :c")
                    .projection_expression("seq")
                    .expression_attribute_values(":c", s(&client_key))
                    .consistent_read(true)
                    .limit((BATCH_WRITE_MAX * DELETE_PARALLELISM) as i32)
                    .send()
            })
            .await?;
            let seqs = out
                .items
                .unwrap_or_default()
                .iter()
                .map(|item| get_n::<Seq>(item, "seq"))
                .collect::<StoreResult<Vec<Seq>>>()?;
            if seqs.is_empty() {
                return Ok(true);
            }
            let batches = seqs
                .chunks(BATCH_WRITE_MAX)
                .map(|chunk| self.delete_messages(mailbox, &client_key, chunk));
            for done in futures_util::future::join_all(batches).await {
                done?;
            }
            let more = out.last_evaluated_key.is_some_and(|k| !k.is_empty());
            if !more {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    #[test]
    fn a_rotation_knows_its_own_write_from_anothers() {
        let rotation = Rotation {
            id: ClientId::new(),
            from_generation: 3,
            wrapped_key: vec![8; 60],
            fingerprint: None,
            now: Timestamp(0),
            keep_retired_since: Timestamp(0),
        };
        let new = NewCredentials {
            rotation: &rotation,
            next: 4,
            retired: "[]".into(),
            fingerprint: None,
        };
        let item = |generation: u32, key: u8| {
            Item::from([
                ("generation".to_string(), n(generation)),
                ("wrapped_key".to_string(), b(vec![key; 60])),
            ])
        };
        assert!(new.applied_in(&item(4, 8)).unwrap());
        assert!(!new.applied_in(&item(4, 9)).unwrap(), "another rotation");
        assert!(!new.applied_in(&item(3, 7)).unwrap(), "not rotated");
        let mut deleted = item(4, 8);
        deleted.insert(DELETED.to_string(), n(1));
        assert!(!new.applied_in(&deleted).unwrap(), "deleted since");
    }
}
