//! Publish status records, in the audiences table under `pk =
//! publish#<publish id>`:
//! - `sk = header`: `kind`, `created_at` (ms), `audience` (the JSON text of
//!   [`Audience::to_json`]), `message_expires_at` (ms, when the messages
//!   expire) and, once the audience is enumerated, `pages` and
//!   `recipients`;
//! - `sk = page#<number, 8 digits>`: `number`, `recipients` (the client
//!   ids' 16 bytes each, back to back: 10,000 ids take 160 KB of the 400 KB
//!   an item may hold; absent on an empty page), `next` (the enumeration's
//!   token, when more follow) and `continued`.
//!
//! Every item expires by the table's TTL (`expires_at`, seconds)
//! [`PUBLISH_STATUS_DAYS`] after it was written: the header counted from
//! the publish's `created_at`, a page from the time it is saved (the
//! header's time is not at hand there; it is never earlier, so a page
//! never goes before its header). A partition sorts `header` before
//! `page#…`, and pages in number order.
//!
//! Costs, in DynamoDB requests:
//! - `save_publish`: one conditional `PutItem`;
//! - `save_recipient_page`: one conditional `PutItem`, which on a page
//!   saved before hands that page back (a consistent `GetItem` more only
//!   when DynamoDB does not);
//! - `mark_page_continued`, `finish_enumeration`: one conditional
//!   `UpdateItem` (on an item that exists: a forgotten publish is not
//!   brought back as a fragment);
//! - `load_publish`: one consistent `Query` per 1 MB of the partition (a
//!   header and about six pages of 10,000 recipients).

use super::call::send;
use super::item::*;
use super::DynamoStore;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::domain::{ClientId, PUBLISH_STATUS_DAYS};
use crate::store::*;

const HEADER: &str = "header";
const PAGE_PREFIX: &str = "page#";
/// The bytes of one client id on a page.
const ID_BYTES: usize = 16;

fn publish_pk(publish_id: &str) -> String {
    format!("publish#{publish_id}")
}

fn page_sk(number: u32) -> String {
    format!("{PAGE_PREFIX}{number:08}")
}

/// The TTL (epoch seconds) of a record written for a publish at `from`.
fn expiry(from: Timestamp) -> AttributeValue {
    n(from.millis() / 1000 + PUBLISH_STATUS_DAYS * 86_400)
}

fn corrupt(publish_id: &str, what: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} of publish {publish_id}"))
}

fn encode_recipients(ids: &[ClientId]) -> Vec<u8> {
    ids.iter()
        .flat_map(|id| id.as_uuid().as_bytes().to_vec())
        .collect()
}

fn decode_recipients(bytes: &[u8]) -> Option<Vec<ClientId>> {
    if !bytes.len().is_multiple_of(ID_BYTES) {
        return None;
    }
    bytes
        .chunks_exact(ID_BYTES)
        .map(|chunk| {
            let uuid = uuid::Uuid::from_slice(chunk).ok()?;
            ClientId::parse(&uuid.hyphenated().to_string())
        })
        .collect()
}

fn header_item(header: &PublishHeader) -> Item {
    let mut item = Item::from([
        ("pk".to_string(), s(publish_pk(&header.publish_id))),
        ("sk".to_string(), s(HEADER)),
        ("kind".to_string(), s(&header.kind)),
        ("created_at".to_string(), n(header.created_at.millis())),
        (
            "audience".to_string(),
            s(header.audience.to_json().to_string()),
        ),
        ("expires_at".to_string(), expiry(header.created_at)),
    ]);
    if let Some(at) = header.expires_at {
        item.insert("message_expires_at".into(), n(at.millis()));
    }
    if let Some(enumerated) = header.enumerated {
        item.insert("pages".into(), n(enumerated.pages));
        item.insert("recipients".into(), n(enumerated.recipients));
    }
    item
}

fn read_header(publish_id: &str, item: &Item) -> StoreResult<PublishHeader> {
    let audience = serde_json::from_str(&get_s(item, "audience")?)
        .ok()
        .and_then(|json| Audience::from_json(&json))
        .ok_or_else(|| corrupt(publish_id, "the audience"))?;
    let enumerated = match (opt_n(item, "pages")?, opt_n(item, "recipients")?) {
        (Some(pages), Some(recipients)) => Some(Enumerated { pages, recipients }),
        _ => None,
    };
    Ok(PublishHeader {
        publish_id: publish_id.to_string(),
        kind: get_s(item, "kind")?,
        created_at: Timestamp(get_n(item, "created_at")?),
        audience,
        expires_at: opt_n(item, "message_expires_at")?.map(Timestamp),
        enumerated,
    })
}

fn page_item(publish_id: &str, page: &RecipientPage, now: Timestamp) -> Item {
    let mut item = Item::from([
        ("pk".to_string(), s(publish_pk(publish_id))),
        ("sk".to_string(), s(page_sk(page.number))),
        ("number".to_string(), n(page.number)),
        (
            "continued".to_string(),
            AttributeValue::Bool(page.continued),
        ),
        ("expires_at".to_string(), expiry(now)),
    ]);
    if !page.recipients.is_empty() {
        item.insert("recipients".into(), b(encode_recipients(&page.recipients)));
    }
    if let Some(next) = &page.next {
        item.insert("next".into(), s(next));
    }
    item
}

