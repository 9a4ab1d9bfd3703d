//! The credential lifecycle: a client rotates its credentials
//! (`POST /clients/rotate`) without losing a message, and an operator
//! revokes a client for good (`DELETE /operators/clients/{client_id}`).

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;

/// Every pending message of `c` (polled from its acknowledged cursor),
/// opened with `c`'s key: (id, payload).
async fn pending(s: &Server, c: &Creds) -> Vec<(u64, Value)> {
    match s.poll(c, None, None).await {
        None => Vec::new(),
        Some(body) => messages_of(&body)
            .iter()
            .map(|m| {
                (
                    m["id"].as_u64().unwrap(),
                    open_message(c, m)["payload"].clone(),
                )
            })
            .collect(),
    }
}

/// Whether `m` opens with the key of `c` (without asserting anything).
fn opens_with(c: &Creds, m: &Value) -> bool {
    decrypt_parts(
        &c.key(),
        m["ciphertext"].as_str().unwrap(),
        m["nonce"].as_str().unwrap(),
        m["tag"].as_str().unwrap(),
        canonical_json(&m["aad"]).as_bytes(),
    )
    .is_some()
}

/// Asserts that `c`'s credentials answer 401 on poll, send, ack and rotate.
async fn assert_revoked(s: &Server, c: &Creds, why: &str) {
    expect_error(s.poll_raw(c, None, None).await, 401, "unauthorized").await;
    let body = send_body(c, &json!({"type": "t", "payload": why}), None);
    expect_error(s.send_raw(c, &body).await, 401, "unauthorized").await;
    expect_error(
        s.ack_raw(c, &json!({"last_received_id": 1})).await,
        401,
        "unauthorized",
    )
    .await;
    expect_error(s.rotate_raw(c, &json!({})).await, 401, "unauthorized").await;
}

async fn send_ok(s: &Server, c: &Creds, payload: Value) {
    let body = send_body(c, &json!({"type": "note", "payload": payload}), None);
    let resp = s.send_raw(c, &body).await;
    let status = resp.status();
    let v = json_body(resp).await;
    assert_eq!(status, StatusCode::CREATED, "send: {v}");
}

