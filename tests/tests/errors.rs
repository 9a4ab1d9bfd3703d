//! Every error status and code of the contract, with the exact error shape.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::*;

const REGISTER: &str = "/api/v1/clients/register";
const PUBLISH: &str = "/api/v1/messages/publish";
const SEND: &str = "/api/v1/messages/send";
const POLL: &str = "/api/v1/messages/poll";
const ACK: &str = "/api/v1/messages/ack";
const CLIENTS: &str = "/api/v1/operators/clients";

#[tokio::test(flavor = "multi_thread")]
async fn non_json_and_non_object_bodies_are_invalid_json() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let bodies: [&[u8]; 7] = [
        b"this is not json",
        b"[1,2,3]",
        b"[]",
        b"\"a string\"",
        b"42",
        b"",
        b"{\"fingerprint\": \"unterminated",
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(body);
        let resp = s
            .request(Method::POST, REGISTER)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let msg = expect_error(resp, 400, "invalid_json").await;
        assert!(!msg.is_empty(), "register body {shown:?}");

        let resp = s
            .request(Method::POST, PUBLISH)
            .header("X-Admin-Token", s.admin_token())
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "invalid_json").await;

        let resp = c
            .auth(s.request(Method::POST, ACK))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "invalid_json").await;

        let resp = c
            .auth(s.request(Method::POST, SEND))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "invalid_json").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_auth_failure_is_the_same_401() {
    let s = Server::start().await;
    let a = s.new_client().await;
    let b = s.new_client().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let bearer_a = format!("Bearer {}", a.api_token);

    // (description, Authorization, X-Client-Id)
    let variants: Vec<(&str, Option<String>, Option<String>)> = vec![
        ("no headers", None, None),
        ("no Authorization", None, Some(a.client_id.clone())),
        ("no X-Client-Id", Some(bearer_a.clone()), None),
        (
            "wrong token",
            Some("Bearer pht_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            Some(a.client_id.clone()),
        ),
        (
            "token without Bearer",
            Some(a.api_token.clone()),
            Some(a.client_id.clone()),
        ),
        (
            "Basic scheme",
            Some(format!("Basic {}", a.api_token)),
            Some(a.client_id.clone()),
        ),
        (
            "empty bearer",
            Some("Bearer ".into()),
            Some(a.client_id.clone()),
        ),
        (
            "client id not a uuid",
            Some(bearer_a.clone()),
            Some("not-a-uuid".into()),
        ),
        (
            "unknown client id",
            Some(bearer_a.clone()),
            Some(unknown.clone()),
        ),
        (
            "A's token with B's id",
            Some(bearer_a.clone()),
            Some(b.client_id.clone()),
        ),
        (
            "B's token with A's id",
            Some(format!("Bearer {}", b.api_token)),
            Some(a.client_id.clone()),
        ),
        (
            "personal token instead of api token",
            Some(format!("Bearer {}", a.personal_token)),
            Some(a.client_id.clone()),
        ),
    ];

    let mut messages = std::collections::BTreeSet::new();
    for (what, auth, id) in &variants {
        for (method, path) in [
            (Method::GET, POLL),
            (Method::POST, ACK),
            (Method::POST, SEND),
        ] {
            let mut rb = s.request(method.clone(), path);
            if let Some(h) = auth {
                rb = rb.header("Authorization", h);
            }
            if let Some(h) = id {
                rb = rb.header("X-Client-Id", h);
            }
            if method == Method::POST {
                let body = if path == ACK {
                    json!({"last_received_id": 0})
                } else {
                    send_body(&a, &json!({"type": "t", "payload": 1}), None)
                };
                rb = rb.json(&body);
            }
            let resp = rb.send().await.unwrap();
            let got = resp.status();
            assert_eq!(got, StatusCode::UNAUTHORIZED, "{what} on {path}");
            messages.insert(expect_error(resp, 401, "unauthorized").await);
        }
    }
    assert_eq!(
        messages.len(),
        1,
        "all auth failures must look the same: {messages:?}"
    );

    // And the real credentials still work for both.
    assert!(s.poll(&a, None, None).await.is_none());
    assert!(s.poll(&b, None, None).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_and_operator_tokens_are_checked() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let body = json!({"to_client_ids": [c.client_id], "type": "t", "payload": 1});

    let no_token = s
        .request(Method::POST, PUBLISH)
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(no_token, 401, "unauthorized").await;
    for wrong in [
        "wrong-admin-token".to_string(),
        s.operator_token().to_string(),
        c.api_token.clone(),
        format!("{}x", s.admin_token()),
        String::new(),
    ] {
        let resp = s
            .request(Method::POST, PUBLISH)
            .header("X-Admin-Token", &wrong)
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_error(resp, 401, "unauthorized").await;
    }
    // Nothing was delivered by the rejected publishes.
    assert!(s.poll(&c, None, None).await.is_none());

    let resp = s.request(Method::GET, CLIENTS).send().await.unwrap();
    expect_error(resp, 401, "unauthorized").await;
    for wrong in [
        "wrong-operator-token".to_string(),
        s.admin_token().to_string(),
        s.config.operator_tokens.as_ref().unwrap().join(","),
        String::new(),
    ] {
        expect_error(s.list_clients_raw(&wrong, "").await, 401, "unauthorized").await;
    }
    // Both configured operator tokens are accepted.
    for tok in s.config.operator_tokens.clone().unwrap() {
        let resp = s.list_clients_raw(&tok, "").await;
        assert_eq!(resp.status(), StatusCode::OK, "operator token {tok}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_paths_are_404() {
    let s = Server::start().await;
    // `/` serves the browser client; everything else unknown is a JSON 404.
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::GET, "/api/v1"),
        (Method::GET, "/api/v1/nope"),
        (Method::POST, "/api/v1/clients"),
        (Method::GET, "/api/v2/health"),
        (Method::POST, "/api/v1/messages/publish/extra/more"),
        (Method::GET, "/api/v1/operators/clients/123/tags/x"),
    ] {
        let resp = s.request(method.clone(), path).send().await.unwrap();
        let msg = expect_error(resp, 404, "not_found").await;
        assert!(!msg.is_empty(), "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_method_is_405_with_allow_header() {
    let s = Server::start().await;
    for (method, path, allowed) in [
        (Method::GET, REGISTER, "POST"),
        (Method::PUT, REGISTER, "POST"),
        (Method::GET, PUBLISH, "POST"),
        (Method::GET, SEND, "POST"),
        (Method::POST, POLL, "GET"),
        (Method::DELETE, POLL, "GET"),
        (Method::GET, ACK, "POST"),
        (Method::POST, CLIENTS, "GET"),
        (Method::POST, "/health", "GET"),
        (Method::DELETE, "/api/v1/health", "GET"),
    ] {
        let resp = s.request(method.clone(), path).send().await.unwrap();
        let allow = resp
            .headers()
            .get("allow")
            .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow header"))
            .to_str()
            .unwrap()
            .to_string();
        let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
        assert!(
            methods.contains(&allowed),
            "{method} {path}: Allow {allow:?} lacks {allowed}"
        );
        assert!(
            !methods.contains(&method.as_str()),
            "{method} {path}: Allow {allow:?} lists the rejected method"
        );
        expect_error(resp, 405, "method_not_allowed").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_and_payloads_are_413() {
    let s = Server::start().await;
    let c = s.new_client().await;

    // Request body over 256 KiB, on an unauthenticated endpoint.
    let huge = json!({"fingerprint": random_fingerprint(), "name": "n".repeat(300 * 1024)});
    expect_error(s.register_raw(&huge).await, 413, "payload_too_large").await;
    // Even when it is not JSON at all.
    let resp = s
        .request(Method::POST, REGISTER)
        .body(vec![b'x'; 262_145])
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, "payload_too_large").await;

    // A publish payload over 64 KiB serialized, in a body under 256 KiB.
    let big =
        json!({"to_client_ids": [c.client_id], "type": "big", "payload": "x".repeat(70 * 1024)});
    expect_error(s.publish_raw(&big).await, 413, "payload_too_large").await;
    let big_obj = json!({"to_client_ids": [c.client_id], "type": "big",
        "payload": {"a": "y".repeat(40 * 1024), "b": "z".repeat(40 * 1024)}});
    expect_error(s.publish_raw(&big_obj).await, 413, "payload_too_large").await;
    // And a huge publish body.
    let huge_pub =
        json!({"to_client_ids": [c.client_id], "type": "big", "payload": "x".repeat(300 * 1024)});
    expect_error(s.publish_raw(&huge_pub).await, 413, "payload_too_large").await;
    // Nothing was delivered.
    assert!(s.poll(&c, None, None).await.is_none());

    // An oversized send body.
    let mut send = send_body(&c, &json!({"type": "t", "payload": 1}), None);
    send["padding"] = json!("p".repeat(300 * 1024));
    expect_error(s.send_raw(&c, &send).await, 413, "payload_too_large").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_validation_names_the_field() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let id = c.client_id.clone();
    let cases = [
        (json!({"type": "t", "payload": 1}), "to_client_ids"),
        (
            json!({"to_client_ids": [], "type": "t", "payload": 1}),
            "to_client_ids",
        ),
        (
            json!({"to_client_ids": id, "type": "t", "payload": 1}),
            "to_client_ids",
        ),
        (
            json!({"to_client_ids": ["not-a-uuid"], "type": "t", "payload": 1}),
            "to_client_ids[0]",
        ),
        (
            json!({"to_client_ids": [id, 17], "type": "t", "payload": 1}),
            "to_client_ids[1]",
        ),
        (json!({"to_client_ids": [id], "payload": 1}), "type"),
        (
            json!({"to_client_ids": [id], "type": "", "payload": 1}),
            "type",
        ),
        (
            json!({"to_client_ids": [id], "type": "t".repeat(65), "payload": 1}),
            "type",
        ),
        (
            json!({"to_client_ids": [id], "type": 5, "payload": 1}),
            "type",
        ),
        (json!({"to_client_ids": [id], "type": "t"}), "payload"),
    ];
    for (body, field) in cases {
        expect_validation(s.publish_raw(&body).await, field).await;
    }
    assert!(
        s.poll(&c, None, None).await.is_none(),
        "invalid publishes deliver nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_and_ack_validation_names_the_parameter() {
    let s = Server::start().await;
    let c = s.new_client().await;
    for (query, field) in [
        ("cursor=-1", "cursor"),
        ("cursor=abc", "cursor"),
        ("cursor=1.5", "cursor"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=-3", "limit"),
        ("limit=ten", "limit"),
        ("cursor=0&limit=100000", "limit"),
    ] {
        let resp = s.poll_request(&c, query).send().await.unwrap();
        expect_validation(resp, field).await;
    }
    for body in [
        json!({}),
        json!({"last_received_id": -1}),
        json!({"last_received_id": "3"}),
        json!({"last_received_id": 1.5}),
        json!({"last_received_id": null}),
    ] {
        expect_validation(s.ack_raw(&c, &body).await, "last_received_id").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_listing_validation_names_the_parameter() {
    let s = Server::start().await;
    let tok = s.operator_token().to_string();
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("page_token=%21%21garbage%21%21", "page_token"),
    ] {
        expect_validation(s.list_clients_raw(&tok, query).await, field).await;
    }
    assert_eq!(
        s.list_clients_raw(&tok, "limit=1000").await.status(),
        StatusCode::OK
    );
}
