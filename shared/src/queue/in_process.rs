//! The embedded queue: delivers each job before `enqueue` returns.
//!
//! Running the fan-out inside the publish request means a 202 from the local
//! server is already delivered, and nothing sits in memory waiting to be lost
//! when the process stops. A tag or everyone audience is walked to its end
//! here too, one page after the other.

use super::{FanoutJob, Queue, QueueError};
use crate::handlers::fanout::{Fanout, FanoutError};
use crate::metrics::{self, JobOutcome};
use crate::retry;
use crate::store::StoreError;
use async_trait::async_trait;
use std::time::{Duration, Instant};

/// Time one job (at most 1,000 recipients) may take, retries included.
const JOB_BUDGET: Duration = Duration::from_secs(30);

pub struct InProcessQueue {
    fanout: Fanout,
}

impl InProcessQueue {
    pub fn new(fanout: Fanout) -> Self {
        InProcessQueue { fanout }
    }
}

#[async_trait]
impl Queue for InProcessQueue {
    async fn enqueue(&self, jobs: Vec<FanoutJob>) -> Result<(), QueueError> {
        for job in jobs {
            let mut next = Some(job);
            while let Some(job) = next.take() {
                // Each job (each page of an audience) gets a budget of its
                // own rather than what is left of the publish request's: a
                // large publish on a slow disk must not stop half-way only
                // because the request's clock ran out.
                let deadline = Instant::now() + JOB_BUDGET;
                let run = async {
                    let expanded = self.fanout.expand(&job).await?;
                    self.fanout.deliver(&expanded.deliver).await?;
                    Ok::<_, FanoutError>(expanded.next)
                };
                let ran = retry::within(deadline, run).await;
                metrics::fanout_job(match ran {
                    Ok(_) => JobOutcome::Done,
                    Err(_) => JobOutcome::Failed,
                });
                next = ran.map_err(|e| match e {
                    FanoutError::Store(StoreError::Unavailable(cause)) => {
                        QueueError::Unavailable(cause)
                    }
                    other => QueueError::Delivery(other.to_string()),
                })?;
            }
        }
        Ok(())
    }
}
