//! `POST /messages/send`: a client sends the server a message encrypted
//! under its own key. The server authenticates and decrypts it, checks the
//! plaintext's shape, and stores it re-encrypted under its at-rest key.
//! A retry with the same nonce is answered with the original id.
//!
//! On AWS each stored message is also announced on the inbound queue
//! (`{"client_id", "id", "type", "created_at"}`, see [`announce`]); a
//! retry announces it again, and the FIFO queue keeps one.
//!
//! The message's `type` is stored only inside the sealed body: the outbox
//! row's `kind` column is the constant [`OUTBOX_KIND`], and [`open_sent`]
//! reads a stored message back.

use super::auth::ClientAuth;
use super::input::JsonBody;
use crate::clock::Timestamp;
use crate::crypto::{
    canonical_aad, decode_base64, encode_base64, open, Sealed, ServerKeys, NONCE_LEN, TAG_LEN,
};
use crate::domain::{valid_type, ClientId, Seq, MAX_TYPE_CHARS};
use crate::error::ApiError;
use crate::queue::SentNotice;
use crate::store::{
    Appended, Bucket, Dedup, Mailbox, NewMessage, RateCharge, Sealer, StoreError, StoredMessage,
    Touch,
};
use crate::App;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendInput {
    pub sealed: Sealed,
    /// The canonical AAD bytes (empty when no `aad` was sent).
    pub aad: Vec<u8>,
    /// `aad.client_id`, when present.
    pub aad_client_id: Option<String>,
    /// The `aad` object as sent (empty when none), kept sealed with the
    /// message so the admin reading it sees what the client bound to it.
    pub aad_object: Map<String, Value>,
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
        let (aad, aad_client_id, aad_object) = match body.optional("aad") {
            None => (Vec::new(), None, Map::new()),
            Some(Value::Object(map)) => {
                if map.contains_key("id") {
                    // {client_id, created_at, id} is what a poll hands out
                    // with a delivered message: refusing the key means a
                    // captured delivery cannot be sent back verbatim (it
                    // decrypts under the same key) as the client's own.
                    return Err(ApiError::validation(
                        "aad must not contain an id key: that is the aad of a delivered message, \
                         and a delivered message cannot be sent back as the client's own",
                    ));
                }
                let bytes = canonical_aad(map).map_err(|e| ApiError::validation(e.to_string()))?;
                let client_id = match map.get("client_id") {
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => return Err(ApiError::validation("aad.client_id must be a string")),
                };
                (bytes, client_id, map.clone())
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
            aad_object,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub id: u64,
    /// False for an idempotent retry (HTTP 200 rather than 201).
    pub created: bool,
}

/// The `kind` of every outbox row. The real type stays inside the sealed
/// body (`{"type", "payload", "aad"}`), so the database holds no message
/// type of a client's send in clear; [`open_sent`] reads it.
pub const OUTBOX_KIND: &str = "sealed";

/// The plaintext's required shape: `{"type": string, "payload": any}`.
/// Returns the type and the payload.
fn parse_plaintext(plaintext: &[u8]) -> Result<(String, Value), ApiError> {
    let shape = || {
        ApiError::validation(
            r#"the decrypted plaintext must be a JSON object {"type": string, "payload": any}"#,
        )
    };
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(plaintext) else {
        return Err(shape());
    };
    let Some(Value::String(kind)) = object.remove("type") else {
        return Err(shape());
    };
    if !valid_type(&kind) {
        return Err(ApiError::validation(format!(
            "the decrypted type must be 1 to {MAX_TYPE_CHARS} characters"
        )));
    }
    let payload = object.remove("payload").ok_or_else(shape)?;
    Ok((kind, payload))
}

pub fn outbox_context(client: ClientId, seq: u64) -> String {
    format!("pigeonhole/v1/outbox:{client}:{seq}")
}

/// A client's send, read back from its outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SentMessage {
    pub id: Seq,
    pub kind: String,
    pub payload: Value,
    /// The `aad` the client sent (empty when none, and for sends stored
    /// before the aad was kept).
    pub aad: Map<String, Value>,
    pub created_at: Timestamp,
}

/// What the outbox seals: the message and the aad it was sent with.
fn stored_plaintext(kind: &str, payload: &Value, aad: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"type": kind, "payload": payload, "aad": aad}))
        .expect("serializing a JSON value cannot fail")
}

