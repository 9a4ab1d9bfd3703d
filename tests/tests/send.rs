//! Client-to-server messages: `POST /messages/send`, encrypted with ring.

mod support;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

async fn send_ok(s: &Server, c: &Creds, body: &Value) -> (u16, u64) {
    let resp = s.send_raw(c, body).await;
    let status = resp.status().as_u16();
    let v = json_body(resp).await;
    assert!(
        status == 200 || status == 201,
        "send answered {status}: {v}"
    );
    assert_keys(&v, &["id"]);
    (status, v["id"].as_u64().expect("id is an integer"))
}

#[tokio::test(flavor = "multi_thread")]
async fn send_encrypted_message_is_accepted_with_sequential_ids() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let pt = json!({"type": "status", "payload": {"battery": 87, "note": "ça va"}});
    let aad = json!({"client_id": c.client_id, "seq": 1, "urgent": false});
    let b1 = send_body(&c, &pt, Some(&aad));
    assert_eq!(send_ok(&s, &c, &b1).await, (201, 1));

    // Without aad, and with an explicit null aad (= empty AAD bytes).
    let b2 = send_body(&c, &json!({"type": "x", "payload": null}), None);
    assert_eq!(send_ok(&s, &c, &b2).await, (201, 2));
    let mut b3 = send_body(&c, &json!({"type": "x", "payload": [1]}), None);
    b3["aad"] = Value::Null;
    assert_eq!(send_ok(&s, &c, &b3).await, (201, 3));

    // An aad without client_id is fine too.
    let aad4 = json!({"kind": "telemetry", "n": -5});
    let b4 = send_body(&c, &json!({"type": "t", "payload": {}}), Some(&aad4));
    assert_eq!(send_ok(&s, &c, &b4).await, (201, 4));

    // Another client's sequence starts at 1.
    let d = s.new_client().await;
    let bd = send_body(&d, &pt, None);
    assert_eq!(send_ok(&s, &d, &bd).await, (201, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn send_aad_is_canonicalized_with_sorted_keys() {
    let s = Server::start().await;
    let c = s.new_client().await;
    // The aad is sent with keys out of order and non-ASCII text; the bytes
    // authenticated are the sorted, compact, unescaped serialization.
    let aad = json!({"zeta": "ünïcødé ✓", "alpha": 1, "client_id": c.client_id, "mid": true});
    let canonical = format!(
        r#"{{"alpha":1,"client_id":"{}","mid":true,"zeta":"ünïcødé ✓"}}"#,
        c.client_id
    );
    assert_eq!(canonical_json(&aad), canonical);
    let pt = serde_json::to_vec(&json!({"type": "t", "payload": 1})).unwrap();
    let sealed = encrypt_with_nonce(&c.key(), random_bytes(), &pt, canonical.as_bytes());
    let raw = format!(
        r#"{{"ciphertext":"{}","nonce":"{}","tag":"{}","aad":{{"zeta":"ünïcødé ✓","mid":true,"client_id":"{}","alpha":1}}}}"#,
        sealed.ciphertext, sealed.nonce, sealed.tag, c.client_id
    );
    let resp = c
        .auth(s.request(reqwest::Method::POST, "/api/v1/messages/send"))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(json_body(resp).await, json!({"id": 1}));
}

#[tokio::test(flavor = "multi_thread")]
async fn resending_same_nonce_is_idempotent() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let body = send_body(
        &c,
        &json!({"type": "once", "payload": 1}),
        Some(&json!({"client_id": c.client_id})),
    );
    assert_eq!(send_ok(&s, &c, &body).await, (201, 1));
    assert_eq!(send_ok(&s, &c, &body).await, (200, 1));
    assert_eq!(send_ok(&s, &c, &body).await, (200, 1));
    // Nothing was stored twice: the next new message gets id 2.
    let next = send_body(&c, &json!({"type": "twice", "payload": 2}), None);
    assert_eq!(send_ok(&s, &c, &next).await, (201, 2));
    // Retrying the first again still answers its original id.
    assert_eq!(send_ok(&s, &c, &body).await, (200, 1));

    // The same nonce bytes from another client are a different message.
    let d = s.new_client().await;
    let nonce: [u8; 12] = B64
        .decode(body["nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let pt = serde_json::to_vec(&json!({"type": "once", "payload": 1})).unwrap();
    let sd = encrypt_with_nonce(&d.key(), nonce, &pt, b"");
    let bd = json!({"ciphertext": sd.ciphertext, "nonce": sd.nonce, "tag": sd.tag});
    assert_eq!(send_ok(&s, &d, &bd).await, (201, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn same_nonce_with_different_content_is_rejected() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let nonce = random_bytes::<12>();
    let p1 = serde_json::to_vec(&json!({"type": "a", "payload": 1})).unwrap();
    let p2 = serde_json::to_vec(&json!({"type": "a", "payload": 2})).unwrap();
    let s1 = encrypt_with_nonce(&c.key(), nonce, &p1, b"");
    let s2 = encrypt_with_nonce(&c.key(), nonce, &p2, b"");
    let b1 = json!({"ciphertext": s1.ciphertext, "nonce": s1.nonce, "tag": s1.tag});
    let b2 = json!({"ciphertext": s2.ciphertext, "nonce": s2.nonce, "tag": s2.tag});
    assert_eq!(send_ok(&s, &c, &b1).await, (201, 1));
    expect_error(s.send_raw(&c, &b2).await, 422, "validation_failed").await;
    // And nothing was stored for it.
    let b3 = send_body(&c, &json!({"type": "b", "payload": 3}), None);
    assert_eq!(send_ok(&s, &c, &b3).await, (201, 2));
}

fn flip_first_byte(b64: &str) -> String {
    let mut bytes = B64.decode(b64).unwrap();
    bytes[0] ^= 0x01;
    B64.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_or_misencrypted_messages_fail_decryption() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let other = s.new_client().await;
    let pt = json!({"type": "t", "payload": {"secret": true}});
    let aad = json!({"client_id": c.client_id, "n": 1});

    let good = send_body(&c, &pt, Some(&aad));

    let mut tag = good.clone();
    tag["tag"] = json!(flip_first_byte(good["tag"].as_str().unwrap()));
    expect_error(s.send_raw(&c, &tag).await, 422, "decryption_failed").await;

    let mut ct = good.clone();
    ct["ciphertext"] = json!(flip_first_byte(good["ciphertext"].as_str().unwrap()));
    expect_error(s.send_raw(&c, &ct).await, 422, "decryption_failed").await;

    let mut nonce = good.clone();
    nonce["nonce"] = json!(flip_first_byte(good["nonce"].as_str().unwrap()));
    expect_error(s.send_raw(&c, &nonce).await, 422, "decryption_failed").await;

    // The aad sent differs from the one encrypted with.
    let mut aad_changed = good.clone();
    aad_changed["aad"]["n"] = json!(2);
    expect_error(s.send_raw(&c, &aad_changed).await, 422, "decryption_failed").await;
    let mut aad_dropped = good.clone();
    aad_dropped.as_object_mut().unwrap().remove("aad");
    expect_error(s.send_raw(&c, &aad_dropped).await, 422, "decryption_failed").await;

    // Encrypted under another client's key.
    let wrong_key = send_body(&other, &pt, Some(&aad));
    expect_error(s.send_raw(&c, &wrong_key).await, 422, "decryption_failed").await;

    // The untampered message is still accepted afterwards (id 1: failures stored nothing).
    assert_eq!(send_ok(&s, &c, &good).await, (201, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn aad_client_id_must_be_the_senders() {
    let s = Server::start().await;
    let a = s.new_client().await;
    let b = s.new_client().await;
    // Correctly encrypted under A's key, but claims to be for B.
    let aad = json!({"client_id": b.client_id});
    let body = send_body(&a, &json!({"type": "t", "payload": 1}), Some(&aad));
    let resp = s.send_raw(&a, &body).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v = json_body(resp).await;
    assert_keys(&v, &["error"]);
    assert_keys(&v["error"], &["code", "message"]);
    let code = v["error"]["code"].as_str().unwrap();
    assert!(
        code == "validation_failed" || code == "decryption_failed",
        "unexpected code {code}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_must_be_a_type_payload_object() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let bad: Vec<Vec<u8>> = vec![
        b"[1,2,3]".to_vec(),
        b"\"just a string\"".to_vec(),
        b"42".to_vec(),
        b"not json at all".to_vec(),
        br#"{"payload": 1}"#.to_vec(),
        br#"{"type": 7, "payload": 1}"#.to_vec(),
        br#"{"type": "", "payload": 1}"#.to_vec(),
        format!(r#"{{"type": "{}", "payload": 1}}"#, "t".repeat(65)).into_bytes(),
    ];
    for pt in &bad {
        let sealed = encrypt(&c.key(), pt, None);
        let body =
            json!({"ciphertext": sealed.ciphertext, "nonce": sealed.nonce, "tag": sealed.tag});
        let resp = s.send_raw(&c, &body).await;
        let got = resp.status();
        let v = json_body(resp).await;
        assert_eq!(
            got,
            StatusCode::UNPROCESSABLE_ENTITY,
            "plaintext {:?}: {v}",
            String::from_utf8_lossy(pt)
        );
        assert_eq!(
            v["error"]["code"],
            json!("validation_failed"),
            "plaintext {:?}",
            String::from_utf8_lossy(pt)
        );
    }
    // A valid plaintext after all those gets id 1.
    let ok = send_body(&c, &json!({"type": "t", "payload": null}), None);
    assert_eq!(send_ok(&s, &c, &ok).await, (201, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn send_envelope_fields_are_validated() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let good = send_body(&c, &json!({"type": "t", "payload": 1}), None);
    let with = |field: &str, value: Value| {
        let mut b = good.clone();
        b[field] = value;
        b
    };
    let without = |field: &str| {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(field);
        b
    };
    let cases = [
        (with("nonce", json!(B64.encode([0u8; 11]))), "nonce"),
        (with("nonce", json!(B64.encode([0u8; 16]))), "nonce"),
        (with("nonce", json!("%%%not base64%%%")), "nonce"),
        (with("nonce", json!(12)), "nonce"),
        (without("nonce"), "nonce"),
        (with("tag", json!(B64.encode([0u8; 15]))), "tag"),
        (with("tag", json!("***")), "tag"),
        (without("tag"), "tag"),
        (with("ciphertext", json!("not base64!")), "ciphertext"),
        (with("ciphertext", json!(null)), "ciphertext"),
        (without("ciphertext"), "ciphertext"),
        (with("aad", json!({"nested": {"x": 1}})), "aad"),
        (with("aad", json!({"list": [1]})), "aad"),
        (with("aad", json!({"f": 1.5})), "aad"),
        (with("aad", json!("a string")), "aad"),
    ];
    for (body, field) in cases {
        expect_validation(s.send_raw(&c, &body).await, field).await;
    }
    assert_eq!(send_ok(&s, &c, &good).await, (201, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn delivered_message_cannot_be_sent_back_as_the_clients_own() {
    let s = Server::start().await;
    let c = s.new_client().await;
    s.publish(&[&c.client_id], "order", json!({"amount": 100}))
        .await;
    let polled = s.poll(&c, None, None).await.expect("a delivered message");
    let m = &polled["messages"][0];
    assert_eq!(open_message(&c, m)["type"], json!("order"));

    // Reflected verbatim: it would decrypt under the client's own key and
    // has the {type, payload} shape, but its aad has an id.
    let reflected = json!({
        "ciphertext": m["ciphertext"],
        "nonce": m["nonce"],
        "tag": m["tag"],
        "aad": m["aad"],
    });
    let msg = expect_validation(s.send_raw(&c, &reflected).await, "aad").await;
    assert!(
        msg.contains("id") && msg.contains("delivered"),
        "the message does not say why: {msg:?}"
    );

    // Any aad with an id key is refused, even one the client encrypted
    // itself.
    for aad in [
        json!({"id": 1}),
        json!({"client_id": c.client_id, "id": 7, "note": "mine"}),
    ] {
        let body = send_body(&c, &json!({"type": "t", "payload": 1}), Some(&aad));
        expect_validation(s.send_raw(&c, &body).await, "aad").await;
    }

    // Nothing was stored: the next send is the client's first.
    let ok = send_body(
        &c,
        &json!({"type": "t", "payload": 1}),
        Some(&json!({"client_id": c.client_id, "message_id": 1})),
    );
    assert_eq!(send_ok(&s, &c, &ok).await, (201, 1));
}
