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
use crate::store::{Appended, Dedup, Mailbox, NewMessage, Sealer, Store, StoreError};
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
        for client in clients {
            let key = match self
                .keys
                .unwrap_personal_key(client.id, &client.wrapped_key)
            {
                Ok(key) => key,
                Err(_) => {
                    return Err(StoreError::Corrupt(format!(
                        "personal key of {} does not unwrap",
                        client.id
                    ))
                    .into())
                }
            };
            let (id, kind, clock, plaintext) = (
                client.id,
                job.kind.clone(),
                Arc::clone(&self.clock),
                Arc::clone(&plaintext),
            );
            let sealer: Sealer = Arc::new(move |seq| {
                let created_at = clock.now();
                let aad = canonical_aad(&delivered_aad(id, created_at, seq))
                    .map_err(|e| StoreError::Seal(e.to_string()))?;
                Ok(NewMessage {
                    kind: kind.clone(),
                    body: seal(&key, &plaintext, &aad),
                    created_at,
                })
            });
            match self
                .store
                .append(Mailbox::Inbox, client.id, dedup.clone(), sealer)
                .await?
            {
                Appended::Stored { .. } => report.delivered += 1,
                Appended::Duplicate { .. } => report.already_delivered += 1,
                Appended::UnknownClient => report.unknown += 1,
            }
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
}
