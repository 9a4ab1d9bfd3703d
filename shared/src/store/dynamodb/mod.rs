//! The DynamoDB store.
//!
//! Every method is one or two requests in the common case (see
//! `docs/architecture.md`):
//! - a client item holds the record, the acknowledged cursor, the head of
//!   each sequence and the rate-limit state, so an authenticated poll is a
//!   single conditional `UpdateItem` that also returns what the poll needs;
//! - an append is `GetItem` (the head) then one `TransactWriteItems` that
//!   advances the head on the condition that it has not moved, puts the
//!   message, and puts the idempotency marker on the condition that it does
//!   not exist yet. Message `n + 1` therefore exists only once `n` does, and
//!   a lost race is retried under the next number.
//!
//! Reads that decide correctness (heads, cursors, message queries) are
//! strongly consistent.

mod item;
mod tables;

pub use tables::TableNames;

use super::*;
use crate::rate_limit::Decision;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    CancellationReason, DeleteRequest, KeysAndAttributes, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use item::*;
use std::time::Duration;

/// How long an idempotency marker lives: longer than SQS keeps a message
/// (14 days at most), so no redelivery can outlive its marker.
const DEDUP_TTL_SECS: i64 = 15 * 24 * 3600;
/// Attempts at a write that loses races before giving up (each attempt
/// waits a little longer).
const MAX_ATTEMPTS: u32 = 50;
/// BatchGetItem takes at most 100 keys, BatchWriteItem 25 requests.
const BATCH_GET_MAX: usize = 100;
const BATCH_WRITE_MAX: usize = 25;

pub struct DynamoStore {
    client: Client,
    tables: TableNames,
}

fn backend<E: std::error::Error + 'static>(err: E) -> StoreError {
    StoreError::Backend(DisplayErrorContext(err).to_string())
}

fn built<T, E: std::fmt::Display>(result: Result<T, E>) -> StoreResult<T> {
    result.map_err(|e| StoreError::Backend(format!("request builder: {e}")))
}

/// Waits before retrying a write that lost a race: short, growing, jittered
/// so racing writers spread out.
async fn backoff(attempt: u32) {
    let jitter: u64 = u64::from(crate::crypto::random_bytes::<1>()[0]) % 8;
    let ms = (2u64 << attempt.min(6)) + jitter;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn head_attribute(mailbox: Mailbox) -> &'static str {
    match mailbox {
        Mailbox::Inbox => "inbox_head",
        Mailbox::Outbox => "outbox_head",
    }
}

fn reason_code(reasons: &[CancellationReason], index: usize) -> &str {
    reasons
        .get(index)
        .and_then(CancellationReason::code)
        .unwrap_or("None")
}

/// How a `TransactWriteItems` ended.
enum Transaction {
    Committed,
    /// Cancelled; one reason per item, in request order.
    Cancelled(Vec<CancellationReason>),
}

impl Transaction {
    /// A cancellation that says nothing about the data, only that another
    /// writer was busy with the same items: worth retrying as is.
    fn conflicted(reasons: &[CancellationReason]) -> bool {
        reasons
            .iter()
            .any(|r| r.code() == Some("TransactionConflict"))
    }
}

fn client_record(item: &Item) -> StoreResult<ClientRecord> {
    let id = get_s(item, "client_id")?;
    Ok(ClientRecord {
        id: ClientId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))?,
        name: opt_s(item, "name")?,
        wrapped_key: get_b(item, "wrapped_key")?,
        created_at: Timestamp(get_n(item, "created_at")?),
    })
}

