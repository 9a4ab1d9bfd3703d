//! Health and client registration.

mod support;

use std::collections::HashSet;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn health_answers_ok_on_both_paths() {
    let s = Server::start().await;
    for path in ["/health", "/api/v1/health"] {
        let resp = s.request(Method::GET, path).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(json_body(resp).await, json!({"status": "ok"}), "{path}");
    }
}

fn assert_api_token(t: &str) {
    let rest = t
        .strip_prefix("pht_")
        .unwrap_or_else(|| panic!("api_token {t:?} does not start with pht_"));
    assert_eq!(rest.len(), 43, "api_token {t:?}: 43 chars after pht_");
    assert!(
        rest.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "api_token {t:?} is not base64url"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn register_new_client_returns_201_with_fresh_credentials() {
    let s = Server::start().await;
    let resp = s
        .register_raw(&json!({"name": "laptop", "fingerprint": random_fingerprint()}))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let c = Creds::from_json(&json_body(resp).await);
    let id = uuid::Uuid::parse_str(&c.client_id).expect("client_id is a UUID");
    assert_eq!(id.hyphenated().to_string(), c.client_id, "hyphenated UUID");
    let key = B64.decode(&c.personal_token).expect("standard base64");
    assert_eq!(key.len(), 32, "personal_token is a 32-byte key");
    assert_api_token(&c.api_token);

    // Another fingerprint: a different client with different secrets.
    let d = s.new_client().await;
    assert_ne!(c.client_id, d.client_id);
    assert_ne!(c.personal_token, d.personal_token);
    assert_ne!(c.api_token, d.api_token);

    // The credentials work: an authenticated poll succeeds (nothing yet).
    assert!(s.poll(&c, None, None).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn reregistering_same_fingerprint_returns_200_and_identical_credentials() {
    let s = Server::start().await;
    let fp = random_fingerprint();
    let (st1, c1) = s.register_status(&fp, Some("first name")).await;
    assert_eq!(st1, 201);
    let (st2, c2) = s.register_status(&fp, Some("other name")).await;
    assert_eq!(st2, 200);
    assert_eq!(c1, c2);
    let (st3, c3) = s.register_status(&fp, None).await;
    assert_eq!(st3, 200);
    assert_eq!(c1, c3);

    // Re-registering does not rename the client, and there is only one.
    let (clients, _) = s.list_all_clients(1000).await;
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["id"], json!(c1.client_id));
    assert_eq!(clients[0]["name"], json!("first name"));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_registrations_of_one_fingerprint_create_one_client() {
    let s = std::sync::Arc::new(Server::start().await);
    let fp = random_fingerprint();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = s.clone();
        let fp = fp.clone();
        tasks.push(tokio::spawn(
            async move { s.register_status(&fp, None).await },
        ));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let created = results.iter().filter(|(st, _)| *st == 201).count();
    assert_eq!(created, 1, "exactly one 201 among {results:?}");
    let first = &results[0].1;
    assert!(
        results.iter().all(|(_, c)| c == first),
        "all registrations return the same credentials: {results:?}"
    );
    let (clients, _) = s.list_all_clients(1000).await;
    assert_eq!(clients.len(), 1, "one client stored: {clients:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn register_validates_fingerprint_and_name() {
    let s = Server::start().await;
    // fingerprint bounds are in characters, not bytes.
    let ok = [
        "a".repeat(8),
        "é".repeat(8),
        "b".repeat(256),
        "ü".repeat(256),
    ];
    for fp in &ok {
        let resp = s.register_raw(&json!({ "fingerprint": fp })).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "fingerprint of {} chars",
            fp.chars().count()
        );
    }
    let bad_fp = [
        json!({}),
        json!({"fingerprint": "a".repeat(7)}),
        json!({"fingerprint": "c".repeat(257)}),
        json!({"fingerprint": "é".repeat(257)}),
        json!({"fingerprint": 12345678}),
        json!({"fingerprint": null}),
        json!({"fingerprint": ""}),
    ];
    for body in &bad_fp {
        expect_validation(s.register_raw(body).await, "fingerprint").await;
    }
    let bad_name = [
        json!({"fingerprint": random_fingerprint(), "name": "n".repeat(101)}),
        json!({"fingerprint": random_fingerprint(), "name": 42}),
        json!({"fingerprint": random_fingerprint(), "name": ["x"]}),
    ];
    for body in &bad_name {
        expect_validation(s.register_raw(body).await, "name").await;
    }
    // Boundary and explicit null are accepted.
    for name in [json!("n".repeat(100)), json!(null), json!("ñ".repeat(100))] {
        let resp = s
            .register_raw(&json!({"fingerprint": random_fingerprint(), "name": name}))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "name {name}");
    }
    // No client was created by the rejected requests.
    let (clients, _) = s.list_all_clients(1000).await;
    assert_eq!(clients.len(), ok.len() + 3);
    let ids: HashSet<Value> = clients.iter().map(|c| c["id"].clone()).collect();
    assert_eq!(ids.len(), clients.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn register_refuses_names_with_control_or_format_characters() {
    let s = Server::start().await;
    // Unicode categories Cc and Cf: terminal escapes and other controls,
    // bidi overrides and isolates, zero-width characters, BOM, soft hyphen.
    let bad = [
        ("bidi override U+202E", "invoice\u{202e}fdp.exe"),
        ("bidi isolate U+2066", "a\u{2066}b\u{2069}"),
        ("zero-width space U+200B", "lap\u{200b}top"),
        ("zero-width joiner U+200D", "lap\u{200d}top"),
        ("zero-width non-joiner U+200C", "lap\u{200c}top"),
        ("byte-order mark U+FEFF", "\u{feff}laptop"),
        ("soft hyphen U+00AD", "lap\u{ad}top"),
        ("bell U+0007", "ding\u{7}"),
        ("terminal escape", "\u{1b}[31mred\u{1b}[0m"),
        ("newline", "two\nlines"),
        ("tab", "a\tb"),
        ("C1 control U+009B", "csi\u{9b}2J"),
        ("delete U+007F", "del\u{7f}"),
    ];
    for (what, name) in bad {
        let resp = s
            .register_raw(&json!({"fingerprint": random_fingerprint(), "name": name}))
            .await;
        let msg = expect_validation(resp, "name").await;
        assert!(
            msg.contains("control or format"),
            "{what}: message {msg:?} does not say why"
        );
    }
    // Also refused for a known fingerprint: no rename sneaks through.
    let fp = random_fingerprint();
    let (status, _) = s.register_status(&fp, Some("plain")).await;
    assert_eq!(status, 201);
    expect_validation(
        s.register_raw(&json!({"fingerprint": fp, "name": "x\u{202e}y"}))
            .await,
        "name",
    )
    .await;

    // Accents, other scripts, emoji (with skin tone and a variation
    // selector), punctuation and spaces are all fine, and stored as sent.
    let fine = [
        "Zoë's café — ñandú 📱🐦",
        "thumbs 👍🏽 ❤\u{fe0f} and 🇫🇷",
        "日本語 עברית عربي",
        "  spaced  out  ",
    ];
    for name in fine {
        let resp = s
            .register_raw(&json!({"fingerprint": random_fingerprint(), "name": name}))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "name {name:?}");
    }
    let (clients, _) = s.list_all_clients(1000).await;
    assert_eq!(clients.len(), 1 + fine.len(), "{clients:?}");
    let names: HashSet<&str> = clients.iter().filter_map(|c| c["name"].as_str()).collect();
    for name in fine.iter().chain(&["plain"]) {
        assert!(
            names.contains(name),
            "{name:?} not listed as sent: {names:?}"
        );
    }
}
