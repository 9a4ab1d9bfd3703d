//! The SQS queue: publish's jobs become SQS messages that the fan-out
//! function receives through its event source mapping.

use super::{FanoutJob, Queue, QueueError};
use crate::retry::aws::{classify, SQS_ERRORS};
use crate::retry::{self, Class, Failed, GaveUp};
use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use std::sync::Mutex;

/// SendMessageBatch takes at most 10 entries and 256 KiB in all.
const BATCH_ENTRIES: usize = 10;
const BATCH_BYTES: usize = 256 * 1024;

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

    /// Sends one batch under the shared retry policy. A retry resends only
    /// the entries SQS did not accept; entries it refused for the sender's
    /// fault fail the batch at once. (A retry after a lost response may
    /// enqueue a job twice: the fan-out's markers make that harmless.)
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        let pending = Mutex::new(
            bodies
                .into_iter()
                .enumerate()
                .map(|(i, body)| (i.to_string(), body))
                .collect::<Vec<_>>(),
        );
        let outcome = retry::run(
            |_| {
                let entries = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(id, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(id)
                            .message_body(body)
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>();
                let pending = &pending;
                async move {
                    let entries = entries
                        .map_err(|e| Failed::permanent(QueueError::Refused(e.to_string())))?;
                    let out = self
                        .client
                        .send_message_batch()
                        .queue_url(&self.queue_url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .map_err(|e| {
                            // A missing queue or a denied send is a
                            // deployment fault (500), not a reason for the
                            // client to retry (503).
                            let class = classify(SQS_ERRORS, &e);
                            let text = DisplayErrorContext(e).to_string();
                            Failed {
                                class,
                                error: match class {
                                    Class::Transient => QueueError::Unavailable(text),
                                    Class::Permanent => QueueError::Refused(text),
                                },
                            }
                        })?;
                    if let Some(refused) = out.failed.iter().find(|f| f.sender_fault) {
                        return Err(Failed::permanent(QueueError::Refused(format!(
                            "{}: {}",
                            refused.code,
                            refused.message.as_deref().unwrap_or("")
                        ))));
                    }
                    let failed: Vec<&str> = out.failed.iter().map(|f| f.id.as_str()).collect();
                    let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
                    pending.retain(|(id, _)| failed.contains(&id.as_str()));
                    if pending.is_empty() {
                        return Ok(());
                    }
                    for f in &out.failed {
                        tracing::warn!(code = %f.code, "SQS refused a fan-out job for now");
                    }
                    Err(Failed::transient(QueueError::Unavailable(format!(
                        "SQS did not accept {} fan-out job(s)",
                        pending.len()
                    ))))
                }
            },
            || QueueError::Unavailable("SendMessageBatch: no answer in time".into()),
        )
        .await;
        outcome.map_err(|gave_up| match gave_up {
            GaveUp::Permanent(e) => e,
            GaveUp::Exhausted { last, attempts } => {
                QueueError::Unavailable(format!("{last} (gave up after {attempts} attempts)"))
            }
        })
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
            self.send_batch(batch).await?;
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
