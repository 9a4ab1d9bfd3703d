//! The DynamoDB store on moto (over real HTTP), held to the same store
//! contract as every adapter. Then the tests the contract cannot express:
//! the rate limit's compare-and-set under concurrent polls, redelivered
//! fan-out jobs racing each other, and how many DynamoDB requests each
//! store call costs.

#[path = "../../shared/tests/store_contract/mod.rs"]
#[macro_use]
mod store_contract;

mod aws_support;

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use pigeonhole::clock::Timestamp;
use pigeonhole::crypto::{seal, Key};
use pigeonhole::domain::{ClientId, Seq};
use pigeonhole::rate_limit::PollRateLimit;
use pigeonhole::store::dynamodb::DynamoStore;
use pigeonhole::store::*;
use std::sync::{Arc, Mutex};
use store_contract::Subject;

async fn fresh_dynamo_store() -> Subject {
    let env = aws_support::fresh_env().await;
    let store = DynamoStore::new(env.dynamodb(), env.tables().clone());
    Subject {
        store: Arc::new(store),
        _keep: Box::new(()),
    }
}

store_contract_tests!(fresh_dynamo_store());

const T0: Timestamp = Timestamp(1_764_000_000_000);

async fn register(store: &dyn Store, fingerprint: u8) -> ClientId {
    store
        .register_client(
            [fingerprint; 32],
            store_contract::client("dynamo", Timestamp(T0.millis() - 1)),
        )
        .await
        .unwrap()
        .client
        .id
}

fn sealer(kind: &str) -> Sealer {
    let kind = kind.to_string();
    let key = Key::from_bytes([5; 32]);
    Arc::new(move |seq: Seq| {
        Ok(NewMessage {
            kind: kind.clone(),
            body: seal(&key, &seq.to_be_bytes(), b""),
            created_at: T0,
        })
    })
}

fn publish_dedup(publish_id: &str) -> Dedup {
    Dedup {
        key: format!("publish:{publish_id}"),
        digest: [publish_id.len() as u8; 32],
    }
}

async fn client_item(
    env: &aws_support::AwsEnv,
    id: ClientId,
) -> std::collections::HashMap<String, AttributeValue> {
    env.dynamodb()
        .get_item()
        .table_name(&env.tables().clients)
        .key("client_id", AttributeValue::S(id.to_string()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("the client item exists")
}

fn number(item: &std::collections::HashMap<String, AttributeValue>, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("attribute {name} is not a number in {item:?}"))
}

/// Many polls at once against a limit of K allow exactly K. That holds both
/// when the bucket starts full (the first-guess update) and when it is
/// partly drained (the compare-and-set on `poll_tat`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_polls_are_allowed_exactly_up_to_the_limit() {
    const POLLS: usize = 24;
    let env = aws_support::fresh_env().await;
    let store = Arc::new(DynamoStore::new(env.dynamodb(), env.tables().clone()));
    let id = register(store.as_ref(), 1).await;
    // Six a minute: one slot refills every ten seconds.
    let limit = PollRateLimit::per_minute(6);

    let burst = |now: Timestamp| {
        let store = store.clone();
        async move {
            let polls: Vec<_> = (0..POLLS)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move { store.touch_client(id, now, limit).await })
                })
                .collect();
            let (mut allowed, mut refused) = (0, 0);
            for poll in polls {
                match poll.await.unwrap().unwrap() {
                    Touch::Known(_) => allowed += 1,
                    Touch::RateLimited { .. } => refused += 1,
                    Touch::UnknownClient => panic!("the client exists"),
                }
            }
            (allowed, refused)
        }
    };

    assert_eq!(burst(T0).await, (6, POLLS - 6), "a full bucket allows 6");
    let item = client_item(&env, id).await;
    assert_eq!(number(&item, "poll_tat"), T0.millis() + 60_000);
    assert_eq!(number(&item, "last_seen_at"), T0.millis());

    // Thirty seconds on, three slots have refilled and the stored TAT is
    // still in the future, so every poll goes through the compare-and-set.
    let later = T0.plus_millis(30_000);
    assert_eq!(
        burst(later).await,
        (3, POLLS - 3),
        "a half-refilled bucket allows 3"
    );
    let item = client_item(&env, id).await;
    assert_eq!(number(&item, "poll_tat"), later.millis() + 60_000);
    assert_eq!(number(&item, "last_seen_at"), later.millis());
}

