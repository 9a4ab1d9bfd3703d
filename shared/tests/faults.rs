//! What users see when storage misbehaves, through the shared HTTP adapter
//! and the fan-out function's handler, over the SQLite store wrapped in a
//! [`Faulty`] store that can slow appends down, hide a message that is
//! "still committing", damage a recipient's key, or stay unavailable.

use bytes::Bytes;
use http::{Request, StatusCode};
use pigeonhole::clock::{SystemClock, Timestamp};
use pigeonhole::config::{Config, Secret};
use pigeonhole::crypto::{Key, ServerKeys};
use pigeonhole::domain::{ClientId, Seq};
use pigeonhole::handlers::fanout::{Fanout, FanoutReport};
use pigeonhole::handlers::sqs_batch::FanoutFunction;
use pigeonhole::http::handle;
use pigeonhole::queue::{FanoutJob, InProcessQueue, Queue, QueueError};
use pigeonhole::rate_limit::WindowLimit;
use pigeonhole::store::sqlite::SqliteStore;
use pigeonhole::store::*;
use pigeonhole::App;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A store that delegates to SQLite, with faults switched on by tests.
#[derive(Default)]
struct Faults {
    append_delay: Mutex<Duration>,
    appends: AtomicUsize,
    /// `read_page` leaves this id out, as a range read can while the
    /// message's transaction is still committing.
    hidden: Mutex<Option<Seq>>,
    /// `load_clients` hands back this client with a key that won't unwrap.
    damaged: Mutex<Option<ClientId>>,
    unavailable: AtomicBool,
}

struct Faulty {
    inner: SqliteStore,
    faults: Arc<Faults>,
}

