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
//!   counter in the dedup table that expires by TTL ([`windows`]);
//! - an acknowledgement keeps the cursor's latest moves in slots on the
//!   client item, shifted by the ack's own `UpdateItem` ([`clients`]);
//! - tags are an attribute of the client item and one entry per tag in
//!   the audiences table, written together in one transaction ([`tags`]);
//!   a tag audience is enumerated from those entries, everyone by a scan
//!   of the clients ([`audiences`]);
//! - a publish's status records (a header and its pages of recipients)
//!   live in the audiences table under the publish id and expire by TTL
//!   ([`publishes`]); a status call also reads the idempotency markers
//!   ([`append`]) and the clients' acknowledgement states ([`clients`]),
//!   a `BatchGetItem` per 100 recipients each;
//! - cleanup turns expired, unacknowledged messages into tombstones, only
//!   for clients an expiring append flagged ([`cleanup`]).
//!
//! Every request goes through [`call`], which applies the shared retry
//! policy ([`crate::retry`]). Reads that decide correctness (heads,
//! cursors, message queries) are strongly consistent.

mod append;
mod audiences;
mod call;
mod cleanup;
mod clients;
mod item;
mod lifecycle;
mod publish_keys;
mod publishes;
mod read;
mod read_mostly;
mod tables;
mod tags;
mod warm_up;
mod windows;

pub use read_mostly::{PollMode, LAST_SEEN_EVERY, POLL_MODE};
pub use tables::TableNames;
pub use warm_up::WARM_UP_KEY;

use super::*;
use aws_sdk_dynamodb::Client;

pub struct DynamoStore {
    client: Client,
    tables: TableNames,
    poll_mode: PollMode,
    sightings: read_mostly::Sightings,
}

impl DynamoStore {
    pub fn new(client: Client, tables: TableNames) -> DynamoStore {
        DynamoStore {
            client,
            tables,
            poll_mode: PollMode::Exact,
            sightings: Default::default(),
        }
    }

    /// How polls record the contact (`POLL_MODE`).
    pub fn with_poll_mode(mut self, mode: PollMode) -> DynamoStore {
        self.poll_mode = mode;
        self
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
        let found = self.marker_seqs(mailbox, ids, dedup_key, true).await?;
        Ok(found.into_keys().collect())
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

    async fn set_tags(&self, id: ClientId, tags: &[String]) -> StoreResult<Option<Vec<String>>> {
        self.set_client_tags(id, tags).await
    }

    async fn list_tagged(
        &self,
        tag: &str,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>> {
        self.list_tagged_clients(tag, limit, page_token).await
    }

    async fn audience_page(
        &self,
        audience: &Audience,
        registered_by: Timestamp,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<AudiencePage, BadPageToken>> {
        self.enumerate_audience(audience, registered_by, limit, page_token)
            .await
    }

    async fn save_publish(&self, header: &PublishHeader) -> StoreResult<()> {
        self.put_publish(header).await
    }

    async fn save_recipient_page(
        &self,
        publish_id: &str,
        page: RecipientPage,
    ) -> StoreResult<RecipientPage> {
        self.put_recipient_page(publish_id, page).await
    }

    async fn mark_page_continued(&self, publish_id: &str, number: u32) -> StoreResult<()> {
        self.mark_continued(publish_id, number).await
    }

    async fn finish_enumeration(
        &self,
        publish_id: &str,
        enumerated: Enumerated,
    ) -> StoreResult<()> {
        self.finish_enumerating(publish_id, enumerated).await
    }

    async fn load_publish(&self, publish_id: &str) -> StoreResult<Option<PublishState>> {
        self.read_publish(publish_id).await
    }

    async fn appended_seqs(
        &self,
        mailbox: Mailbox,
        ids: &[ClientId],
        dedup_key: &str,
    ) -> StoreResult<std::collections::HashMap<ClientId, Seq>> {
        self.marker_seqs(mailbox, ids, dedup_key, false).await
    }

    async fn ack_states(
        &self,
        ids: &[ClientId],
    ) -> StoreResult<std::collections::HashMap<ClientId, AckState>> {
        self.ack_states_of(ids).await
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
