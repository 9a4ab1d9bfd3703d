//! Client tags: the client item's `tags` attribute, and one tag entry per
//! tag in the audiences table, the tags' own index (`pk = tag#<tag>`,
//! `sk = <client id>`) that a `?tag=` listing and a `to_tags` publish
//! query instead of scanning every client.
//!
//! A tag entry holds the client's `created_at` (so enumerating an audience
//! can leave out clients registered after the publish) and the client's
//! whole tag list (so a client carrying several of a publish's tags is
//! counted under the first, without reading the client). Setting tags
//! writes the client item and every entry in one transaction, on the
//! condition that the tags are still the ones it read, so the item and
//! the entries never disagree. A deletion removes the entries the item
//! names (`lifecycle.rs`).
//!
//! Costs, in DynamoDB requests:
//! - `set_tags`: a consistent `GetItem` of the client, then one
//!   `TransactWriteItems` (the client `Update`, a `Put` per tag of the new
//!   set, a `Delete` per tag removed: at most 41 items). Unchanged tags:
//!   the `GetItem` alone. Each lost race (another `set_tags` in between)
//!   costs both again.
//! - `list_tagged`: one consistent `Query` of the tag's partition (its 1 MB
//!   page holds far more than the largest listing), then one consistent
//!   `BatchGetItem` per 100 clients found; an empty page is the `Query`
//!   alone.

use super::call::{built, reason_code, send, Transaction};
use super::clients::{is_deleted, DELETED};
use super::item::*;
use super::DynamoStore;
use crate::clock::Timestamp;
use crate::domain::ClientId;
use crate::retry;
use crate::store::*;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};
use std::collections::HashMap;

/// The client item's attribute holding its tags, and the tag entry's
/// attribute holding the client's whole list.
pub(super) const TAGS: &str = "tags";

/// The partition of a tag's entries.
pub(super) fn tag_pk(tag: &str) -> String {
    format!("tag#{tag}")
}

/// A tag list as one string: sorted, comma-joined (a tag has no comma).
pub(super) fn join_tags(tags: &[String]) -> String {
    tags.join(",")
}

pub(super) fn split_tags(text: &str) -> Vec<String> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split(',').map(str::to_string).collect()
    }
}

/// The tags an item (client or tag entry) holds; none when it has none.
pub(super) fn tags_of(item: &Item) -> StoreResult<Vec<String>> {
    Ok(opt_s(item, TAGS)?
        .map(|t| split_tags(&t))
        .unwrap_or_default())
}

/// The key of a client's entry under `tag`.
pub(super) fn entry_key(tag: &str, client_key: &str) -> Item {
    Item::from([
        ("pk".to_string(), s(tag_pk(tag))),
        ("sk".to_string(), s(client_key)),
    ])
}

/// A client as the operators' listing shows it.
pub(super) fn client_summary(item: &Item) -> StoreResult<ClientSummary> {
    let id = get_s(item, "client_id")?;
    Ok(ClientSummary {
        id: ClientId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))?,
        name: opt_s(item, "name")?,
        created_at: Timestamp(get_n(item, "created_at")?),
        last_seen_at: opt_n(item, "last_seen_at")?.map(Timestamp),
        sent_head: opt_n(item, "outbox_head")?.unwrap_or(0),
        tags: tags_of(item)?,
    })
}

/// What [`client_summary`] reads (`#name` stands for `name`).
pub(super) const SUMMARY_PROJECTION: &str =
    "client_id, #name, created_at, last_seen_at, outbox_head, tags, deleted_at";

impl DynamoStore {
    pub(super) async fn set_client_tags(
        &self,
        id: ClientId,
        tags: &[String],
    ) -> StoreResult<Option<Vec<String>>> {
        let client_key = id.to_string();
        let new_list = join_tags(tags);
        let mut round = 0;
        loop {
            let out = send("GetItem", || {
                self.client
                    .get_item()
                    .table_name(&self.tables.clients)
                    .key("client_id", s(&client_key))
                    .projection_expression("client_id, created_at, tags, #deleted")
                    .expression_attribute_names("#deleted", DELETED)
                    .consistent_read(true)
                    .send()
            })
            .await?;
            let Some(item) = out.item.filter(|item| !is_deleted(item)) else {
                return Ok(None);
            };
            let old = tags_of(&item)?;
            if old == tags {
                return Ok(Some(old));
            }
            let created_at: i64 = get_n(&item, "created_at")?;
            let items = self.tag_transaction(&client_key, created_at, &old, tags, &new_list)?;
            let reasons = match self.transact(items).await? {
                Transaction::Committed => return Ok(Some(tags.to_vec())),
                Transaction::Cancelled(reasons) => reasons,
            };
            if reason_code(&reasons, 0) != "ConditionalCheckFailed" {
                return Err(StoreError::Backend(format!(
                    "setting tags cancelled: {reasons:?}"
                )));
            }
            // Deleted, or tagged by someone else since the read: read again.
            if !retry::pause(round).await {
                return Err(StoreError::Unavailable(
                    "setting tags kept racing other writes".into(),
                ));
            }
            round += 1;
        }
    }

