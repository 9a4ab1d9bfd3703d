//! Send's notices on the inbound queue, through the HTTP adapter over the
//! SQLite store, with an in-memory notifier that can be made to fail: a
//! stored send is announced once, a send whose notice failed answers 503
//! and is announced when the client retries it, and every notice of one
//! message is the same. (On AWS the notifier is `SqsInbound`, checked on
//! an emulator by tests/tests/inbound.rs.)
#![cfg(feature = "sqlite")]

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, StatusCode};
use pigeonhole::clock::{Clock, Timestamp};
use pigeonhole::config::{Config, Secret};
use pigeonhole::crypto::{encode_base64, seal, Key};
use pigeonhole::domain::ClientId;
use pigeonhole::http::handle;
use pigeonhole::queue::{Inbound, QueueError, SentNotice};
use pigeonhole::store::sqlite::SqliteStore;
use pigeonhole::store::Store;
use pigeonhole::App;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    /// Transient failures outlasted the retry budget.
    Unavailable,
    /// The queue said no for good.
    Refused,
}

/// Records every notice it accepts; fails the next calls as scripted.
#[derive(Default)]
struct FakeInbound {
    notices: Mutex<Vec<SentNotice>>,
    failures: Mutex<VecDeque<Failure>>,
    calls: AtomicI64,
}

impl FakeInbound {
    fn fail_next(&self, failure: Failure) {
        self.failures.lock().unwrap().push_back(failure);
    }

    fn notices(&self) -> Vec<SentNotice> {
        self.notices.lock().unwrap().clone()
    }

    fn calls(&self) -> i64 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Inbound for FakeInbound {
    async fn notify(&self, notice: SentNotice) -> Result<(), QueueError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.failures.lock().unwrap().pop_front() {
            Some(Failure::Unavailable) => Err(QueueError::Unavailable("SQS is throttling".into())),
            Some(Failure::Refused) => Err(QueueError::Refused("QueueDoesNotExist".into())),
            None => {
                self.notices.lock().unwrap().push(notice);
                Ok(())
            }
        }
    }
}

const ADMIN: &str = "admin-secret";
const T0: i64 = 1_764_000_000_000;

struct Harness {
    app: App,
    clock: Arc<TestClock>,
    inbound: Arc<FakeInbound>,
    _dir: tempfile::TempDir,
}

fn config() -> Config {
    Config::from_lookup(
        |name| match name {
            "ADMIN_TOKEN" => Some(ADMIN.into()),
            "OPERATOR_TOKENS" => Some("operator-secret".into()),
            "MASTER_KEY" => Some(Key::from_bytes([7; 32]).to_base64()),
            _ => None,
        },
        &Secret::ALL,
    )
    .unwrap()
}

/// An app over SQLite; with the fake notifier when `notifying`.
fn harness(notifying: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let clock = Arc::new(TestClock(AtomicI64::new(T0)));
    let inbound = Arc::new(FakeInbound::default());
    let app = App::in_process_with_clock(&config(), store, clock.clone()).unwrap();
    let app = if notifying {
        app.with_inbound(Arc::clone(&inbound) as Arc<dyn Inbound>)
    } else {
        app
    };
    Harness {
        app,
        clock,
        inbound,
        _dir: dir,
    }
}

