//! Sealing sends and opening deliveries, per `docs/encryption.md`, with the
//! shared crate's AES-256-GCM and canonical AAD.

use pigeonhole::crypto::{canonical_aad, decode_base64, encode_base64, open, seal, Key, Sealed};
use pigeonhole::crypto::{NONCE_LEN, TAG_LEN};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::{Delivered, SendBody};

/// A decrypted message: the authoritative `type` and `payload`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plain {
    pub kind: String,
    pub payload: Value,
}

#[derive(Debug, Deserialize)]
struct PlainWire {
    #[serde(rename = "type")]
    kind: String,
    payload: Value,
}

/// Why a delivered message was not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenFailure {
    #[error("aad {got} does not match the envelope (expected {expected})")]
    AadMismatch { expected: String, got: String },
    #[error("{0} is not valid base64 of the right length")]
    Encoding(&'static str),
    #[error("authentication failed: wrong key or tampered message")]
    Authentication,
    #[error("the plaintext is not a {{\"type\", \"payload\"}} JSON object")]
    Plaintext,
}

/// The only `aad` a delivery to `client_id` may carry.
pub fn expected_aad(client_id: &str, msg: &Delivered) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "client_id": client_id,
        "created_at": msg.created_at,
        "id": msg.id,
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    map
}

/// Checks the delivered `aad` against the envelope before anything is
/// decrypted; returns the canonical bytes to authenticate.
pub fn verify_aad(client_id: &str, msg: &Delivered) -> Result<Vec<u8>, OpenFailure> {
    let expected = expected_aad(client_id, msg);
    match &msg.aad {
        Some(Value::Object(got)) if *got == expected => {
            Ok(canonical_aad(&expected).expect("expected aad holds scalars only"))
        }
        other => Err(OpenFailure::AadMismatch {
            expected: Value::Object(expected).to_string(),
            got: other.clone().unwrap_or(Value::Null).to_string(),
        }),
    }
}

fn fixed<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N], OpenFailure> {
    decode_base64(text)
        .and_then(|b| <[u8; N]>::try_from(b.as_slice()).ok())
        .ok_or(OpenFailure::Encoding(field))
}

/// Verifies the aad, decrypts, and parses the plaintext.
pub fn open_delivered(key: &Key, client_id: &str, msg: &Delivered) -> Result<Plain, OpenFailure> {
    let aad = verify_aad(client_id, msg)?;
    let sealed = Sealed {
        ciphertext: decode_base64(&msg.ciphertext).ok_or(OpenFailure::Encoding("ciphertext"))?,
        nonce: fixed::<NONCE_LEN>(&msg.nonce, "nonce")?,
        tag: fixed::<TAG_LEN>(&msg.tag, "tag")?,
    };
    let plaintext = open(key, &sealed, &aad).map_err(|_| OpenFailure::Authentication)?;
    let wire: PlainWire = serde_json::from_slice(&plaintext).map_err(|_| OpenFailure::Plaintext)?;
    Ok(Plain {
        kind: wire.kind,
        payload: wire.payload,
    })
}

