//! The fan-out worker: delivers one [`FanoutJob`] to each of its recipients.
//!
//! For every known recipient it encrypts the payload under that client's
//! key, with the AAD binding recipient, time and position, and appends it to
//! the client's inbox. Appends are keyed by the publish id, so running a job
//! twice (a queue redelivery, a retried Lambda) never stores a second copy.
//!
//! A job is worked in this order, so that every run makes progress:
//! 1. the recipients that already hold the message are found in one batched
//!    read of the idempotency markers, and skipped before any sealing;
//! 2. the rest are loaded in batches; unknown ids and records that cannot
//!    be read are logged by id and skipped;
//! 3. appends run [`PARALLEL_APPENDS`] at a time; a recipient whose key does
//!    not unwrap is logged and skipped. Throttling is absorbed by the
//!    shared retry policy, which slows the appends down.
//!
//! Within a deadline ([`crate::retry::within`]), the worker stops starting
//! recipients [`Fanout::stop_margin`] before it, and reports the ones it did
//! not finish: the SQS handler hands them on as a new job.

use crate::clock::Clock;
use crate::crypto::{canonical_aad, seal, ServerKeys};
use crate::domain::ClientId;
use crate::envelope::delivered_aad;
use crate::metrics::{self, NotDelivered};
use crate::queue::FanoutJob;
use crate::retry;
use crate::store::{Appended, ClientRecord, Dedup, Mailbox, NewMessage, Sealer, Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Appends in flight at once for one job.
pub const PARALLEL_APPENDS: usize = 32;

/// How long before the deadline the worker stops starting recipients by
/// default: several times an append's usual latency under throttling.
pub const DEFAULT_STOP_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("the job's payload does not open under this server's key")]
    Payload,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one run of a job did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutReport {
    pub delivered: usize,
    /// Recipients that already had this publish (a redelivered job).
    pub already_delivered: usize,
    pub unknown: usize,
    /// Recipients skipped because their record or key is damaged.
    pub skipped: usize,
}

impl FanoutReport {
    /// Recipients this run settled, one way or another.
    pub fn settled(&self) -> usize {
        self.delivered + self.already_delivered + self.unknown + self.skipped
    }
}

/// How a run of a job ended.
#[derive(Debug)]
pub enum Delivery {
    Complete(FanoutReport),
    /// Some recipients are still to be delivered: the deadline came, or
    /// storage stayed unavailable for them (`remaining` names them all), or
    /// something failed for good (`error`; then `remaining` may be
    /// incomplete, and only a rerun of the whole job is safe).
    Unfinished {
        report: FanoutReport,
        remaining: Vec<ClientId>,
        error: Option<StoreError>,
    },
}

#[derive(Clone)]
pub struct Fanout {
    store: Arc<dyn Store>,
    keys: Arc<ServerKeys>,
    clock: Arc<dyn Clock>,
    stop_margin: Duration,
}

impl Fanout {
    pub fn new(store: Arc<dyn Store>, keys: Arc<ServerKeys>, clock: Arc<dyn Clock>) -> Fanout {
        Fanout {
            store,
            keys,
            clock,
            stop_margin: DEFAULT_STOP_MARGIN,
        }
    }

    /// Stops starting recipients this long before the deadline.
    pub fn with_stop_margin(mut self, margin: Duration) -> Fanout {
        self.stop_margin = margin;
        self
    }

