//! Client items: registration, the per-request touch (credential
//! generation, contact, rate limit, heads and cursor in one `UpdateItem`),
//! acknowledgements and their history (`ack_m0` newest … `ack_m3`, each
//! `"cursor:millis"` or `""`), batch loads for the fan-out and for
//! delivery status, and the operators' listing (which shows each client's
//! `tags`, see `tags.rs`).
//!
//! A client item carries its credential `generation` (absent on items
//! written before rotation existed: generation 0) and the condition of
//! every authenticated write names it, so a rotated or deleted client's
//! old tokens fail in the same request that would have served them. A
//! deleted client keeps its item, marked `deleted_at` and with generation
//! `u32::MAX`, until its messages are gone (see `lifecycle.rs`).

use super::call::{attempts, built, failed, reason_code, send, Transaction};
use super::item::*;
use super::tags::{client_summary, SUMMARY_PROJECTION};
use super::{DynamoStore, PollMode};
use crate::clock::Timestamp;
use crate::domain::{ClientId, Seq};
use crate::rate_limit::Decision;
use crate::retry;
use crate::store::*;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{
    KeysAndAttributes, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// BatchGetItem takes at most 100 keys.
pub(super) const BATCH_GET_MAX: usize = 100;

/// The attribute that marks a client deleted (its tokens already refused,
/// its data maybe not all removed yet).
pub(super) const DELETED: &str = "deleted_at";

pub(super) fn client_record(item: &Item) -> StoreResult<ClientRecord> {
    let id = get_s(item, "client_id")?;
    let retired_keys = match opt_s(item, "retired_keys")? {
        Some(text) => RetiredKey::decode_all(&text)?,
        None => Vec::new(),
    };
    Ok(ClientRecord {
        id: ClientId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))?,
        name: opt_s(item, "name")?,
        wrapped_key: get_b(item, "wrapped_key")?,
        created_at: Timestamp(get_n(item, "created_at")?),
        generation: generation_of(item)?,
        retired_keys,
    })
}

/// A client item's credential generation; 0 when it has none.
pub(super) fn generation_of(item: &Item) -> StoreResult<u32> {
    Ok(opt_n(item, "generation")?.unwrap_or(0))
}

pub(super) fn is_deleted(item: &Item) -> bool {
    item.contains_key(DELETED)
}

/// Whether a client item is a live client whose tokens of `generation`
/// are accepted.
pub(super) fn is_current(item: &Item, generation: u32) -> StoreResult<bool> {
    Ok(!is_deleted(item) && generation_of(item)? == generation)
}

/// The condition that the item is a live client of the generation in
/// `:gen` (`#gen` names the attribute): items lacking it are generation 0.
pub(super) fn current_condition(generation: u32) -> &'static str {
    if generation == 0 {
        "attribute_exists(client_id) AND attribute_not_exists(deleted_at) \
         AND (attribute_not_exists(#gen) OR #gen = :gen)"
    } else {
        "attribute_exists(client_id) AND attribute_not_exists(deleted_at) AND #gen = :gen"
    }
}

/// The client item's attribute holding its `i`-th latest cursor move
/// (`"cursor:millis"`, or `""` for none yet), `i < ACK_HISTORY`.
fn ack_slot(i: usize) -> String {
    format!("ack_m{i}")
}

fn ack_mark(cursor: Seq, at: Timestamp) -> String {
    AckState::encode_history(&[AckMark { cursor, at }])
}

/// The `SET` actions that push `:mark` onto the history, dropping the
/// oldest: `ack_m3 = if_not_exists(ack_m2, :none), …, ack_m0 = :mark`.
/// Every operand of an update expression reads the item as it was before
/// the update, so the slots shift without a read (`dynamodb_store.rs`
/// checks that on DynamoDB Local).
fn shift_ack_history() -> String {
    let mut actions: Vec<String> = (1..ACK_HISTORY)
        .rev()
        .map(|i| {
            format!(
                "{} = if_not_exists({}, :none)",
                ack_slot(i),
                ack_slot(i - 1)
            )
        })
        .collect();
    actions.push(format!("{} = :mark", ack_slot(0)));
    actions.join(", ")
}

