//! Durability: data survives `kill -9` and a clean Ctrl-C shutdown.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn everything_survives_kill_9_and_restart() {
    let mut s = Server::start().await;
    let fp = random_fingerprint();
    let (st, c) = s.register_status(&fp, Some("durable")).await;
    assert_eq!(st, 201);
    s.publish(&[&c.client_id], "first", json!({"n": 1})).await;
    s.publish(&[&c.client_id], "second", json!({"n": 2})).await;
    assert_eq!(s.ack(&c, 1).await, 1);
    let sent = send_body(&c, &json!({"type": "up", "payload": "hi"}), None);
    let resp = s.send_raw(&c, &sent).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(json_body(resp).await, json!({"id": 1}));

    let old_pid = s.pid().unwrap();
    s.kill9();
    s.restart().await;
    assert_ne!(s.pid().unwrap(), old_pid, "a new process serves");

    // Same credentials for the same fingerprint.
    let (st, c2) = s.register_status(&fp, None).await;
    assert_eq!(st, 200, "the client is remembered");
    assert_eq!(c2, c);

    // The acknowledged cursor survived: the default poll starts after 1.
    let body = s.poll(&c, None, None).await.expect("message 2 survives");
    let msgs = messages_of(&body);
    assert_eq!(ids_of(&msgs), vec![2]);
    assert_eq!(
        open_message(&c, &msgs[0]),
        json!({"type": "second", "payload": {"n": 2}})
    );
    // Both messages are still stored and decrypt.
    let all = messages_of(&s.poll(&c, Some(0), None).await.unwrap());
    assert_eq!(ids_of(&all), vec![1, 2]);
    assert_eq!(
        open_message(&c, &all[0]),
        json!({"type": "first", "payload": {"n": 1}})
    );
    // Ack durability: the cursor does not move back.
    assert_eq!(s.ack(&c, 0).await, 1);

    // The idempotency record of the send survived.
    let resp = s.send_raw(&c, &sent).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp).await, json!({"id": 1}));

    // Sequences continue, they do not restart.
    s.publish(&[&c.client_id], "third", json!({"n": 3})).await;
    let body = s.poll(&c, Some(2), None).await.unwrap();
    assert_eq!(ids_of(&messages_of(&body)), vec![3]);

    // The operator listing still knows the client by name.
    let (clients, _) = s.list_all_clients(100).await;
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["name"], json!("durable"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_shuts_down_cleanly_and_keeps_data() {
    let mut s = Server::start().await;
    let c = s.new_client().await;
    s.publish(&[&c.client_id], "kept", json!(true)).await;
    assert_eq!(s.ack(&c, 1).await, 1);

    let status = s
        .interrupt(Duration::from_secs(10))
        .expect("the server exits within 10 s of Ctrl-C");
    assert!(status.success(), "clean exit after Ctrl-C, got {status}");

    s.restart().await;
    assert!(s.poll(&c, None, None).await.is_none(), "cursor kept");
    let msgs = messages_of(&s.poll(&c, Some(0), None).await.unwrap());
    assert_eq!(open_message(&c, &msgs[0])["payload"], json!(true));
}