/// Opens a message read from `client`'s outbox: unseals its body (bound to
/// the client and its position) and parses the `{type, payload}` inside.
/// A body that does not open or parse is an internal error (wrong key or
/// corrupt data), not the reader's fault.
pub fn open_sent(
    keys: &ServerKeys,
    client: ClientId,
    stored: &StoredMessage,
) -> Result<SentMessage, ApiError> {
    let plaintext = keys
        .open_at_rest(&outbox_context(client, stored.seq), &stored.body)
        .map_err(|_| {
            ApiError::internal(&format!(
                "sent message {} of {client} does not open (wrong MASTER_KEY?)",
                stored.seq
            ))
        })?;
    let (kind, payload) = parse_plaintext(&plaintext).map_err(|_| {
        ApiError::internal(&format!(
            "sent message {} of {client} is not a {{type, payload}} object",
            stored.seq
        ))
    })?;
    let aad = serde_json::from_slice::<Value>(&plaintext)
        .ok()
        .and_then(|v| v.get("aad").and_then(Value::as_object).cloned())
        .unwrap_or_default();
    Ok(SentMessage {
        id: stored.seq,
        kind,
        payload,
        aad,
        created_at: stored.created_at,
    })
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
    let charge = app.send_rate_limit.map(|limit| RateCharge {
        bucket: Bucket::Send,
        limit,
    });
    let touched = app
        .store
        .touch_client(id, client.generation(), app.clock.now(), charge)
        .await?;
    let state = match touched {
        Touch::Known(state) => state,
        Touch::RateLimited { retry_after } => {
            return Err(ApiError::too_many(
                "too many sends; retry later",
                retry_after,
            ))
        }
        Touch::UnknownClient => return Err(ApiError::unauthorized()),
    };
    let key = app
        .keys()
        .unwrap_personal_key(id, &state.record.wrapped_key)
        .map_err(|_| ApiError::internal(&format!("personal key of {id} does not unwrap")))?;
    let plaintext =
        open(&key, &input.sealed, &input.aad).map_err(|_| ApiError::decryption_failed())?;
    let (kind, payload) = parse_plaintext(&plaintext)?;
    let plaintext = stored_plaintext(&kind, &payload, &input.aad_object);

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
        Arc::clone(app.keys()),
        Arc::clone(&app.clock),
        Arc::new(plaintext),
    );
    // The stored message's `created_at`, for its notice. An append that
    // loses the race for a number seals again, so the last call is the one
    // stored.
    let sealed_at = Arc::new(Mutex::new(None::<Timestamp>));
    let sealed_at_in = Arc::clone(&sealed_at);
    let sealer: Sealer = Arc::new(move |seq| {
        let created_at = clock.now();
        *sealed_at_in.lock().unwrap_or_else(|p| p.into_inner()) = Some(created_at);
        Ok(NewMessage {
            kind: OUTBOX_KIND.to_string(),
            body: keys
                .seal_at_rest(&outbox_context(id, seq), &plaintext)
                .map_err(|e| StoreError::Seal(e.to_string()))?,
            created_at,
            key_generation: 0,
            expires_at: None,
        })
    });
    match app.store.append(Mailbox::Outbox, id, dedup, sealer).await? {
        Appended::Stored { seq } => {
            tracing::info!(client_id = %id, id = seq, "message received from client");
            crate::metrics::send_stored();
            let created_at = sealed_at.lock().unwrap_or_else(|p| p.into_inner()).take();
            announce(app, id, seq, &kind, created_at.unwrap_or_else(|| app.clock.now())).await?;
            Ok(Sent { id: seq, created: true })
        }
        Appended::Duplicate { seq, same_content: true } => {
            announce_again(app, id, seq, &kind).await?;
            Ok(Sent { id: seq, created: false })
        }
        Appended::Duplicate { same_content: false, .. } => Err(ApiError::validation(
            "this nonce was already used for a different message; encrypt every message under a fresh random nonce",
        )),
        Appended::UnknownClient => Err(ApiError::unauthorized()),
    }
}

/// Announces a stored message on the inbound queue, when this app has one
/// (on AWS; see [`crate::queue::Inbound`]). A notice that does not get
/// there fails the send: 503 `unavailable` after transient failures (500
/// if the queue refuses it for good). The message stays stored, and the
/// client's retry of the same send is a duplicate that announces it again;
/// if the first notice did arrive after all, the FIFO queue drops the
/// second (same deduplication id, within 5 minutes).
async fn announce(
    app: &App,
    client: ClientId,
    id: Seq,
    kind: &str,
    created_at: Timestamp,
) -> Result<(), ApiError> {
    let Some(inbound) = app.inbound() else {
        return Ok(());
    };
    let notice = SentNotice {
        client_id: client,
        id,
        kind: kind.to_string(),
        created_at,
    };
    inbound.notify(notice).await.map_err(|e| {
        tracing::warn!(
            client_id = %client, id, error = %e,
            "the message is stored but its notice is not on the inbound queue; \
             the client's retry of the send announces it"
        );
        ApiError::from(e)
    })
}