/// The projection [`ack_state`] reads.
fn ack_projection() -> String {
    let slots: Vec<String> = (0..ACK_HISTORY).map(ack_slot).collect();
    format!("client_id, acked, {DELETED}, {}", slots.join(", "))
}

/// A client item's cursor and its latest moves, newest first.
fn ack_state(item: &Item) -> StoreResult<AckState> {
    let mut history = Vec::with_capacity(ACK_HISTORY);
    for i in 0..ACK_HISTORY {
        match opt_s(item, &ack_slot(i))? {
            Some(mark) if !mark.is_empty() => {
                history.extend(AckState::decode_history(&mark)?);
            }
            // Slots fill from the newest: an empty one ends the history.
            _ => break,
        }
    }
    Ok(AckState {
        acked: opt_n(item, "acked")?.unwrap_or(0),
        history,
    })
}

fn tat_attribute(bucket: Bucket) -> &'static str {
    match bucket {
        Bucket::Poll => "poll_tat",
        Bucket::Send => "send_tat",
    }
}

pub(super) fn client_state(item: &Item) -> StoreResult<ClientState> {
    Ok(ClientState {
        record: client_record(item)?,
        acked: get_n(item, "acked")?,
        head: get_n(item, "inbox_head")?,
    })
}

pub(super) fn encode_page_token(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

pub(super) fn decode_page_token(token: &str) -> Option<ClientId> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    ClientId::parse(std::str::from_utf8(&bytes).ok()?)
}