fn client_state(item: &Item) -> StoreResult<ClientState> {
    Ok(ClientState {
        record: client_record(item)?,
        acked: get_n(item, "acked")?,
        head: get_n(item, "inbox_head")?,
    })
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

    fn update_client(&self, id: ClientId) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.tables.clients)
            .key("client_id", s(id.to_string()))
    }

    /// Runs a conditional `UpdateItem` returning the new item; on a failed
    /// condition returns the old item (`None` when there is none).
    async fn conditional_update(
        &self,
        update: UpdateItemFluentBuilder,
    ) -> StoreResult<Result<Item, Option<Item>>> {
        let result = update
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Ok(out.attributes.unwrap_or_default())),
            Err(SdkError::ServiceError(err)) => match err.into_err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => Ok(Err(failed.item)),
                other => Err(backend(other)),
            },
            Err(other) => Err(backend(other)),
        }
    }

    /// Records a contact without a rate limit.
    async fn record_contact(&self, id: ClientId, now: Timestamp) -> StoreResult<Option<Item>> {
        let update = self
            .update_client(id)
            .update_expression("SET last_seen_at = :now")
            .condition_expression("attribute_exists(client_id)")
            .expression_attribute_values(":now", n(now.millis()));
        Ok(self.conditional_update(update).await?.ok())
    }

    async fn read_head(&self, mailbox: Mailbox, id: ClientId) -> StoreResult<Option<Seq>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.clients)
            .key("client_id", s(id.to_string()))
            .projection_expression("#h")
            .expression_attribute_names("#h", head_attribute(mailbox))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        match out.item {
            None => Ok(None),
            Some(item) => Ok(Some(get_n(&item, head_attribute(mailbox))?)),
        }
    }

    /// Runs one transaction, waiting out DynamoDB's "in progress" answer
    /// (an idempotency-token clash) as a conflict.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> StoreResult<Transaction> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Transaction::Committed),
            Err(SdkError::ServiceError(err)) => match err.into_err() {
                TransactWriteItemsError::TransactionCanceledException(e) => Ok(
                    Transaction::Cancelled(e.cancellation_reasons.unwrap_or_default()),
                ),
                TransactWriteItemsError::TransactionInProgressException(_) => {
                    Ok(Transaction::Cancelled(vec![CancellationReason::builder()
                        .code("TransactionConflict")
                        .build()]))
                }
                other => Err(backend(other)),
            },
            Err(other) => Err(backend(other)),
        }
    }

    async fn read_dedup(&self, dedup_id: &str) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.dedup)
            .key("dedup_id", s(dedup_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        Ok(out.item)
    }

    fn duplicate(item: &Item, dedup: &Dedup) -> StoreResult<Appended> {
        Ok(Appended::Duplicate {
            seq: get_n(item, "seq")?,
            same_content: get_b(item, "digest")? == dedup.digest,
        })
    }
}

fn encode_page_token(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

fn decode_page_token(token: &str) -> Option<ClientId> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    ClientId::parse(std::str::from_utf8(&bytes).ok()?)
}