/// A retried send announces its message again, in case the first attempt
/// stored it but could not announce it: with the stored message's
/// `created_at`, so every notice of one message is the same (one more
/// strongly consistent read of the outbox, only for a retry, and only when
/// there is an inbound queue). A message cleanup has already removed
/// (older than `SENT_RETENTION_SECS`) is not announced: there is nothing
/// left to read.
async fn announce_again(app: &App, client: ClientId, id: Seq, kind: &str) -> Result<(), ApiError> {
    if app.inbound().is_none() {
        return Ok(());
    }
    let stored = app
        .store
        .read(Mailbox::Outbox, client, id.saturating_sub(1), 1)
        .await?;
    match stored.first() {
        Some(message) if message.seq == id => {
            announce(app, client, id, kind, message.created_at).await
        }
        _ => {
            tracing::info!(
                client_id = %client, id,
                "a retried send whose message cleanup has removed: no notice"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{seal, Key};
    use crate::error::ErrorCode;
    use serde_json::json;

    fn body_with_aad(aad: Value) -> JsonBody {
        let sealed = seal(&Key::random(), b"{}", b"");
        let mut body = json!({
            "ciphertext": encode_base64(&sealed.ciphertext),
            "nonce": encode_base64(&sealed.nonce),
            "tag": encode_base64(&sealed.tag),
        });
        body["aad"] = aad;
        JsonBody(body.as_object().unwrap().clone())
    }

    #[test]
    fn aad_with_an_id_key_is_refused() {
        let client = ClientId::new();
        for aad in [
            // Exactly what a poll hands out with a delivered message.
            Value::Object(crate::envelope::delivered_aad(
                client,
                Timestamp(1_700_000_000_000),
                3,
            )),
            json!({"id": 1}),
            json!({"id": "x", "client_id": client.to_string()}),
        ] {
            let err = SendInput::from_body(&body_with_aad(aad.clone())).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationFailed, "{aad}");
            assert!(
                err.message.starts_with("aad must not contain an id key"),
                "{}",
                err.message
            );
            assert!(err.message.contains("delivered message"), "{}", err.message);
        }
        // Other keys, including ones that merely contain "id", are fine.
        for aad in [
            json!({"client_id": client.to_string(), "seq": 1}),
            json!({"ids": 2, "message_id": "m", "Id": 3}),
            json!({}),
            Value::Null,
        ] {
            assert!(
                SendInput::from_body(&body_with_aad(aad.clone())).is_ok(),
                "{aad}"
            );
        }
    }

    #[test]
    fn plaintext_shape_is_checked() {
        let (kind, payload) = parse_plaintext(br#"{"type":"t","payload":{"a":[1]}}"#).unwrap();
        assert_eq!((kind.as_str(), payload), ("t", json!({"a": [1]})));
        assert_eq!(
            parse_plaintext(br#"{"type":"t","payload":null}"#)
                .unwrap()
                .1,
            Value::Null
        );
        for bad in [
            &b"[1]"[..],
            b"nope",
            br#"{"payload":1}"#,
            br#"{"type":1,"payload":1}"#,
            br#"{"type":"t"}"#,
            br#"{"type":"","payload":1}"#,
        ] {
            let err = parse_plaintext(bad).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::ValidationFailed,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn open_sent_reads_back_what_send_stores() {
        let keys = ServerKeys::derive(&Key::random());
        let client = ClientId::new();
        let plaintext = crate::envelope::plaintext("battery-report", &json!({"level": 87}));
        let stored = StoredMessage {
            seq: 7,
            kind: OUTBOX_KIND.to_string(),
            body: keys
                .seal_at_rest(&outbox_context(client, 7), &plaintext)
                .unwrap(),
            created_at: Timestamp(1_700_000_000_123),
            key_generation: 0,
            expires_at: None,
        };
        // The type is in the sealed body only.
        assert!(!stored
            .body
            .ciphertext
            .windows(b"battery-report".len())
            .any(|w| w == b"battery-report"));
        assert_eq!(
            open_sent(&keys, client, &stored).unwrap(),
            SentMessage {
                id: 7,
                kind: "battery-report".into(),
                payload: json!({"level": 87}),
                aad: Map::new(),
                created_at: Timestamp(1_700_000_000_123),
            }
        );
        // What send stores now also keeps the aad.
        let aad = json!({"client_id": client.to_string(), "trip": 4});
        let with_aad = StoredMessage {
            body: keys
                .seal_at_rest(
                    &outbox_context(client, 7),
                    &stored_plaintext("battery-report", &json!(1), aad.as_object().unwrap()),
                )
                .unwrap(),
            ..stored.clone()
        };
        let opened = open_sent(&keys, client, &with_aad).unwrap();
        assert_eq!(
            (opened.kind.as_str(), opened.payload),
            ("battery-report", json!(1))
        );
        assert_eq!(Value::Object(opened.aad), aad);

        // Bound to its client and position, and to the server's key.
        let moved = StoredMessage {
            seq: 8,
            ..stored.clone()
        };
        assert_eq!(
            open_sent(&keys, client, &moved).unwrap_err().code,
            ErrorCode::Internal
        );
        assert_eq!(
            open_sent(&keys, ClientId::new(), &stored).unwrap_err().code,
            ErrorCode::Internal
        );
        let other_keys = ServerKeys::derive(&Key::random());
        assert_eq!(
            open_sent(&other_keys, client, &stored).unwrap_err().code,
            ErrorCode::Internal
        );
    }
}
