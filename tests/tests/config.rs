//! Configuration: generated secrets, secrets kept out of logs, bad config.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::json;
use support::*;

fn printed(stdout: &str, label: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label).map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_secrets_are_generated_printed_and_kept() {
    let mut s = Server::start_with(Config::without_secrets()).await;
    let out = s.stdout();
    let admin = printed(&out, "admin token: ")
        .unwrap_or_else(|| panic!("no `admin token: ` line on stdout:\n{out}"));
    let operator = printed(&out, "operator token: ")
        .unwrap_or_else(|| panic!("no `operator token: ` line on stdout:\n{out}"));
    assert!(
        out.lines().any(|l| l.contains("listening on http://")),
        "no `listening on` line:\n{out}"
    );

    let secrets = s.data_dir().join("secrets.json");
    let meta = std::fs::metadata(&secrets)
        .unwrap_or_else(|e| panic!("{} missing: {e}", secrets.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "secrets.json must be readable by its owner only"
    );

    // The printed tokens work.
    let c = s.new_client().await;
    let resp = s
        .request(reqwest::Method::POST, "/api/v1/messages/publish")
        .header("X-Admin-Token", &admin)
        .json(&json!({"to_client_ids": [c.client_id], "type": "t", "payload": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = s.list_clients_raw(&operator, "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    s.settle().await;
    let msgs = messages_of(&s.poll(&c, None, None).await.unwrap());
    assert_eq!(open_message(&c, &msgs[0])["payload"], json!("hi"));

    // Restarting without env reuses the kept secrets: same tokens, same
    // master key (credentials and messages still valid).
    s.kill9();
    s.restart().await;
    let resp = s
        .request(reqwest::Method::POST, "/api/v1/messages/publish")
        .header("X-Admin-Token", &admin)
        .json(&json!({"to_client_ids": [c.client_id], "type": "t", "payload": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "admin token kept across restarts"
    );
    assert_eq!(
        s.list_clients_raw(&operator, "").await.status(),
        StatusCode::OK
    );
    s.settle().await;
    let msgs = messages_of(&s.poll(&c, None, None).await.unwrap());
    assert_eq!(msgs.len(), 2);
    assert_eq!(open_message(&c, &msgs[1])["payload"], json!("again"));
}

#[tokio::test(flavor = "multi_thread")]
async fn env_secrets_are_used_and_nothing_generated_is_printed() {
    let s = Server::start().await;
    let out = s.stdout();
    assert!(
        printed(&out, "admin token: ").is_none(),
        "ADMIN_TOKEN was given; nothing to print:\n{out}"
    );
    assert!(!out.contains(s.admin_token()));
    let c = s.new_client().await;
    s.publish(&[&c.client_id], "t", json!(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_never_contain_secrets() {
    let s = Server::start().await;
    let a = s.new_client().await;
    let b = s.new_client().await;
    s.publish(&[&a.client_id], "t", json!({"secret_payload": "p4yl0ad"}))
        .await;
    let body = s.poll(&a, Some(0), Some(10)).await.unwrap();
    s.ack(&a, body["next_cursor"].as_u64().unwrap()).await;
    let sent = send_body(
        &a,
        &json!({"type": "t", "payload": "up"}),
        Some(&json!({"client_id": a.client_id})),
    );
    assert_eq!(s.send_raw(&a, &sent).await.status(), StatusCode::CREATED);
    s.list_all_clients(1).await;
    // Failures too: wrong tokens and a token used with the wrong client.
    let wrong = Creds {
        client_id: b.client_id.clone(),
        ..a.clone()
    };
    assert_eq!(
        s.poll_raw(&wrong, None, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.list_clients_raw(&format!("{}-wrong", s.operator_token()), "")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let resp = s
        .request(reqwest::Method::POST, "/api/v1/messages/publish")
        .header("X-Admin-Token", format!("{}-wrong", s.admin_token()))
        .json(&json!({"to_client_ids": [a.client_id], "type": "t", "payload": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Give the logger a moment to flush.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = s.logs();
    // The server does log requests (method, path, status).
    assert!(
        logs.contains("/api/v1/messages/poll") && logs.contains("/api/v1/messages/publish"),
        "no request log lines found:\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("/api/v1/messages/send") && l.contains("201")),
        "request log lines carry the status:\n{logs}"
    );
    // Paths are logged without their query string.
    assert!(
        !logs.contains("cursor=0"),
        "the query string was logged:\n{logs}"
    );
    let key = B64.decode(s.config.master_key.as_ref().unwrap()).unwrap();
    let mut secrets = vec![
        ("ADMIN_TOKEN", s.admin_token().to_string()),
        ("MASTER_KEY", s.config.master_key.clone().unwrap()),
        ("api token of A", a.api_token.clone()),
        ("api token of B", b.api_token.clone()),
        ("personal token of A", a.personal_token.clone()),
        ("personal token of B", b.personal_token.clone()),
        ("payload", "p4yl0ad".to_string()),
    ];
    for t in s.config.operator_tokens.as_ref().unwrap() {
        secrets.push(("operator token", t.clone()));
    }
    // The master key in hex, just in case.
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    secrets.push(("MASTER_KEY hex", hex));
    for (what, secret) in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "the logs contain the {what}"
        );
    }
}

#[test]
fn invalid_configuration_exits_nonzero_with_a_clear_message() {
    let cases = [
        (
            Config {
                master_key: Some("not base64 at all!".into()),
                ..Config::default()
            },
            "MASTER_KEY",
        ),
        (
            Config {
                master_key: Some(B64.encode([7u8; 16])),
                ..Config::default()
            },
            "MASTER_KEY",
        ),
        (
            Config {
                poll_rate_limit: Some("lots".into()),
                ..Config::default()
            },
            "POLL_RATE_LIMIT",
        ),
    ];
    for (config, var) in cases {
        let (status, output) = Server::run_to_exit(config, Duration::from_secs(15));
        let status = status
            .unwrap_or_else(|| panic!("bad {var}: the server kept running instead of exiting"));
        assert!(
            !status.success(),
            "bad {var}: exit status {status}, output:\n{output}"
        );
        assert!(
            output.contains(var),
            "bad {var}: the error does not name it:\n{output}"
        );
    }
}
