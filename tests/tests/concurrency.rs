//! Several publishers writing to one client while a poller acks everything it
//! sees: every message must arrive exactly once, in strictly increasing id
//! order, none skipped by the cursor. On the aws backend the publishers' jobs
//! go through SQS and the fan-out writes to DynamoDB while the poller reads
//! and acks.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const PUBLISHERS: u64 = 8;
const PER_PUBLISHER: u64 = 50;
const TOTAL: usize = (PUBLISHERS * PER_PUBLISHER) as usize;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_and_acking_poller_lose_nothing() {
    let s = Arc::new(
        Server::start_with(Config {
            poll_rate_limit: Some("1000000".into()),
            ..Config::default()
        })
        .await,
    );
    let c = s.new_client().await;
    let started = Instant::now();
    // On the aws backend each fan-out is a TransactWriteItems, and moto
    // copies the whole messages table for every one (to roll back a failed
    // transaction), so the run grows quadratically with the inbox: 50-75 s
    // for these 400 messages on moto, against 1 s on the embedded store.
    let budget = match s.backend() {
        Backend::Embedded => Duration::from_secs(60),
        Backend::Aws => Duration::from_secs(180),
    };
    let deadline = started + 2 * budget;
    let publishers_done = Arc::new(AtomicUsize::new(0));

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let s = s.clone();
        let to = c.client_id.clone();
        let done = publishers_done.clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..PER_PUBLISHER {
                // Not `publish`: that would wait for the fan-out each time.
                let v = s
                    .publish_nowait(&[&to], "load", json!({"publisher": p, "n": n}))
                    .await;
                assert_eq!(v["recipients"], json!(1));
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }

    let poller = {
        let s = s.clone();
        let c = c.clone();
        let done = publishers_done.clone();
        tokio::spawn(async move {
            let mut last_id = 0u64;
            let mut seen_ids = Vec::with_capacity(TOTAL);
            let mut pairs = BTreeSet::new();
            let mut polls = 0usize;
            let mut busy_polls_while_publishing = 0usize;
            let mut empty_after_done = 0usize;
            while seen_ids.len() < TOTAL && Instant::now() < deadline {
                polls += 1;
                let Some(body) = s.poll(&c, None, None).await else {
                    // Once every publisher is done and the fan-out has
                    // finished (locally it does before publish answers 202;
                    // on the aws backend the fan-out queue must be empty),
                    // polls that come back empty mean whatever is missing
                    // was skipped for good. The poller keeps polling and
                    // acking while the fan-out still writes.
                    if done.load(Ordering::SeqCst) == PUBLISHERS as usize
                        && s.fanout_pending().await == 0
                    {
                        empty_after_done += 1;
                        if empty_after_done >= 3 {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                empty_after_done = 0;
                let msgs = messages_of(&body);
                if done.load(Ordering::SeqCst) < PUBLISHERS as usize {
                    busy_polls_while_publishing += 1;
                }
                for m in &msgs {
                    let id = m["id"].as_u64().unwrap();
                    assert!(
                        id > last_id,
                        "id {id} delivered after {last_id}: a lower id became visible after a higher one was returned"
                    );
                    last_id = id;
                    let pt = open_message(&c, m);
                    assert_eq!(pt["type"], json!("load"));
                    let p = pt["payload"]["publisher"].as_u64().expect("publisher");
                    let n = pt["payload"]["n"].as_u64().expect("n");
                    assert!(p < PUBLISHERS && n < PER_PUBLISHER, "bogus payload {pt}");
                    assert!(pairs.insert((p, n)), "({p}, {n}) delivered twice");
                    seen_ids.push(id);
                }
                let next = body["next_cursor"].as_u64().unwrap();
                assert_eq!(s.ack(&c, next).await, next, "ack moves the cursor");
            }
            // Once every publisher has finished and everything was acked,
            // there is nothing more to see.
            while done.load(Ordering::SeqCst) < PUBLISHERS as usize && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // A duplicate from a late fan-out would show up here.
            s.settle().await;
            let extra = s.poll(&c, None, None).await;
            assert!(
                extra.is_none(),
                "messages beyond the {TOTAL} published: {extra:?}"
            );
            (seen_ids, pairs, polls, busy_polls_while_publishing)
        })
    };

    for p in publishers {
        p.await.expect("publisher task");
    }
    let publish_time = started.elapsed();
    let (seen_ids, pairs, polls, busy) = poller.await.expect("poller task");
    let total_time = started.elapsed();

    assert_eq!(
        seen_ids.len(),
        TOTAL,
        "received {} of {TOTAL} messages (the rest were skipped by the cursor or lost)",
        seen_ids.len()
    );
    assert!(seen_ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(pairs.len(), TOTAL, "every (publisher, n) exactly once");
    for p in 0..PUBLISHERS {
        for n in 0..PER_PUBLISHER {
            assert!(pairs.contains(&(p, n)), "({p}, {n}) never delivered");
        }
    }

    // What is stored is exactly what the poller saw: nothing was hidden
    // behind the cursor.
    let replay = messages_of(&s.poll(&c, Some(0), Some(500)).await.unwrap());
    assert_eq!(ids_of(&replay), seen_ids);

    // The test only proves something if polling overlapped publishing.
    assert!(
        busy >= 3,
        "only {busy} non-empty polls happened while publishers were running"
    );
    eprintln!(
        "concurrency: {TOTAL} messages, {polls} polls ({busy} non-empty during publishing), publishing took {publish_time:?}, total {total_time:?}"
    );
    assert!(
        total_time < budget,
        "too slow: {total_time:?} (budget {budget:?})"
    );
}
