//! Checks of the test harness's own crypto (ring) and AAD canonicalization,
//! so that a failing end-to-end test points at the server, and an
//! independent check of the published format vectors.

mod support;

use serde_json::{json, Value};
use support::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn ring_matches_gcm_spec_test_case_16() {
    // McGrew & Viega, "The Galois/Counter Mode of Operation", test case 16.
    let key: [u8; 32] = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
        .try_into()
        .unwrap();
    let iv: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
    let pt = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
    let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let ct = hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662");
    let tag = hex("76fc6ece0f4e1768cddf8853bb2d551b");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let sealed = encrypt_with_nonce(&key, iv, &pt, &aad);
    assert_eq!(sealed.ciphertext, b64.encode(&ct));
    assert_eq!(sealed.tag, b64.encode(&tag));
    let opened = decrypt_parts(&key, &sealed.ciphertext, &sealed.nonce, &sealed.tag, &aad);
    assert_eq!(opened, Some(pt));
    assert!(decrypt_parts(&key, &sealed.ciphertext, &sealed.nonce, &sealed.tag, b"x").is_none());
}

#[test]
fn canonical_json_matches_python_sort_keys_compact() {
    // python3: json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    let v = json!({"zeta": "ünïcødé ✓", "alpha": 1, "client_id": "x", "mid": true,
                   "q": "a\"b\\c\n\t\u{1}/"});
    assert_eq!(
        canonical_json(&v),
        r#"{"alpha":1,"client_id":"x","mid":true,"q":"a\"b\\c\n\t\u0001/","zeta":"ünïcødé ✓"}"#
    );
}

/// The documented format vectors (docs/encryption.md) open with ring, and
/// their `aad_bytes` are the canonical serialization of their `aad`.
#[test]
fn published_format_vectors_verify_with_ring() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/tests/data/pigeonhole_format_vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let vectors: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(!vectors.is_empty());
    for v in &vectors {
        let what = v["description"].as_str().unwrap_or("?");
        let creds = Creds {
            client_id: String::new(),
            personal_token: v["personal_token"].as_str().unwrap().into(),
            api_token: String::new(),
        };
        let aad_bytes = v["aad_bytes"].as_str().unwrap();
        let expected_aad = match &v["aad"] {
            Value::Null => String::new(),
            a => canonical_json(a),
        };
        assert_eq!(aad_bytes, expected_aad, "{what}: aad_bytes");
        let pt = decrypt_parts(
            &creds.key(),
            v["ciphertext"].as_str().unwrap(),
            v["nonce"].as_str().unwrap(),
            v["tag"].as_str().unwrap(),
            aad_bytes.as_bytes(),
        )
        .unwrap_or_else(|| panic!("{what}: does not decrypt with ring"));
        assert_eq!(
            String::from_utf8(pt).unwrap(),
            v["plaintext"].as_str().unwrap(),
            "{what}: plaintext"
        );
    }
}
