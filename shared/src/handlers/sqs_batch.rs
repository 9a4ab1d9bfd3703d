//! The fan-out function's handler: one SQS batch in, partial failures out.
//!
//! Each record is delivered on its own, within the invocation's deadline:
//! - finished: the record succeeds;
//! - cut short by the deadline or by storage that stayed unavailable, after
//!   settling at least one recipient: the recipients left are enqueued as a
//!   new job and the record succeeds. Every invocation that makes progress
//!   thus resets the count SQS keeps towards the dead-letter queue, and a
//!   job of any size finishes over as many invocations as it needs;
//! - anything else (no progress, a record that is not a job, a failure for
//!   good): the record is reported in `batch_item_failures`, so SQS retries
//!   only it and, after the redrive limit, moves it to the dead-letter
//!   queue.
//! - not started because the deadline is near: handed on whole as a new
//!   job (or, with nowhere to hand it, reported failed), never dropped with
//!   a response that came too late.
//!
//! Delivery is idempotent, so a retried record never creates a second copy
//! for any recipient.

use super::fanout::{Delivery, Fanout};
use crate::domain::ClientId;
use crate::metrics::{self, JobOutcome, NotDelivered};
use crate::queue::{FanoutJob, Queue};
use crate::retry;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Kept free at the end of an invocation to hand on unfinished work and
/// return the batch response.
pub const FINISH_MARGIN: Duration = Duration::from_secs(3);

/// The fan-out function as Lambda runs it: the worker, and the queue that
/// unfinished work is handed back to.
#[derive(Clone)]
pub struct FanoutFunction {
    pub fanout: Fanout,
    pub continuation: Option<Arc<dyn Queue>>,
    /// Kept free at the end of the invocation ([`FINISH_MARGIN`]).
    pub finish_margin: Duration,
}

impl FanoutFunction {
    pub fn new(fanout: Fanout, continuation: Option<Arc<dyn Queue>>) -> FanoutFunction {
        FanoutFunction {
            fanout,
            continuation,
            finish_margin: FINISH_MARGIN,
        }
    }

    /// Runs one batch before `deadline`, the invocation's.
    pub async fn handle(&self, event: SqsEvent, deadline: Option<Instant>) -> SqsBatchResponse {
        let work_deadline = deadline.map(|d| d.checked_sub(self.finish_margin).unwrap_or(d));
        handle_sqs_batch(
            &self.fanout,
            self.continuation.as_deref(),
            event,
            work_deadline,
            deadline,
        )
        .await
    }
}

/// Runs one batch: deliveries end by `work_deadline`, handing unfinished
/// work to `continuation` by `deadline` (none: no time limit).
async fn handle_sqs_batch(
    fanout: &Fanout,
    continuation: Option<&dyn Queue>,
    event: SqsEvent,
    work_deadline: Option<Instant>,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        if redelivered(&record) {
            metrics::fanout_redelivered();
        }
        let late = work_deadline.is_some_and(|d| Instant::now() + fanout.stop_margin() >= d);
        let outcome = if late {
            // Handed on whole rather than failed: a record that never got
            // its turn must not count towards the dead-letter queue.
            match record.body.as_deref().map(FanoutJob::from_json) {
                Some(Ok(job)) if continuation.is_some() => {
                    let recipients = job.recipients.clone();
                    hand_on(continuation, &job, recipients, deadline).await
                }
                _ => Err("not started: the invocation's deadline is near".to_string()),
            }
        } else {
            match record.body.as_deref().map(FanoutJob::from_json) {
                None => Err("the record has no body".to_string()),
                Some(Err(e)) => Err(format!("the record is not a fan-out job: {e}")),
                Some(Ok(job)) => {
                    let run = async {
                        let job = expand(fanout, continuation, &job, deadline).await?;
                        let delivery = fanout.deliver_some(&job).await;
                        Ok::<_, String>((job, delivery))
                    };
                    let ran = match work_deadline {
                        Some(d) => retry::within(d, run).await,
                        None => run.await,
                    };
                    match ran {
                        Err(e) => Err(e),
                        Ok((job, delivery)) => match delivery {
                            Ok(Delivery::Complete(_)) => Ok(JobOutcome::Done),
                            Ok(Delivery::Unfinished {
                                report,
                                remaining,
                                error: None,
                            }) if report.settled() > 0 => {
                                hand_on(continuation, &job, remaining, deadline).await
                            }
                            Ok(Delivery::Unfinished {
                                remaining, error, ..
                            }) => Err(match error {
                                Some(e) => e.to_string(),
                                None => format!("no progress; {} recipients left", remaining.len()),
                            }),
                            Err(e) => Err(e.to_string()),
                        },
                    }
                }
            }
        };
        match outcome {
            Ok(outcome) => metrics::fanout_job(outcome),
            Err(error) => {
                metrics::fanout_job(JobOutcome::Failed);
                tracing::error!(message_id = %id, %error, "fan-out record failed; SQS will redeliver it");
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                response.batch_item_failures.push(failure);
            }
        }
    }
    response
}

/// Whether SQS delivered this record before (its receive count is above
/// one): an earlier receive failed, or its invocation timed out.
fn redelivered(record: &SqsMessage) -> bool {
    record
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n > 1)
}

/// Turns a step of an audience into this page's delivery, after handing
/// the step for the next page to `continuation` (a plain job is returned
/// as it is).
async fn expand(
    fanout: &Fanout,
    continuation: Option<&dyn Queue>,
    job: &FanoutJob,
    deadline: Option<Instant>,
) -> Result<FanoutJob, String> {
    if job.step.is_none() {
        return Ok(job.clone());
    }
    let expanded = fanout.expand(job).await.map_err(|e| e.to_string())?;
    if let Some(next) = expanded.next {
        let Some(queue) = continuation else {
            return Err("an audience step needs a queue for the next page".into());
        };
        let enqueue = queue.enqueue(vec![next.clone()]);
        match deadline {
            Some(d) => retry::within(d, enqueue).await,
            None => enqueue.await,
        }
        .map_err(|e| e.to_string())?;
        fanout
            .mark_continued(&next)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(expanded.deliver)
}

/// Enqueues the recipients a run did not reach as a job of their own.
async fn hand_on(
    continuation: Option<&dyn Queue>,
    job: &FanoutJob,
    remaining: Vec<ClientId>,
    deadline: Option<Instant>,
) -> Result<JobOutcome, String> {
    let Some(queue) = continuation else {
        return Err(format!("{} recipients left", remaining.len()));
    };
    let rest = FanoutJob {
        recipients: remaining,
        ..job.clone()
    };
    tracing::info!(publish_id = %job.publish_id, remaining = rest.recipients.len(), "handing the rest of the job on");
    let handed_on = rest.recipients.len();
    let enqueue = queue.enqueue(vec![rest]);
    let enqueued = match deadline {
        Some(d) => retry::within(d, enqueue).await,
        None => enqueue.await,
    };
    enqueued.map_err(|e| e.to_string())?;
    metrics::not_delivered(NotDelivered::HandedOn, handed_on);
    Ok(JobOutcome::HandedOn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_received_before_is_a_redelivery() {
        let record = |count: Option<&str>| {
            let mut record = SqsMessage::default();
            if let Some(count) = count {
                record
                    .attributes
                    .insert("ApproximateReceiveCount".into(), count.into());
            }
            record
        };
        assert!(!redelivered(&record(None)));
        assert!(!redelivered(&record(Some("1"))));
        assert!(redelivered(&record(Some("2"))));
        assert!(!redelivered(&record(Some("many"))));
    }
}
