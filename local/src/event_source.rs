//! What Lambda's SQS event source mapping does, for `--backend aws`:
//! receive batches from the fan-out queue, hand each to the fan-out
//! function's handler as an `SqsEvent`, and delete the records it did not
//! report as failed. Failed records become visible again after the queue's
//! visibility timeout and, past the redrive limit, move to the dead-letter
//! queue, exactly as on AWS.

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use pigeonhole::handlers::sqs_batch::FanoutFunction;
use std::time::{Duration, Instant};

/// Records per batch, as the event source mapping's `BatchSize`.
const BATCH_SIZE: i32 = 5;
/// Long-poll wait per receive; short enough to stop promptly.
const WAIT_SECS: i32 = 2;
/// Each batch gets the time the fan-out function has on AWS (its
/// `Timeout` in template.yaml), so deadlines behave as they do there.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(client: Client, queue_url: String, function: FanoutFunction) {
    loop {
        if let Err(e) = poll_once(&client, &queue_url, &function).await {
            tracing::warn!(error = %e, "fan-out queue receive failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn poll_once(
    client: &Client,
    queue_url: &str,
    function: &FanoutFunction,
) -> Result<(), String> {
    let received = client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(BATCH_SIZE)
        .wait_time_seconds(WAIT_SECS)
        .send()
        .await
        .map_err(|e| DisplayErrorContext(e).to_string())?;
    let messages = received.messages.unwrap_or_default();
    if messages.is_empty() {
        return Ok(());
    }
    let mut event = SqsEvent::default();
    let mut handles = Vec::new();
    for m in messages {
        let mut record = SqsMessage::default();
        record.message_id = m.message_id.clone();
        record.receipt_handle = m.receipt_handle.clone();
        record.body = m.body.clone();
        record.event_source = Some("aws:sqs".into());
        handles.push((
            m.message_id.unwrap_or_default(),
            m.receipt_handle.unwrap_or_default(),
        ));
        event.records.push(record);
    }
    let deadline = Instant::now() + INVOCATION_TIMEOUT;
    let response = function.handle(event, Some(deadline)).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    let entries = handles
        .iter()
        .enumerate()
        .filter(|(_, (id, _))| !failed.contains(&id.as_str()))
        .map(|(i, (_, handle))| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(handle)
                .build()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !entries.is_empty() {
        client
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
    }
    Ok(())
}
