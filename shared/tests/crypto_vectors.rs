//! The crypto against published vectors: NIST/GCM-spec AES-256-GCM vectors,
//! and Pigeonhole's own format vectors (generated independently with
//! Python's `cryptography`, see docs/tools/make_format_vectors.py) that
//! `docs/encryption.md` publishes for client implementers.

use pigeonhole::crypto::{
    canonical_aad, decode_base64, encode_base64, open, seal_with_nonce, Key, OpenError, Sealed,
};
use serde_json::Value;

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).expect("vector JSON")
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {name}"))
}

#[test]
fn nist_aes_256_gcm_vectors() {
    let vectors = load("nist_aes256gcm.json");
    assert!(vectors.len() >= 6, "expected the full vector set");
    for v in &vectors {
        let source = field(v, "source");
        let key = Key::from_bytes(hex(field(v, "key")).try_into().expect("32-byte key"));
        let nonce: [u8; 12] = hex(field(v, "iv")).try_into().expect("96-bit iv");
        let (pt, aad) = (hex(field(v, "pt")), hex(field(v, "aad")));
        let sealed = seal_with_nonce(&key, nonce, &pt, &aad);
        assert_eq!(
            sealed.ciphertext,
            hex(field(v, "ct")),
            "ciphertext of {source}"
        );
        assert_eq!(sealed.tag.to_vec(), hex(field(v, "tag")), "tag of {source}");
        assert_eq!(
            open(&key, &sealed, &aad).unwrap(),
            pt,
            "decrypting {source}"
        );

        let mut tampered = sealed.clone();
        tampered.tag[15] ^= 0x80;
        assert_eq!(
            open(&key, &tampered, &aad),
            Err(OpenError),
            "tampered tag of {source}"
        );
        let wrong_key = Key::from_bytes([0xA5; 32]);
        assert_eq!(
            open(&wrong_key, &sealed, &aad),
            Err(OpenError),
            "wrong key for {source}"
        );
        let mut other_aad = aad.clone();
        other_aad.push(0);
        assert_eq!(
            open(&key, &sealed, &other_aad),
            Err(OpenError),
            "aad mismatch for {source}"
        );
    }
}

#[test]
fn pigeonhole_format_vectors() {
    for v in &load("pigeonhole_format_vectors.json") {
        let what = field(v, "description");
        let key = Key::from_base64(field(v, "personal_token")).expect("personal_token");
        let aad = match &v["aad"] {
            Value::Null => Vec::new(),
            Value::Object(map) => canonical_aad(map).expect("scalar aad"),
            other => panic!("unexpected aad {other}"),
        };
        assert_eq!(
            aad,
            field(v, "aad_bytes").as_bytes(),
            "canonical aad of {what}"
        );

        let nonce: [u8; 12] = decode_base64(field(v, "nonce"))
            .unwrap()
            .try_into()
            .unwrap();
        let sealed = seal_with_nonce(&key, nonce, field(v, "plaintext").as_bytes(), &aad);
        assert_eq!(
            encode_base64(&sealed.ciphertext),
            field(v, "ciphertext"),
            "ciphertext of {what}"
        );
        assert_eq!(encode_base64(&sealed.tag), field(v, "tag"), "tag of {what}");

        let published = Sealed {
            ciphertext: decode_base64(field(v, "ciphertext")).unwrap(),
            nonce,
            tag: decode_base64(field(v, "tag")).unwrap().try_into().unwrap(),
        };
        assert_eq!(
            open(&key, &published, &aad).unwrap(),
            field(v, "plaintext").as_bytes(),
            "{what}"
        );
    }
}
