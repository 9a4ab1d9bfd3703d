//! The DynamoDB store.
//!
//! Every method is one or two requests in the common case (see
//! `docs/architecture.md`):
//! - a client item holds the record, the acknowledged cursor, the head of
//!   each sequence and the rate-limit state, so an authenticated poll is a
//!   single conditional `UpdateItem` that also returns what the poll needs
//!   ([`clients`]);
//! - an append is `GetItem` (the head) then one `TransactWriteItems` that
//!   advances the head on the condition that it has not moved, puts the
//!   message, and puts the idempotency marker on the condition that it does
//!   not exist yet ([`append`]). Message `n + 1` therefore exists only once
//!   `n` does, and a lost race is retried under the next number.
//!
//! - a rotation or deletion conditions its write on the client's credential
//!   generation, and a deletion first marks the client (so its tokens fail
//!   at once) and then removes its data, a step `purge` finishes when the
//!   deletion was interrupted ([`lifecycle`]);
//! - a fixed-window request count is one conditional `UpdateItem` on a
//!   counter in the dedup table that expires by TTL ([`windows`]).
//!
//! Every request goes through [`call`], which applies the shared retry
//! policy ([`crate::retry`]). Reads that decide correctness (heads,
//! cursors, message queries) are strongly consistent.

mod append;
mod call;
mod cleanup;
mod clients;
mod item;
mod lifecycle;
mod publish_keys;
mod read;
mod tables;
mod windows;

pub use tables::TableNames;

use super::*;
use aws_sdk_dynamodb::Client;

pub struct DynamoStore {
    client: Client,
    tables: TableNames,
}

impl DynamoStore {
    pub fn new(client: Client, tables: TableNames) -> DynamoStore {
        DynamoStore { client, tables }
    }

    pub fn tables(&self) -> &TableNames {
        &self.tables
    }

    fn messages_table(&self, mailbox: Mailbox) -> &str {
        match mailbox {
            Mailbox::Inbox => &self.tables.messages,
            Mailbox::Outbox => &self.tables.client_messages,
        }
    }
}

fn head_attribute(mailbox: Mailbox) -> &'static str {
    match mailbox {
        Mailbox::Inbox => "inbox_head",
        Mailbox::Outbox => "outbox_head",
    }
}

/// The idempotency marker of an append, in the dedup table.
fn marker_id(id: ClientId, mailbox: Mailbox, dedup_key: &str) -> String {
    format!("{id}#{mailbox:?}#{dedup_key}")
}

#[async_trait]
impl Store for DynamoStore {
    async fn register_client(
        &self,
        fingerprint: [u8; 32],
        candidate: ClientRecord,
    ) -> StoreResult<Registration> {
        self.register(fingerprint, candidate).await
    }

    async fn touch_client(
        &self,
        id: ClientId,
        generation: u32,
        now: Timestamp,
        charge: Option<RateCharge>,
    ) -> StoreResult<Touch> {
        self.touch(id, generation, now, charge).await
    }

    async fn rotate_client(&self, rotation: Rotation) -> StoreResult<Rotated> {
        self.rotate(rotation).await
    }

    async fn delete_client(&self, id: ClientId) -> StoreResult<Deleted> {
        self.delete(id).await
    }

    async fn count_request(
        &self,
        key: &str,
        limit: WindowLimit,
        now: Timestamp,
    ) -> StoreResult<Counted> {
        self.count(key, limit, now).await
    }

    async fn load_clients(&self, ids: &[ClientId]) -> StoreResult<Vec<ClientRecord>> {
        self.load(ids).await
    }

    async fn append(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        dedup: Dedup,
        seal: Sealer,
    ) -> StoreResult<Appended> {
        self.append_message(mailbox, id, dedup, seal).await
    }

    async fn already_appended(
        &self,
        mailbox: Mailbox,
        ids: &[ClientId],
        dedup_key: &str,
    ) -> StoreResult<HashSet<ClientId>> {
        self.find_markers(mailbox, ids, dedup_key).await
    }

    async fn read_page(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        after: Seq,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.read_messages(mailbox, id, after, limit).await
    }

    async fn acknowledge(
        &self,
        id: ClientId,
        generation: u32,
        upto: Seq,
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        self.ack(id, generation, upto, now).await
    }

    async fn list_clients(
        &self,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>> {
        self.list(limit, page_token).await
    }

    async fn claim_publish_key(
        &self,
        key: &str,
        record: PublishRecord,
        expired_before: Timestamp,
    ) -> StoreResult<KeyClaim> {
        self.claim_key(key, record, expired_before).await
    }

    async fn complete_publish_key(&self, key: &str) -> StoreResult<()> {
        self.complete_key(key).await
    }

    async fn purge(&self, cutoffs: Cutoffs) -> StoreResult<Purged> {
        self.purge_expired(cutoffs).await
    }
}