/// SQS delivers at least once, and two copies of a fan-out job can run at
/// the same time. Deliveries of the same publish that race each other (and
/// other publishes) store one message, and every copy reports its number.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_redeliveries_of_a_fanout_job_store_one_message() {
    const REDELIVERIES: usize = 8;
    const OTHERS: usize = 6;
    let env = aws_support::fresh_env().await;
    let store = Arc::new(DynamoStore::new(env.dynamodb(), env.tables().clone()));
    let id = register(store.as_ref(), 2).await;

    // Interleaved: redelivered, other-0, redelivered, other-1, ...
    let mut publishes = Vec::new();
    for i in 0..REDELIVERIES.max(OTHERS) {
        if i < REDELIVERIES {
            publishes.push("redelivered".to_string());
        }
        if i < OTHERS {
            publishes.push(format!("other-{i}"));
        }
    }
    let mut tasks = Vec::new();
    for publish in publishes {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let appended = store
                .append(Mailbox::Inbox, id, publish_dedup(&publish), sealer("event"))
                .await
                .unwrap();
            (publish, appended)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let redelivered: Vec<Appended> = results
        .iter()
        .filter(|(p, _)| p == "redelivered")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(redelivered.len(), REDELIVERIES);
    let stored: Vec<Seq> = redelivered
        .iter()
        .filter_map(|a| match a {
            Appended::Stored { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(stored.len(), 1, "one copy is stored: {redelivered:?}");
    let seq = stored[0];
    for a in &redelivered {
        assert!(
            *a == Appended::Stored { seq }
                || *a
                    == Appended::Duplicate {
                        seq,
                        same_content: true
                    },
            "{a:?}"
        );
    }
    let others = results.len() - REDELIVERIES;
    let messages = store.read(Mailbox::Inbox, id, 0, 100).await.unwrap();
    assert_eq!(
        messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=(1 + others) as Seq).collect::<Vec<_>>(),
        "one message per publish, numbered without gaps"
    );

    // The markers that make this work expire by TTL on the attribute that
    // template.yaml (through infra) enables on the dedup table, and only
    // after any SQS redelivery could still arrive (14 days at most).
    let ttl = env
        .dynamodb()
        .describe_time_to_live()
        .table_name(&env.tables().dedup)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .expect("a TTL description");
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
    let ttl_attribute = ttl.attribute_name().expect("a TTL attribute").to_string();
    let markers = env
        .dynamodb()
        .scan()
        .table_name(&env.tables().dedup)
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(markers.len(), 1 + others, "one marker per publish");
    let marker = markers
        .iter()
        .find(|m| number(m, "seq") == seq as i64)
        .expect("the redelivered publish's marker");
    let expires = number(marker, &ttl_attribute);
    let created_secs = T0.millis() / 1000;
    assert!(
        expires > created_secs + 14 * 24 * 3600,
        "the marker expires at {expires}, before a redelivery could arrive"
    );
}

/// Counts the DynamoDB requests a client sends (every attempt, retries
/// included), by the operation in their `X-Amz-Target` header.
#[derive(Debug, Default, Clone)]
struct RequestLog(Arc<Mutex<Vec<String>>>);

impl RequestLog {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("?");
        let operation = target.rsplit('.').next().unwrap_or(target).to_string();
        self.0.lock().unwrap().push(operation);
        Ok(())
    }
}

/// What each store call costs in DynamoDB requests, as the issue asks to
/// keep minimal: an empty poll is one request (`touch_client`), a poll with
/// messages is two (plus `read`). The poll rows carry the rate limit, the
/// last-seen update and authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_store_call_costs_the_expected_dynamodb_requests() {
    let env = aws_support::fresh_env().await;
    let log = RequestLog::default();
    let config = aws_sdk_dynamodb::config::Builder::from(&env.sdk)
        .interceptor(log.clone())
        .build();
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        env.tables().clone(),
    );
    let limit = PollRateLimit::per_minute(60); // one slot a second
    let ops = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let id = register(&store, 3).await;
    assert_eq!(log.take(), ops(&["TransactWriteItems"]), "register");

    let touch = store.touch_client(id, T0, limit).await.unwrap();
    assert!(matches!(touch, Touch::Known(_)));
    assert_eq!(log.take(), ops(&["UpdateItem"]), "first poll: one request");

    let appended = store
        .append(Mailbox::Inbox, id, publish_dedup("p1"), sealer("event"))
        .await
        .unwrap();
    assert_eq!(appended, Appended::Stored { seq: 1 });
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "append: read the head, then one transaction"
    );
    store
        .append(Mailbox::Inbox, id, publish_dedup("p1"), sealer("event"))
        .await
        .unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "a duplicate append learns its seq from the cancelled transaction"
    );

    // A poll after the bucket refilled: one conditional update, which also
    // returns head and cursor. With messages, one query more.
    let later = T0.plus_millis(5_000);
    let Touch::Known(state) = store.touch_client(id, later, limit).await.unwrap() else {
        panic!("the poll is allowed")
    };
    assert_eq!(state.head, 1);
    assert_eq!(
        log.take(),
        ops(&["UpdateItem"]),
        "poll, nothing new: one request"
    );
    assert_eq!(
        store.read(Mailbox::Inbox, id, 0, 10).await.unwrap().len(),
        1
    );
    assert_eq!(log.take(), ops(&["Query"]), "poll with messages: one more");

    // Polling faster than the refill: the first guess fails and hands back
    // the stored TAT, and a compare-and-set follows.
    let soon = later.plus_millis(10);
    assert!(matches!(
        store.touch_client(id, soon, limit).await.unwrap(),
        Touch::Known(_)
    ));
    assert_eq!(
        log.take(),
        ops(&["UpdateItem", "UpdateItem"]),
        "a poll within the refill interval"
    );

    assert_eq!(
        store.acknowledge(id, 1, later).await.unwrap(),
        AckOutcome::Acked { cursor: 1 }
    );
    assert_eq!(log.take(), ops(&["UpdateItem"]), "ack");

    store.touch_client(id, later, None).await.unwrap();
    assert_eq!(log.take(), ops(&["UpdateItem"]), "send's contact");

    assert_eq!(store.load_clients(&[id]).await.unwrap().len(), 1);
    assert_eq!(log.take(), ops(&["BatchGetItem"]), "fan-out's client load");

    let many: Vec<ClientId> = (0..150).map(|_| ClientId::new()).chain([id]).collect();
    let done = store
        .already_appended(Mailbox::Inbox, &many, "publish:p1")
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        log.take(),
        ops(&["BatchGetItem", "BatchGetItem"]),
        "fan-out's marker look-up: one request per 100 recipients"
    );

    let record = PublishRecord {
        publish_id: "p9".into(),
        recipients: 1,
        digest: [9; 32],
        created_at: T0,
    };
    store
        .claim_publish_key("key-1", record, Timestamp(0))
        .await
        .unwrap();
    store.complete_publish_key("key-1").await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["PutItem", "UpdateItem"]),
        "a publish with an idempotency key: claim, then complete"
    );

    store.list_clients(10, None).await.unwrap().unwrap();
    assert_eq!(log.take(), ops(&["Scan"]), "list clients");

    // A refused poll costs one request and changes nothing.
    let strict = PollRateLimit::per_minute(1);
    let other = register(&store, 4).await;
    log.take();
    store.touch_client(other, T0, strict).await.unwrap();
    log.take();
    assert!(matches!(
        store.touch_client(other, T0, strict).await.unwrap(),
        Touch::RateLimited { .. }
    ));
    assert_eq!(log.take(), ops(&["UpdateItem"]), "a refused poll");
}