    pub fn stop_margin(&self) -> Duration {
        self.stop_margin
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Delivers the whole job, or fails: for callers with nobody to hand
    /// the rest to (the in-process queue, inside a publish request).
    pub async fn deliver(&self, job: &FanoutJob) -> Result<FanoutReport, FanoutError> {
        match self.deliver_some(job).await? {
            Delivery::Complete(report) => Ok(report),
            Delivery::Unfinished {
                error: Some(error), ..
            } => Err(FanoutError::Store(error)),
            Delivery::Unfinished { remaining, .. } => {
                Err(FanoutError::Store(StoreError::Unavailable(format!(
                    "{} recipients not reached in time",
                    remaining.len()
                ))))
            }
        }
    }

    /// Delivers as much of the job as the deadline allows.
    pub async fn deliver_some(&self, job: &FanoutJob) -> Result<Delivery, FanoutError> {
        let plaintext: Arc<[u8]> = self
            .keys
            .open_at_rest(&FanoutJob::payload_context(&job.publish_id), &job.payload)
            .map_err(|_| FanoutError::Payload)?
            .into();
        let dedup = Dedup {
            key: format!("publish:{}", job.publish_id),
            digest: Sha256::digest(job.publish_id.as_bytes()).into(),
        };
        let mut report = FanoutReport::default();
        let done = self
            .store
            .already_appended(Mailbox::Inbox, &job.recipients, &dedup.key)
            .await?;
        report.already_delivered = done.len();
        let todo: Vec<ClientId> = job
            .recipients
            .iter()
            .filter(|id| !done.contains(id))
            .copied()
            .collect();
        let clients = self.store.load_clients(&todo).await?;
        let known: HashSet<ClientId> = clients.iter().map(|c| c.id).collect();
        for id in todo.iter().filter(|id| !known.contains(id)) {
            tracing::warn!(publish_id = %job.publish_id, client_id = %id, "skipping unknown recipient");
            report.unknown += 1;
        }

        let deadline = retry::deadline();
        let mut remaining: Vec<ClientId> = Vec::new();
        let mut error: Option<StoreError> = None;
        // Recipients are independent, so their appends overlap: on DynamoDB
        // each costs two round trips, and a job can name thousands.
        let mut deliveries = tokio::task::JoinSet::new();
        let mut clients = clients.into_iter();
        for client in clients.by_ref() {
            if retry::deadline_within(self.stop_margin) {
                remaining.push(client.id);
                break;
            }
            while deliveries.len() >= PARALLEL_APPENDS {
                let done = deliveries.join_next().await;
                collect(done, &mut report, &mut remaining, &mut error);
            }
            let Some(sealer) = self.sealer(&client, job, &plaintext) else {
                tracing::error!(publish_id = %job.publish_id, client_id = %client.id, "skipping a recipient whose personal key does not unwrap");
                report.skipped += 1;
                continue;
            };
            let (store, dedup, id) = (Arc::clone(&self.store), dedup.clone(), client.id);
            let (clock, accepted_at) = (Arc::clone(&self.clock), job.accepted_at);
            let append = async move {
                let outcome = store.append(Mailbox::Inbox, id, dedup, sealer).await;
                if let Ok(Appended::Stored { .. }) = outcome {
                    // In the inbox from now on: the end of the delivery lag.
                    metrics::delivered(clock.now(), accepted_at);
                }
                (id, outcome)
            };
            match deadline {
                Some(deadline) => deliveries.spawn(retry::within(deadline, append)),
                None => deliveries.spawn(append),
            };
        }
        remaining.extend(clients.map(|c| c.id));
        while let Some(done) = deliveries.join_next().await {
            collect(Some(done), &mut report, &mut remaining, &mut error);
        }
        tracing::info!(
            publish_id = %job.publish_id,
            delivered = report.delivered,
            already_delivered = report.already_delivered,
            unknown = report.unknown,
            skipped = report.skipped,
            remaining = remaining.len(),
            "fan-out run done"
        );
        // Delivered copies are counted as they are stored; recipients left
        // in `remaining` are counted when they are handed on.
        metrics::not_delivered(NotDelivered::Duplicate, report.already_delivered);
        metrics::not_delivered(NotDelivered::Unknown, report.unknown);
        metrics::not_delivered(NotDelivered::Skipped, report.skipped);
        if remaining.is_empty() && error.is_none() {
            Ok(Delivery::Complete(report))
        } else {
            Ok(Delivery::Unfinished {
                report,
                remaining,
                error,
            })
        }
    }

    /// Encrypts the payload for one recipient once its position is known;
    /// `None` when the recipient's personal key does not unwrap.
    fn sealer(
        &self,
        client: &ClientRecord,
        job: &FanoutJob,
        plaintext: &Arc<[u8]>,
    ) -> Option<Sealer> {
        let key = self
            .keys
            .unwrap_personal_key(client.id, &client.wrapped_key)
            .ok()?;
        let generation = client.generation;
        let expires_at = job.expires_at;
        let (id, kind, clock, plaintext) = (
            client.id,
            job.kind.clone(),
            Arc::clone(&self.clock),
            Arc::clone(plaintext),
        );
        Some(Arc::new(move |seq| {
            let created_at = clock.now();
            let aad = canonical_aad(&delivered_aad(id, created_at, seq))
                .map_err(|e| StoreError::Seal(e.to_string()))?;
            Ok(NewMessage {
                kind: kind.clone(),
                body: seal(&key, &plaintext, &aad),
                created_at,
                key_generation: generation,
                expires_at,
            })
        }))
    }
}

type Finished = Result<(ClientId, Result<Appended, StoreError>), tokio::task::JoinError>;

fn collect(
    done: Option<Finished>,
    report: &mut FanoutReport,
    remaining: &mut Vec<ClientId>,
    error: &mut Option<StoreError>,
) {
    match done {
        Some(Ok((_, Ok(Appended::Stored { .. })))) => report.delivered += 1,
        Some(Ok((_, Ok(Appended::Duplicate { .. })))) => report.already_delivered += 1,
        Some(Ok((_, Ok(Appended::UnknownClient)))) => report.unknown += 1,
        Some(Ok((id, Err(StoreError::Unavailable(cause))))) => {
            tracing::warn!(client_id = %id, %cause, "recipient not reached; handed on");
            remaining.push(id);
        }
        Some(Ok((id, Err(StoreError::Corrupt(cause))))) => {
            // A damaged client item must not hold up everyone else.
            tracing::error!(client_id = %id, %cause, "skipping a recipient whose stored state is unreadable");
            report.skipped += 1;
        }
        Some(Ok((id, Err(e)))) => {
            tracing::error!(client_id = %id, error = %e, "delivery to a recipient failed");
            remaining.push(id);
            error.get_or_insert(e);
        }
        Some(Err(e)) => {
            error.get_or_insert(StoreError::Backend(format!("delivery task failed: {e}")));
        }
        None => {}
    }
}
