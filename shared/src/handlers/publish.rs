//! `POST /messages/publish` (admin): seal the payload once, split the
//! recipients into queue-sized jobs, enqueue them. Delivery is the fan-out's
//! job ([`super::fanout`]).

use super::auth::AdminAuth;
use super::input::{string_value, JsonBody};
use crate::domain::{valid_type, ClientId, MAX_PAYLOAD_BYTES, MAX_RECIPIENTS, MAX_TYPE_CHARS};
use crate::envelope;
use crate::error::ApiError;
use crate::queue::FanoutJob;
use crate::App;
use serde_json::Value;
use std::collections::HashSet;

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
) -> Result<Published, ApiError> {
    let publish_id = uuid::Uuid::new_v4().to_string();
    let plaintext = envelope::plaintext(&input.kind, &input.payload);
    let sealed = app
        .keys()?
        .seal_at_rest(&FanoutJob::payload_context(&publish_id), &plaintext);
    let jobs = FanoutJob::plan(&publish_id, &input.kind, &sealed, &input.recipients);
    tracing::info!(%publish_id, recipients = input.recipients.len(), jobs = jobs.len(), "publish accepted");
    app.queue()?.enqueue(jobs).await?;
    Ok(Published {
        publish_id,
        recipients: input.recipients.len(),
    })
}
