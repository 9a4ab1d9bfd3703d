//! The size limits a user meets at the edges, over the real server on
//! either backend: a backlog of large messages comes in pages that fit
//! Lambda's response limit, and a publish to 10,000 recipients with a
//! 64 KiB payload is accepted and delivered, and each of 10,000 registered
//! clients gets a publish to all of them exactly once.

mod support;

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use support::*;

/// Lambda's synchronous responses stop at 6 MB; pages stay under 5 MiB.
const PAGE_LIMIT: usize = 5 * 1024 * 1024;

/// A payload of 64 KiB as compact JSON, the most a publish takes.
fn largest_payload(fill: char) -> Value {
    json!({ "blob": fill.to_string().repeat(64 * 1024 - r#"{"blob":""}"#.len()) })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_100_large_messages_comes_in_pages_under_5_mib() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let payload = largest_payload('x');
    assert_eq!(serde_json::to_vec(&payload).unwrap().len(), 64 * 1024);
    for _ in 0..100 {
        s.publish_nowait(&[&c.client_id], "blob", payload.clone())
            .await;
    }
    s.settle().await;

    let (mut cursor, mut pages) = (0u64, Vec::new());
    loop {
        let resp = s.poll_raw(&c, Some(cursor), Some(500)).await;
        if resp.status() == StatusCode::NO_CONTENT {
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = resp.bytes().await.expect("a poll body");
        pages.push(bytes.len());
        let body: Value = serde_json::from_slice(&bytes).expect("JSON");
        for m in messages_of(&body) {
            assert_eq!(m["id"].as_u64(), Some(cursor + 1), "contiguous pages");
            cursor += 1;
            assert_eq!(open_message(&c, &m)["payload"], payload);
        }
    }
    assert_eq!(cursor, 100, "the client reaches every message");
    assert!(pages.len() >= 2, "pages: {pages:?}");
    assert!(pages.iter().all(|b| *b <= PAGE_LIMIT), "pages: {pages:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_to_10000_recipients_with_a_64_kib_payload_is_delivered() {
    let s = Server::start().await;
    let a = s.new_client().await;
    let b = s.new_client().await;
    // Known clients at both ends, unknown ids between: the body is the
    // documented maximum, and the fan-out goes through every job.
    let mut to: Vec<String> = (0..10_000)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    to[0] = a.client_id.clone();
    to[9_999] = b.client_id.clone();
    let body = json!({ "to_client_ids": to, "type": "big", "payload": largest_payload('y') });
    assert!(serde_json::to_vec(&body).unwrap().len() > 256 * 1024);
    let resp = s.publish_raw(&body).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let published = json_body(resp).await;
    assert_eq!(published["recipients"], json!(10_000));
    s.settle().await;
    for c in [&a, &b] {
        let page = s.poll(c, None, None).await.expect("the message");
        let messages = messages_of(&page);
        assert_eq!(messages.len(), 1, "exactly once");
        assert_eq!(
            open_message(c, &messages[0])["payload"],
            largest_payload('y')
        );
    }

    // A body over 1 MiB is refused.
    let padded = json!({
        "to_client_ids": [a.client_id],
        "type": "big",
        "payload": { "pad": "p".repeat(1024 * 1024) },
    });
    expect_error(s.publish_raw(&padded).await, 413, "payload_too_large").await;
}

/// Runs `f` on every item, `AT_ONCE` at a time, and returns the results in
/// the items' order.
async fn in_parallel<T, R, F, Fut>(s: &Arc<Server>, items: Vec<T>, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Arc<Server>, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send,
{
    const AT_ONCE: usize = 32;
    let count = items.len();
    let queue = Arc::new(Mutex::new(
        items.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let f = Arc::new(f);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..AT_ONCE {
        let (s, queue, f) = (Arc::clone(s), Arc::clone(&queue), Arc::clone(&f));
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some((i, item)) = next else { break done };
                done.push((i, f(Arc::clone(&s), item).await));
            }
        });
    }
    let mut results: Vec<Option<R>> = (0..count).map(|_| None).collect();
    while let Some(done) = workers.join_next().await {
        for (i, r) in done.expect("a worker") {
            results[i] = Some(r);
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every item"))
        .collect()
}

/// The fan-out at the documented maximum with real recipients: 10,000
/// copies sealed, stored and polled, each exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn each_of_10000_registered_clients_gets_a_publish_to_all_exactly_once() {
    const CLIENTS: usize = 10_000;
    let s =
        Arc::new(Server::start_with(Config::default().with_env("REGISTER_RATE_LIMIT", "0")).await);
    let clients = in_parallel(&s, vec![(); CLIENTS], |s, ()| async move {
        s.new_client().await
    })
    .await;
    let to: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
    let payload = json!({"to": "everyone", "note": "n".repeat(1000)});
    let published = s.publish_nowait(&to, "fleet", payload.clone()).await;
    assert_eq!(published["recipients"], json!(CLIENTS));
    s.settle().await;

    let publish_id = published["publish_id"].as_str().unwrap();
    let status = s.publish_status(publish_id, "").await;
    assert_eq!(status["delivered"], json!(CLIENTS), "{status}");
    assert_eq!(status["unknown"], json!(0), "{status}");
    assert_eq!(status["state"], json!("done"), "{status}");

    let received = in_parallel(&s, clients, |s, c| async move {
        let page = s.poll(&c, None, None).await.expect("the publish");
        messages_of(&page)
            .iter()
            .map(|m| open_message(&c, m)["payload"].clone())
            .collect::<Vec<_>>()
    })
    .await;
    for copies in &received {
        assert_eq!(
            copies,
            std::slice::from_ref(&payload),
            "exactly one copy each"
        );
    }
}
