//! Opening the connection to DynamoDB during a function's init, which
//! Lambda runs at full CPU and before any client waits, instead of in the
//! first request (a TCP connection and a TLS handshake: several round
//! trips). The SDK's HTTP client keeps the connection for the requests
//! that follow.

use super::DynamoStore;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use std::time::Instant;

/// The clients-table key the warm-up reads. No client has it (client ids
/// are UUIDs), and it is the only key of that table the grant the
/// template adds for the warm-up lets a role read (a
/// `dynamodb:LeadingKeys` condition), so the grant adds no access to data.
pub const WARM_UP_KEY: &str = "warm-up";

impl DynamoStore {
    /// One eventually consistent `GetItem` of [`WARM_UP_KEY`] (half a read
    /// unit). Best effort, and a single attempt: if it fails, the first
    /// request opens its own connection, as it would have anyway.
    pub async fn warm_up(&self) {
        let started = Instant::now();
        let read = self
            .client
            .get_item()
            .table_name(&self.tables.clients)
            .key("client_id", AttributeValue::S(WARM_UP_KEY.to_string()))
            .projection_expression("client_id")
            .send()
            .await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match read {
            Ok(_) => tracing::debug!(elapsed_ms, "DynamoDB connection opened at init"),
            Err(error) => tracing::warn!(
                elapsed_ms,
                error = %DisplayErrorContext(&error),
                "could not open the DynamoDB connection at init; the first request will"
            ),
        }
    }
}
