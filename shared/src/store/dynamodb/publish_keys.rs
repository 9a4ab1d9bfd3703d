//! Publish idempotency keys, kept in the dedup table beside the append
//! markers (`dedup_id = publish-key#<key>`), expiring by the table's TTL.

use super::call::{attempts, backend, failed, send};
use super::item::*;
use super::DynamoStore;
use crate::clock::Timestamp;
use crate::retry::Failed;
use crate::store::*;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;

/// DynamoDB's TTL deletes within a few days of expiry, not at once; the
/// condition on `created_at` is what makes an expired key free.
const KEY_TTL_SECS: i64 = 2 * 24 * 3600;

fn key_id(key: &str) -> String {
    format!("publish-key#{key}")
}

fn publish_record(item: &Item) -> StoreResult<PublishRecord> {
    Ok(PublishRecord {
        publish_id: get_s(item, "publish_id")?,
        recipients: get_n(item, "recipients")?,
        digest: get_b(item, "digest")?
            .try_into()
            .map_err(|_| StoreError::Corrupt("publish key digest".into()))?,
        created_at: Timestamp(get_n(item, "created_at")?),
    })
}

impl DynamoStore {
    pub(super) async fn claim_key(
        &self,
        key: &str,
        record: PublishRecord,
        expired_before: Timestamp,
    ) -> StoreResult<KeyClaim> {
        let put = self
            .client
            .put_item()
            .table_name(&self.tables.dedup)
            .item("dedup_id", s(key_id(key)))
            .item("publish_id", s(&record.publish_id))
            .item("recipients", n(record.recipients))
            .item("digest", b(record.digest.to_vec()))
            .item("created_at", n(record.created_at.millis()))
            .item("completed", AttributeValue::Bool(false))
            .item(
                "expires_at",
                n(record.created_at.millis() / 1000 + KEY_TTL_SECS),
            )
            .condition_expression("attribute_not_exists(dedup_id) OR created_at < :expired")
            .expression_attribute_values(":expired", n(expired_before.millis()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        // A retry after a lost response finds its own record, held and
        // incomplete: the caller then finishes the publish it started.
        let held = attempts("PutItem", |_| {
            let sent = put.clone().send();
            async move {
                match sent.await {
                    Ok(_) => Ok(None),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(PutItemError::is_conditional_check_failed_exception) =>
                    {
                        match e.into_service_error() {
                            PutItemError::ConditionalCheckFailedException(f) => Ok(f.item),
                            other => Err(Failed::permanent(backend(other))),
                        }
                    }
                    Err(e) => Err(failed(e)),
                }
            }
        })
        .await?;
        let item = match held {
            None => return Ok(KeyClaim::Claimed),
            Some(item) => item,
        };
        Ok(KeyClaim::Held {
            record: publish_record(&item)?,
            completed: opt_bool(&item, "completed")?.unwrap_or(false),
        })
    }

    pub(super) async fn complete_key(&self, key: &str) -> StoreResult<()> {
        let update = self
            .client
            .update_item()
            .table_name(&self.tables.dedup)
            .key("dedup_id", s(key_id(key)))
            .update_expression("SET completed = :t")
            .expression_attribute_values(":t", AttributeValue::Bool(true));
        send("UpdateItem", || update.clone().send()).await?;
        Ok(())
    }
}
