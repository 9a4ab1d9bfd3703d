//! The SQS inbound queue: one `SendMessage` per notice on a FIFO queue
//! (`InboundQueue` in template.yaml), under the shared retry policy.

use super::inbound::{Inbound, SentNotice};
use super::QueueError;
use crate::retry::aws::{classify, SQS_ERRORS};
use crate::retry::{self, Class, Failed, GaveUp};
use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::Client;

pub struct SqsInbound {
    client: Client,
    queue_url: String,
}

impl SqsInbound {
    pub fn new(client: Client, queue_url: impl Into<String>) -> SqsInbound {
        SqsInbound {
            client,
            queue_url: queue_url.into(),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

#[async_trait]
impl Inbound for SqsInbound {
    /// A retry after an attempt whose outcome is unknown sends the same
    /// deduplication id, so SQS keeps one copy.
    async fn notify(&self, notice: SentNotice) -> Result<(), QueueError> {
        let (body, group, dedup) = (
            notice.to_json(),
            notice.group_id(),
            notice.deduplication_id(),
        );
        let outcome = retry::run(
            |_| async {
                self.client
                    .send_message()
                    .queue_url(&self.queue_url)
                    .message_body(&body)
                    .message_group_id(&group)
                    .message_deduplication_id(&dedup)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        let class = classify(SQS_ERRORS, &e);
                        let text = format!("SendMessage: {}", DisplayErrorContext(e));
                        Failed {
                            class,
                            error: match class {
                                Class::Transient => QueueError::Unavailable(text),
                                Class::Permanent => QueueError::Refused(text),
                            },
                        }
                    })
            },
            || QueueError::Unavailable("SendMessage: no answer in time".into()),
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