// ---------------------------------------------------------------------------
// Rotate
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rotate_revokes_the_old_token_and_keeps_pending_messages_readable() {
    let s = Server::start().await;
    let fp = random_fingerprint();
    let c1 = s.register(&fp).await;
    let bystander = s.new_client().await;

    // m1 is delivered (polled, opened with the first key) but not acknowledged.
    s.publish(&[&c1.client_id], "note", json!({"n": 1})).await;
    assert_eq!(pending(&s, &c1).await, vec![(1, json!({"n": 1}))]);

    let c2 = s.rotate(&c1, None).await;
    assert!(
        c2.api_token.starts_with("pht_"),
        "api_token after a rotation: {}",
        c2.api_token
    );
    assert_eq!(c2.key().len(), 32);

    // From the response on, the old token answers 401 everywhere.
    assert_revoked(&s, &c1, "old token after the first rotation").await;

    // The pending message comes back re-sealed under the new key: it
    // opens with it, and no longer with the old one.
    let body = s.poll(&c2, None, None).await.expect("m1 still pending");
    let msgs = messages_of(&body);
    assert_eq!(ids_of(&msgs), vec![1]);
    assert_eq!(open_message(&c2, &msgs[0])["payload"], json!({"n": 1}));
    assert!(
        !opens_with(&c1, &msgs[0]),
        "a message delivered after the rotation still opens with the retired key"
    );

    // Re-registering the fingerprint returns the new credentials.
    assert_eq!(s.register_status(&fp, None).await, (200, c2.clone()));

    // Published between the rotations: sealed under the second key.
    s.publish(&[&c2.client_id], "note", json!({"n": 2})).await;
    assert_eq!(
        pending(&s, &c2).await,
        vec![(1, json!({"n": 1})), (2, json!({"n": 2}))]
    );

    // A second rotation: both pending messages open with the third key.
    let c3 = s.rotate(&c2, None).await;
    assert_ne!(c3.api_token, c1.api_token);
    assert_ne!(c3.personal_token, c1.personal_token);
    assert_revoked(&s, &c2, "old token after the second rotation").await;
    assert_revoked(&s, &c1, "first token after the second rotation").await;
    let body = s.poll(&c3, None, None).await.expect("m1, m2 still pending");
    let msgs = messages_of(&body);
    assert_eq!(ids_of(&msgs), vec![1, 2]);
    for m in &msgs {
        open_message(&c3, m);
        assert!(!opens_with(&c2, m) && !opens_with(&c1, m), "{m}");
    }
    assert_eq!(s.register(&fp).await, c3);

    // New messages are sealed under the new key; ids go on.
    s.publish(&[&c3.client_id], "note", json!({"n": 3})).await;
    assert_eq!(
        pending(&s, &c3).await,
        vec![
            (1, json!({"n": 1})),
            (2, json!({"n": 2})),
            (3, json!({"n": 3}))
        ]
    );

    // Ack and send work with the new credentials; a send sealed under a
    // retired key does not verify.
    assert_eq!(s.ack(&c3, 3).await, 3);
    assert!(s.poll(&c3, None, None).await.is_none());
    send_ok(&s, &c3, json!("with the current key")).await;
    let stale_key = Creds {
        personal_token: c2.personal_token.clone(),
        ..c3.clone()
    };
    let body = send_body(
        &stale_key,
        &json!({"type": "note", "payload": "old key"}),
        None,
    );
    expect_error(s.send_raw(&c3, &body).await, 422, "decryption_failed").await;

    // Nobody else was touched.
    assert!(s.poll(&bystander, None, None).await.is_none());
    send_ok(&s, &bystander, json!("still here")).await;
    let (clients, _) = s.list_all_clients(100).await;
    assert_eq!(clients.len(), 2, "rotating creates no client: {clients:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_to_a_new_fingerprint() {
    let s = Server::start().await;
    let old_fp = random_fingerprint();
    let new_fp = random_fingerprint();
    let c1 = s.register(&old_fp).await;
    s.publish(&[&c1.client_id], "note", json!("before")).await;

    let c2 = s.rotate(&c1, Some(&new_fp)).await;
    assert_revoked(&s, &c1, "old token after a fingerprint change").await;
    assert_eq!(pending(&s, &c2).await, vec![(1, json!("before"))]);

    // The new fingerprint finds this client, with the new credentials.
    assert_eq!(s.register_status(&new_fp, None).await, (200, c2.clone()));
    // The old one no longer does: it registers a new client.
    let (status, other) = s.register_status(&old_fp, None).await;
    assert_eq!(status, 201, "the old fingerprint registers anew");
    assert_ne!(other.client_id, c2.client_id);
    assert!(
        s.poll(&other, None, None).await.is_none(),
        "the new client has no mail"
    );
    // …and the rotated client is unaffected by that.
    assert_eq!(pending(&s, &c2).await, vec![(1, json!("before"))]);

    let (clients, _) = s.list_all_clients(100).await;
    let mut ids: Vec<&str> = clients.iter().map(|c| c["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![c2.client_id.as_str(), other.client_id.as_str()];
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_refuses_a_fingerprint_of_another_client_or_out_of_range() {
    let s = Server::start().await;
    let fp = random_fingerprint();
    let c = s.register(&fp).await;
    let taken_fp = random_fingerprint();
    let d = s.register(&taken_fp).await;

    let msg = expect_validation(
        s.rotate_raw(&c, &json!({"fingerprint": taken_fp})).await,
        "fingerprint",
    )
    .await;
    assert!(
        !msg.contains(&taken_fp),
        "the message echoes the fingerprint: {msg}"
    );
    for bad in [
        json!({"fingerprint": "short"}),
        json!({"fingerprint": "x".repeat(257)}),
        json!({"fingerprint": 12345678}),
    ] {
        expect_validation(s.rotate_raw(&c, &bad).await, "fingerprint").await;
    }

    // Nothing changed: both clients keep their credentials and fingerprints.
    assert!(
        s.poll(&c, None, None).await.is_none(),
        "c's token still works"
    );
    assert!(
        s.poll(&d, None, None).await.is_none(),
        "d's token still works"
    );
    assert_eq!(s.register(&fp).await, c);
    assert_eq!(s.register(&taken_fp).await, d);

    // A refused rotation does not spoil a later one.
    let c2 = s.rotate(&c, None).await;
    assert_revoked(&s, &c, "old token").await;
    assert_eq!(s.register(&fp).await, c2);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_needs_the_clients_own_credentials() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let d = s.new_client().await;
    // Another client's id with this token, a made-up token, no headers.
    let mixed = Creds {
        client_id: d.client_id.clone(),
        ..c.clone()
    };
    expect_error(s.rotate_raw(&mixed, &json!({})).await, 401, "unauthorized").await;
    let forged = Creds {
        api_token: format!("pht_1_{}", "A".repeat(43)),
        ..c.clone()
    };
    expect_error(s.rotate_raw(&forged, &json!({})).await, 401, "unauthorized").await;
    let resp = s
        .request(Method::POST, &format!("{API}/clients/rotate"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "unauthorized").await;
    // The admin token is not a client credential either.
    let resp = s
        .request(Method::POST, &format!("{API}/clients/rotate"))
        .header("X-Admin-Token", s.admin_token())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "unauthorized").await;
    // Nothing rotated.
    assert!(s.poll(&c, None, None).await.is_none());
    assert!(s.poll(&d, None, None).await.is_none());
}

// ---------------------------------------------------------------------------
// Delete
// ---------------------------------------------------------------------------

/// Where the client's data is at rest, per table: on the embedded backend
/// the rows with its `client_id` in `clients`, `fingerprints`, `inbox` and
/// `outbox` of the SQLite file (read with Python's sqlite3: the tests crate
/// has no SQLite of its own, and a byte search of the file would still find
/// deleted rows in free pages and the WAL); on the aws backend the items of
/// the matching DynamoDB tables that mention the id.
async fn rows_of(s: &Server, client_id: &str) -> BTreeMap<String, u64> {
    match s.aws() {
        None => sqlite_rows_of(s, client_id),
        Some(aws) => {
            let t = aws.env.tables();
            let tables = [
                ("clients", &t.clients),
                ("fingerprints", &t.fingerprints),
                ("inbox", &t.messages),
                ("outbox", &t.client_messages),
            ];
            let items = s.data_at_rest().await;
            let needle = client_id.as_bytes();
            tables
                .iter()
                .map(|(what, name)| {
                    let prefix = format!("DynamoDB table {name}, item ");
                    let n = items
                        .iter()
                        .filter(|(place, bytes)| {
                            place.starts_with(&prefix)
                                && bytes.windows(needle.len()).any(|w| w == needle)
                        })
                        .count() as u64;
                    (what.to_string(), n)
                })
                .collect()
        }
    }
}

fn sqlite_rows_of(s: &Server, client_id: &str) -> BTreeMap<String, u64> {
    const SCRIPT: &str = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
print(json.dumps({t: db.execute("SELECT COUNT(*) FROM " + t + " WHERE client_id = ?", (sys.argv[2],)).fetchone()[0]
                  for t in ("clients", "fingerprints", "inbox", "outbox")}))
"#;
    let db = s.data_dir().join("pigeonhole.db");
    assert!(db.is_file(), "no database at {}", db.display());
    let python = std::env::var("PIGEONHOLE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&db)
        .arg(client_id)
        .output()
        .unwrap_or_else(|e| panic!("run {python} (to read the SQLite file): {e}"));
    assert!(
        out.status.success(),
        "{python} could not read {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{python} printed no counts ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_revokes_the_client_and_removes_its_data() {
    let s = Server::start().await;
    let fp = random_fingerprint();
    let doomed = s.register(&fp).await;
    let keeper = s.new_client().await;
    for n in 0..3 {
        s.publish(&[&doomed.client_id, &keeper.client_id], "note", json!(n))
            .await;
    }
    send_ok(&s, &doomed, json!("sent by the doomed client")).await;
    send_ok(&s, &keeper, json!("sent by the keeper")).await;
    assert_eq!(pending(&s, &doomed).await.len(), 3);

    // Control: the check below sees the data where it is kept.
    let before = rows_of(&s, &doomed.client_id).await;
    for (table, n) in &before {
        assert!(
            *n >= 1,
            "no {table} data for the client before the delete: {before:?}"
        );
    }

    // Only an operator token deletes.
    expect_error(
        s.delete_client_raw("not-an-operator-token", &doomed.client_id)
            .await,
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        s.delete_client_raw(s.admin_token(), &doomed.client_id)
            .await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        s.poll(&doomed, None, None).await.is_some(),
        "not deleted yet"
    );

    // The second operator token works as well as the first.
    let second = s.config.operator_tokens.as_ref().unwrap()[1].clone();
    let resp = s.delete_client_raw(&second, &doomed.client_id).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.unwrap().is_empty(), "204 has no body");

    // The token answers 401 at once.
    assert_revoked(&s, &doomed, "deleted client").await;

    // Again: 404.
    expect_error(
        s.delete_client_raw(s.operator_token(), &doomed.client_id)
            .await,
        404,
        "not_found",
    )
    .await;

    // Gone from the listing; the other client is still there.
    let (clients, _) = s.list_all_clients(100).await;
    let ids: Vec<&str> = clients.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![keeper.client_id.as_str()]);

    // Gone from the database: record, fingerprint entry, inbox, outbox.
    let after = rows_of(&s, &doomed.client_id).await;
    assert!(
        after.values().all(|n| *n == 0),
        "the deleted client's data is still at rest: {after:?}"
    );

    // The fingerprint registers a new client, with nothing in it.
    let (status, reborn) = s.register_status(&fp, None).await;
    assert_eq!(
        status, 201,
        "the fingerprint of a deleted client registers anew"
    );
    assert_ne!(reborn.client_id, doomed.client_id);
    assert_ne!(reborn.api_token, doomed.api_token);
    assert_ne!(reborn.personal_token, doomed.personal_token);
    assert!(s.poll(&reborn, None, None).await.is_none());
    assert_eq!(s.register(&fp).await, reborn);
    // The deleted client stays deleted.
    assert_revoked(
        &s,
        &doomed,
        "deleted client after its fingerprint re-registered",
    )
    .await;
    expect_error(
        s.delete_client_raw(s.operator_token(), &doomed.client_id)
            .await,
        404,
        "not_found",
    )
    .await;

    // The other client lost nothing.
    let kept = pending(&s, &keeper).await;
    assert_eq!(
        kept.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        vec![json!(0), json!(1), json!(2)]
    );
    let rows = rows_of(&s, &keeper.client_id).await;
    assert!(rows.values().all(|n| *n >= 1), "{rows:?}");

    // The listing now holds exactly the keeper and the re-registered client.
    let (clients, _) = s.list_all_clients(100).await;
    let mut ids: Vec<&str> = clients.iter().map(|c| c["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![keeper.client_id.as_str(), reborn.client_id.as_str()];
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_of_an_unknown_id_is_404() {
    let s = Server::start().await;
    let c = s.new_client().await;
    for id in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_string()] {
        expect_error(
            s.delete_client_raw(s.operator_token(), &id).await,
            404,
            "not_found",
        )
        .await;
    }
    // Nothing was deleted.
    assert!(s.poll(&c, None, None).await.is_none());
    let (clients, _) = s.list_all_clients(100).await;
    assert_eq!(clients.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_client_can_be_deleted() {
    let s = Server::start().await;
    let fp = random_fingerprint();
    let c1 = s.register(&fp).await;
    s.publish(&[&c1.client_id], "note", json!("x")).await;
    let c2 = s.rotate(&c1, None).await;
    s.delete_client(&c2.client_id).await;
    assert_revoked(&s, &c2, "rotated, then deleted").await;
    assert_revoked(&s, &c1, "retired, then deleted").await;
    let after = rows_of(&s, &c2.client_id).await;
    assert!(after.values().all(|n| *n == 0), "{after:?}");
    let (status, reborn) = s.register_status(&fp, None).await;
    assert_eq!(status, 201);
    assert_ne!(reborn.client_id, c2.client_id);
    let (clients, _) = s.list_all_clients(100).await;
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["id"], json!(reborn.client_id));
}
