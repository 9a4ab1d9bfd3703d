//! The fan-out worker: delivers one [`FanoutJob`] to each of its recipients.
//!
//! For every known recipient it encrypts the payload under that client's
//! key, with the AAD binding recipient, time and position, and appends it to
//! the client's inbox. Appends are keyed by the publish id, so running a job
//! twice (a queue redelivery, a retried Lambda) never stores a second copy.

use crate::clock::Clock;
use crate::crypto::{canonical_aad, seal, ServerKeys};
use crate::envelope::delivered_aad;
use crate::queue::FanoutJob;
use crate::store::{Appended, ClientRecord, Dedup, Mailbox, NewMessage, Sealer, Store, StoreError};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("the job's payload does not open under this server's key")]
    Payload,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one job did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutReport {
    pub delivered: usize,
    /// Recipients that already had this publish (a redelivered job).
    pub already_delivered: usize,
    pub unknown: usize,
}

#[derive(Clone)]
pub struct Fanout {
    store: Arc<dyn Store>,
    keys: Arc<ServerKeys>,
    clock: Arc<dyn Clock>,
}

impl Fanout {
    pub fn new(store: Arc<dyn Store>, keys: Arc<ServerKeys>, clock: Arc<dyn Clock>) -> Fanout {
        Fanout { store, keys, clock }
    }

    pub async fn deliver(&self, job: &FanoutJob) -> Result<FanoutReport, FanoutError> {
        let plaintext: Arc<[u8]> = self
            .keys
            .open_at_rest(&FanoutJob::payload_context(&job.publish_id), &job.payload)
            .map_err(|_| FanoutError::Payload)?
            .into();
        let clients = self.store.load_clients(&job.recipients).await?;
        let mut report = FanoutReport {
            unknown: job.recipients.len() - clients.len(),
            ..FanoutReport::default()
        };
        if report.unknown > 0 {
            let known: std::collections::HashSet<_> = clients.iter().map(|c| c.id).collect();
            for id in job.recipients.iter().filter(|id| !known.contains(id)) {
                tracing::warn!(publish_id = %job.publish_id, client_id = %id, "skipping unknown recipient");
            }
        }
        let dedup = Dedup {
            key: format!("publish:{}", job.publish_id),
            digest: Sha256::digest(job.publish_id.as_bytes()).into(),
        };
        // Recipients are independent, so their appends overlap: on DynamoDB
        // each costs two round trips, and a job can name thousands.
        let mut deliveries = tokio::task::JoinSet::new();
        let mut failure: Option<FanoutError> = None;
        for client in clients {
            if deliveries.len() >= PARALLEL_APPENDS {
                collect(deliveries.join_next().await, &mut report, &mut failure);
            }
            let sealer = self.sealer(&client, &job.kind, &plaintext)?;
            let (store, dedup) = (Arc::clone(&self.store), dedup.clone());
            deliveries
                .spawn(async move { store.append(Mailbox::Inbox, client.id, dedup, sealer).await });
        }
        while let Some(done) = deliveries.join_next().await {
            collect(Some(done), &mut report, &mut failure);
        }
        if let Some(error) = failure {
            // Whatever was delivered stays delivered; the retried job skips it.
            return Err(error);
        }
        tracing::info!(
            publish_id = %job.publish_id,
            delivered = report.delivered,
            already_delivered = report.already_delivered,
            unknown = report.unknown,
            "fan-out done"
        );
        Ok(report)
    }

    /// Encrypts the payload for one recipient once its position is known.
    fn sealer(
        &self,
        client: &ClientRecord,
        kind: &str,
        plaintext: &Arc<[u8]>,
    ) -> Result<Sealer, FanoutError> {
        let key = self
            .keys
            .unwrap_personal_key(client.id, &client.wrapped_key)
            .map_err(|_| {
                StoreError::Corrupt(format!("personal key of {} does not unwrap", client.id))
            })?;
        let (id, kind, clock, plaintext) = (
            client.id,
            kind.to_string(),
            Arc::clone(&self.clock),
            Arc::clone(plaintext),
        );
        Ok(Arc::new(move |seq| {
            let created_at = clock.now();
            let aad = canonical_aad(&delivered_aad(id, created_at, seq))
                .map_err(|e| StoreError::Seal(e.to_string()))?;
            Ok(NewMessage {
                kind: kind.clone(),
                body: seal(&key, &plaintext, &aad),
                created_at,
            })
        }))
    }
}

/// Appends in flight at once for one job.
const PARALLEL_APPENDS: usize = 32;

fn collect(
    done: Option<Result<Result<Appended, StoreError>, tokio::task::JoinError>>,
    report: &mut FanoutReport,
    failure: &mut Option<FanoutError>,
) {
    match done {
        Some(Ok(Ok(Appended::Stored { .. }))) => report.delivered += 1,
        Some(Ok(Ok(Appended::Duplicate { .. }))) => report.already_delivered += 1,
        Some(Ok(Ok(Appended::UnknownClient))) => report.unknown += 1,
        Some(Ok(Err(e))) => {
            failure.get_or_insert(FanoutError::Store(e));
        }
        Some(Err(e)) => {
            failure.get_or_insert(FanoutError::Store(StoreError::Backend(format!(
                "delivery task failed: {e}"
            ))));
        }
        None => {}
    }
}
