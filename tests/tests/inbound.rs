//! The inbound queue: on AWS every message a client sends is also
//! announced on a FIFO queue as `{"client_id", "id", "type", "created_at"}`
//! (no payload), once, in each client's order.
//!
//! - End to end (`PIGEONHOLE_E2E_BACKEND=aws` only; on the embedded backend
//!   these say they are skipped, since the embedded server has no inbound
//!   queue): the local server in `--backend aws` mode gets
//!   `INBOUND_QUEUE_URL` from infra, as the send function does from the
//!   template; the test reads the queue with the SDK.
//! - The queue infra creates from template.yaml and the `SqsInbound`
//!   adapter, on the emulator directly (any backend, like sqs_queue.rs).

mod support;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use pigeonhole::clock::Timestamp;
use pigeonhole::domain::ClientId;
use pigeonhole::queue::{Inbound, QueueError, SentNotice, SqsInbound};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::aws_support;
use support::*;

/// On the embedded backend the end-to-end tests have nothing to check:
/// say so rather than pass quietly.
fn skipped_on_embedded(test: &str) -> bool {
    if backend() == Backend::Aws {
        return false;
    }
    eprintln!(
        "skipped: {test} needs {BACKEND_VAR}=aws (the embedded server has no inbound \
         queue: notifications are an AWS feature)"
    );
    true
}

/// One message received from the inbound queue.
#[derive(Debug)]
struct Received {
    body: Value,
    group: String,
    dedup: String,
}

/// Receives (and deletes) until `expected` messages came back, then makes
/// sure nothing else follows: two empty receives in a row.
async fn drain(sqs: &aws_sdk_sqs::Client, url: &str, expected: usize) -> Vec<Received> {
    let mut out = Vec::new();
    let mut empty = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected || empty < 2 {
        assert!(
            Instant::now() < deadline,
            "{url}: {} of {expected} notices after a minute: {out:?}",
            out.len()
        );
        let answer = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "ReceiveMessage {url}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            });
        let messages = answer.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in messages {
            let attributes = m.attributes.clone().unwrap_or_default();
            let attribute = |name: MessageSystemAttributeName| {
                attributes.get(&name).cloned().unwrap_or_default()
            };
            out.push(Received {
                body: serde_json::from_str(m.body().expect("a body")).expect("a notice is JSON"),
                group: attribute(MessageSystemAttributeName::MessageGroupId),
                dedup: attribute(MessageSystemAttributeName::MessageDeduplicationId),
            });
            // Deleted one by one, in order: a FIFO queue hands out the
            // rest of a group only once what it handed out is done.
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().expect("a receipt handle"))
                .send()
                .await
                .expect("DeleteMessage");
        }
    }
    out
}

async fn send(s: &Server, c: &Creds, body: &Value, status: StatusCode) -> u64 {
    let resp = s.send_raw(c, body).await;
    assert_eq!(resp.status(), status);
    json_body(resp).await["id"].as_u64().expect("an id")
}

