//! `POST /messages/publish` (admin): seal the payload once, split the
//! recipients into queue-sized jobs, enqueue them. Delivery is the fan-out's
//! job ([`super::fanout`]).
//!
//! With an `Idempotency-Key`, the key is claimed before anything is
//! enqueued and marked complete after everything is. A retry finds the key:
//! complete, it gets the original answer and nothing is enqueued; still
//! incomplete (the first attempt failed half-way, or is still running), it
//! enqueues every job again under the *same* publish id, and the fan-out's
//! per-publish markers make the repeated jobs deliver nothing twice.

use super::auth::AdminAuth;
use super::input::{string_value, JsonBody};
use crate::domain::{valid_type, ClientId, MAX_PAYLOAD_BYTES, MAX_RECIPIENTS, MAX_TYPE_CHARS};
use crate::envelope;
use crate::error::{ApiError, ErrorCode};
use crate::queue::FanoutJob;
use crate::store::{KeyClaim, PublishRecord};
use crate::App;
use http::HeaderValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::time::Duration;

/// How long a publish's idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
const MAX_KEY_CHARS: usize = 255;

/// A valid `Idempotency-Key`: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn from_header(value: Option<&HeaderValue>) -> Result<Option<Self>, ApiError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let bytes = value.as_bytes();
        let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
        if bytes.is_empty() || bytes.len() > MAX_KEY_CHARS || !visible {
            return Err(ApiError::validation(format!(
                "the Idempotency-Key header must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
            )));
        }
        Ok(Some(IdempotencyKey(
            String::from_utf8_lossy(bytes).into_owned(),
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PublishInput {
    /// Distinct, in the order first given.
    pub recipients: Vec<ClientId>,
    pub kind: String,
    pub payload: Value,
}

impl PublishInput {
    pub fn from_body(body: &JsonBody) -> Result<Self, ApiError> {
        let ids = body
            .required("to_client_ids")?
            .as_array()
            .ok_or_else(|| ApiError::validation("to_client_ids must be an array of client ids"))?;
        if ids.is_empty() || ids.len() > MAX_RECIPIENTS {
            return Err(ApiError::validation(format!(
                "to_client_ids must hold 1 to {MAX_RECIPIENTS} client ids (got {})",
                ids.len()
            )));
        }
        let mut seen = HashSet::with_capacity(ids.len());
        let mut recipients = Vec::with_capacity(ids.len());
        for (i, value) in ids.iter().enumerate() {
            let id = value.as_str().and_then(ClientId::parse).ok_or_else(|| {
                ApiError::validation(format!("to_client_ids[{i}] is not a client id (UUID)"))
            })?;
            if seen.insert(id) {
                recipients.push(id);
            }
        }
        let kind = string_value("type", body.required("type")?, 1..=MAX_TYPE_CHARS)?;
        debug_assert!(valid_type(&kind));
        let payload = body.required("payload")?.clone();
        let size = serde_json::to_vec(&payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_PAYLOAD_BYTES {
            return Err(ApiError::too_large(format!(
                "payload is {size} bytes as JSON; the limit is {MAX_PAYLOAD_BYTES}"
            )));
        }
        Ok(PublishInput {
            recipients,
            kind,
            payload,
        })
    }

    /// What makes two publishes the same publish, for idempotency keys.
    fn digest(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        for id in &self.recipients {
            digest.update(id.as_uuid().as_bytes());
        }
        let kind = self.kind.as_bytes();
        let payload = serde_json::to_vec(&self.payload).unwrap_or_default();
        for part in [kind, &payload[..]] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        digest.finalize().into()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    pub publish_id: String,
    pub recipients: usize,
}

pub async fn publish(
    app: &App,
    _admin: &AdminAuth,
    input: PublishInput,
    key: Option<IdempotencyKey>,
) -> Result<Published, ApiError> {
    let publish_id = uuid::Uuid::new_v4().to_string();
    let Some(key) = key else {
        enqueue(app, &input, &publish_id).await?;
        return Ok(Published {
            publish_id,
            recipients: input.recipients.len(),
        });
    };
    let now = app.clock.now();
    let window = i64::try_from(IDEMPOTENCY_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let record = PublishRecord {
        publish_id,
        recipients: input.recipients.len() as u64,
        digest: input.digest(),
        created_at: now,
    };
    let claim = app
        .store
        .claim_publish_key(key.as_str(), record.clone(), now.plus_millis(-window))
        .await?;
    let (record, completed) = match claim {
        KeyClaim::Claimed => (record, false),
        KeyClaim::Held { record: held, .. } if held.digest != record.digest => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used for a different publish in the last 24 hours; use a fresh key for a new publish",
            ))
        }
        KeyClaim::Held { record, completed } => (record, completed),
    };
    if !completed {
        enqueue(app, &input, &record.publish_id).await?;
        app.store.complete_publish_key(key.as_str()).await?;
    } else {
        tracing::info!(publish_id = %record.publish_id, "publish retried with its idempotency key; nothing enqueued");
    }
    Ok(Published {
        publish_id: record.publish_id,
        recipients: record.recipients as usize,
    })
}

/// Seals the payload once and hands the jobs to the queue.
async fn enqueue(app: &App, input: &PublishInput, publish_id: &str) -> Result<(), ApiError> {
    let plaintext = envelope::plaintext(&input.kind, &input.payload);
    let sealed = app
        .keys()
        .seal_at_rest(&FanoutJob::payload_context(publish_id), &plaintext)?;
    let jobs = FanoutJob::plan(publish_id, &input.kind, &sealed, &input.recipients);
    tracing::info!(%publish_id, recipients = input.recipients.len(), jobs = jobs.len(), "publish accepted");
    app.queue()?.enqueue(jobs).await?;
    Ok(())
}