/// Encrypts `{"type", "payload"}` under a fresh nonce, bound to the sender by
/// `aad = {"client_id": <own id>}`.
pub fn seal_send(key: &Key, client_id: &str, kind: &str, payload: &Value) -> SendBody {
    let mut aad = Map::new();
    aad.insert("client_id".into(), Value::String(client_id.into()));
    let aad_bytes = canonical_aad(&aad).expect("a string value is allowed");
    let plaintext = serde_json::to_vec(&json!({ "type": kind, "payload": payload }))
        .expect("JSON values serialize");
    let sealed = seal(key, &plaintext, &aad_bytes);
    SendBody {
        ciphertext: encode_base64(&sealed.ciphertext),
        nonce: encode_base64(&sealed.nonce),
        tag: encode_base64(&sealed.tag),
        aad: Some(aad),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "00000000-0000-4000-8000-000000000001";

    fn vector_key() -> Key {
        Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    /// Worked example 1 of docs/encryption.md.
    fn delivered() -> Delivered {
        serde_json::from_value(json!({
            "id": 1,
            "type": "greeting",
            "ciphertext": "DOGRTBjgSlz2MxV9fRM7tqxMo/nh4m+wnLpjzqdy3EXJrhZt3LQyWnpfig==",
            "nonce": "AQEBAQEBAQEBAQEB",
            "tag": "SaxZpHZWSEoTzf7vz5/LIA==",
            "aad": {"client_id": CLIENT, "created_at": "2026-11-25T12:00:00.000Z", "id": 1},
            "created_at": "2026-11-25T12:00:00.000Z"
        }))
        .unwrap()
    }

    #[test]
    fn opens_the_documented_vector() {
        let plain = open_delivered(&vector_key(), CLIENT, &delivered()).unwrap();
        assert_eq!(plain.kind, "greeting");
        assert_eq!(plain.payload, json!({"text": "hi"}));
    }

    #[test]
    fn aad_must_match_the_envelope() {
        let key = vector_key();
        // Delivered to someone else.
        let err = open_delivered(&key, "00000000-0000-4000-8000-000000000002", &delivered());
        assert!(
            matches!(err, Err(OpenFailure::AadMismatch { .. })),
            "{err:?}"
        );

        // Moved to another position: the envelope id no longer matches.
        let mut moved = delivered();
        moved.id = 2;
        assert!(matches!(
            open_delivered(&key, CLIENT, &moved),
            Err(OpenFailure::AadMismatch { .. })
        ));

        // Re-dated envelope.
        let mut redated = delivered();
        redated.created_at = "2026-11-25T12:00:01.000Z".into();
        assert!(matches!(
            open_delivered(&key, CLIENT, &redated),
            Err(OpenFailure::AadMismatch { .. })
        ));

        // Extra member, missing aad, aad of the wrong type.
        for aad in [
            Some(
                json!({"client_id": CLIENT, "created_at": "2026-11-25T12:00:00.000Z", "id": 1, "x": true}),
            ),
            None,
            Some(json!({"client_id": CLIENT, "created_at": "2026-11-25T12:00:00.000Z", "id": "1"})),
            Some(json!("nope")),
        ] {
            let mut m = delivered();
            m.aad = aad.clone();
            assert!(
                matches!(
                    open_delivered(&key, CLIENT, &m),
                    Err(OpenFailure::AadMismatch { .. })
                ),
                "{aad:?} accepted"
            );
        }
    }

    #[test]
    fn aad_rewritten_consistently_still_fails_authentication() {
        // Envelope and aad both changed to id 2: the check passes, GCM does not.
        let mut m = delivered();
        m.id = 2;
        m.aad =
            Some(json!({"client_id": CLIENT, "created_at": "2026-11-25T12:00:00.000Z", "id": 2}));
        assert_eq!(
            open_delivered(&vector_key(), CLIENT, &m),
            Err(OpenFailure::Authentication)
        );
    }

    #[test]
    fn tampering_and_bad_encoding_are_reported() {
        let key = vector_key();
        let mut m = delivered();
        m.tag = "SaxZpHZWSEoTzf7vz5/LIQ==".into();
        assert_eq!(
            open_delivered(&key, CLIENT, &m),
            Err(OpenFailure::Authentication)
        );

        let mut m = delivered();
        m.nonce = "AQEB".into();
        assert_eq!(
            open_delivered(&key, CLIENT, &m),
            Err(OpenFailure::Encoding("nonce"))
        );

        assert_eq!(
            open_delivered(&Key::random(), CLIENT, &delivered()),
            Err(OpenFailure::Authentication)
        );
    }

    #[test]
    fn sends_round_trip_with_a_fresh_nonce() {
        let key = Key::random();
        let body = seal_send(&key, CLIENT, "reply", &json!({"n": [1, 2]}));
        assert_eq!(
            body.aad,
            Some(json!({"client_id": CLIENT}).as_object().unwrap().clone())
        );
        let sealed = Sealed {
            ciphertext: decode_base64(&body.ciphertext).unwrap(),
            nonce: decode_base64(&body.nonce).unwrap().try_into().unwrap(),
            tag: decode_base64(&body.tag).unwrap().try_into().unwrap(),
        };
        let aad = format!("{{\"client_id\":\"{CLIENT}\"}}");
        let plain: Value =
            serde_json::from_slice(&open(&key, &sealed, aad.as_bytes()).unwrap()).unwrap();
        assert_eq!(plain, json!({"type": "reply", "payload": {"n": [1, 2]}}));

        let again = seal_send(&key, CLIENT, "reply", &json!({"n": [1, 2]}));
        assert_ne!(again.nonce, body.nonce);
    }
}
