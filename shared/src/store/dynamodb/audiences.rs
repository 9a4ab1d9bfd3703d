//! Enumerating a publish's audience, a page at a time.
//!
//! A tag audience reads the tags' entries in the audiences table
//! (`tags.rs`), one tag after another in the order the publish named
//! them, never the clients table. An entry counts when its client was
//! created by `registered_by` and carries none of the tags before this one
//! (its entry holds the client's whole tag list), so a client carrying
//! several of the tags counts once, under the first. A client whose tags
//! change while its audience is being enumerated may count under two tags,
//! or none. Entries of a deleted client go in the deletion's first steps
//! (`lifecycle.rs`); one whose deletion was interrupted stays until the
//! next purge finishes it.
//!
//! Everyone is a scan of the clients table, filtered by DynamoDB to live
//! clients created by `registered_by`.
//!
//! A page reads at most `limit` entries (or client items), so it may hold
//! fewer recipients, none even, and still have a next page. The token
//! names where the next page starts: the tag's position in the audience
//! and the last client id read under it, or the last client id scanned.
//!
//! Costs, in DynamoDB requests: a tag page is one consistent `Query` per
//! tag it reaches (it goes on to the next tag while it has room), so one
//! in the common case and at most one per tag; a page of everyone is one
//! consistent `Scan`.

use super::call::send;
use super::clients::DELETED;
use super::item::*;
use super::tags::{tag_pk, tags_of};
use super::DynamoStore;
use crate::clock::Timestamp;
use crate::domain::ClientId;
use crate::store::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Where the next page of an audience starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// At the tag `index` of the audience, after client `after`.
    Tag {
        index: usize,
        after: Option<ClientId>,
    },
    /// After client `after` in the scan of everyone.
    All { after: ClientId },
}

impl Position {
    fn encode(&self) -> String {
        let text = match self {
            Position::Tag { index, after: None } => format!("t{index}"),
            Position::Tag {
                index,
                after: Some(id),
            } => format!("t{index}:{id}"),
            Position::All { after } => format!("a:{after}"),
        };
        URL_SAFE_NO_PAD.encode(text)
    }

    fn decode(token: &str) -> Option<Position> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        if let Some(id) = text.strip_prefix("a:") {
            return Some(Position::All {
                after: ClientId::parse(id)?,
            });
        }
        let rest = text.strip_prefix('t')?;
        let (index, after) = match rest.split_once(':') {
            Some((index, id)) => (index, Some(ClientId::parse(id)?)),
            None => (rest, None),
        };
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Position::Tag {
            index: index.parse().ok()?,
            after,
        })
    }
}

fn client_id_of(item: &Item, name: &str) -> StoreResult<ClientId> {
    let id = get_s(item, name)?;
    ClientId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))
}

impl DynamoStore {
    pub(super) async fn enumerate_audience(
        &self,
        audience: &Audience,
        registered_by: Timestamp,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<AudiencePage, BadPageToken>> {
        let position = match page_token.map(Position::decode) {
            Some(None) => return Ok(Err(BadPageToken)),
            Some(Some(position)) => Some(position),
            None => None,
        };
        let limit = limit.max(1);
        match (audience, position) {
            (Audience::Tags(tags), None) => {
                self.tag_page(tags, registered_by, limit, 0, None).await
            }
            (Audience::Tags(tags), Some(Position::Tag { index, after })) if index < tags.len() => {
                self.tag_page(tags, registered_by, limit, index, after)
                    .await
            }
            (Audience::All, None) => self.everyone_page(registered_by, limit, None).await,
            (Audience::All, Some(Position::All { after })) => {
                self.everyone_page(registered_by, limit, Some(after)).await
            }
            (Audience::Clients { .. }, _) => Err(StoreError::Backend(
                "a to_client_ids audience is named, never enumerated".into(),
            )),
            _ => Ok(Err(BadPageToken)),
        }
    }

    async fn tag_page(
        &self,
        tags: &[String],
        registered_by: Timestamp,
        limit: u32,
        mut index: usize,
        mut after: Option<ClientId>,
    ) -> StoreResult<Result<AudiencePage, BadPageToken>> {
        let mut recipients = Vec::new();
        let mut read = 0u32;
        while index < tags.len() {
            let tag = &tags[index];
            let start = after.map(|id| {
                Item::from([
                    ("pk".to_string(), s(tag_pk(tag))),
                    ("sk".to_string(), s(id.to_string())),
                ])
            });
            let out = send("Query", || {
                self.client
                    .query()
                    .table_name(&self.tables.audiences)
                    .key_condition_expression("pk = :pk")
                    .projection_expression("sk, created_at, tags")
                    .expression_attribute_values(":pk", s(tag_pk(tag)))
                    .consistent_read(true)
                    .limit((limit - read) as i32)
                    .set_exclusive_start_key(start.clone())
                    .send()
            })
            .await?;
            for entry in out.items.unwrap_or_default() {
                read += 1;
                if Timestamp(get_n(&entry, "created_at")?) > registered_by {
                    continue;
                }
                if index > 0 {
                    let carried = tags_of(&entry)?;
                    if tags[..index]
                        .iter()
                        .any(|earlier| carried.contains(earlier))
                    {
                        continue;
                    }
                }
                recipients.push(client_id_of(&entry, "sk")?);
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => after = Some(client_id_of(&key, "sk")?),
                _ => {
                    index += 1;
                    after = None;
                }
            }
            if read >= limit {
                break;
            }
        }
        let next = (index < tags.len()).then(|| Position::Tag { index, after }.encode());
        Ok(Ok(AudiencePage { recipients, next }))
    }

    async fn everyone_page(
        &self,
        registered_by: Timestamp,
        limit: u32,
        after: Option<ClientId>,
    ) -> StoreResult<Result<AudiencePage, BadPageToken>> {
        let start = after.map(|id| Item::from([("client_id".to_string(), s(id.to_string()))]));
        let out = send("Scan", || {
            self.client
                .scan()
                .table_name(&self.tables.clients)
                .projection_expression("client_id")
                .filter_expression("attribute_not_exists(#deleted) AND created_at <= :by")
                .expression_attribute_names("#deleted", DELETED)
                .expression_attribute_values(":by", n(registered_by.millis()))
                .consistent_read(true)
                .limit(limit as i32)
                .set_exclusive_start_key(start.clone())
                .send()
        })
        .await?;
        let recipients = out
            .items
            .unwrap_or_default()
            .iter()
            .map(|item| client_id_of(item, "client_id"))
            .collect::<StoreResult<Vec<_>>>()?;
        let next = match out.last_evaluated_key {
            Some(key) if !key.is_empty() => Some(
                Position::All {
                    after: client_id_of(&key, "client_id")?,
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(Ok(AudiencePage { recipients, next }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_garbage_is_refused() {
        let id = ClientId::new();
        for position in [
            Position::Tag {
                index: 0,
                after: None,
            },
            Position::Tag {
                index: 9,
                after: Some(id),
            },
            Position::All { after: id },
        ] {
            assert_eq!(Position::decode(&position.encode()), Some(position));
        }
        for bad in ["", "not a token!", "dA", "eDE", "YTpub3Q"] {
            assert_eq!(Position::decode(bad), None, "{bad}");
        }
        assert_eq!(Position::decode(&URL_SAFE_NO_PAD.encode("t-1")), None);
        assert_eq!(Position::decode(&URL_SAFE_NO_PAD.encode("t1:x")), None);
    }
}