impl Faulty {
    fn check(&self) -> StoreResult<()> {
        if self.faults.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("throttled (injected)".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for Faulty {
    async fn register_client(&self, f: [u8; 32], c: ClientRecord) -> StoreResult<Registration> {
        self.check()?;
        self.inner.register_client(f, c).await
    }
    async fn touch_client(
        &self,
        id: ClientId,
        generation: u32,
        now: Timestamp,
        charge: Option<RateCharge>,
    ) -> StoreResult<Touch> {
        self.check()?;
        self.inner.touch_client(id, generation, now, charge).await
    }
    async fn rotate_client(&self, rotation: Rotation) -> StoreResult<Rotated> {
        self.check()?;
        self.inner.rotate_client(rotation).await
    }
    async fn delete_client(&self, id: ClientId) -> StoreResult<Deleted> {
        self.check()?;
        self.inner.delete_client(id).await
    }
    async fn count_request(
        &self,
        key: &str,
        limit: WindowLimit,
        now: Timestamp,
    ) -> StoreResult<Counted> {
        self.check()?;
        self.inner.count_request(key, limit, now).await
    }
    async fn load_clients(&self, ids: &[ClientId]) -> StoreResult<Vec<ClientRecord>> {
        self.check()?;
        let mut records = self.inner.load_clients(ids).await?;
        let damaged = *self.faults.damaged.lock().unwrap();
        for record in &mut records {
            if Some(record.id) == damaged {
                record.wrapped_key = vec![0; record.wrapped_key.len()];
            }
        }
        Ok(records)
    }
    async fn append(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        dedup: Dedup,
        seal: Sealer,
    ) -> StoreResult<Appended> {
        self.check()?;
        self.faults.appends.fetch_add(1, Ordering::SeqCst);
        let delay = *self.faults.append_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.inner.append(mailbox, id, dedup, seal).await
    }
    async fn already_appended(
        &self,
        mailbox: Mailbox,
        ids: &[ClientId],
        key: &str,
    ) -> StoreResult<HashSet<ClientId>> {
        self.check()?;
        self.inner.already_appended(mailbox, ids, key).await
    }
    async fn read_page(
        &self,
        mailbox: Mailbox,
        id: ClientId,
        after: Seq,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.check()?;
        let hidden = *self.faults.hidden.lock().unwrap();
        let mut page = self.inner.read_page(mailbox, id, after, limit).await?;
        page.retain(|m| Some(m.seq) != hidden);
        Ok(page)
    }
    async fn acknowledge(
        &self,
        id: ClientId,
        generation: u32,
        upto: Seq,
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        self.check()?;
        self.inner.acknowledge(id, generation, upto, now).await
    }
    async fn list_clients(
        &self,
        limit: u32,
        token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>> {
        self.check()?;
        self.inner.list_clients(limit, token).await
    }
    async fn set_tags(&self, id: ClientId, tags: &[String]) -> StoreResult<Option<Vec<String>>> {
        self.check()?;
        self.inner.set_tags(id, tags).await
    }
    async fn list_tagged(
        &self,
        tag: &str,
        limit: u32,
        token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>> {
        self.check()?;
        self.inner.list_tagged(tag, limit, token).await
    }
    async fn audience_page(
        &self,
        audience: &Audience,
        registered_by: Timestamp,
        limit: u32,
        token: Option<&str>,
    ) -> StoreResult<Result<AudiencePage, BadPageToken>> {
        self.check()?;
        self.inner
            .audience_page(audience, registered_by, limit, token)
            .await
    }
    async fn save_publish(&self, header: &PublishHeader) -> StoreResult<()> {
        self.check()?;
        self.inner.save_publish(header).await
    }
    async fn save_recipient_page(
        &self,
        publish_id: &str,
        page: RecipientPage,
    ) -> StoreResult<RecipientPage> {
        self.check()?;
        self.inner.save_recipient_page(publish_id, page).await
    }
    async fn mark_page_continued(&self, publish_id: &str, number: u32) -> StoreResult<()> {
        self.check()?;
        self.inner.mark_page_continued(publish_id, number).await
    }
    async fn finish_enumeration(
        &self,
        publish_id: &str,
        enumerated: Enumerated,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner.finish_enumeration(publish_id, enumerated).await
    }
    async fn load_publish(&self, publish_id: &str) -> StoreResult<Option<PublishState>> {
        self.check()?;
        self.inner.load_publish(publish_id).await
    }
    async fn appended_seqs(
        &self,
        mailbox: Mailbox,
        ids: &[ClientId],
        key: &str,
    ) -> StoreResult<std::collections::HashMap<ClientId, Seq>> {
        self.check()?;
        self.inner.appended_seqs(mailbox, ids, key).await
    }
    async fn ack_states(
        &self,
        ids: &[ClientId],
    ) -> StoreResult<std::collections::HashMap<ClientId, AckState>> {
        self.check()?;
        self.inner.ack_states(ids).await
    }
    async fn claim_publish_key(
        &self,
        key: &str,
        record: PublishRecord,
        expired_before: Timestamp,
    ) -> StoreResult<KeyClaim> {
        self.check()?;
        self.inner
            .claim_publish_key(key, record, expired_before)
            .await
    }
    async fn complete_publish_key(&self, key: &str) -> StoreResult<()> {
        self.check()?;
        self.inner.complete_publish_key(key).await
    }
    async fn purge(&self, cutoffs: Cutoffs) -> StoreResult<Purged> {
        self.check()?;
        self.inner.purge(cutoffs).await
    }
}

const ADMIN: &str = "admin-secret";

struct Harness {
    app: App,
    store: Arc<dyn Store>,
    faults: Arc<Faults>,
    keys: Arc<ServerKeys>,
    _dir: tempfile::TempDir,
}

fn config() -> Config {
    Config::from_lookup(
        |name| match name {
            "ADMIN_TOKEN" => Some(ADMIN.into()),
            "OPERATOR_TOKENS" => Some("operator".into()),
            "MASTER_KEY" => Some(Key::from_bytes([5; 32]).to_base64()),
            "POLL_RATE_LIMIT" => Some("0".into()),
            "REGISTER_RATE_LIMIT" => Some("0".into()),
            _ => None,
        },
        &Secret::ALL,
    )
    .unwrap()
}

/// An app over the faulty store; `queue` replaces the in-process fan-out.
fn harness_with(queue: impl FnOnce(Fanout) -> Arc<dyn Queue>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let store: Arc<dyn Store> = Arc::new(Faulty {
        inner: SqliteStore::open(&dir.path().join("db")).unwrap(),
        faults: Arc::clone(&faults),
    });
    let config = config();
    let keys = Arc::new(ServerKeys::from_materials(&config.keys));
    let fanout = Fanout::new(Arc::clone(&store), Arc::clone(&keys), Arc::new(SystemClock));
    let app = App::new(
        &config,
        Arc::clone(&store),
        Some(queue(fanout)),
        Arc::new(SystemClock),
    );
    Harness {
        app,
        store,
        faults,
        keys,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(|fanout| Arc::new(InProcessQueue::new(fanout)))
}

struct Reply {
    status: StatusCode,
    retry_after: Option<String>,
    bytes: usize,
    body: Value,
}

impl Harness {
    async fn call(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: String) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = handle(&self.app, request.body(Bytes::from(body)).unwrap()).await;
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let status = response.status();
        let body = response.into_body();
        Reply {
            status,
            retry_after,
            bytes: body.len(),
            body: if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).unwrap()
            },
        }
    }

    async fn register(&self, fingerprint: &str) -> Value {
        let reply = self
            .call(
                "POST",
                "/api/v1/clients/register",
                &[("content-type", "application/json")],
                json!({ "fingerprint": fingerprint }).to_string(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    async fn publish(&self, key: Option<&str>, to: &[String], payload: Value) -> Reply {
        let mut headers = vec![
            ("x-admin-token", ADMIN),
            ("content-type", "application/json"),
        ];
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        let body = json!({"to_client_ids": to, "type": "event", "payload": payload});
        self.call(
            "POST",
            "/api/v1/messages/publish",
            &headers,
            body.to_string(),
        )
        .await
    }

    async fn poll(&self, creds: &Value, cursor: Seq) -> Reply {
        let bearer = format!("Bearer {}", creds["api_token"].as_str().unwrap());
        let headers = [
            ("authorization", bearer.as_str()),
            ("x-client-id", creds["client_id"].as_str().unwrap()),
        ];
        let uri = format!("/api/v1/messages/poll?cursor={cursor}&limit=500");
        self.call("GET", &uri, &headers, String::new()).await
    }

    /// Every id a client can poll, page by page from 0, checking that each
    /// page is contiguous and starts right after the previous one.
    async fn poll_all(&self, creds: &Value) -> (Vec<Seq>, Vec<usize>) {
        let (mut ids, mut page_bytes, mut cursor) = (Vec::new(), Vec::new(), 0);
        loop {
            let reply = self.poll(creds, cursor).await;
            if reply.status == StatusCode::NO_CONTENT {
                return (ids, page_bytes);
            }
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            page_bytes.push(reply.bytes);
            for m in reply.body["messages"].as_array().unwrap() {
                let id = m["id"].as_u64().unwrap();
                assert_eq!(id, cursor + 1, "pages are contiguous");
                cursor = id;
                ids.push(id);
            }
            assert_eq!(reply.body["next_cursor"].as_u64(), Some(cursor));
        }
    }

    /// The SQS-triggered fan-out over this harness's store, handing
    /// unfinished work to `continuation`.
    fn fanout_function(
        &self,
        continuation: Option<Arc<dyn Queue>>,
        finish_margin: Duration,
    ) -> FanoutFunction {
        FanoutFunction {
            fanout: Fanout::new(
                Arc::clone(&self.store),
                Arc::clone(&self.keys),
                Arc::new(SystemClock),
            ),
            continuation,
            finish_margin,
        }
    }

    fn job(&self, publish_id: &str, recipients: Vec<ClientId>) -> FanoutJob {
        let plaintext = pigeonhole::envelope::plaintext("event", &json!({"n": 1}));
        FanoutJob {
            publish_id: publish_id.into(),
            kind: "event".into(),
            payload: self
                .keys
                .seal_at_rest(&FanoutJob::payload_context(publish_id), &plaintext)
                .unwrap(),
            recipients,
            expires_at: None,
            step: None,
            accepted_at: None,
        }
    }

    async fn inbox_len(&self, id: ClientId) -> usize {
        self.store
            .read(Mailbox::Inbox, id, 0, 500)
            .await
            .unwrap()
            .len()
    }
}

fn client_id(creds: &Value) -> ClientId {
    ClientId::parse(creds["client_id"].as_str().unwrap()).unwrap()
}

fn sqs_event(jobs: &[FanoutJob]) -> aws_lambda_events::event::sqs::SqsEvent {
    let records: Vec<Value> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| json!({"messageId": format!("m{i}"), "body": job.to_json(), "eventSource": "aws:sqs"}))
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// Collects the jobs a fan-out hands on, as the fan-out queue would.
#[derive(Default)]
struct Captured(Mutex<Vec<FanoutJob>>);

#[async_trait::async_trait]
impl Queue for Captured {
    async fn enqueue(&self, jobs: Vec<FanoutJob>) -> Result<(), QueueError> {
        self.0.lock().unwrap().extend(jobs);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_that_stays_unavailable_answers_503_with_retry_after() {
    let h = harness();
    let creds = h.register("fingerprint-503").await;
    h.faults.unavailable.store(true, Ordering::SeqCst);
    let reply = h.poll(&creds, 0).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body["error"]["code"], "unavailable");
    assert_eq!(reply.retry_after.as_deref(), Some("2"));
    let reply = h
        .publish(
            None,
            &[creds["client_id"].as_str().unwrap().into()],
            json!({}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    assert!(
        !reply.body.to_string().contains("injected"),
        "causes stay in the log"
    );
    h.faults.unavailable.store(false, Ordering::SeqCst);
    assert_eq!(h.poll(&creds, 0).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_longer_than_its_deadline_completes_over_several_invocations() {
    let h = harness();
    let mut recipients = Vec::new();
    for i in 0..300 {
        recipients.push(client_id(&h.register(&format!("fingerprint-{i:04}")).await));
    }
    *h.faults.append_delay.lock().unwrap() = Duration::from_millis(20);
    let continuation = Arc::new(Captured::default());
    let function = FanoutFunction {
        fanout: Fanout::new(
            Arc::clone(&h.store),
            Arc::clone(&h.keys),
            Arc::new(SystemClock),
        )
        .with_stop_margin(Duration::from_millis(20)),
        continuation: Some(continuation.clone() as Arc<dyn Queue>),
        finish_margin: Duration::from_millis(20),
    };
    // 300 appends of 20 ms, 32 at a time, take ~190 ms; each invocation
    // has 80 ms.
    let mut pending = vec![h.job("long-job", recipients.clone())];
    let mut invocations = 0;
    while !pending.is_empty() {
        invocations += 1;
        assert!(invocations < 50, "the job stopped making progress");
        let deadline = Instant::now() + Duration::from_millis(80);
        let response = function.handle(sqs_event(&pending), Some(deadline)).await;
        assert!(
            response.batch_item_failures.is_empty(),
            "nothing fails for lack of time"
        );
        pending = std::mem::take(&mut *continuation.0.lock().unwrap());
    }
    assert!(invocations >= 2, "{invocations} invocation(s)");
    for id in &recipients {
        assert_eq!(h.inbox_len(*id).await, 1, "every recipient exactly once");
    }
    assert_eq!(
        h.faults.appends.load(Ordering::SeqCst),
        300,
        "no recipient appended twice"
    );
}

/// A publish to everyone with more clients than one page, as on AWS: the
/// publish enqueues the first step; each fan-out invocation delivers one
/// page and enqueues the step for the next; the status counts recipients
/// as pages are written. A step the queue delivers again continues nothing
/// twice and stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_audience_of_several_pages_goes_through_the_queue_one_step_at_a_time() {
    let queue = Arc::new(Captured::default());
    let h = harness_with({
        let queue = Arc::clone(&queue);
        move |_| queue as Arc<dyn Queue>
    });
    let clients = pigeonhole::queue::MAX_JOB_RECIPIENTS + 2;
    let mut ids = Vec::new();
    for i in 0..clients {
        ids.push(client_id(&h.register(&format!("fingerprint-{i:04}")).await));
    }
    let body = json!({"to_all": true, "type": "event", "payload": {"n": 1}});
    let reply = h
        .call(
            "POST",
            "/api/v1/messages/publish",
            &[
                ("x-admin-token", ADMIN),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let publish_id = reply.body["publish_id"].as_str().unwrap().to_string();
    let status = || async {
        h.call(
            "GET",
            &format!("/api/v1/messages/publish/{publish_id}"),
            &[("x-admin-token", ADMIN)],
            String::new(),
        )
        .await
        .body
    };
    assert_eq!(status().await["state"], json!("queued"));

    let function = h.fanout_function(
        Some(Arc::clone(&queue) as Arc<dyn Queue>),
        Duration::from_millis(20),
    );
    let first_step = std::mem::take(&mut *queue.0.lock().unwrap());
    assert_eq!(first_step.len(), 1, "the publish enqueues one step");
    let mut pending = first_step.clone();
    let mut steps = Vec::new();
    while !pending.is_empty() {
        assert!(steps.len() < 10, "the enumeration stopped making progress");
        let response = function.handle(sqs_event(&pending), None).await;
        assert!(response.batch_item_failures.is_empty());
        let report = status().await;
        steps.push((report["delivered"].clone(), report["recipients"].clone()));
        pending = std::mem::take(&mut *queue.0.lock().unwrap());
    }
    assert!(steps.len() >= 2, "one invocation per page: {steps:?}");
    let first = &steps[0];
    assert!(
        first.0.as_u64().unwrap() < clients as u64 && first.1.is_null(),
        "after the first page: some delivered, the count not known yet: {steps:?}"
    );
    let done = status().await;
    assert_eq!(done["recipients"], json!(clients), "{done}");
    assert_eq!(done["delivered"], json!(clients), "{done}");
    assert_eq!(done["state"], json!("done"), "{done}");
    for id in [ids[0], ids[clients / 2], ids[clients - 1]] {
        assert_eq!(h.inbox_len(id).await, 1, "one copy for {id}");
    }

    // The queue delivers the first step again (a lost delete, a timeout).
    let appends = h.faults.appends.load(Ordering::SeqCst);
    let response = function.handle(sqs_event(&first_step), None).await;
    assert!(response.batch_item_failures.is_empty());
    assert!(
        queue.0.lock().unwrap().is_empty(),
        "its successor was enqueued before: no second one"
    );
    assert_eq!(
        h.faults.appends.load(Ordering::SeqCst),
        appends,
        "no copy stored twice"
    );
    assert_eq!(status().await, done);
}

/// What the fan-out function tells CloudWatch about a batch with a record
/// the queue delivered before: both jobs done, one redelivery, and the one
/// copy the redelivered job still had to store (its other recipient had
/// it).
#[tokio::test(flavor = "current_thread")]
async fn a_redelivered_record_shows_in_the_fan_outs_metrics() {
    use pigeonhole::metrics::emf::EmfRecorder;
    let h = harness();
    let a = client_id(&h.register("fingerprint-m1").await);
    let b = client_id(&h.register("fingerprint-m2").await);
    let function = h.fanout_function(None, Duration::from_millis(100));
    // The first delivery of "again" reached `a` only before it was lost.
    function
        .fanout
        .deliver(&h.job("again", vec![a]))
        .await
        .unwrap();

    let recorder = EmfRecorder::new("stack", "fanout");
    let lines = {
        // The handler's own metrics are recorded on this thread (the runtime
        // has one); the store's blocking work may record elsewhere.
        let _local = ::metrics::set_default_local_recorder(&recorder);
        let mut event = sqs_event(&[h.job("fresh", vec![a]), h.job("again", vec![a, b])]);
        event.records[0]
            .attributes
            .insert("ApproximateReceiveCount".into(), "1".into());
        event.records[1]
            .attributes
            .insert("ApproximateReceiveCount".into(), "2".into());
        let response = function.handle(event, None).await;
        assert!(response.batch_item_failures.is_empty());
        recorder.handle().take_lines(1_700_000_000_000)
    };
    let docs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sum = |metric: &str, outcome: Option<&str>| -> f64 {
        docs.iter()
            .filter(|d| outcome.is_none_or(|o| d["Outcome"] == json!(o)))
            .filter_map(|d| d[metric].as_f64())
            .sum()
    };
    assert_eq!(sum("FanoutJobsRedelivered", None), 1.0, "{docs:#?}");
    assert_eq!(sum("FanoutJobs", Some("done")), 2.0, "{docs:#?}");
    assert_eq!(sum("FanoutJobs", Some("failed")), 0.0, "{docs:#?}");
    assert_eq!(sum("MessagesDelivered", None), 2.0, "{docs:#?}");
    assert_eq!(
        sum("FanoutNotDelivered", Some("duplicate")),
        1.0,
        "{docs:#?}"
    );
    assert!(docs
        .iter()
        .all(|d| d["Function"] == json!("fanout") && d["Stack"] == json!("stack")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_job_skips_delivered_recipients_before_appending() {
    let h = harness();
    let a = client_id(&h.register("fingerprint-a").await);
    let b = client_id(&h.register("fingerprint-b").await);
    let fanout = Fanout::new(
        Arc::clone(&h.store),
        Arc::clone(&h.keys),
        Arc::new(SystemClock),
    );
    let job = h.job("again", vec![a, b]);
    fanout.deliver(&job).await.unwrap();
    assert_eq!(h.faults.appends.load(Ordering::SeqCst), 2);
    let report = fanout.deliver(&job).await.unwrap();
    assert_eq!(report.already_delivered, 2);
    assert_eq!(
        h.faults.appends.load(Ordering::SeqCst),
        2,
        "the redelivery sealed and appended nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recipient_whose_key_does_not_unwrap_is_skipped_and_the_job_completes() {
    let h = harness();
    let ids: Vec<ClientId> = [
        h.register("fingerprint-1").await,
        h.register("fingerprint-2").await,
        h.register("fingerprint-3").await,
    ]
    .iter()
    .map(client_id)
    .collect();
    *h.faults.damaged.lock().unwrap() = Some(ids[1]);
    let function = h.fanout_function(None, Duration::from_millis(100));
    let response = function
        .handle(
            sqs_event(&[h.job("poison", ids.clone())]),
            Some(Instant::now() + Duration::from_secs(10)),
        )
        .await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(h.inbox_len(ids[0]).await, 1);
    assert_eq!(h.inbox_len(ids[1]).await, 0);
    assert_eq!(h.inbox_len(ids[2]).await, 1);
    let report = function
        .fanout
        .deliver(&h.job("poison-2", ids))
        .await
        .unwrap();
    assert_eq!(
        report,
        FanoutReport {
            delivered: 2,
            skipped: 1,
            ..FanoutReport::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_not_started_before_the_deadline_is_handed_on_or_failed() {
    let h = harness();
    let a = client_id(&h.register("fingerprint-a").await);
    let function = h.fanout_function(None, Duration::from_secs(3));
    let jobs = [h.job("late-1", vec![a]), h.job("late-2", vec![a])];
    let response = function
        .handle(
            sqs_event(&jobs),
            Some(Instant::now() + Duration::from_secs(1)),
        )
        .await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, vec!["m0", "m1"], "with nowhere to hand them");
    assert_eq!(h.inbox_len(a).await, 0);

    let continuation = Arc::new(Captured::default());
    let function = FanoutFunction {
        continuation: Some(continuation.clone() as Arc<dyn Queue>),
        ..function
    };
    let response = function
        .handle(
            sqs_event(&jobs),
            Some(Instant::now() + Duration::from_secs(1)),
        )
        .await;
    assert!(response.batch_item_failures.is_empty());
    let handed: Vec<String> = continuation
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|j| j.publish_id.clone())
        .collect();
    assert_eq!(handed, vec!["late-1", "late-2"], "handed on whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_stops_before_a_message_still_being_written() {
    let h = harness();
    let creds = h.register("fingerprint-gap").await;
    let to = [creds["client_id"].as_str().unwrap().to_string()];
    for n in 0..5 {
        assert_eq!(
            h.publish(None, &to, json!({ "n": n })).await.status,
            StatusCode::ACCEPTED
        );
    }
    *h.faults.hidden.lock().unwrap() = Some(3);
    let reply = h.poll(&creds, 0).await;
    let ids: Vec<u64> = reply.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(reply.body["next_cursor"], 2);
    assert_eq!(
        h.poll(&creds, 2).await.status,
        StatusCode::NO_CONTENT,
        "nothing is skipped while 3 is invisible"
    );
    *h.faults.hidden.lock().unwrap() = None;
    let reply = h.poll(&creds, 2).await;
    assert_eq!(reply.body["messages"][0]["id"], 3);
    assert_eq!(reply.body["next_cursor"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_of_large_messages_comes_in_pages_under_5_mib() {
    let h = harness();
    let creds = h.register("fingerprint-big").await;
    let to = [creds["client_id"].as_str().unwrap().to_string()];
    // 64 KiB of JSON payload each, the most a publish takes.
    let payload = json!({ "blob": "x".repeat(64 * 1024 - 20) });
    for _ in 0..100 {
        let reply = h.publish(None, &to, payload.clone()).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    let (ids, pages) = h.poll_all(&creds).await;
    assert_eq!(ids, (1..=100).collect::<Vec<_>>());
    assert!(pages.len() >= 2, "{pages:?}");
    assert!(pages.iter().all(|b| *b <= 5 * 1024 * 1024), "{pages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_retried_with_its_key_is_answered_the_same_and_delivered_once() {
    let h = harness();
    let creds = h.register("fingerprint-key").await;
    let to = [creds["client_id"].as_str().unwrap().to_string()];
    let first = h
        .publish(Some("order-42"), &to, json!({"door": "open"}))
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let again = h
        .publish(Some("order-42"), &to, json!({"door": "open"}))
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body, first.body, "same publish_id and recipients");
    assert_eq!(h.inbox_len(client_id(&creds)).await, 1);

    let other = h
        .publish(Some("order-42"), &to, json!({"door": "closed"}))
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
    for bad in ["", "has space", &"k".repeat(256), "naïve"] {
        let reply = h.publish(Some(bad), &to, json!({})).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
        assert_eq!(reply.body["error"]["code"], "validation_failed");
        assert!(reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"));
    }
    let longest = "k".repeat(255);
    assert_eq!(
        h.publish(Some(&longest), &to, json!({})).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(h.inbox_len(client_id(&creds)).await, 2);
}

/// Delivers the first job of the first publish, then fails: a publish that
/// died half-way.
struct FailsHalfWay {
    fanout: Fanout,
    failed: AtomicBool,
}

#[async_trait::async_trait]
impl Queue for FailsHalfWay {
    async fn enqueue(&self, jobs: Vec<FanoutJob>) -> Result<(), QueueError> {
        let fail = !self.failed.swap(true, Ordering::SeqCst);
        for (i, job) in jobs.iter().enumerate() {
            if fail && i == 1 {
                return Err(QueueError::Unavailable("queue throttled (injected)".into()));
            }
            self.fanout.deliver(job).await.unwrap();
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_that_failed_half_way_is_finished_by_its_retry_exactly_once() {
    let h = harness_with(|fanout| {
        Arc::new(FailsHalfWay {
            fanout,
            failed: AtomicBool::new(false),
        })
    });
    let a = h.register("fingerprint-first-job").await;
    let b = h.register("fingerprint-second-job").await;
    // 1,500 recipients make two jobs: `a` is in the first, `b` the second.
    let mut to: Vec<String> = (0..1500).map(|_| ClientId::new().to_string()).collect();
    to[0] = a["client_id"].as_str().unwrap().into();
    to[1400] = b["client_id"].as_str().unwrap().into();
    let failed = h.publish(Some("half-way"), &to, json!({"x": 1})).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.inbox_len(client_id(&a)).await, 1);
    assert_eq!(h.inbox_len(client_id(&b)).await, 0);
    let retried = h.publish(Some("half-way"), &to, json!({"x": 1})).await;
    assert_eq!(retried.status, StatusCode::ACCEPTED);
    assert_eq!(retried.body["recipients"], 1500);
    assert_eq!(h.inbox_len(client_id(&a)).await, 1, "not twice");
    assert_eq!(h.inbox_len(client_id(&b)).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_to_10000_recipients_with_a_64_kib_payload_is_accepted() {
    let h = harness();
    let creds = h.register("fingerprint-many").await;
    let mut to: Vec<String> = (0..10_000).map(|_| ClientId::new().to_string()).collect();
    to[9_999] = creds["client_id"].as_str().unwrap().into();
    let payload = json!({ "blob": "y".repeat(64 * 1024 - 20) });
    let reply = h.publish(None, &to, payload).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["recipients"], 10_000);
    assert_eq!(h.inbox_len(client_id(&creds)).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_of_sent_messages_stops_before_one_still_being_written() {
    let h = harness();
    let creds = h.register("fingerprint-sent-gap").await;
    let id = ClientId::parse(creds["client_id"].as_str().unwrap()).unwrap();
    for n in 1..=4u64 {
        let keys = Arc::clone(&h.keys);
        let sealer: Sealer = Arc::new(move |seq| {
            let plaintext = pigeonhole::envelope::plaintext("t", &json!({ "n": n }));
            Ok(NewMessage {
                kind: "sealed".into(),
                body: keys
                    .seal_at_rest(
                        &pigeonhole::handlers::send::outbox_context(id, seq),
                        &plaintext,
                    )
                    .unwrap(),
                created_at: pigeonhole::clock::Clock::now(&SystemClock),
                key_generation: 0,
                expires_at: None,
            })
        });
        let dedup = Dedup {
            key: format!("nonce:{n}"),
            digest: [n as u8; 32],
        };
        h.store
            .append(Mailbox::Outbox, id, dedup, sealer)
            .await
            .unwrap();
    }
    let h = &h;
    let read = |after: u64| {
        let uri = format!("/api/v1/clients/{id}/sent?after={after}");
        async move {
            h.call("GET", &uri, &[("x-admin-token", ADMIN)], String::new())
                .await
        }
    };
    *h.faults.hidden.lock().unwrap() = Some(2);
    let reply = read(0).await;
    let ids: Vec<u64> = reply.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![1],
        "3 and 4 wait while 2, just written, is invisible"
    );
    assert_eq!(reply.body["next_after"], 1);
    assert_eq!(read(1).await.status, StatusCode::NO_CONTENT);
    *h.faults.hidden.lock().unwrap() = None;
    let reply = read(1).await;
    assert_eq!(reply.body["messages"][0]["payload"], json!({ "n": 2 }));
    assert_eq!(reply.body["next_after"], 4);
}