fn read_page(publish_id: &str, item: &Item) -> StoreResult<RecipientPage> {
    let recipients = match opt_b(item, "recipients")? {
        Some(bytes) => {
            decode_recipients(&bytes).ok_or_else(|| corrupt(publish_id, "a recipient page"))?
        }
        None => Vec::new(),
    };
    Ok(RecipientPage {
        number: get_n(item, "number")?,
        recipients,
        next: opt_s(item, "next")?,
        continued: opt_bool(item, "continued")?.unwrap_or(false),
    })
}

impl DynamoStore {
    pub(super) async fn put_publish(&self, header: &PublishHeader) -> StoreResult<()> {
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.audiences)
            .set_item(Some(header_item(header)))
            .condition_expression("attribute_not_exists(pk)");
        // Saved before (a retried publish): the first stays.
        let _ = self.put_if(put).await?;
        Ok(())
    }

    pub(super) async fn put_recipient_page(
        &self,
        publish_id: &str,
        page: RecipientPage,
    ) -> StoreResult<RecipientPage> {
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.audiences)
            .set_item(Some(page_item(publish_id, &page, SystemClock.now())))
            .condition_expression("attribute_not_exists(pk)");
        let stored = match self.put_if(put).await? {
            Ok(()) => return Ok(page),
            Err(Some(item)) => item,
            Err(None) => {
                let out = send("GetItem", || {
                    self.client
                        .get_item()
                        .table_name(&self.tables.audiences)
                        .key("pk", s(publish_pk(publish_id)))
                        .key("sk", s(page_sk(page.number)))
                        .consistent_read(true)
                        .send()
                })
                .await?;
                out.item.ok_or_else(|| {
                    StoreError::Backend(format!(
                        "page {} of publish {publish_id} both exists and does not",
                        page.number
                    ))
                })?
            }
        };
        read_page(publish_id, &stored)
    }

    /// `SET <action>` on an existing item of a publish; nothing when the
    /// item does not exist (the publish was forgotten).
    async fn update_publish_item(
        &self,
        publish_id: &str,
        sk: String,
        action: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> StoreResult<()> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.tables.audiences)
            .key("pk", s(publish_pk(publish_id)))
            .key("sk", s(sk))
            .update_expression(action)
            .condition_expression("attribute_exists(pk)");
        for (name, value) in values {
            update = update.expression_attribute_values(name, value);
        }
        self.update_if(update).await?;
        Ok(())
    }

    pub(super) async fn mark_continued(&self, publish_id: &str, number: u32) -> StoreResult<()> {
        self.update_publish_item(
            publish_id,
            page_sk(number),
            "SET continued = :t",
            vec![(":t", AttributeValue::Bool(true))],
        )
        .await
    }

    pub(super) async fn finish_enumerating(
        &self,
        publish_id: &str,
        enumerated: Enumerated,
    ) -> StoreResult<()> {
        self.update_publish_item(
            publish_id,
            HEADER.to_string(),
            "SET pages = :pages, recipients = :recipients",
            vec![
                (":pages", n(enumerated.pages)),
                (":recipients", n(enumerated.recipients)),
            ],
        )
        .await
    }

    pub(super) async fn read_publish(&self, publish_id: &str) -> StoreResult<Option<PublishState>> {
        let mut header: Option<PublishHeader> = None;
        let mut pages = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = send("Query", || {
                self.client
                    .query()
                    .table_name(&self.tables.audiences)
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(publish_pk(publish_id)))
                    .consistent_read(true)
                    .set_exclusive_start_key(start.clone())
                    .send()
            })
            .await?;
            for item in out.items.unwrap_or_default() {
                let sk = get_s(&item, "sk")?;
                if sk == HEADER {
                    header = Some(read_header(publish_id, &item)?);
                } else if sk.starts_with(PAGE_PREFIX) {
                    pages.push(read_page(publish_id, &item)?);
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        // Pages without their header: the header's TTL came first.
        Ok(header.map(|header| PublishState { header, pages }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_sort_by_number_after_the_header() {
        assert_eq!(page_sk(7), "page#00000007");
        assert!(page_sk(9) < page_sk(10));
        assert!(HEADER < page_sk(0).as_str());
    }

    #[test]
    fn recipients_pack_into_sixteen_bytes_each() {
        let ids: Vec<ClientId> = (0..3).map(|_| ClientId::new()).collect();
        let bytes = encode_recipients(&ids);
        assert_eq!(bytes.len(), 48);
        assert_eq!(decode_recipients(&bytes), Some(ids));
        assert_eq!(decode_recipients(&bytes[..47]), None);
    }

    #[test]
    fn headers_and_pages_read_back_as_written() {
        let header = PublishHeader {
            publish_id: "p1".into(),
            kind: "event".into(),
            created_at: Timestamp(1_000),
            audience: Audience::Tags(vec!["eu".into(), "b".into()]),
            expires_at: Some(Timestamp(9_000)),
            enumerated: Some(Enumerated {
                pages: 2,
                recipients: 7,
            }),
        };
        assert_eq!(read_header("p1", &header_item(&header)).unwrap(), header);
        let page = RecipientPage {
            number: 3,
            recipients: vec![ClientId::new()],
            next: Some("t".into()),
            continued: false,
        };
        assert_eq!(
            read_page("p1", &page_item("p1", &page, Timestamp(0))).unwrap(),
            page
        );
        let empty = RecipientPage {
            recipients: Vec::new(),
            next: None,
            ..page
        };
        assert_eq!(
            read_page("p1", &page_item("p1", &empty, Timestamp(0))).unwrap(),
            empty
        );
    }
}