impl DynamoStore {
    pub(super) fn update_client(&self, id: ClientId) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.tables.clients)
            .key("client_id", s(id.to_string()))
    }

    /// An update of a live client of credential generation `generation`,
    /// under `condition` (which must include [`current_condition`]).
    fn update_current(
        &self,
        id: ClientId,
        generation: u32,
        condition: String,
    ) -> UpdateItemFluentBuilder {
        self.update_client(id)
            .condition_expression(condition)
            .expression_attribute_names("#gen", "generation")
            .expression_attribute_values(":gen", n(generation))
    }

    /// Records a contact without a rate limit: the item as it now is, or
    /// `None` when the client is unknown, deleted or of another generation.
    pub(super) async fn record_contact(
        &self,
        id: ClientId,
        generation: u32,
        now: Timestamp,
    ) -> StoreResult<Option<Item>> {
        let update = self
            .update_current(id, generation, current_condition(generation).to_string())
            .update_expression("SET last_seen_at = :now")
            .expression_attribute_values(":now", n(now.millis()));
        Ok(self.conditional_update(update).await?.ok())
    }

    /// A client item, read strongly consistent.
    pub(super) async fn client_item(&self, id: &str) -> StoreResult<Option<Item>> {
        let out = send("GetItem", || {
            self.client
                .get_item()
                .table_name(&self.tables.clients)
                .key("client_id", s(id))
                .consistent_read(true)
                .send()
        })
        .await?;
        Ok(out.item)
    }

    /// The client a fingerprint entry names, read strongly consistent.
    pub(super) async fn fingerprint_holder(
        &self,
        fingerprint: &[u8],
    ) -> StoreResult<Option<String>> {
        let out = send("GetItem", || {
            self.client
                .get_item()
                .table_name(&self.tables.fingerprints)
                .key("fingerprint_hash", b(fingerprint.to_vec()))
                .consistent_read(true)
                .send()
        })
        .await?;
        out.item.map(|item| get_s(&item, "client_id")).transpose()
    }

    /// The record of the client a fingerprint entry names, when that entry
    /// still stands for it: `None` when the client is gone, deleted, or has
    /// since moved to another fingerprint (a client registered before
    /// items kept their fingerprint leaves its old entry behind when it
    /// is deleted or changes fingerprint).
    pub(super) async fn live_holder(
        &self,
        holder: &str,
        fingerprint: &[u8],
    ) -> StoreResult<Option<ClientRecord>> {
        let Some(item) = self.client_item(holder).await? else {
            return Ok(None);
        };
        if is_deleted(&item) {
            return Ok(None);
        }
        match opt_b(&item, "fingerprint_hash")? {
            Some(current) if current != fingerprint => Ok(None),
            Some(_) => Ok(Some(client_record(&item)?)),
            None => {
                // Registered before items named their fingerprint: record it
                // now, so a deletion or a fingerprint change can find the
                // entry. Best effort; the next registration tries again.
                let record = client_record(&item)?;
                let update = self
                    .update_client(record.id)
                    .update_expression("SET fingerprint_hash = :fp")
                    .condition_expression(
                        "attribute_exists(client_id) AND attribute_not_exists(fingerprint_hash)",
                    )
                    .expression_attribute_values(":fp", b(fingerprint.to_vec()));
                if let Err(error) = self.conditional_update(update).await {
                    tracing::warn!(client_id = %holder, %error, "could not record a legacy client's fingerprint");
                }
                Ok(Some(record))
            }
        }
    }

    /// One registration attempt: the fingerprint entry (new, or replacing
    /// the entry of the dead client `replacing`) and the client item in one
    /// transaction. On a taken fingerprint, the client its entry names
    /// (`None` when the entry turns out not to exist).
    async fn put_registration(
        &self,
        fingerprint: [u8; 32],
        candidate: &ClientRecord,
        replacing: Option<&str>,
    ) -> StoreResult<Result<(), Option<String>>> {
        let id = candidate.id.to_string();
        let lookup = Put::builder()
            .table_name(&self.tables.fingerprints)
            .item("fingerprint_hash", b(fingerprint.to_vec()))
            .item("client_id", s(&id))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let lookup = match replacing {
            None => lookup.condition_expression("attribute_not_exists(fingerprint_hash)"),
            Some(dead) => lookup
                .condition_expression("client_id = :dead")
                .expression_attribute_values(":dead", s(dead)),
        };
        let mut client = Put::builder()
            .table_name(&self.tables.clients)
            .item("client_id", s(&id))
            .item("wrapped_key", b(candidate.wrapped_key.clone()))
            .item("created_at", n(candidate.created_at.millis()))
            .item("generation", n(candidate.generation))
            .item("fingerprint_hash", b(fingerprint.to_vec()))
            .item("acked", n(0))
            .item("inbox_head", n(0))
            .item("outbox_head", n(0))
            .condition_expression("attribute_not_exists(client_id)");
        if let Some(name) = &candidate.name {
            client = client.item("name", s(name));
        }
        if !candidate.retired_keys.is_empty() {
            client = client.item(
                "retired_keys",
                s(RetiredKey::encode_all(&candidate.retired_keys)),
            );
        }
        let items = vec![
            TransactWriteItem::builder()
                .put(built(lookup.build())?)
                .build(),
            TransactWriteItem::builder()
                .put(built(client.build())?)
                .build(),
        ];
        let reasons = match self.transact(items).await? {
            Transaction::Committed => return Ok(Ok(())),
            Transaction::Cancelled(reasons) => reasons,
        };
        if reason_code(&reasons, 0) != "ConditionalCheckFailed" {
            return Err(StoreError::Backend(format!(
                "registration cancelled: {reasons:?}"
            )));
        }
        let holder = match &reasons[0].item {
            Some(item) => opt_s(item, "client_id")?,
            None => self.fingerprint_holder(&fingerprint).await?,
        };
        Ok(Err(holder))
    }

    pub(super) async fn register(
        &self,
        fingerprint: [u8; 32],
        candidate: ClientRecord,
    ) -> StoreResult<Registration> {
        let mut replacing: Option<String> = None;
        let mut round = 0;
        loop {
            let holder = match self
                .put_registration(fingerprint, &candidate, replacing.as_deref())
                .await?
            {
                Ok(()) => {
                    return Ok(Registration {
                        client: candidate,
                        created: true,
                    })
                }
                Err(holder) => holder,
            };
            // The fingerprint is taken. Its entry names the client; the
            // client item holds the record as it is now (rotations change
            // it), so that is what a re-registration returns.
            replacing = match holder {
                Some(holder) => match self.live_holder(&holder, &fingerprint).await? {
                    Some(record) => {
                        return Ok(Registration {
                            client: record,
                            created: false,
                        })
                    }
                    // A dead client's entry: take it over.
                    None => Some(holder),
                },
                // The entry went away in between: try afresh.
                None => None,
            };
            // Taking over an entry races other registrations and the
            // deletion that removes it; past the first round, back off.
            if round > 0 && !retry::pause(round - 1).await {
                return Err(StoreError::Unavailable(
                    "registration kept racing for the fingerprint".into(),
                ));
            }
            round += 1;
        }
    }

    pub(super) async fn touch(
        &self,
        id: ClientId,
        generation: u32,
        now: Timestamp,
        charge: Option<RateCharge>,
    ) -> StoreResult<Touch> {
        if let (
            PollMode::ReadMostly,
            Some(RateCharge {
                bucket: Bucket::Poll,
                limit,
            }),
        ) = (self.poll_mode, charge)
        {
            return self.touch_read_mostly(id, generation, now, limit).await;
        }
        let Some(RateCharge { bucket, limit }) = charge else {
            return Ok(match self.record_contact(id, generation, now).await? {
                Some(item) => Touch::Known(client_state(&item)?),
                None => Touch::UnknownClient,
            });
        };
        let tat = tat_attribute(bucket);
        // First guess the common case, a client whose bucket has refilled
        // (its TAT is in the past): one request. Otherwise the failed
        // condition hands back the stored TAT, and a compare-and-set applies
        // the limiter's decision.
        let mut expected: Option<i64> = None;
        let mut round = 0;
        loop {
            let (new_tat, rate_condition) = match expected {
                None => {
                    let Decision::Allow { new_tat } = limit.decide(None, now) else {
                        unreachable!("a full bucket always allows")
                    };
                    (new_tat, "(attribute_not_exists(#tat) OR #tat <= :now)")
                }
                Some(old) => match limit.decide(Some(Timestamp(old)), now) {
                    Decision::Deny { retry_after } => {
                        return Ok(Touch::RateLimited { retry_after })
                    }
                    Decision::Allow { new_tat } => (new_tat, "#tat = :old"),
                },
            };
            let condition = format!("{} AND {rate_condition}", current_condition(generation));
            let mut update = self
                .update_current(id, generation, condition)
                .update_expression("SET last_seen_at = :now, #tat = :tat")
                .expression_attribute_names("#tat", tat)
                .expression_attribute_values(":now", n(now.millis()))
                .expression_attribute_values(":tat", n(new_tat.millis()));
            if let Some(old) = expected {
                update = update.expression_attribute_values(":old", n(old));
            }
            match self.conditional_update(update).await? {
                Ok(item) => return Ok(Touch::Known(client_state(&item)?)),
                Err(None) => return Ok(Touch::UnknownClient),
                // The failed condition may be the generation's (a rotated
                // or deleted client), not the rate limit's.
                Err(Some(old)) if !is_current(&old, generation)? => {
                    return Ok(Touch::UnknownClient)
                }
                Err(Some(old)) => {
                    expected = opt_n::<i64>(&old, tat)?;
                    // The first refusal just hands over the stored TAT.
                    // After that, a refusal means another request of this
                    // client won a race: pause, then decide on what it wrote.
                    if (round > 0 || expected.is_none()) && !retry::pause(round).await {
                        return Err(StoreError::Unavailable(
                            "rate-limit update kept racing".into(),
                        ));
                    }
                    round += 1;
                }
            }
        }
    }

    /// Loads client records by id. A record that cannot be read is logged
    /// by id and left out, like an unknown id: one damaged item must not
    /// stop a fan-out to thousands. Deleted clients are left out too.
    pub(super) async fn load(&self, ids: &[ClientId]) -> StoreResult<Vec<ClientRecord>> {
        let mut found = Vec::with_capacity(ids.len());
        let (_, keys) = client_keys(ids);
        for item in self
            .batch_get(&self.tables.clients, keys, None, true)
            .await?
        {
            if is_deleted(&item) {
                continue;
            }
            match client_record(&item) {
                Ok(record) => found.push(record),
                Err(error) => {
                    let id = opt_s(&item, "client_id").ok().flatten().unwrap_or_default();
                    tracing::error!(client_id = %id, %error, "skipping an unreadable client record");
                }
            }
        }
        Ok(found)
    }

    /// `BatchGetItem` over any number of keys of one table, 100 at a time,
    /// following up on unprocessed keys (DynamoDB's answer to throttling
    /// inside a batch) with the shared backoff.
    pub(super) async fn batch_get(
        &self,
        table: &str,
        keys: Vec<Item>,
        projection: Option<&str>,
        consistent: bool,
    ) -> StoreResult<Vec<Item>> {
        self.batch_get_named(table, keys, projection, None, consistent)
            .await
    }

    /// [`DynamoStore::batch_get`] with a projection that needs expression
    /// attribute names (`#name` for reserved words).
    pub(super) async fn batch_get_named(
        &self,
        table: &str,
        keys: Vec<Item>,
        projection: Option<&str>,
        names: Option<std::collections::HashMap<String, String>>,
        consistent: bool,
    ) -> StoreResult<Vec<Item>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_MAX) {
            let request = built(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
                    .set_projection_expression(projection.map(String::from))
                    .set_expression_attribute_names(names.clone())
                    .consistent_read(consistent)
                    .build(),
            )?;
            let mut pending = Some(request);
            let mut round = 0;
            while let Some(request) = pending.take() {
                let out = send("BatchGetItem", || {
                    self.client
                        .batch_get_item()
                        .request_items(table, request.clone())
                        .send()
                })
                .await?;
                found.extend(
                    out.responses
                        .unwrap_or_default()
                        .remove(table)
                        .unwrap_or_default(),
                );
                pending = out
                    .unprocessed_keys
                    .unwrap_or_default()
                    .remove(table)
                    .filter(|k| !k.keys.is_empty());
                if pending.is_some() {
                    if !retry::pause(round).await {
                        return Err(StoreError::Unavailable(
                            "BatchGetItem kept returning unprocessed keys".into(),
                        ));
                    }
                    round += 1;
                }
            }
        }
        Ok(found)
    }

    /// One conditional `UpdateItem` that moves the cursor, records the
    /// contact and shifts the move into the history; an ack that moves
    /// nothing (at or below the cursor) costs one `UpdateItem` more, the
    /// contact alone, and adds no history.
    pub(super) async fn ack(
        &self,
        id: ClientId,
        generation: u32,
        upto: Seq,
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        let condition = format!(
            "{} AND inbox_head >= :n AND acked < :n",
            current_condition(generation)
        );
        let update = self
            .update_current(id, generation, condition)
            .update_expression(format!(
                "SET acked = :n, last_seen_at = :now, {}",
                shift_ack_history()
            ))
            .expression_attribute_values(":n", n(upto))
            .expression_attribute_values(":now", n(now.millis()))
            .expression_attribute_values(":mark", s(ack_mark(upto, now)))
            .expression_attribute_values(":none", s(""));
        let old = match self.conditional_update(update).await? {
            Ok(_) => return Ok(AckOutcome::Acked { cursor: upto }),
            Err(None) => return Ok(AckOutcome::UnknownClient),
            Err(Some(old)) => old,
        };
        if !is_current(&old, generation)? {
            return Ok(AckOutcome::UnknownClient);
        }
        let head: Seq = get_n(&old, "inbox_head")?;
        if upto > head {
            return Ok(AckOutcome::BeyondHead { head });
        }
        // An ack at or below the cursor moves nothing but is still a
        // contact. (So is a retried ack whose first attempt did move it.)
        match self.record_contact(id, generation, now).await? {
            Some(item) => Ok(AckOutcome::Acked {
                cursor: get_n(&item, "acked")?,
            }),
            None => Ok(AckOutcome::UnknownClient),
        }
    }

    /// The acknowledgement state of the live clients among `ids`: one
    /// eventually consistent `BatchGetItem` per 100 ids (a move made a
    /// moment ago may not show yet; statuses are read again and again).
    pub(super) async fn ack_states_of(
        &self,
        ids: &[ClientId],
    ) -> StoreResult<std::collections::HashMap<ClientId, AckState>> {
        let (unique, keys) = client_keys(ids);
        let mut states = std::collections::HashMap::with_capacity(unique.len());
        for item in self
            .batch_get(&self.tables.clients, keys, Some(&ack_projection()), false)
            .await?
        {
            if is_deleted(&item) {
                continue;
            }
            let id = get_s(&item, "client_id")?;
            let id = ClientId::parse(&id)
                .ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))?;
            states.insert(id, ack_state(&item)?);
        }
        Ok(states)
    }

    pub(super) async fn list(
        &self,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>> {
        let start = match page_token.map(decode_page_token) {
            Some(None) => return Ok(Err(BadPageToken)),
            Some(Some(id)) => Some(Item::from([("client_id".to_string(), s(id.to_string()))])),
            None => None,
        };
        let out = attempts("Scan", |_| {
            let sent = self
                .client
                .scan()
                .table_name(&self.tables.clients)
                .projection_expression(SUMMARY_PROJECTION)
                .expression_attribute_names("#name", "name")
                // Deleted clients wait here only until their data is gone.
                .filter_expression("attribute_not_exists(deleted_at)")
                // One more than asked: DynamoDB hands back a continuation
                // key whenever a scan stops at its limit, even with nothing
                // after it; the extra item tells whether more follow.
                .limit(limit as i32 + 1)
                .set_exclusive_start_key(start.clone())
                .send();
            async move { sent.await.map_err(failed) }
        })
        .await?;
        let mut clients = Vec::new();
        for item in out.items.unwrap_or_default() {
            clients.push(client_summary(&item)?);
        }
        let next = if clients.len() > limit as usize {
            clients.truncate(limit as usize);
            clients.last().map(|c| encode_page_token(&c.id.to_string()))
        } else {
            // Fewer than asked with a key: the scan stopped at 1 MB, or
            // it filtered deleted clients out.
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => Some(encode_page_token(&get_s(&key, "client_id")?)),
                _ => None,
            }
        };
        Ok(Ok(ClientPage { clients, next }))
    }
}

