//! What a delivered message looks like inside and around its ciphertext.
//!
//! Both the fan-out (which encrypts) and the poll (which hands out the AAD)
//! build the AAD here, so the two can never disagree.

use crate::clock::Timestamp;
use crate::domain::{ClientId, Seq};
use serde_json::{json, Map, Value};

/// The plaintext of every message, delivered or sent:
/// `{"type": ..., "payload": ...}` as compact JSON.
pub fn plaintext(kind: &str, payload: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": kind, "payload": payload}))
        .expect("serializing a JSON value cannot fail")
}

/// The AAD of a delivered message. Binding the recipient and the position
/// means a ciphertext cannot be replayed to another client or moved to
/// another place in the sequence.
pub fn delivered_aad(client: ClientId, created_at: Timestamp, seq: Seq) -> Map<String, Value> {
    let mut aad = Map::new();
    aad.insert("client_id".into(), Value::String(client.to_string()));
    aad.insert("created_at".into(), Value::String(created_at.to_rfc3339()));
    aad.insert("id".into(), Value::from(seq));
    aad
}