struct Client {
    id: ClientId,
    key: Key,
    headers: Vec<(String, String)>,
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        headers: &[(String, String)],
        body: &str,
    ) -> (StatusCode, Option<String>, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            request = request.header(k.as_str(), v.as_str());
        }
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        let response = handle(
            &self.app,
            request.body(Bytes::from(body.to_string())).unwrap(),
        )
        .await;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.into_body();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (status, retry_after, value)
    }

    async fn register(&self, fingerprint: &str) -> Client {
        let (status, _, creds) = self
            .call(
                "POST",
                "/api/v1/clients/register",
                &[],
                &json!({ "fingerprint": fingerprint }).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{creds}");
        let text = |f: &str| creds[f].as_str().unwrap().to_string();
        Client {
            id: ClientId::parse(&text("client_id")).unwrap(),
            key: Key::from_base64(&text("personal_token")).unwrap(),
            headers: vec![
                (
                    "authorization".into(),
                    format!("Bearer {}", text("api_token")),
                ),
                ("x-client-id".into(), text("client_id")),
            ],
        }
    }

    /// `POST /messages/send` with `body` as is (resend it to retry).
    async fn send(&self, client: &Client, body: &Value) -> (StatusCode, Option<String>, Value) {
        self.call(
            "POST",
            "/api/v1/messages/send",
            &client.headers,
            &body.to_string(),
        )
        .await
    }

    /// What the admin reads back of the client's sends.
    async fn sent(&self, client: &Client) -> Vec<Value> {
        let (status, _, body) = self
            .call(
                "GET",
                &format!("/api/v1/clients/{}/sent", client.id),
                &[("x-admin-token".into(), ADMIN.into())],
                "",
            )
            .await;
        match status {
            StatusCode::NO_CONTENT => Vec::new(),
            StatusCode::OK => body["messages"].as_array().unwrap().clone(),
            other => panic!("sent: {other} {body}"),
        }
    }

    fn advance(&self, ms: i64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// A send body: `{"type": kind, "payload": payload}` sealed under the
/// client's key with a fresh nonce.
fn send_body(client: &Client, kind: &str, payload: Value) -> Value {
    let plaintext = serde_json::to_vec(&json!({"type": kind, "payload": payload})).unwrap();
    let sealed = seal(&client.key, &plaintext, b"");
    json!({
        "ciphertext": encode_base64(&sealed.ciphertext),
        "nonce": encode_base64(&sealed.nonce),
        "tag": encode_base64(&sealed.tag),
    })
}

fn notice(client: &Client, id: u64, kind: &str, created_at: Timestamp) -> SentNotice {
    SentNotice {
        client_id: client.id,
        id,
        kind: kind.into(),
        created_at,
    }
}

#[tokio::test]
async fn each_stored_send_is_announced_once_with_what_sent_shows() {
    let h = harness(true);
    let a = h.register("fingerprint-a").await;
    let b = h.register("fingerprint-b").await;

    let (status, _, body) = h
        .send(&a, &send_body(&a, "battery", json!({"level": 87})))
        .await;
    assert_eq!((status, body), (StatusCode::CREATED, json!({"id": 1})));
    let first_at = h.now();
    h.advance(1_500);
    let (status, _, body) = h.send(&a, &send_body(&a, "door", json!("open"))).await;
    assert_eq!((status, body), (StatusCode::CREATED, json!({"id": 2})));
    let (status, _, _) = h.send(&b, &send_body(&b, "battery", json!(null))).await;
    assert_eq!(status, StatusCode::CREATED);

    assert_eq!(
        h.inbound.notices(),
        vec![
            notice(&a, 1, "battery", first_at),
            notice(&a, 2, "door", first_at.plus_millis(1_500)),
            notice(&b, 1, "battery", first_at.plus_millis(1_500)),
        ]
    );
    assert_eq!(h.inbound.calls(), 3, "one notice per stored send");
    // The notice's created_at is the stored message's, as /sent shows it;
    // and it carries no payload.
    let sent = h.sent(&a).await;
    let notices = h.inbound.notices();
    for (message, notice) in sent.iter().zip(&notices) {
        assert_eq!(message["id"], json!(notice.id));
        assert_eq!(message["type"], json!(notice.kind));
        assert_eq!(message["created_at"], json!(notice.created_at.to_rfc3339()));
    }
    let wire: Value = serde_json::from_str(&notices[0].to_json()).unwrap();
    assert_eq!(
        wire,
        json!({
            "client_id": a.id.to_string(),
            "id": 1,
            "type": "battery",
            "created_at": first_at.to_rfc3339(),
        })
    );
}

#[tokio::test]
async fn a_send_whose_notice_failed_answers_503_and_its_retry_announces_it() {
    let h = harness(true);
    let c = h.register("fingerprint-c").await;
    let body = send_body(&c, "door", json!({"open": true}));

    h.inbound.fail_next(Failure::Unavailable);
    let (status, retry_after, error) = h.send(&c, &body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["error"]["code"], "unavailable");
    assert!(retry_after.is_some(), "503 says when to come back");
    assert!(h.inbound.notices().is_empty());
    // The message is stored all the same.
    let stored_at = h.now();
    let sent = h.sent(&c).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["id"], 1);

    // The client retries the same send later: the original id, and the
    // notice it missed, with the time the message was stored.
    h.advance(2_000);
    let (status, _, body_again) = h.send(&c, &body).await;
    assert_eq!((status, body_again), (StatusCode::OK, json!({"id": 1})));
    assert_eq!(h.inbound.notices(), vec![notice(&c, 1, "door", stored_at)]);
    assert_eq!(h.sent(&c).await.len(), 1, "nothing stored twice");

    // The next message gets the next id and its own notice.
    let (status, _, next) = h
        .send(&c, &send_body(&c, "door", json!({"open": false})))
        .await;
    assert_eq!((status, next), (StatusCode::CREATED, json!({"id": 2})));
    assert_eq!(
        h.inbound.notices().last(),
        Some(&notice(&c, 2, "door", h.now()))
    );
}

#[tokio::test]
async fn every_notice_of_one_message_is_the_same() {
    // A retry of a send whose notice did arrive (the response was lost)
    // announces it again; the FIFO queue drops the repeat by its
    // deduplication id, which only works because the two are the same.
    let h = harness(true);
    let c = h.register("fingerprint-d").await;
    let body = send_body(&c, "battery", json!(12));
    assert_eq!(h.send(&c, &body).await.0, StatusCode::CREATED);
    h.advance(60_000);
    assert_eq!(h.send(&c, &body).await.0, StatusCode::OK);
    let notices = h.inbound.notices();
    assert_eq!(notices.len(), 2);
    assert_eq!(notices[0], notices[1]);
    assert_eq!(notices[0].created_at, Timestamp(T0));
    assert_eq!(notices[0].deduplication_id(), format!("{}:1", c.id));
}

#[tokio::test]
async fn a_refused_notice_is_an_internal_error_and_a_fresh_nonce_is_not_a_retry() {
    let h = harness(true);
    let c = h.register("fingerprint-e").await;
    h.inbound.fail_next(Failure::Refused);
    let body = send_body(&c, "t", json!(1));
    let (status, _, error) = h.send(&c, &body).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{error}");
    assert_eq!(error["error"]["code"], "internal");
    assert_eq!(h.sent(&c).await.len(), 1, "stored before the notice failed");
    assert_eq!(h.send(&c, &body).await.0, StatusCode::OK);
    assert_eq!(h.inbound.notices(), vec![notice(&c, 1, "t", Timestamp(T0))]);

    // A nonce reused for other content is refused, and announces nothing.
    let mut reused = send_body(&c, "t", json!(2));
    reused["nonce"] = body["nonce"].clone();
    let calls = h.inbound.calls();
    let (status, _, _) = h.send(&c, &reused).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(h.inbound.calls(), calls);
}

#[tokio::test]
async fn without_an_inbound_queue_sends_announce_nothing() {
    // The embedded server, and a stack with InboundNotifications=Disabled.
    let h = harness(false);
    assert!(h.app.inbound().is_none());
    let c = h.register("fingerprint-f").await;
    h.inbound.fail_next(Failure::Unavailable);
    let body = send_body(&c, "t", json!(1));
    assert_eq!(h.send(&c, &body).await.0, StatusCode::CREATED);
    assert_eq!(h.send(&c, &body).await.0, StatusCode::OK);
    assert_eq!(h.inbound.calls(), 0);
}
