//! `POST /messages/publish` (admin): seal the payload once, save what the
//! status call needs ([`PublishHeader`], and for named recipients their
//! pages), and enqueue the work. Named recipients are split into
//! queue-sized jobs here; a tag or everyone audience is one step that the
//! fan-out enumerates a page at a time ([`super::audience`]), so the
//! publish costs the same for 100,000 clients as for one. Delivery is the
//! fan-out's job ([`super::fanout`]).
//!
//! With an `Idempotency-Key`, the key is claimed before anything is
//! enqueued and marked complete after everything is. A retry finds the key:
//! complete, it gets the original answer and nothing is enqueued; still
//! incomplete (the first attempt failed half-way, or is still running), it
//! enqueues every job again under the *same* publish id, and the fan-out's
//! per-publish markers make the repeated jobs deliver nothing twice.

use super::auth::AdminAuth;
use super::input::{string_value, JsonBody};
use super::tags::checked_tag;
use crate::clock::Timestamp;
use crate::domain::{
    valid_type, ClientId, MAX_AUDIENCE_TAGS, MAX_PAYLOAD_BYTES, MAX_RECIPIENTS, MAX_TTL_SECS,
    MAX_TYPE_CHARS,
};
use crate::envelope;
use crate::error::{ApiError, ErrorCode};
use crate::queue::{AudienceStep, FanoutJob};
use crate::store::{Audience, Enumerated, KeyClaim, PublishHeader, PublishRecord, RecipientPage};
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

/// Who a publish names: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// `to_client_ids`: distinct, in the order first given.
    Clients(Vec<ClientId>),
    /// `to_tags`: distinct, in the order first given.
    Tags(Vec<String>),
    /// `"to_all": true`.
    All,
}

