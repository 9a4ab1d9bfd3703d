//! `POST /messages/send`: a client sends the server a message encrypted
//! under its own key. The server authenticates and decrypts it, checks the
//! plaintext's shape, and stores it re-encrypted under its at-rest key.
//! A retry with the same nonce is answered with the original id.

use super::auth::ClientAuth;
use super::input::JsonBody;
use crate::crypto::{
    canonical_aad, decode_base64, encode_base64, open, Sealed, NONCE_LEN, TAG_LEN,
};
use crate::domain::{valid_type, ClientId, MAX_TYPE_CHARS};
use crate::error::ApiError;
use crate::store::{Appended, Dedup, Mailbox, NewMessage, Sealer, Touch};
use crate::App;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendInput {
    pub sealed: Sealed,
    /// The canonical AAD bytes (empty when no `aad` was sent).
    pub aad: Vec<u8>,
    /// `aad.client_id`, when present.
    pub aad_client_id: Option<String>,
}

fn base64_field(body: &JsonBody, field: &str, len: Option<usize>) -> Result<Vec<u8>, ApiError> {
    let text = body
        .optional(field)
        .ok_or_else(|| ApiError::validation(format!("{field} is required")))?
        .as_str()
        .ok_or_else(|| ApiError::validation(format!("{field} must be a base64 string")))?;
    let bytes = decode_base64(text)
        .ok_or_else(|| ApiError::validation(format!("{field} is not valid base64")))?;
    match len {
        Some(n) if bytes.len() != n => Err(ApiError::validation(format!(
            "{field} must be base64 of exactly {n} bytes (got {})",
            bytes.len()
        ))),
        _ => Ok(bytes),
    }
}

impl SendInput {
    pub fn from_body(body: &JsonBody) -> Result<Self, ApiError> {
        let ciphertext = base64_field(body, "ciphertext", None)?;
        let nonce = base64_field(body, "nonce", Some(NONCE_LEN))?;
        let tag = base64_field(body, "tag", Some(TAG_LEN))?;
        let (aad, aad_client_id) = match body.optional("aad") {
            None => (Vec::new(), None),
            Some(Value::Object(map)) => {
                let bytes = canonical_aad(map).map_err(|e| ApiError::validation(e.to_string()))?;
                let client_id = match map.get("client_id") {
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => return Err(ApiError::validation("aad.client_id must be a string")),
                };
                (bytes, client_id)
            }
            Some(_) => return Err(ApiError::validation("aad must be a JSON object")),
        };
        Ok(SendInput {
            sealed: Sealed {
                ciphertext,
                nonce: nonce.try_into().expect("length checked"),
                tag: tag.try_into().expect("length checked"),
            },
            aad,
            aad_client_id,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub id: u64,
    /// False for an idempotent retry (HTTP 200 rather than 201).
    pub created: bool,
}

/// The plaintext's required shape: `{"type": string, "payload": any}`.
fn check_plaintext(plaintext: &[u8]) -> Result<String, ApiError> {
    let shape = || {
        ApiError::validation(
            r#"the decrypted plaintext must be a JSON object {"type": string, "payload": any}"#,
        )
    };
    let value: Value = serde_json::from_slice(plaintext).map_err(|_| shape())?;
    let object = value.as_object().ok_or_else(shape)?;
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(shape)?;
    if !valid_type(kind) {
        return Err(ApiError::validation(format!(
            "the decrypted type must be 1 to {MAX_TYPE_CHARS} characters"
        )));
    }
    if !object.contains_key("payload") {
        return Err(shape());
    }
    Ok(kind.to_string())
}

pub fn outbox_context(client: ClientId, seq: u64) -> String {
    format!("pigeonhole/v1/outbox:{client}:{seq}")
}

pub async fn send(app: &App, client: &ClientAuth, input: SendInput) -> Result<Sent, ApiError> {
    let id = client.id();
    if let Some(claimed) = &input.aad_client_id {
        if ClientId::parse(claimed) != Some(id) {
            return Err(ApiError::validation(
                "aad.client_id must be the sender's client id",
            ));
        }
    }
    let state = match app.store.touch_client(id, app.clock.now(), None).await? {
        Touch::Known(state) => state,
        Touch::UnknownClient | Touch::RateLimited { .. } => return Err(ApiError::unauthorized()),
    };
    let key = app
        .keys()?
        .unwrap_personal_key(id, &state.record.wrapped_key)
        .map_err(|_| ApiError::internal(&format!("personal key of {id} does not unwrap")))?;
    let plaintext =
        open(&key, &input.sealed, &input.aad).map_err(|_| ApiError::decryption_failed())?;
    let kind = check_plaintext(&plaintext)?;

    let mut digest = Sha256::new();
    for part in [&input.sealed.ciphertext[..], &input.sealed.tag, &input.aad] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    let dedup = Dedup {
        key: format!("nonce:{}", encode_base64(&input.sealed.nonce)),
        digest: digest.finalize().into(),
    };
    let (keys, clock, plaintext) = (
        Arc::clone(app.keys()?),
        Arc::clone(&app.clock),
        Arc::new(plaintext),
    );
    let sealer: Sealer = Arc::new(move |seq| {
        Ok(NewMessage {
            kind: kind.clone(),
            body: keys.seal_at_rest(&outbox_context(id, seq), &plaintext),
            created_at: clock.now(),
        })
    });
    match app.store.append(Mailbox::Outbox, id, dedup, sealer).await? {
        Appended::Stored { seq } => {
            tracing::info!(client_id = %id, id = seq, "message received from client");
            Ok(Sent { id: seq, created: true })
        }
        Appended::Duplicate { seq, same_content: true } => Ok(Sent { id: seq, created: false }),
        Appended::Duplicate { same_content: false, .. } => Err(ApiError::validation(
            "this nonce was already used for a different message; encrypt every message under a fresh random nonce",
        )),
        Appended::UnknownClient => Err(ApiError::unauthorized()),
    }
}
