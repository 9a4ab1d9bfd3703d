//! Fixed-window request counters (register's per-address limit): one
//! counter item per key and window in the dedup table, `dedup_id =
//! rate#<key>#<window>`, bumped by a single conditional `UpdateItem` and
//! forgotten by the table's TTL.

use super::item::*;
use super::DynamoStore;
use crate::clock::Timestamp;
use crate::rate_limit::WindowLimit;
use crate::store::*;

fn counter_id(key: &str, window: i64) -> String {
    format!("rate#{key}#{window}")
}

impl DynamoStore {
    pub(super) async fn count(
        &self,
        key: &str,
        limit: WindowLimit,
        now: Timestamp,
    ) -> StoreResult<Counted> {
        let update = self
            .client
            .update_item()
            .table_name(&self.tables.dedup)
            .key("dedup_id", s(counter_id(key, limit.window(now))))
            .update_expression("ADD #n :one SET expires_at = :exp")
            .condition_expression("attribute_not_exists(#n) OR #n < :limit")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit.limit()))
            // TTL attributes are in seconds.
            .expression_attribute_values(":exp", n(limit.expires_at(now).millis() / 1000));
        // A retry after a lost response may count one request twice: the
        // limit is there to slow floods down, and errs on the strict side.
        Ok(match self.conditional_update(update).await? {
            Ok(_) => Counted::Allowed,
            Err(_) => Counted::Full {
                retry_after: limit.retry_after(now),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_per_key_and_window() {
        assert_eq!(counter_id("203.0.113.9", 7), "rate#203.0.113.9#7");
        assert_ne!(counter_id("a", 1), counter_id("a", 2));
    }
}