/// `created_at` of each message the admin reads back, by id.
async fn sent_created_at(s: &Server, c: &Creds) -> HashMap<u64, String> {
    let resp = s
        .request(Method::GET, &format!("{API}/clients/{}/sent", c.client_id))
        .header("x-admin-token", s.admin_token())
        .send()
        .await
        .expect("sent request");
    assert_eq!(resp.status(), StatusCode::OK);
    json_body(resp).await["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["created_at"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_send_is_announced_once_in_order_without_its_payload() {
    if skipped_on_embedded("each_send_is_announced_once_in_order_without_its_payload") {
        return;
    }
    let s = Server::start().await;
    let aws = s.aws().expect("the aws backend");
    let url = aws.env.provisioned.inbound_queue_url.clone();
    assert!(url.ends_with("inbound.fifo"), "{url}");
    let c = s.new_client().await;
    let other = s.new_client().await;

    let first = send_body(
        &c,
        &json!({"type": "battery", "payload": {"level": 87, "secret": "payload-1"}}),
        None,
    );
    let second = send_body(
        &c,
        &json!({"type": "door", "payload": "payload-2"}),
        Some(&json!({"client_id": c.client_id})),
    );
    assert_eq!(send(&s, &c, &first, StatusCode::CREATED).await, 1);
    assert_eq!(send(&s, &c, &second, StatusCode::CREATED).await, 2);
    let others = send_body(&other, &json!({"type": "x", "payload": null}), None);
    assert_eq!(send(&s, &other, &others, StatusCode::CREATED).await, 1);
    // Retries of both sends (the same nonce and body): the original ids,
    // and no further notice.
    assert_eq!(send(&s, &c, &second, StatusCode::OK).await, 2);
    assert_eq!(send(&s, &c, &first, StatusCode::OK).await, 1);

    let received = drain(&aws.sqs, &url, 3).await;
    assert_eq!(
        received.len(),
        3,
        "one notice per stored send: {received:?}"
    );
    let (mine, theirs): (Vec<&Received>, Vec<&Received>) = received
        .iter()
        .partition(|r| r.body["client_id"] == json!(c.client_id));
    assert_eq!(theirs.len(), 1, "{received:?}");
    assert_eq!(theirs[0].body["id"], 1);
    assert_eq!(theirs[0].group, other.client_id);

    let created = sent_created_at(&s, &c).await;
    assert_eq!(mine.len(), 2, "exactly 2 notices for 2 sends: {received:?}");
    for (r, (id, kind)) in mine.iter().zip([(1u64, "battery"), (2, "door")]) {
        assert_keys(&r.body, &["client_id", "created_at", "id", "type"]);
        assert_eq!(r.body["id"], json!(id), "in the order sent: {received:?}");
        assert_eq!(r.body["type"], kind);
        assert_eq!(
            r.body["created_at"].as_str(),
            Some(created[&id].as_str()),
            "the stored message's created_at"
        );
        assert!(!r.body.to_string().contains("payload"), "{}", r.body);
        assert_eq!(r.group, c.client_id, "one message group per client");
        assert_eq!(r.dedup, format!("{}:{id}", c.client_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_inbound_queue_url_sends_announce_nothing() {
    if skipped_on_embedded("without_an_inbound_queue_url_sends_announce_nothing") {
        return;
    }
    // What a stack with InboundNotifications=Disabled gives the send
    // function: no INBOUND_QUEUE_URL (blank counts as unset).
    let s = Server::start_with(Config {
        extra_env: vec![(pigeonhole::aws::INBOUND_QUEUE_URL.into(), String::new())],
        ..Config::default()
    })
    .await;
    let aws = s.aws().expect("the aws backend");
    let c = s.new_client().await;
    let body = send_body(&c, &json!({"type": "t", "payload": 1}), None);
    assert_eq!(send(&s, &c, &body, StatusCode::CREATED).await, 1);
    assert_eq!(send(&s, &c, &body, StatusCode::OK).await, 1);
    let received = drain(&aws.sqs, &aws.env.provisioned.inbound_queue_url, 0).await;
    assert!(received.is_empty(), "{received:?}");
}

/// What infra makes of template.yaml's InboundQueue: a FIFO queue named
/// `….fifo` with per-client deduplication and throughput, and the same
/// queue again when infra runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_creates_the_inbound_queue_as_a_fifo_queue() {
    let env = aws_support::fresh_env().await;
    let url = &env.provisioned.inbound_queue_url;
    let prefix = env
        .tables()
        .clients
        .strip_suffix("clients")
        .expect("tables are named <prefix>clients")
        .to_string();
    assert!(url.ends_with(&format!("/{prefix}inbound.fifo")), "{url}");
    assert!(env
        .provisioned
        .env_lines()
        .contains(&format!("INBOUND_QUEUE_URL={url}")));

    let attributes = env
        .sqs()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default();
    let attribute = |name: QueueAttributeName| attributes.get(&name).map(String::as_str);
    assert_eq!(attribute(QueueAttributeName::FifoQueue), Some("true"));
    assert_eq!(
        attribute(QueueAttributeName::ContentBasedDeduplication),
        Some("false")
    );
    assert_eq!(
        attribute(QueueAttributeName::DeduplicationScope),
        Some("messageGroup")
    );
    assert_eq!(
        attribute(QueueAttributeName::FifoThroughputLimit),
        Some("perMessageGroupId")
    );
    assert_eq!(
        attribute(QueueAttributeName::MessageRetentionPeriod),
        Some("345600")
    );

    // Again over the existing queue (SQS refuses FifoQueue in
    // SetQueueAttributes: infra leaves it out there).
    let again = pigeonhole_infra::apply(&env.sdk, &aws_support::plan(), &prefix)
        .await
        .expect("a second run succeeds");
    assert_eq!(&again.inbound_queue_url, url);
    assert_eq!(again.env_lines(), env.provisioned.env_lines());
}

/// The adapter on that queue: a notice sent twice (a retried send, a
/// retried request) is received once; each client's notices in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_adapter_announces_each_message_once() {
    let env = aws_support::fresh_env().await;
    let url = &env.provisioned.inbound_queue_url;
    let inbound = SqsInbound::new(env.sqs(), url.as_str());
    let (a, b) = (ClientId::new(), ClientId::new());
    let notice = |client, id, kind: &str| SentNotice {
        client_id: client,
        id,
        kind: kind.into(),
        created_at: Timestamp(1_764_000_000_000 + id as i64),
    };
    for n in [
        notice(a, 1, "battery"),
        notice(b, 1, "door"),
        notice(a, 1, "battery"),
        notice(a, 2, "door"),
        notice(a, 3, "battery"),
        notice(a, 2, "door"),
    ] {
        inbound.notify(n).await.expect("notify");
    }
    let received = drain(&env.sqs(), url, 4).await;
    assert_eq!(received.len(), 4, "{received:?}");
    let of = |client: ClientId| -> Vec<SentNotice> {
        received
            .iter()
            .filter(|r| r.group == client.to_string())
            .map(|r| SentNotice::from_json(&r.body.to_string()).expect("a notice"))
            .collect()
    };
    assert_eq!(
        of(a),
        vec![
            notice(a, 1, "battery"),
            notice(a, 2, "door"),
            notice(a, 3, "battery")
        ]
    );
    assert_eq!(of(b), vec![notice(b, 1, "door")]);

    // A queue that is not there is a refusal, not something to retry for
    // the whole request budget.
    let missing = SqsInbound::new(env.sqs(), url.replace("inbound.fifo", "missing.fifo"));
    let started = Instant::now();
    match missing.notify(notice(a, 4, "t")).await {
        Err(QueueError::Refused(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "retried a refusal"
    );
}
