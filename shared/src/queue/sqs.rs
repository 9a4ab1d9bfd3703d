//! The SQS queue: publish's jobs become SQS messages that the fan-out
//! function receives through its event source mapping.

use super::{FanoutJob, Queue, QueueError};
use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;

/// SendMessageBatch takes at most 10 entries and 256 KiB in all.
const BATCH_ENTRIES: usize = 10;
const BATCH_BYTES: usize = 256 * 1024;
/// Entries SQS refuses for passing reasons (throttling) are retried this
/// many times.
const ATTEMPTS: usize = 3;

pub struct SqsQueue {
    client: Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
        }
    }
}

/// Groups message bodies into batches SQS accepts.
fn batches(bodies: Vec<String>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut size = 0;
    for body in bodies {
        let fits = out
            .last()
            .is_some_and(|b| b.len() < BATCH_ENTRIES && size + body.len() <= BATCH_BYTES);
        if !fits {
            out.push(Vec::new());
            size = 0;
        }
        size += body.len();
        out.last_mut().expect("just pushed").push(body);
    }
    out
}

#[async_trait]
impl Queue for SqsQueue {
    async fn enqueue(&self, jobs: Vec<FanoutJob>) -> Result<(), QueueError> {
        for batch in batches(jobs.iter().map(FanoutJob::to_json).collect()) {
            let mut pending: Vec<(String, String)> = batch
                .into_iter()
                .enumerate()
                .map(|(i, body)| (i.to_string(), body))
                .collect();
            for _ in 0..ATTEMPTS {
                let entries = pending
                    .iter()
                    .map(|(id, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(id)
                            .message_body(body)
                            .build()
                            .map_err(|e| QueueError::Unavailable(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| QueueError::Unavailable(DisplayErrorContext(e).to_string()))?;
                let failed: Vec<String> = out.failed.iter().map(|f| f.id.clone()).collect();
                if failed.is_empty() {
                    pending.clear();
                    break;
                }
                for f in &out.failed {
                    tracing::warn!(code = %f.code, sender_fault = f.sender_fault, "SQS refused a fan-out job");
                }
                pending.retain(|(id, _)| failed.contains(id));
            }
            if !pending.is_empty() {
                return Err(QueueError::Unavailable(format!(
                    "SQS refused {} fan-out job(s) after {ATTEMPTS} attempts",
                    pending.len()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_count_and_size() {
        let small: Vec<String> = (0..25).map(|i| format!("job {i}")).collect();
        let sizes: Vec<usize> = batches(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);

        let big = vec![
            "x".repeat(200 * 1024),
            "y".repeat(100 * 1024),
            "z".repeat(50 * 1024),
        ];
        let sizes: Vec<usize> = batches(big).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 2]);
        assert!(batches(Vec::new()).is_empty());
    }
}