/// The distinct ids among `ids`, and their keys in the clients table, for
/// a `BatchGetItem`.
fn client_keys(ids: &[ClientId]) -> (Vec<ClientId>, Vec<Item>) {
    let mut unique: Vec<ClientId> = ids.to_vec();
    unique.sort();
    unique.dedup();
    let keys = unique
        .iter()
        .map(|id| Item::from([("client_id".to_string(), s(id.to_string()))]))
        .collect();
    (unique, keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_history_shifts_newest_first() {
        assert_eq!(
            shift_ack_history(),
            "ack_m3 = if_not_exists(ack_m2, :none), ack_m2 = if_not_exists(ack_m1, :none), \
             ack_m1 = if_not_exists(ack_m0, :none), ack_m0 = :mark"
        );
        let item = Item::from([
            ("acked".to_string(), n(7)),
            ("ack_m0".to_string(), s(ack_mark(7, Timestamp(30)))),
            ("ack_m1".to_string(), s(ack_mark(3, Timestamp(20)))),
            ("ack_m2".to_string(), s("")),
            ("ack_m3".to_string(), s("")),
        ]);
        let state = ack_state(&item).unwrap();
        assert_eq!(state.acked, 7);
        assert_eq!(
            state.history,
            vec![
                AckMark {
                    cursor: 7,
                    at: Timestamp(30)
                },
                AckMark {
                    cursor: 3,
                    at: Timestamp(20)
                }
            ]
        );
        assert!(ack_state(&Item::from([("acked".to_string(), n(0))]))
            .unwrap()
            .history
            .is_empty());
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
