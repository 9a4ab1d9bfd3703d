//! The fan-out function's handler: one SQS batch in, partial failures out.
//!
//! Each record is delivered on its own; a record that fails is reported in
//! `batch_item_failures`, so SQS retries only it (and, after the redrive
//! limit, moves it to the dead-letter queue). Delivery is idempotent, so a
//! retried record never creates a second copy for any recipient.

use super::fanout::Fanout;
use crate::queue::FanoutJob;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};

pub async fn handle_sqs_batch(fanout: &Fanout, event: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let outcome = match record.body.as_deref().map(FanoutJob::from_json) {
            None => Err("the record has no body".to_string()),
            Some(Err(e)) => Err(format!("the record is not a fan-out job: {e}")),
            Some(Ok(job)) => fanout
                .deliver(&job)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(error) = outcome {
            tracing::error!(message_id = %id, %error, "fan-out record failed");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}