#[async_trait]
impl Store for DynamoStore {
    async fn register_client(
        &self,
        fingerprint: [u8; 32],
        candidate: ClientRecord,
    ) -> StoreResult<Registration> {
        let id = candidate.id.to_string();
        let mut lookup = Put::builder()
            .table_name(&self.tables.fingerprints)
            .item("fingerprint_hash", b(fingerprint.to_vec()))
            .item("client_id", s(&id))
            .item("wrapped_key", b(candidate.wrapped_key.clone()))
            .item("created_at", n(candidate.created_at.millis()))
            .condition_expression("attribute_not_exists(fingerprint_hash)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let mut client = Put::builder()
            .table_name(&self.tables.clients)
            .item("client_id", s(&id))
            .item("wrapped_key", b(candidate.wrapped_key.clone()))
            .item("created_at", n(candidate.created_at.millis()))
            .item("acked", n(0))
            .item("inbox_head", n(0))
            .item("outbox_head", n(0))
            .condition_expression("attribute_not_exists(client_id)");
        if let Some(name) = &candidate.name {
            lookup = lookup.item("name", s(name));
            client = client.item("name", s(name));
        }
        let (lookup, client) = (built(lookup.build())?, built(client.build())?);
        for attempt in 0..MAX_ATTEMPTS {
            let items = vec![
                TransactWriteItem::builder().put(lookup.clone()).build(),
                TransactWriteItem::builder().put(client.clone()).build(),
            ];
            let reasons = match self.transact(items).await? {
                Transaction::Committed => {
                    return Ok(Registration {
                        client: candidate,
                        created: true,
                    })
                }
                Transaction::Cancelled(reasons) => reasons,
            };
            if reason_code(&reasons, 0) == "ConditionalCheckFailed" {
                // The fingerprint is taken: its entry carries the client.
                let existing = match reasons[0].item.clone() {
                    Some(item) => item,
                    None => self
                        .client
                        .get_item()
                        .table_name(&self.tables.fingerprints)
                        .key("fingerprint_hash", b(fingerprint.to_vec()))
                        .consistent_read(true)
                        .send()
                        .await
                        .map_err(backend)?
                        .item
                        .ok_or_else(|| StoreError::Backend("fingerprint entry vanished".into()))?,
                };
                return Ok(Registration {
                    client: client_record(&existing)?,
                    created: false,
                });
            }
            if Transaction::conflicted(&reasons) {
                backoff(attempt).await;
                continue;
            }
            return Err(StoreError::Backend(format!(
                "registration cancelled: {reasons:?}"
            )));
        }
        Err(StoreError::Backend(
            "registration kept conflicting; giving up".into(),
        ))
    }

    async fn touch_client(
        &self,
        id: ClientId,
        now: Timestamp,
        limit: Option<PollRateLimit>,
    ) -> StoreResult<Touch> {
        let Some(limit) = limit else {
            return Ok(match self.record_contact(id, now).await? {
                Some(item) => Touch::Known(client_state(&item)?),
                None => Touch::UnknownClient,
            });
        };
        // First guess the common case, a client whose bucket has refilled
        // (its TAT is in the past): one request. Otherwise the failed
        // condition hands back the stored TAT, and a compare-and-set applies
        // the limiter's decision.
        let mut expected: Option<i64> = None;
        for attempt in 0..MAX_ATTEMPTS {
            let (new_tat, update) = match expected {
                None => {
                    let Decision::Allow { new_tat } = limit.decide(None, now) else {
                        unreachable!("a full bucket always allows")
                    };
                    let update = self.update_client(id).condition_expression(
                        "attribute_exists(client_id) AND (attribute_not_exists(poll_tat) OR poll_tat <= :now)",
                    );
                    (new_tat, update)
                }
                Some(old) => match limit.decide(Some(Timestamp(old)), now) {
                    Decision::Deny { retry_after } => {
                        return Ok(Touch::RateLimited { retry_after })
                    }
                    Decision::Allow { new_tat } => {
                        let update = self
                            .update_client(id)
                            .condition_expression("attribute_exists(client_id) AND poll_tat = :old")
                            .expression_attribute_values(":old", n(old));
                        (new_tat, update)
                    }
                },
            };
            let update = update
                .update_expression("SET last_seen_at = :now, poll_tat = :tat")
                .expression_attribute_values(":now", n(now.millis()))
                .expression_attribute_values(":tat", n(new_tat.millis()));
            match self.conditional_update(update).await? {
                Ok(item) => return Ok(Touch::Known(client_state(&item)?)),
                Err(None) => return Ok(Touch::UnknownClient),
                Err(Some(old)) => match opt_n::<i64>(&old, "poll_tat")? {
                    Some(tat) => expected = Some(tat),
                    // Raced with the client's very first poll; try again.
                    None => backoff(attempt).await,
                },
            }
        }
        Err(StoreError::Backend(
            "rate-limit update kept racing; giving up".into(),
        ))
    }

    async fn load_clients(&self, ids: &[ClientId]) -> StoreResult<Vec<ClientRecord>> {
        let mut found = Vec::with_capacity(ids.len());
        let mut unique: Vec<ClientId> = ids.to_vec();
        unique.sort();
        unique.dedup();
        for chunk in unique.chunks(BATCH_GET_MAX) {
            let mut keys = KeysAndAttributes::builder().consistent_read(true);
            for id in chunk {
                keys = keys.keys(Item::from([("client_id".to_string(), s(id.to_string()))]));
            }
            let mut pending = Some(std::collections::HashMap::from([(
                self.tables.clients.clone(),
                built(keys.build())?,
            )]));
            let mut attempt = 0;
            while let Some(request) = pending.take().filter(|r| !r.is_empty()) {
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(backend)?;
                for item in out
                    .responses
                    .unwrap_or_default()
                    .remove(&self.tables.clients)
                    .unwrap_or_default()
                {
                    found.push(client_record(&item)?);
                }
                pending = out.unprocessed_keys;
                if pending.as_ref().is_some_and(|p| !p.is_empty()) {
                    backoff(attempt).await;
                    attempt += 1;
                }
            }
        }
        Ok(found)
    }

    async fn append(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        dedup: Dedup,
        seal: Sealer,
    ) -> StoreResult<Appended> {
        let client_key = id.to_string();
        let dedup_id = format!("{client_key}#{mailbox:?}#{}", dedup.key);
        let head_name = head_attribute(mailbox);
        for attempt in 0..MAX_ATTEMPTS {
            let Some(head) = self.read_head(mailbox, id).await? else {
                return Ok(Appended::UnknownClient);
            };
            let seq = head + 1;
            let message = seal(seq)?;
            let advance = built(
                Update::builder()
                    .table_name(&self.tables.clients)
                    .key("client_id", s(&client_key))
                    .update_expression("SET #h = :next")
                    .condition_expression("#h = :head")
                    .expression_attribute_names("#h", head_name)
                    .expression_attribute_values(":head", n(head))
                    .expression_attribute_values(":next", n(seq))
                    .build(),
            )?;
            let put_message = built(
                Put::builder()
                    .table_name(self.messages_table(mailbox))
                    .item("client_id", s(&client_key))
                    .item("seq", n(seq))
                    .item("kind", s(&message.kind))
                    .item("nonce", b(message.body.nonce.to_vec()))
                    .item("ciphertext", b(message.body.ciphertext.clone()))
                    .item("tag", b(message.body.tag.to_vec()))
                    .item("created_at", n(message.created_at.millis()))
                    .item("dedup_key", s(&dedup.key))
                    .condition_expression("attribute_not_exists(seq)")
                    .build(),
            )?;
            let put_marker = built(
                Put::builder()
                    .table_name(&self.tables.dedup)
                    .item("dedup_id", s(&dedup_id))
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
                return match &reasons[2].item {
                    Some(item) => Self::duplicate(item, &dedup),
                    None => match self.read_dedup(&dedup_id).await? {
                        Some(item) => Self::duplicate(&item, &dedup),
                        None => continue,
                    },
                };
            }
            if reason_code(&reasons, 0) == "ConditionalCheckFailed"
                || Transaction::conflicted(&reasons)
            {
                // Another writer took `seq` first: take the next number.
                backoff(attempt).await;
                continue;
            }
            return Err(StoreError::Backend(format!(
                "append cancelled: {reasons:?}"
            )));
        }
        Err(StoreError::Backend(
            "append kept losing races; giving up".into(),
        ))
    }

    async fn read(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        after: Seq,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        let mut messages = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let want = limit as usize - messages.len();
            let out = self
                .client
                .query()
                .table_name(self.messages_table(mailbox))
                .key_condition_expression("client_id = :c AND seq > :after")
                .expression_attribute_values(":c", s(id.to_string()))
                .expression_attribute_values(":after", n(after))
                .consistent_read(true)
                .limit(want as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(backend)?;
            for item in out.items.unwrap_or_default() {
                let seq: Seq = get_n(&item, "seq")?;
                let corrupt = || StoreError::Corrupt(format!("message {seq} of {id}"));
                messages.push(StoredMessage {
                    seq,
                    kind: get_s(&item, "kind")?,
                    body: Sealed {
                        ciphertext: get_b(&item, "ciphertext")?,
                        nonce: get_b(&item, "nonce")?.try_into().map_err(|_| corrupt())?,
                        tag: get_b(&item, "tag")?.try_into().map_err(|_| corrupt())?,
                    },
                    created_at: Timestamp(get_n(&item, "created_at")?),
                });
            }
            match out.last_evaluated_key {
                // A page can stop short of the limit at 1 MB; keep reading.
                Some(key) if !key.is_empty() && messages.len() < limit as usize => {
                    start = Some(key)
                }
                _ => return Ok(messages),
            }
        }
    }

    async fn acknowledge(
        &self,
        id: ClientId,
        upto: Seq,
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        let update = self
            .update_client(id)
            .update_expression("SET acked = :n, last_seen_at = :now")
            .condition_expression("attribute_exists(client_id) AND inbox_head >= :n AND acked < :n")
            .expression_attribute_values(":n", n(upto))
            .expression_attribute_values(":now", n(now.millis()));
        let old = match self.conditional_update(update).await? {
            Ok(_) => return Ok(AckOutcome::Acked { cursor: upto }),
            Err(None) => return Ok(AckOutcome::UnknownClient),
            Err(Some(old)) => old,
        };
        let head: Seq = get_n(&old, "inbox_head")?;
        if upto > head {
            return Ok(AckOutcome::BeyondHead { head });
        }
        // An ack at or below the cursor moves nothing but is still a contact.
        match self.record_contact(id, now).await? {
            Some(item) => Ok(AckOutcome::Acked {
                cursor: get_n(&item, "acked")?,
            }),
            None => Ok(AckOutcome::UnknownClient),
        }
    }

    async fn list_clients(
        &self,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>> {
        let start = match page_token.map(decode_page_token) {
            Some(None) => return Ok(Err(BadPageToken)),
            Some(Some(id)) => Some(Item::from([("client_id".to_string(), s(id.to_string()))])),
            None => None,
        };
        let out = self
            .client
            .scan()
            .table_name(&self.tables.clients)
            .projection_expression("client_id, #name, created_at, last_seen_at")
            .expression_attribute_names("#name", "name")
            .limit(limit as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(backend)?;
        let mut clients = Vec::new();
        for item in out.items.unwrap_or_default() {
            let id = get_s(&item, "client_id")?;
            clients.push(ClientSummary {
                id: ClientId::parse(&id)
                    .ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))?,
                name: opt_s(&item, "name")?,
                created_at: Timestamp(get_n(&item, "created_at")?),
                last_seen_at: opt_n(&item, "last_seen_at")?.map(Timestamp),
            });
        }
        let next = match out.last_evaluated_key {
            Some(key) if !key.is_empty() => Some(encode_page_token(&get_s(&key, "client_id")?)),
            _ => None,
        };
        Ok(Ok(ClientPage { clients, next }))
    }

    async fn purge_acknowledged(&self, created_before: Timestamp) -> StoreResult<u64> {
        let mut removed = 0u64;
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.tables.clients)
                .projection_expression("client_id, acked")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(backend)?;
            for client in page.items.unwrap_or_default() {
                let acked: Seq = get_n(&client, "acked")?;
                if acked > 0 {
                    removed += self
                        .purge_client(get_s(&client, "client_id")?, acked, created_before)
                        .await?;
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(removed),
            }
        }
    }
}

