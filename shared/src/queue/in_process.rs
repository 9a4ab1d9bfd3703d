//! The embedded queue: delivers each job before `enqueue` returns.
//!
//! Running the fan-out inside the publish request means a 202 from the local
//! server is already delivered, and nothing sits in memory waiting to be lost
//! when the process stops.

use super::{FanoutJob, Queue, QueueError};
use crate::handlers::fanout::{Fanout, FanoutError};
use crate::store::StoreError;
use async_trait::async_trait;

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
        for job in &jobs {
            self.fanout.deliver(job).await.map_err(|e| match e {
                FanoutError::Store(StoreError::Unavailable(cause)) => {
                    QueueError::Unavailable(cause)
                }
                other => QueueError::Delivery(other.to_string()),
            })?;
        }
        Ok(())
    }
}
