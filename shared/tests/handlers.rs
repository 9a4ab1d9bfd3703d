//! Handlers and the HTTP adapter over the SQLite store with a pinned clock:
//! the behaviour that is awkward to reach over a real socket (time-based
//! status, fan-out redelivery, hidden internal errors).

use bytes::Bytes;
use http::{Request, StatusCode};
use pigeonhole::clock::{Clock, Timestamp};
use pigeonhole::config::{Config, Secret};
use pigeonhole::crypto::{canonical_aad, decode_base64, open, Key, Sealed, ServerKeys};
use pigeonhole::handlers::fanout::{Fanout, FanoutReport};
use pigeonhole::http::handle;
use pigeonhole::queue::FanoutJob;
use pigeonhole::store::sqlite::SqliteStore;
use pigeonhole::store::Store;
use pigeonhole::App;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

struct Harness {
    app: App,
    clock: Arc<TestClock>,
    store: Arc<dyn Store>,
    config: Config,
    _dir: tempfile::TempDir,
}

const ADMIN: &str = "admin-secret";
const OPERATOR: &str = "operator-secret";

fn harness() -> Harness {
    harness_with(&[])
}

/// The harness with more settings, e.g. `("REGISTER_RATE_LIMIT", "0")`.
fn harness_with(settings: &[(&str, &str)]) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let config = Config::from_lookup(
        |name| match name {
            "ADMIN_TOKEN" => Some(ADMIN.into()),
            "OPERATOR_TOKENS" => Some(format!("other,{OPERATOR}")),
            "MASTER_KEY" => Some(Key::from_bytes([5; 32]).to_base64()),
            _ => settings
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string()),
        },
        &Secret::ALL,
    )
    .unwrap();
    let clock = Arc::new(TestClock(AtomicI64::new(1_764_000_000_000)));
    let app = App::in_process_with_clock(&config, Arc::clone(&store), clock.clone()).unwrap();
    Harness {
        app,
        clock,
        store,
        config,
        _dir: dir,
    }
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        // A body is JSON unless a test says otherwise.
        if !body.is_empty()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        let response = handle(
            &self.app,
            request.body(Bytes::from(body.to_string())).unwrap(),
        )
        .await;
        let status = response.status();
        let body = response.into_body();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (status, value)
    }

    async fn register(&self, fingerprint: &str) -> Value {
        let (status, body) = self
            .call(
                "POST",
                "/api/v1/clients/register",
                &[],
                &json!({"fingerprint": fingerprint}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        body
    }

    async fn publish(&self, to: &[&str], payload: Value) -> (StatusCode, Value) {
        let body = json!({"to_client_ids": to, "type": "event", "payload": payload}).to_string();
        self.call(
            "POST",
            "/api/v1/messages/publish",
            &[("x-admin-token", ADMIN)],
            &body,
        )
        .await
    }

    async fn poll(&self, creds: &Value, query: &str) -> (StatusCode, Value) {
        let bearer = format!("Bearer {}", creds["api_token"].as_str().unwrap());
        let headers = [
            ("authorization", bearer.as_str()),
            ("x-client-id", creds["client_id"].as_str().unwrap()),
        ];
        self.call(
            "GET",
            &format!("/api/v1/messages/poll{query}"),
            &headers,
            "",
        )
        .await
    }

    fn advance(&self, ms: i64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
    }
}

fn decrypt(creds: &Value, message: &Value) -> Value {
    let key = Key::from_base64(creds["personal_token"].as_str().unwrap()).unwrap();
    let b64 = |f: &str| decode_base64(message[f].as_str().unwrap()).unwrap();
    let sealed = Sealed {
        ciphertext: b64("ciphertext"),
        nonce: b64("nonce").try_into().unwrap(),
        tag: b64("tag").try_into().unwrap(),
    };
    let aad = canonical_aad(message["aad"].as_object().unwrap()).unwrap();
    serde_json::from_slice(&open(&key, &sealed, &aad).unwrap()).unwrap()
}

#[tokio::test]
async fn a_redelivered_fanout_job_stores_nothing_twice() {
    let h = harness();
    let creds = h.register("fingerprint-1").await;
    let id = pigeonhole::domain::ClientId::parse(creds["client_id"].as_str().unwrap()).unwrap();
    let keys = Arc::new(ServerKeys::from_materials(&h.config.keys));
    let plaintext = pigeonhole::envelope::plaintext("event", &json!({"n": 1}));
    let job = FanoutJob {
        publish_id: "p-1".into(),
        kind: "event".into(),
        payload: keys
            .seal_at_rest(&FanoutJob::payload_context("p-1"), &plaintext)
            .unwrap(),
        recipients: vec![id, pigeonhole::domain::ClientId::new()],
        expires_at: None,
        step: None,
        accepted_at: None,
    };
    let fanout = Fanout::new(Arc::clone(&h.store), keys, h.clock.clone());
    let first = fanout.deliver(&job).await.unwrap();
    assert_eq!(
        first,
        FanoutReport {
            delivered: 1,
            already_delivered: 0,
            unknown: 1,
            skipped: 0,
        }
    );
    let again = fanout.deliver(&job).await.unwrap();
    assert_eq!(
        again,
        FanoutReport {
            delivered: 0,
            already_delivered: 1,
            unknown: 1,
            skipped: 0,
        }
    );

    let (status, body) = h.poll(&creds, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        decrypt(&creds, &body["messages"][0]),
        json!({"type": "event", "payload": {"n": 1}})
    );
}

/// More clients than one audience page holds (a job names at most 1,000
/// recipients): the in-process fan-out enumerates "everyone" page by page,
/// each page's step leading to the next, and every client gets the publish
/// once. (faults.rs drives the same steps through the SQS fan-out.)
#[tokio::test]
async fn an_audience_of_several_pages_is_enumerated_in_steps_and_delivered_once() {
    let h = harness_with(&[("REGISTER_RATE_LIMIT", "0")]);
    let clients = pigeonhole::queue::MAX_JOB_RECIPIENTS + 2;
    let mut creds = Vec::new();
    for n in 0..clients {
        creds.push(h.register(&format!("fleet-{n:04}")).await);
    }
    h.advance(1_000);
    let body = json!({"to_all": true, "type": "event", "payload": {"n": 1}}).to_string();
    let (status, accepted) = h
        .call(
            "POST",
            "/api/v1/messages/publish",
            &[("x-admin-token", ADMIN)],
            &body,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let publish_id = accepted["publish_id"].as_str().unwrap();

    let state = h.store.load_publish(publish_id).await.unwrap().unwrap();
    let pages: Vec<usize> = state.pages.iter().map(|p| p.recipients.len()).collect();
    assert!(pages.len() >= 2, "pages: {pages:?}");
    assert_eq!(pages.iter().sum::<usize>(), clients, "pages: {pages:?}");

    let (status, report) = h
        .call(
            "GET",
            &format!("/api/v1/messages/publish/{publish_id}"),
            &[("x-admin-token", ADMIN)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["recipients"], json!(clients));
    assert_eq!(report["delivered"], json!(clients));
    assert_eq!(report["state"], json!("done"));

    for c in [&creds[0], &creds[clients / 2], &creds[clients - 1]] {
        let (status, body) = h.poll(c, "").await;
        assert_eq!(status, StatusCode::OK);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1, "one copy for {}", c["client_id"]);
        assert_eq!(
            decrypt(c, &messages[0]),
            json!({"type": "event", "payload": {"n": 1}})
        );
    }
}

#[tokio::test]
async fn a_job_sealed_under_another_master_key_is_refused() {
    let h = harness();
    let foreign = ServerKeys::derive(&Key::from_bytes([6; 32]));
    let job = FanoutJob {
        publish_id: "p-2".into(),
        kind: "event".into(),
        payload: foreign
            .seal_at_rest(&FanoutJob::payload_context("p-2"), b"{}")
            .unwrap(),
        recipients: vec![],
        expires_at: None,
        step: None,
        accepted_at: None,
    };
    let fanout = Fanout::new(
        Arc::clone(&h.store),
        Arc::new(ServerKeys::from_materials(&h.config.keys)),
        h.clock.clone(),
    );
    assert!(fanout.deliver(&job).await.is_err());
}

#[tokio::test]
async fn status_turns_offline_120_seconds_after_the_last_request() {
    let h = harness();
    let seen = h.register("fingerprint-seen").await;
    h.advance(1);
    h.register("fingerprint-never").await;
    assert_eq!(h.poll(&seen, "").await.0, StatusCode::NO_CONTENT);

    let list = || {
        h.call(
            "GET",
            "/api/v1/operators/clients",
            &[("x-operator-token", OPERATOR)],
            "",
        )
    };
    let (status, body) = list().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["clients"][0]["status"], "online");
    assert_eq!(body["clients"][1]["status"], "offline");
    assert_eq!(body["clients"][1]["last_seen_at"], Value::Null);

    h.advance(119_999);
    assert_eq!(list().await.1["clients"][0]["status"], "online");
    h.advance(1);
    assert_eq!(list().await.1["clients"][0]["status"], "offline");
}

#[tokio::test]
async fn publish_payload_limit_is_64_kib_of_json() {
    let h = harness();
    let creds = h.register("fingerprint-2").await;
    let to = [creds["client_id"].as_str().unwrap()];
    // A JSON string of n characters serializes to n + 2 bytes.
    let at_limit = "x".repeat(64 * 1024 - 2);
    assert_eq!(
        h.publish(&to, json!(at_limit)).await.0,
        StatusCode::ACCEPTED
    );
    let (status, body) = h.publish(&to, json!(format!("{at_limit}x"))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn the_rate_limit_refills_with_time() {
    let h = harness();
    let creds = h.register("fingerprint-3").await;
    for _ in 0..120 {
        assert_eq!(h.poll(&creds, "").await.0, StatusCode::NO_CONTENT);
    }
    let (status, body) = h.poll(&creds, "").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limited");
    h.advance(500);
    assert_eq!(
        h.poll(&creds, "").await.0,
        StatusCode::NO_CONTENT,
        "one poll every 0.5 s refills"
    );
}

#[tokio::test]
async fn credentials_are_checked_before_the_body() {
    let h = harness();
    let (status, body) = h
        .call("POST", "/api/v1/messages/publish", &[], "not json")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = h
        .call(
            "GET",
            "/api/v1/messages/poll?limit=0",
            &[("x-client-id", "x")],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A store whose every call fails, to show what a client sees then.
mod s {
    pub use pigeonhole::store::*;
}
use pigeonhole::domain::ClientId;
use pigeonhole::rate_limit::WindowLimit;

struct BrokenStore;

#[async_trait::async_trait]
impl Store for BrokenStore {
    async fn register_client(
        &self,
        _: [u8; 32],
        _: s::ClientRecord,
    ) -> s::StoreResult<s::Registration> {
        Err(s::StoreError::Backend(
            "disk on fire at /var/secret/path".into(),
        ))
    }
    async fn touch_client(
        &self,
        _: ClientId,
        _: u32,
        _: Timestamp,
        _: Option<s::RateCharge>,
    ) -> s::StoreResult<s::Touch> {
        unreachable!()
    }
    async fn rotate_client(&self, _: s::Rotation) -> s::StoreResult<s::Rotated> {
        unreachable!()
    }
    async fn delete_client(&self, _: ClientId) -> s::StoreResult<s::Deleted> {
        unreachable!()
    }
    async fn count_request(
        &self,
        _: &str,
        _: WindowLimit,
        _: Timestamp,
    ) -> s::StoreResult<s::Counted> {
        Ok(s::Counted::Allowed)
    }
    async fn load_clients(&self, _: &[ClientId]) -> s::StoreResult<Vec<s::ClientRecord>> {
        unreachable!()
    }
    async fn append(
        &self,
        _: s::Mailbox,
        _: ClientId,
        _: s::Dedup,
        _: s::Sealer,
    ) -> s::StoreResult<s::Appended> {
        unreachable!()
    }
    async fn already_appended(
        &self,
        _: s::Mailbox,
        _: &[ClientId],
        _: &str,
    ) -> s::StoreResult<std::collections::HashSet<ClientId>> {
        unreachable!()
    }
    async fn read_page(
        &self,
        _: s::Mailbox,
        _: ClientId,
        _: u64,
        _: s::ReadLimit,
    ) -> s::StoreResult<Vec<s::StoredMessage>> {
        unreachable!()
    }
    async fn acknowledge(
        &self,
        _: ClientId,
        _: u32,
        _: u64,
        _: Timestamp,
    ) -> s::StoreResult<s::AckOutcome> {
        unreachable!()
    }
    async fn list_clients(
        &self,
        _: u32,
        _: Option<&str>,
    ) -> s::StoreResult<Result<s::ClientPage, s::BadPageToken>> {
        unreachable!()
    }
    async fn set_tags(&self, _: ClientId, _: &[String]) -> s::StoreResult<Option<Vec<String>>> {
        unreachable!()
    }
    async fn list_tagged(
        &self,
        _: &str,
        _: u32,
        _: Option<&str>,
    ) -> s::StoreResult<Result<s::ClientPage, s::BadPageToken>> {
        unreachable!()
    }
    async fn audience_page(
        &self,
        _: &s::Audience,
        _: Timestamp,
        _: u32,
        _: Option<&str>,
    ) -> s::StoreResult<Result<s::AudiencePage, s::BadPageToken>> {
        unreachable!()
    }
    async fn save_publish(&self, _: &s::PublishHeader) -> s::StoreResult<()> {
        unreachable!()
    }
    async fn save_recipient_page(
        &self,
        _: &str,
        _: s::RecipientPage,
    ) -> s::StoreResult<s::RecipientPage> {
        unreachable!()
    }
    async fn mark_page_continued(&self, _: &str, _: u32) -> s::StoreResult<()> {
        unreachable!()
    }
    async fn finish_enumeration(&self, _: &str, _: s::Enumerated) -> s::StoreResult<()> {
        unreachable!()
    }
    async fn load_publish(&self, _: &str) -> s::StoreResult<Option<s::PublishState>> {
        unreachable!()
    }
    async fn appended_seqs(
        &self,
        _: s::Mailbox,
        _: &[ClientId],
        _: &str,
    ) -> s::StoreResult<std::collections::HashMap<ClientId, u64>> {
        unreachable!()
    }
    async fn ack_states(
        &self,
        _: &[ClientId],
    ) -> s::StoreResult<std::collections::HashMap<ClientId, s::AckState>> {
        unreachable!()
    }
    async fn claim_publish_key(
        &self,
        _: &str,
        _: s::PublishRecord,
        _: Timestamp,
    ) -> s::StoreResult<s::KeyClaim> {
        unreachable!()
    }
    async fn complete_publish_key(&self, _: &str) -> s::StoreResult<()> {
        unreachable!()
    }
    async fn purge(&self, _: s::Cutoffs) -> s::StoreResult<s::Purged> {
        unreachable!()
    }
}

#[tokio::test]
async fn internal_failures_reveal_nothing() {
    let h = harness();
    let app = App::in_process(&h.config, Arc::new(BrokenStore)).unwrap();
    let request = Request::post("/api/v1/clients/register")
        .header("content-type", "application/json")
        .body(Bytes::from(r#"{"fingerprint":"abcdefgh"}"#))
        .unwrap();
    let response = handle(&app, request).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": "internal", "message": "internal error"}})
    );
}