impl DynamoStore {
    /// Deletes one client's acknowledged messages created before the cutoff.
    async fn purge_client(
        &self,
        client_id: String,
        acked: Seq,
        created_before: Timestamp,
    ) -> StoreResult<u64> {
        let mut doomed: Vec<Seq> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.tables.messages)
                .key_condition_expression("client_id = :c AND seq <= :acked")
                .filter_expression("created_at < :cutoff")
                .projection_expression("seq")
                .expression_attribute_values(":c", s(&client_id))
                .expression_attribute_values(":acked", n(acked))
                .expression_attribute_values(":cutoff", n(created_before.millis()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(backend)?;
            for item in out.items.unwrap_or_default() {
                doomed.push(get_n(&item, "seq")?);
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        for chunk in doomed.chunks(BATCH_WRITE_MAX) {
            let mut requests: Vec<WriteRequest> = Vec::with_capacity(chunk.len());
            for seq in chunk {
                let delete = built(
                    DeleteRequest::builder()
                        .key("client_id", s(&client_id))
                        .key("seq", n(*seq))
                        .build(),
                )?;
                requests.push(WriteRequest::builder().delete_request(delete).build());
            }
            let mut pending = Some(std::collections::HashMap::from([(
                self.tables.messages.clone(),
                requests,
            )]));
            let mut attempt = 0;
            while let Some(request) = pending.take().filter(|r| !r.is_empty()) {
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(backend)?;
                pending = out.unprocessed_items;
                if pending.as_ref().is_some_and(|p| !p.is_empty()) {
                    backoff(attempt).await;
                    attempt += 1;
                }
            }
        }
        Ok(doomed.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(codes: &[&str]) -> Vec<CancellationReason> {
        codes
            .iter()
            .map(|c| CancellationReason::builder().code(*c).build())
            .collect()
    }

    // Emulators never report conflicts, so the classification is pinned here.
    #[test]
    fn conflicts_are_retried_but_failed_conditions_are_not() {
        assert!(Transaction::conflicted(&reasons(&[
            "None",
            "TransactionConflict",
            "None"
        ])));
        assert!(!Transaction::conflicted(&reasons(&[
            "ConditionalCheckFailed",
            "None"
        ])));
        assert!(!Transaction::conflicted(&[]));
        let r = reasons(&["ConditionalCheckFailed", "None", "None"]);
        assert_eq!(reason_code(&r, 0), "ConditionalCheckFailed");
        assert_eq!(reason_code(&r, 1), "None");
        assert_eq!(reason_code(&r, 7), "None");
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = ClientId::new();
        assert_eq!(
            decode_page_token(&encode_page_token(&id.to_string())),
            Some(id)
        );
        assert_eq!(decode_page_token("not a token!"), None);
        assert_eq!(decode_page_token(&encode_page_token("not-a-uuid")), None);
    }
}