impl Recipients {
    const FIELDS: [&'static str; 3] = ["to_client_ids", "to_tags", "to_all"];

    fn from_body(body: &JsonBody) -> Result<Self, ApiError> {
        let named: Vec<&str> = Self::FIELDS
            .into_iter()
            .filter(|f| body.0.contains_key(*f))
            .collect();
        match named[..] {
            ["to_client_ids"] => Self::client_ids(body.required("to_client_ids")?),
            ["to_tags"] => Self::tags(body.required("to_tags")?),
            ["to_all"] if body.0.get("to_all") == Some(&Value::Bool(true)) => Ok(Recipients::All),
            ["to_all"] => Err(ApiError::validation(
                "to_all must be true (name another audience instead)",
            )),
            _ => Err(ApiError::validation(format!(
                "name exactly one audience: to_client_ids, to_tags or to_all (got {})",
                if named.is_empty() {
                    "none".to_string()
                } else {
                    named.join(", ")
                }
            ))),
        }
    }

    fn client_ids(value: &Value) -> Result<Self, ApiError> {
        let ids = value
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
        Ok(Recipients::Clients(recipients))
    }

    fn tags(value: &Value) -> Result<Self, ApiError> {
        let list = value
            .as_array()
            .ok_or_else(|| ApiError::validation("to_tags must be an array of tags"))?;
        let mut tags: Vec<String> = Vec::with_capacity(list.len());
        for (i, value) in list.iter().enumerate() {
            let tag = checked_tag(&format!("to_tags[{i}]"), value)?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        if tags.is_empty() || tags.len() > MAX_AUDIENCE_TAGS {
            return Err(ApiError::validation(format!(
                "to_tags must hold 1 to {MAX_AUDIENCE_TAGS} tags (got {})",
                tags.len()
            )));
        }
        Ok(Recipients::Tags(tags))
    }

    fn audience(&self) -> Audience {
        match self {
            Recipients::Clients(ids) => Audience::Clients {
                count: ids.len() as u64,
            },
            Recipients::Tags(tags) => Audience::Tags(tags.clone()),
            Recipients::All => Audience::All,
        }
    }

    /// The count a 202 reports: known only for named ids.
    fn count(&self) -> Option<usize> {
        match self {
            Recipients::Clients(ids) => Some(ids.len()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PublishInput {
    pub recipients: Recipients,
    pub kind: String,
    pub payload: Value,
    /// `ttl_secs`: how long the message may wait for a recipient.
    pub ttl_secs: Option<u64>,
}

impl PublishInput {
    pub fn from_body(body: &JsonBody) -> Result<Self, ApiError> {
        let recipients = Recipients::from_body(body)?;
        let ttl_secs = body
            .optional("ttl_secs")
            .map(|v| match v.as_u64() {
                Some(secs) if (1..=MAX_TTL_SECS).contains(&secs) => Ok(secs),
                _ => Err(ApiError::validation(format!(
                    "ttl_secs must be an integer from 1 to {MAX_TTL_SECS}"
                ))),
            })
            .transpose()?;
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
            ttl_secs,
        })
    }

    /// What makes two publishes the same publish, for idempotency keys.
    fn digest(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        match &self.recipients {
            Recipients::Clients(ids) => {
                for id in ids {
                    digest.update(id.as_uuid().as_bytes());
                }
            }
            Recipients::Tags(_) | Recipients::All => {
                digest.update(self.recipients.audience().to_json().to_string());
            }
        }
        let kind = self.kind.as_bytes();
        let payload = serde_json::to_vec(&self.payload).unwrap_or_default();
        let ttl = self.ttl_secs.map(|t| t.to_string()).unwrap_or_default();
        for part in [kind, &payload[..], ttl.as_bytes()] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        digest.finalize().into()
    }

    fn expires_at(&self, accepted: Timestamp) -> Option<Timestamp> {
        self.ttl_secs
            .map(|secs| accepted.plus_millis(i64::try_from(secs).unwrap_or(i64::MAX) * 1000))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    pub publish_id: String,
    /// `None` (null) for a tag or everyone audience, counted by the
    /// fan-out: see the publish's status.
    pub recipients: Option<usize>,
}

pub async fn publish(
    app: &App,
    _admin: &AdminAuth,
    input: PublishInput,
    key: Option<IdempotencyKey>,
) -> Result<Published, ApiError> {
    let publish_id = uuid::Uuid::new_v4().to_string();
    let now = app.clock.now();
    let Some(key) = key else {
        enqueue(app, &input, &publish_id, now).await?;
        return Ok(Published {
            publish_id,
            recipients: input.recipients.count(),
        });
    };
    let window = i64::try_from(IDEMPOTENCY_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let record = PublishRecord {
        publish_id,
        recipients: input.recipients.count().unwrap_or(0) as u64,
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
        // A retry carries on the first attempt's publish: same id, same
        // acceptance time (and so the same expiry and audience cut-off).
        enqueue(app, &input, &record.publish_id, record.created_at).await?;
        app.store.complete_publish_key(key.as_str()).await?;
    } else {
        tracing::info!(publish_id = %record.publish_id, "publish retried with its idempotency key; nothing enqueued");
    }
    Ok(Published {
        publish_id: record.publish_id,
        // The digest matched, so the input names the same recipients.
        recipients: input.recipients.count(),
    })
}

/// Seals the payload once, saves the status records, and hands the jobs to
/// the queue.
async fn enqueue(
    app: &App,
    input: &PublishInput,
    publish_id: &str,
    accepted: Timestamp,
) -> Result<(), ApiError> {
    let plaintext = envelope::plaintext(&input.kind, &input.payload);
    let sealed = app
        .keys()
        .seal_at_rest(&FanoutJob::payload_context(publish_id), &plaintext)?;
    let expires_at = input.expires_at(accepted);
    let jobs = match &input.recipients {
        Recipients::Clients(ids) => {
            FanoutJob::plan(publish_id, &input.kind, &sealed, ids, expires_at, accepted)
        }
        Recipients::Tags(_) | Recipients::All => vec![FanoutJob {
            publish_id: publish_id.to_string(),
            kind: input.kind.clone(),
            payload: sealed,
            recipients: Vec::new(),
            expires_at,
            step: Some(AudienceStep {
                audience: input.recipients.audience(),
                registered_by: accepted,
                page: 0,
                page_token: None,
                so_far: 0,
            }),
            accepted_at: Some(accepted),
        }],
    };
    let header = PublishHeader {
        publish_id: publish_id.to_string(),
        kind: input.kind.clone(),
        created_at: accepted,
        audience: input.recipients.audience(),
        expires_at,
        enumerated: input.recipients.count().map(|n| Enumerated {
            pages: jobs.len() as u32,
            recipients: n as u64,
        }),
    };
    app.store.save_publish(&header).await?;
    if header.enumerated.is_some() {
        // Named recipients are paged as they are split: one page per job.
        let pages = jobs.iter().enumerate().map(|(number, job)| {
            app.store.save_recipient_page(
                publish_id,
                RecipientPage {
                    number: number as u32,
                    recipients: job.recipients.clone(),
                    next: None,
                    continued: false,
                },
            )
        });
        for saved in futures_util::future::join_all(pages).await {
            saved?;
        }
    }
    tracing::info!(%publish_id, recipients = ?input.recipients.count(), jobs = jobs.len(), "publish accepted");
    app.queue()?.enqueue(jobs).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(body: Value) -> Result<PublishInput, ApiError> {
        PublishInput::from_body(&JsonBody::parse(body.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn a_publish_names_exactly_one_audience() {
        let id = ClientId::new().to_string();
        let base = |audience: Value| {
            let mut body = json!({"type": "t", "payload": {}});
            body.as_object_mut()
                .unwrap()
                .extend(audience.as_object().unwrap().clone());
            input(body)
        };
        assert_eq!(
            base(json!({"to_client_ids": [id, id]})).unwrap().recipients,
            Recipients::Clients(vec![ClientId::parse(&id).unwrap()])
        );
        assert_eq!(
            base(json!({"to_tags": ["eu", "door", "eu"]}))
                .unwrap()
                .recipients,
            Recipients::Tags(vec!["eu".into(), "door".into()])
        );
        assert_eq!(
            base(json!({"to_all": true})).unwrap().recipients,
            Recipients::All
        );
        for bad in [
            json!({}),
            json!({"to_all": false}),
            json!({"to_all": true, "to_tags": ["eu"]}),
            json!({"to_client_ids": [id], "to_all": true}),
            json!({"to_tags": []}),
            json!({"to_tags": ["EU"]}),
            json!({"to_tags": (0..11).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
        ] {
            let error = base(bad.clone()).unwrap_err();
            assert_eq!(error.code, ErrorCode::ValidationFailed, "{bad}");
        }
    }

    #[test]
    fn ttl_is_one_second_to_thirty_days_and_part_of_the_digest() {
        let with = |ttl: Value| {
            input(json!({"to_all": true, "type": "t", "payload": {}, "ttl_secs": ttl}))
        };
        assert_eq!(with(json!(1)).unwrap().ttl_secs, Some(1));
        assert_eq!(
            with(json!(MAX_TTL_SECS)).unwrap().ttl_secs,
            Some(MAX_TTL_SECS)
        );
        for bad in [
            json!(0),
            json!(MAX_TTL_SECS + 1),
            json!(-5),
            json!(1.5),
            json!("60"),
        ] {
            assert!(with(bad.clone()).is_err(), "{bad}");
        }
        assert_ne!(
            with(json!(60)).unwrap().digest(),
            with(json!(61)).unwrap().digest()
        );
        let accepted = Timestamp(1_000_000);
        assert_eq!(
            with(json!(60)).unwrap().expires_at(accepted),
            Some(Timestamp(1_060_000))
        );
    }
}