/// DynamoDB refuses items over 400 KB: the largest message a client can
/// send (a 256 KiB body holds at most 192 KiB of ciphertext) and the
/// largest client record both fit, with room to spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_message_and_client_record_fit_in_a_dynamodb_item() {
    let env = aws_support::fresh_env().await;
    let store = DynamoStore::new(env.dynamodb(), env.tables().clone());
    let record = ClientRecord {
        id: ClientId::new(),
        name: Some("n".repeat(pigeonhole::domain::MAX_NAME_CHARS * 4)),
        wrapped_key: vec![7; 60],
        created_at: T0,
    };
    let registered = store.register_client([8; 32], record).await.unwrap();
    let id = registered.client.id;
    let biggest = pigeonhole::domain::MAX_BODY_BYTES / 4 * 3;
    let key = pigeonhole::crypto::Key::from_bytes([3; 32]);
    let body = pigeonhole::crypto::seal(&key, &vec![b'x'; biggest], b"");
    let sealer: Sealer = Arc::new(move |_| {
        Ok(NewMessage {
            kind: "k".repeat(pigeonhole::domain::MAX_TYPE_CHARS * 4),
            body: body.clone(),
            created_at: T0,
        })
    });
    let dedup = Dedup {
        key: format!("nonce:{}", "n".repeat(16)),
        digest: [1; 32],
    };
    for mailbox in [Mailbox::Outbox, Mailbox::Inbox] {
        let stored = store
            .append(mailbox, id, dedup.clone(), Arc::clone(&sealer))
            .await
            .unwrap();
        assert_eq!(stored, Appended::Stored { seq: 1 });
        let read = store.read(mailbox, id, 0, 1).await.unwrap();
        assert_eq!(read[0].body.ciphertext.len(), biggest);
    }
}

