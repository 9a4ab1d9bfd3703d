//! Periodic cleanup of acknowledged messages (ACKED_RETENTION_SECS).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// Poll with cursor=0 until `pred` holds on the stored ids or `timeout` passes.
async fn wait_for_ids(
    s: &Server,
    c: &Creds,
    timeout: Duration,
    pred: impl Fn(&[u64]) -> bool,
) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let ids = match s.poll(c, Some(0), Some(500)).await {
            None => Vec::new(),
            Some(b) => ids_of(&messages_of(&b)),
        };
        if pred(&ids) || Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_messages_are_removed_and_unacked_kept() {
    let s = Server::start_with(Config {
        acked_retention_secs: Some("0".into()),
        extra_args: vec!["--cleanup-interval-secs".into(), "1".into()],
        ..Config::default()
    })
    .await;
    let c = s.new_client().await;
    let other = s.new_client().await;
    for n in 1..=3 {
        s.publish(&[&c.client_id, &other.client_id], "m", json!(n))
            .await;
    }
    assert_eq!(s.ack(&c, 2).await, 2);

    // Within ~2.5 s (one or two cleanup runs) the acked ones are gone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ids = wait_for_ids(&s, &c, Duration::from_secs(5), |ids| ids == [3]).await;
    assert_eq!(ids, vec![3], "acked 1 and 2 cleaned, 3 kept");
    let m = messages_of(&s.poll(&c, None, None).await.unwrap());
    assert_eq!(open_message(&c, &m[0])["payload"], json!(3));

    // The other client acked nothing: all of its messages remain.
    let ids = ids_of(&messages_of(&s.poll(&other, Some(0), None).await.unwrap()));
    assert_eq!(ids, vec![1, 2, 3]);

    // Ack the rest; once cleaned, nothing is left.
    assert_eq!(s.ack(&c, 3).await, 3);
    let ids = wait_for_ids(&s, &c, Duration::from_secs(6), |ids| ids.is_empty()).await;
    assert_eq!(ids, Vec::<u64>::new(), "all acked messages cleaned");

    // Ids are never reused after cleanup: the next message is 4 and the
    // default poll (cursor 3) sees it.
    s.publish(&[&c.client_id], "after", json!("new")).await;
    let body = s.poll(&c, None, None).await.expect("new message visible");
    let m = messages_of(&body);
    assert_eq!(ids_of(&m), vec![4]);
    assert_eq!(
        open_message(&c, &m[0]),
        json!({"type": "after", "payload": "new"})
    );
    // The cursor is intact: acking an old id is still a no-op.
    assert_eq!(s.ack(&c, 1).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn default_retention_keeps_acknowledged_messages() {
    let s = Server::start_with(Config {
        extra_args: vec!["--cleanup-interval-secs".into(), "1".into()],
        ..Config::default()
    })
    .await;
    let c = s.new_client().await;
    s.publish(&[&c.client_id], "m", json!(1)).await;
    s.publish(&[&c.client_id], "m", json!(2)).await;
    assert_eq!(s.ack(&c, 2).await, 2);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ids = ids_of(&messages_of(&s.poll(&c, Some(0), None).await.unwrap()));
    assert_eq!(
        ids,
        vec![1, 2],
        "within the retention period nothing is removed"
    );
}