    /// The client update (first, conditioned on the tags read) and the
    /// entry puts and deletes that take a client from `old` to `new`.
    fn tag_transaction(
        &self,
        client_key: &str,
        created_at: i64,
        old: &[String],
        new: &[String],
        new_list: &str,
    ) -> StoreResult<Vec<TransactWriteItem>> {
        let unchanged = if old.is_empty() {
            "attribute_not_exists(tags)"
        } else {
            "tags = :old"
        };
        let mut update = Update::builder()
            .table_name(&self.tables.clients)
            .key("client_id", s(client_key))
            .condition_expression(format!(
                "attribute_exists(client_id) AND attribute_not_exists(#deleted) AND {unchanged}"
            ))
            .expression_attribute_names("#deleted", DELETED);
        update = if new.is_empty() {
            update.update_expression("REMOVE tags")
        } else {
            update
                .update_expression("SET tags = :new")
                .expression_attribute_values(":new", s(new_list))
        };
        if !old.is_empty() {
            update = update.expression_attribute_values(":old", s(join_tags(old)));
        }
        let mut items = vec![TransactWriteItem::builder()
            .update(built(update.build())?)
            .build()];
        // Every entry of the new set holds the new list, so those kept are
        // rewritten too.
        for tag in new {
            let put = Put::builder()
                .table_name(&self.tables.audiences)
                .item("pk", s(tag_pk(tag)))
                .item("sk", s(client_key))
                .item("created_at", n(created_at))
                .item(TAGS, s(new_list))
                .build();
            items.push(TransactWriteItem::builder().put(built(put)?).build());
        }
        for tag in old.iter().filter(|t| !new.contains(t)) {
            let delete = Delete::builder()
                .table_name(&self.tables.audiences)
                .set_key(Some(entry_key(tag, client_key)))
                .build();
            items.push(TransactWriteItem::builder().delete(built(delete)?).build());
        }
        Ok(items)
    }

    pub(super) async fn list_tagged_clients(
        &self,
        tag: &str,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>> {
        let start = match page_token.map(super::clients::decode_page_token) {
            Some(None) => return Ok(Err(BadPageToken)),
            Some(Some(id)) => Some(entry_key(tag, &id.to_string())),
            None => None,
        };
        let out = send("Query", || {
            self.client
                .query()
                .table_name(&self.tables.audiences)
                .key_condition_expression("pk = :pk")
                .projection_expression("sk")
                .expression_attribute_values(":pk", s(tag_pk(tag)))
                .consistent_read(true)
                // One more than asked tells whether more follow.
                .limit(limit as i32 + 1)
                .set_exclusive_start_key(start.clone())
                .send()
        })
        .await?;
        let mut ids = out
            .items
            .unwrap_or_default()
            .iter()
            .map(|item| get_s(item, "sk"))
            .collect::<StoreResult<Vec<String>>>()?;
        let next = if ids.len() > limit as usize {
            ids.truncate(limit as usize);
            ids.last().cloned()
        } else {
            // Fewer than asked with a key: the query stopped at 1 MB.
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => Some(get_s(&key, "sk")?),
                _ => None,
            }
        };
        let keys = ids
            .iter()
            .map(|id| Item::from([("client_id".to_string(), s(id))]))
            .collect::<Vec<_>>();
        let mut found: HashMap<String, Item> = HashMap::with_capacity(keys.len());
        if !keys.is_empty() {
            let names = HashMap::from([("#name".to_string(), "name".to_string())]);
            for item in self
                .batch_get_named(
                    &self.tables.clients,
                    keys,
                    Some(SUMMARY_PROJECTION),
                    Some(names),
                    true,
                )
                .await?
            {
                found.insert(get_s(&item, "client_id")?, item);
            }
        }
        // In the tag's order; an entry whose client is gone or being
        // deleted is left out.
        let mut clients = Vec::with_capacity(ids.len());
        for id in &ids {
            match found.get(id) {
                Some(item) if !is_deleted(item) => clients.push(client_summary(item)?),
                _ => {}
            }
        }
        Ok(Ok(ClientPage {
            clients,
            next: next.map(|id| super::clients::encode_page_token(&id)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_round_trip() {
        let tags = vec!["door-sensors".to_string(), "eu".to_string()];
        assert_eq!(join_tags(&tags), "door-sensors,eu");
        assert_eq!(split_tags(&join_tags(&tags)), tags);
        assert!(split_tags("").is_empty());
        assert_eq!(tag_pk("eu"), "tag#eu");
    }
}
