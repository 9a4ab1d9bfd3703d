//! Publish, poll, decrypt, ack: the server-to-client path.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn publish_poll_decrypt_ack_roundtrip() {
    let s = Server::start().await;
    let c = s.new_client().await;

    // Nothing yet: 204 with an empty body, answered at once.
    let t0 = Instant::now();
    assert!(s.poll(&c, None, None).await.is_none());
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "an empty poll must answer at once, took {:?}",
        t0.elapsed()
    );

    let payload = json!({"text": "héllo wörld ✓", "n": 42, "nested": {"a": [1, 2, null]}});
    let p = s
        .publish(&[&c.client_id], "greeting", payload.clone())
        .await;
    assert_keys(&p, &["publish_id", "recipients"]);
    uuid::Uuid::parse_str(p["publish_id"].as_str().expect("publish_id string"))
        .expect("publish_id is a UUID");
    assert_eq!(p["recipients"], json!(1));

    let body = s.poll(&c, None, None).await.expect("a message");
    let msgs = messages_of(&body);
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m["id"], json!(1), "the first message of a client has id 1");
    assert_eq!(m["type"], json!("greeting"));
    let pt = open_message(&c, m);
    assert_eq!(pt, json!({"type": "greeting", "payload": payload}));

    // Another client's key does not open it.
    let other = s.new_client().await;
    assert!(
        decrypt_parts(
            &other.key(),
            m["ciphertext"].as_str().unwrap(),
            m["nonce"].as_str().unwrap(),
            m["tag"].as_str().unwrap(),
            canonical_json(&m["aad"]).as_bytes(),
        )
        .is_none(),
        "a message must not decrypt under another client's key"
    );
    // The aad binds the position: a different id in the aad fails.
    let mut moved = m["aad"].clone();
    moved["id"] = json!(2);
    assert!(decrypt_parts(
        &c.key(),
        m["ciphertext"].as_str().unwrap(),
        m["nonce"].as_str().unwrap(),
        m["tag"].as_str().unwrap(),
        canonical_json(&moved).as_bytes(),
    )
    .is_none());

    // Polling again without ack returns the same message (the cursor did not move).
    let again = s
        .poll(&c, None, None)
        .await
        .expect("still there before ack");
    assert_eq!(ids_of(&messages_of(&again)), vec![1]);

    assert_eq!(s.ack(&c, 1).await, 1);
    assert!(s.poll(&c, None, None).await.is_none(), "204 after ack");

    // An explicit cursor still reaches acknowledged (not yet cleaned) messages.
    let replay = s
        .poll(&c, Some(0), None)
        .await
        .expect("replay with cursor=0");
    assert_eq!(ids_of(&messages_of(&replay)), vec![1]);
    assert_eq!(
        open_message(&c, &messages_of(&replay)[0])["payload"],
        payload
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn payloads_of_every_json_kind_roundtrip() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let payloads = [
        json!(null),
        json!(true),
        json!(0),
        json!(-12.5),
        json!("plain string with \"quotes\" and \\ and \n and 日本語"),
        json!([1, "two", {"three": 3}]),
        json!({}),
        json!({"deep": {"deeper": {"deepest": [[], {}]}}}),
    ];
    for (i, p) in payloads.iter().enumerate() {
        s.publish(&[&c.client_id], &format!("kind-{i}"), p.clone())
            .await;
    }
    let body = s.poll(&c, None, None).await.expect("messages");
    let msgs = messages_of(&body);
    assert_eq!(msgs.len(), payloads.len());
    for (i, m) in msgs.iter().enumerate() {
        let pt = open_message(&c, m);
        assert_eq!(pt["type"], json!(format!("kind-{i}")));
        assert_eq!(pt["payload"], payloads[i], "payload {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_with_cursor_and_limit_pages_through_messages() {
    let s = Server::start().await;
    let c = s.new_client().await;
    for n in 1..=5 {
        s.publish(&[&c.client_id], "seq", json!({ "n": n })).await;
    }
    let page = |b: Option<Value>| messages_of(&b.expect("a page"));

    let p1 = page(s.poll(&c, None, Some(2)).await);
    assert_eq!(ids_of(&p1), vec![1, 2]);
    let p2 = page(s.poll(&c, Some(2), Some(2)).await);
    assert_eq!(ids_of(&p2), vec![3, 4]);
    let p3 = page(s.poll(&c, Some(4), Some(2)).await);
    assert_eq!(ids_of(&p3), vec![5]);
    assert!(s.poll(&c, Some(5), Some(2)).await.is_none());
    assert!(s.poll(&c, Some(99), None).await.is_none());

    for (m, n) in p1.iter().chain(&p2).chain(&p3).zip(1..) {
        assert_eq!(open_message(&c, m)["payload"], json!({ "n": n }));
    }

    // Default limit returns all five; limit=500 is accepted.
    assert_eq!(
        ids_of(&page(s.poll(&c, None, None).await)),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        ids_of(&page(s.poll(&c, Some(1), Some(500)).await)),
        vec![2, 3, 4, 5]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn default_limit_is_100() {
    let s = Server::start().await;
    let c = s.new_client().await;
    for n in 0..105 {
        s.publish(&[&c.client_id], "bulk", json!(n)).await;
    }
    let body = s.poll(&c, None, None).await.expect("messages");
    let msgs = messages_of(&body);
    assert_eq!(msgs.len(), 100);
    assert_eq!(body["next_cursor"], json!(100));
    let rest = messages_of(&s.poll(&c, Some(100), None).await.unwrap());
    assert_eq!(ids_of(&rest), vec![101, 102, 103, 104, 105]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_moves_cursor_forward_only() {
    let s = Server::start().await;
    let c = s.new_client().await;
    for n in 1..=5 {
        s.publish(&[&c.client_id], "seq", json!(n)).await;
    }
    assert_eq!(s.ack(&c, 3).await, 3);
    // Default poll continues from the acknowledged cursor.
    let body = s.poll(&c, None, None).await.unwrap();
    assert_eq!(ids_of(&messages_of(&body)), vec![4, 5]);

    // Acking an older id is a no-op returning the current cursor.
    assert_eq!(s.ack(&c, 1).await, 3);
    assert_eq!(s.ack(&c, 0).await, 3);
    assert_eq!(s.ack(&c, 3).await, 3);
    let body = s.poll(&c, None, None).await.unwrap();
    assert_eq!(ids_of(&messages_of(&body)), vec![4, 5]);

    // Acking beyond the newest message is rejected and does not move the cursor.
    let resp = s.ack_raw(&c, &json!({"last_received_id": 6})).await;
    expect_validation(resp, "last_received_id").await;
    let resp = s.ack_raw(&c, &json!({"last_received_id": 1000})).await;
    expect_error(resp, 422, "validation_failed").await;
    assert_eq!(s.ack(&c, 2).await, 3);

    assert_eq!(s.ack(&c, 5).await, 5);
    assert!(s.poll(&c, None, None).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_beyond_newest_is_rejected_for_a_client_without_messages() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let resp = s.ack_raw(&c, &json!({"last_received_id": 1})).await;
    expect_validation(resp, "last_received_id").await;
    // Messages of another client do not count.
    let other = s.new_client().await;
    s.publish(&[&other.client_id], "x", json!(1)).await;
    s.publish(&[&other.client_id], "x", json!(2)).await;
    let resp = s.ack_raw(&c, &json!({"last_received_id": 1})).await;
    expect_validation(resp, "last_received_id").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_fans_out_to_distinct_known_recipients() {
    let s = Server::start().await;
    let a = s.new_client().await;
    let b = s.new_client().await;
    let c = s.new_client().await;
    let unknown = uuid::Uuid::new_v4().to_string();

    let p = s
        .publish(
            &[&a.client_id, &b.client_id, &a.client_id, &unknown],
            "fanout",
            json!({"hello": "all"}),
        )
        .await;
    // Distinct ids requested, including the unknown one.
    assert_eq!(p["recipients"], json!(3));

    for cl in [&a, &b] {
        let msgs = messages_of(&s.poll(cl, None, None).await.expect("delivered"));
        assert_eq!(msgs.len(), 1, "duplicates in to_client_ids are ignored");
        assert_eq!(msgs[0]["id"], json!(1), "per-client ids start at 1");
        assert_eq!(
            open_message(cl, &msgs[0]),
            json!({"type": "fanout", "payload": {"hello": "all"}})
        );
    }
    assert!(
        s.poll(&c, None, None).await.is_none(),
        "a client not addressed gets nothing"
    );

    // Per-client sequences are independent.
    s.publish(&[&b.client_id], "only-b", json!(2)).await;
    s.publish(&[&a.client_id, &b.client_id], "both", json!(3))
        .await;
    let a_ids = ids_of(&messages_of(&s.poll(&a, None, None).await.unwrap()));
    let b_ids = ids_of(&messages_of(&s.poll(&b, None, None).await.unwrap()));
    assert_eq!(a_ids, vec![1, 2]);
    assert_eq!(b_ids, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_boundaries_are_accepted() {
    let s = Server::start().await;
    let c = s.new_client().await;
    // type of 64 chars, a payload just under 64 KiB, null payload.
    let t64 = "t".repeat(64);
    s.publish(&[&c.client_id], &t64, json!(null)).await;
    let big = "x".repeat(60 * 1024);
    s.publish(&[&c.client_id], "big", json!(big)).await;
    let msgs = messages_of(&s.poll(&c, None, None).await.unwrap());
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        open_message(&c, &msgs[0]),
        json!({"type": t64, "payload": null})
    );
    assert_eq!(open_message(&c, &msgs[1])["payload"], json!(big));

    // Many recipients in one publish (mostly unknown ids).
    let mut ids: Vec<String> = (0..2000)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    ids.push(c.client_id.clone());
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let p = s.publish(&refs, "many", json!(1)).await;
    assert_eq!(p["recipients"], json!(2001));
    let msgs = messages_of(&s.poll(&c, Some(2), None).await.unwrap());
    assert_eq!(ids_of(&msgs), vec![3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn poll_response_is_json_with_exact_shape() {
    let s = Server::start().await;
    let c = s.new_client().await;
    s.publish(&[&c.client_id], "t", json!({"k": "v"})).await;
    let resp = s.poll_raw(&c, None, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json_body(resp).await;
    assert_keys(&body, &["messages", "next_cursor"]);
    assert!(body["next_cursor"].is_u64(), "next_cursor is an integer");
    let m = &body["messages"][0];
    assert!(m["id"].is_u64(), "id is an integer");
    assert!(m["aad"]["id"].is_u64(), "aad.id is an integer");
    open_message(&c, m);
}