/// `pigeonhole-infra` run again over existing tables and queues changes
/// nothing and keeps the data, and what it applied matches the template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_again_keeps_tables_queues_and_data() {
    let env = aws_support::fresh_env().await;
    let store = DynamoStore::new(env.dynamodb(), env.tables().clone());
    let id = register(&store, 5).await;

    let prefix = env
        .tables()
        .clients
        .strip_suffix("clients")
        .expect("tables are named <prefix>clients")
        .to_string();
    let again = pigeonhole_infra::provision(&env.sdk, &aws_support::template_path(), &prefix)
        .await
        .expect("a second run succeeds");
    assert_eq!(again.env_lines(), env.provisioned.env_lines());
    assert_eq!(again.dlq_url, env.provisioned.dlq_url);
    assert!(
        again.log.iter().all(|line| !line.starts_with("created")),
        "{:?}",
        again.log
    );
    assert_eq!(store.load_clients(&[id]).await.unwrap().len(), 1);

    let dynamodb = env.dynamodb();
    for table in env.tables().all() {
        let pitr = dynamodb
            .describe_continuous_backups()
            .table_name(table)
            .send()
            .await
            .unwrap()
            .continuous_backups_description
            .and_then(|d| d.point_in_time_recovery_description)
            .and_then(|d| d.point_in_time_recovery_status);
        assert_eq!(
            pitr,
            Some(aws_sdk_dynamodb::types::PointInTimeRecoveryStatus::Enabled),
            "{table}"
        );
        let billing = dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .unwrap()
            .table
            .and_then(|t| t.billing_mode_summary)
            .and_then(|b| b.billing_mode);
        assert_eq!(
            billing,
            Some(aws_sdk_dynamodb::types::BillingMode::PayPerRequest),
            "{table}"
        );
    }
}
