//! DynamoDB and SQS as they really fail: throttling, transaction conflicts,
//! 5xx and lost responses, injected by `scripts/fault_proxy.py` between the
//! server and the emulator (moto never fails on its own).
//!
//! - `fault_proxy_speaks_the_sdk_errors`: the proxy's faults are what the
//!   AWS SDK for Rust parses as the intended errors (needs only moto; runs
//!   on every backend).
//! - `publish_and_poll_under_injected_faults`: the local server in
//!   `--backend aws` mode behind the proxy at 20 % faults, with concurrent
//!   publishers (retrying with an `Idempotency-Key`) and acking pollers. The
//!   history of every request is recorded and checked at the end, with the
//!   faults off: each accepted publish delivered exactly once to each of its
//!   recipients, ids strictly increasing and pages contiguous, no 500 ever,
//!   nothing dead-lettered. Skipped unless `PIGEONHOLE_E2E_BACKEND=aws`.
//!
//! `PIGEONHOLE_FAULT_SEED=N` replays a run's fault decisions (the seed is
//! printed at the end of every run; the replay is approximate because
//! requests race), `PIGEONHOLE_FAULT_RATE` changes the rate (default 0.2).
//! See docs/testing.md.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::RequestId;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
    ScalarAttributeType, TransactWriteItem,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;

// ---------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------

const SEED_VAR: &str = "PIGEONHOLE_FAULT_SEED";
const RATE_VAR: &str = "PIGEONHOLE_FAULT_RATE";

fn workspace_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// A running `scripts/fault_proxy.py`. It exits when this is dropped, and
/// also when the test process dies (its stdin is a pipe from this process,
/// and it watches for EOF).
struct FaultProxy {
    url: String,
    seed: u64,
    child: Child,
    _stdin: ChildStdin,
    _stdout: BufReader<ChildStdout>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl FaultProxy {
    /// Starts the proxy in front of `upstream`; `args` are extra options
    /// (`--rate`, `--seed`, weights).
    fn start(upstream: &str, args: &[String]) -> FaultProxy {
        let ws = workspace_dir();
        let python = ws.join("target/pyenv/bin/python");
        assert!(
            python.is_file(),
            "the fault proxy runs with the Python of target/pyenv, which does not exist: \
             python3 -m venv target/pyenv && target/pyenv/bin/pip install -r \
             tests/python/requirements.txt -r tests/requirements-aws.txt"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = std::fs::File::create(dir.path().join("proxy.log")).expect("proxy log");
        let mut child = Command::new(python)
            .arg(ws.join("scripts/fault_proxy.py"))
            .args(["--upstream", upstream, "--listen", "127.0.0.1:0"])
            .arg("--exit-on-stdin-eof")
            .args(args)
            .current_dir(&ws)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start scripts/fault_proxy.py");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        // listening on http://127.0.0.1:P seed=N
        let parsed = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_once(" seed="))
            .and_then(|(url, seed)| Some((url.to_string(), seed.parse::<u64>().ok()?)));
        let Some((url, seed)) = parsed else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fault_proxy.py did not say where it listens (got {line:?}); its stderr:\n{}",
                std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default()
            );
        };
        FaultProxy {
            url,
            seed,
            child,
            _stdin: stdin,
            _stdout: stdout,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// `GET /_fault_proxy/stats`.
    async fn stats(&self) -> Value {
        let resp = self
            .http
            .get(format!("{}/_fault_proxy/stats", self.url))
            .send()
            .await
            .expect("fault proxy stats");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("stats are JSON")
    }

    /// `POST /_fault_proxy/rate`.
    async fn set_rate(&self, rate: f64) {
        let resp = self
            .http
            .post(format!("{}/_fault_proxy/rate", self.url))
            .json(&json!({ "rate": rate }))
            .send()
            .await
            .expect("fault proxy rate");
        assert_eq!(resp.status(), StatusCode::OK, "setting the fault rate");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Only faults of `kind`, at `rate`, with a fixed seed: one client sending
/// one request at a time gets the same faults in every run.
fn only(kind: &str, rate: f64) -> Vec<String> {
    let mut args = vec![
        "--rate".to_string(),
        rate.to_string(),
        "--seed".into(),
        "1".into(),
    ];
    for k in ["throttle", "conflict", "server-error", "lost"] {
        args.push(format!("--{k}"));
        args.push(if k == kind { "1" } else { "0" }.into());
    }
    args
}

// ---------------------------------------------------------------------------
// The proxy's errors, as the AWS SDK for Rust sees them
// ---------------------------------------------------------------------------

/// SDK clients for `endpoint` with retries as given.
async fn sdk_clients(
    endpoint: &str,
    retry: aws_config::retry::RetryConfig,
) -> (aws_sdk_dynamodb::Client, aws_sdk_sqs::Client) {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .empty_test_environment()
        .http_client(pigeonhole::aws::https_client())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "faults",
        ))
        .endpoint_url(endpoint)
        .retry_config(retry)
        .load()
        .await;
    (
        aws_sdk_dynamodb::Client::new(&sdk),
        aws_sdk_sqs::Client::new(&sdk),
    )
}

/// The HTTP status of an SDK error, when there was an answer.
fn status_of<E>(e: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_speaks_the_sdk_errors() {
    use aws_config::retry::RetryConfig;
    // One proxy has one upstream: it needs DynamoDB and SQS on one endpoint.
    if std::env::var("PIGEONHOLE_TEST_SQS_ENDPOINT").is_ok_and(|v| !v.trim().is_empty()) {
        eprintln!(
            "skipped: fault_proxy_speaks_the_sdk_errors needs DynamoDB and SQS on one endpoint \
             (PIGEONHOLE_TEST_SQS_ENDPOINT is set)"
        );
        return;
    }
    let upstream = support::aws_support::endpoint();
    let (ddb, sqs) = sdk_clients(upstream, RetryConfig::disabled()).await;
    let prefix = support::aws_support::unique_prefix();
    let table = format!("{prefix}faults");
    ddb.create_table()
        .table_name(&table)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("k")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("k")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");
    let queue = sqs
        .create_queue()
        .queue_name(format!("{prefix}faults"))
        .send()
        .await
        .expect("create queue")
        .queue_url
        .unwrap();
    let key = |k: &str| AttributeValue::S(k.to_string());
    let put = |k: String| {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&table)
                    .item("k", AttributeValue::S(k))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    const N: usize = 16;

    // Throttling: the three DynamoDB flavours, both SQS flavours.
    {
        let proxy = FaultProxy::start(upstream, &only("throttle", 1.0));
        let (ddb, sqs) = sdk_clients(&proxy.url, RetryConfig::disabled()).await;
        let mut codes = BTreeMap::new();
        // Enough draws that each of three codes shows (missing one: < 1e-7).
        const DRAWS: usize = 40;
        for _ in 0..DRAWS {
            let e = ddb
                .get_item()
                .table_name(&table)
                .key("k", key("a"))
                .send()
                .await
                .expect_err("throttled");
            assert_eq!(status_of(&e), Some(400));
            let se = e.as_service_error().expect("a service error");
            assert!(
                se.is_throttling_exception()
                    || se.is_provisioned_throughput_exceeded_exception()
                    || se.is_request_limit_exceeded(),
                "not a throttling error: {se:?}"
            );
            assert!(se.request_id().is_some(), "no request id: {se:?}");
            *codes.entry(se.code().unwrap().to_string()).or_insert(0) += 1;
        }
        for _ in 0..N {
            let e = sqs
                .send_message()
                .queue_url(&queue)
                .message_body("x")
                .send()
                .await
                .expect_err("throttled");
            let se = e.as_service_error().expect("a service error");
            assert!(
                se.is_request_throttled() || se.code() == Some("ThrottlingException"),
                "not a throttling error: {se:?}"
            );
            *codes
                .entry(format!("sqs {}", se.code().unwrap()))
                .or_insert(0) += 1;
        }
        assert_eq!(
            codes.keys().collect::<Vec<_>>(),
            [
                "ProvisionedThroughputExceededException",
                "RequestLimitExceeded",
                "ThrottlingException",
                "sqs RequestThrottled",
                "sqs ThrottlingException"
            ],
            "{codes:?}"
        );
        let stats = proxy.stats().await;
        assert_eq!(stats["faults"]["throttle"], json!(DRAWS + N), "{stats}");
    }

    // Conflicts: TransactionCanceledException with one reason per item, and
    // TransactionConflictException for single-item writes; reads never.
    {
        let proxy = FaultProxy::start(upstream, &only("conflict", 1.0));
        let (ddb, sqs) = sdk_clients(&proxy.url, RetryConfig::disabled()).await;
        for i in 0..N {
            let items = 1 + i % 4;
            let e = ddb
                .transact_write_items()
                .set_transact_items(Some((0..items).map(|j| put(format!("t{i}-{j}"))).collect()))
                .send()
                .await
                .expect_err("conflict");
            assert_eq!(status_of(&e), Some(400));
            let se = e.into_service_error();
            let aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(tc) = &se else {
                panic!("not a TransactionCanceledException: {se:?}");
            };
            let codes: Vec<&str> = tc
                .cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("?"))
                .collect();
            assert_eq!(codes.len(), items, "one reason per item: {codes:?}");
            let failed: Vec<&&str> = codes.iter().filter(|c| **c != "None").collect();
            assert_eq!(failed.len(), 1, "{codes:?}");
            assert!(
                [
                    "TransactionConflict",
                    "ThrottlingError",
                    "ProvisionedThroughputExceeded"
                ]
                .contains(failed[0]),
                "{codes:?}"
            );
            let message = tc.message().unwrap_or_default();
            assert_eq!(
                message,
                format!(
                    "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
                    codes.join(", ")
                )
            );
        }
        let e = ddb
            .put_item()
            .table_name(&table)
            .item("k", key("p"))
            .send()
            .await
            .expect_err("conflict");
        assert!(
            e.as_service_error()
                .is_some_and(|se| se.is_transaction_conflict_exception()),
            "{e:?}"
        );
        ddb.get_item()
            .table_name(&table)
            .key("k", key("p"))
            .send()
            .await
            .expect("reads never conflict");
        sqs.send_message()
            .queue_url(&queue)
            .message_body("x")
            .send()
            .await
            .expect("SQS never conflicts");
        // None of it reached moto.
        let (real, _) = sdk_clients(upstream, RetryConfig::disabled()).await;
        let got = real
            .get_item()
            .table_name(&table)
            .key("k", key("p"))
            .send()
            .await
            .unwrap();
        assert!(got.item.is_none(), "a conflicting put was written");
    }

    // Server errors: 500 InternalServerError / InternalError, some 503.
    {
        let proxy = FaultProxy::start(upstream, &only("server-error", 1.0));
        let (ddb, sqs) = sdk_clients(&proxy.url, RetryConfig::disabled()).await;
        let mut seen = BTreeMap::new();
        for _ in 0..N {
            let e = ddb
                .get_item()
                .table_name(&table)
                .key("k", key("a"))
                .send()
                .await
                .expect_err("5xx");
            let status = status_of(&e).unwrap();
            let se = e.into_service_error();
            match status {
                500 => assert!(se.is_internal_server_error(), "{se:?}"),
                503 => assert_eq!(se.code(), Some("ServiceUnavailable"), "{se:?}"),
                s => panic!("status {s}: {se:?}"),
            }
            *seen
                .entry(format!("{status} {}", se.code().unwrap()))
                .or_insert(0) += 1;
        }
        for _ in 0..N {
            let e = sqs
                .receive_message()
                .queue_url(&queue)
                .send()
                .await
                .expect_err("5xx");
            let status = status_of(&e).unwrap();
            let se = e.into_service_error();
            *seen
                .entry(format!("sqs {status} {}", se.code().unwrap()))
                .or_insert(0) += 1;
        }
        let kinds: Vec<&String> = seen.keys().collect();
        assert_eq!(
            kinds,
            [
                "500 InternalServerError",
                "503 ServiceUnavailable",
                "sqs 500 InternalError",
                "sqs 503 ServiceUnavailable"
            ],
            "{seen:?}"
        );
    }

    // Lost responses: the write happens, the client hears a 500 or nothing.
    {
        let proxy = FaultProxy::start(upstream, &only("lost", 1.0));
        let (ddb, sqs) = sdk_clients(&proxy.url, RetryConfig::disabled()).await;
        let (real_ddb, real_sqs) = sdk_clients(upstream, RetryConfig::disabled()).await;
        let (mut answered_500, mut dropped) = (0, 0);
        for i in 0..N {
            let e = ddb
                .put_item()
                .table_name(&table)
                .item("k", key(&format!("lost{i}")))
                .send()
                .await
                .expect_err("lost");
            match &e {
                SdkError::ServiceError(se) if se.err().is_internal_server_error() => {
                    answered_500 += 1
                }
                SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => dropped += 1,
                other => panic!("unexpected error for a lost response: {other:?}"),
            }
            let got = real_ddb
                .get_item()
                .table_name(&table)
                .key("k", key(&format!("lost{i}")))
                .consistent_read(true)
                .send()
                .await
                .unwrap();
            assert!(got.item.is_some(), "lost put {i} was not written");
        }
        assert!(answered_500 > 0 && dropped > 0, "{answered_500} {dropped}");
        let lost_queue = real_sqs
            .create_queue()
            .queue_name(format!("{prefix}lost"))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        for _ in 0..4 {
            sqs.send_message()
                .queue_url(&lost_queue)
                .message_body("x")
                .send()
                .await
                .expect_err("lost");
        }
        let attrs = real_sqs
            .get_queue_attributes()
            .queue_url(&lost_queue)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        assert_eq!(
            attrs
                .attributes
                .unwrap()
                .values()
                .next()
                .map(String::as_str),
            Some("4"),
            "every lost SendMessage was enqueued"
        );

        // The SDK's standard retry treats both a 500 and a dropped
        // connection as transient: three attempts reach the proxy.
        let retrying = RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(5));
        let (ddb, _) = sdk_clients(&proxy.url, retrying).await;
        let before = proxy.stats().await["by_operation"]["DynamoDB_20120810.PutItem"]["requests"]
            .as_u64()
            .unwrap();
        ddb.put_item()
            .table_name(&table)
            .item("k", key("retried"))
            .send()
            .await
            .expect_err("lost three times");
        let after = proxy.stats().await["by_operation"]["DynamoDB_20120810.PutItem"]["requests"]
            .as_u64()
            .unwrap();
        assert_eq!(after - before, 3, "the SDK retried a lost response twice");
    }

    // Rate 0: everything passes, including moto's own API; the rate can be
    // changed at run time.
    {
        let proxy = FaultProxy::start(upstream, &["--rate".into(), "0".into()]);
        let (ddb, sqs) = sdk_clients(&proxy.url, RetryConfig::disabled()).await;
        // One transaction only: moto copies all its tables for each, which
        // takes seconds once the rest of the suite has filled them.
        ddb.transact_write_items()
            .transact_items(put("ok0".into()))
            .transact_items(put("ok0b".into()))
            .send()
            .await
            .expect("no faults at rate 0");
        for i in 0..N {
            ddb.get_item()
                .table_name(&table)
                .key("k", key(&format!("ok{i}")))
                .send()
                .await
                .expect("no faults at rate 0");
            sqs.send_message()
                .queue_url(&queue)
                .message_body("x")
                .send()
                .await
                .expect("no faults at rate 0");
        }
        // Not the JSON protocol: passed through as it is (on moto, its
        // dashboard; not /moto-api/data.json, which dumps all of its state).
        let via_proxy = reqwest::get(format!("{}/moto-api/", proxy.url))
            .await
            .unwrap();
        let direct = reqwest::get(format!("{upstream}/moto-api/")).await.unwrap();
        assert_eq!(via_proxy.status(), direct.status());
        if direct.status() == StatusCode::OK {
            assert_eq!(
                via_proxy.bytes().await.unwrap(),
                direct.bytes().await.unwrap(),
                "the proxy changed a passed-through answer"
            );
        }
        let stats = proxy.stats().await;
        assert_eq!(stats["total_faults"], json!(0), "{stats}");
        assert_eq!(stats["eligible"], json!(1 + 2 * N), "{stats}");
        proxy.set_rate(1.0).await;
        ddb.get_item()
            .table_name(&table)
            .key("k", key("a"))
            .send()
            .await
            .expect_err("faults at rate 1");
        assert!(proxy.log().is_empty(), "proxy stderr: {}", proxy.log());
    }
}

// ---------------------------------------------------------------------------
// The end-to-end run under faults
// ---------------------------------------------------------------------------

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 20;
const CLIENTS: usize = 6;
/// Each publish goes to 3 of the clients.
const FAN: [usize; 3] = [0, 1, 3];
const POLL_LIMIT: u32 = 7;
/// Attempts per publish (the first and the retries).
const PUBLISH_ATTEMPTS: usize = 12;
/// The fan-out queue's visibility timeout in this test (the template's is
/// 720 s): a job whose fan-out failed comes back after this long.
const VISIBILITY_SECS: &str = "20";
/// A receive of the server's fan-out loop that started before the
/// visibility timeout was shortened still hides what it gets for 720 s: it
/// long-polls for 2 s, and moto looks for messages once a second.
const ORPHANED_RECEIVE: Duration = Duration::from_secs(4);
/// Publishers stop retrying after this long.
const PUBLISH_BUDGET: Duration = Duration::from_secs(60);
/// The faults stay on until the fan-out queue is empty, at most this long.
const FAULT_BUDGET: Duration = Duration::from_secs(75);
/// Everything (fan-out, draining the inboxes) ends by then.
const HARD_BUDGET: Duration = Duration::from_secs(140);
/// How long a poller waits after a 204.
const IDLE_POLL: Duration = Duration::from_millis(250);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One request and what came back, Jepsen-style.
#[derive(Clone, Debug)]
struct Event {
    at: Duration,
    op: &'static str,
    who: String,
    /// `None`: no HTTP answer (connection error, timeout).
    status: Option<u16>,
    detail: String,
}

#[derive(Clone)]
struct History {
    started: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl History {
    fn new() -> History {
        History {
            started: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn record(&self, op: &'static str, who: &str, status: Option<u16>, detail: String) {
        let e = Event {
            at: self.started.elapsed(),
            op,
            who: who.to_string(),
            status,
            detail,
        };
        self.events.lock().unwrap().push(e);
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// `publish: 202×80 500×2 | poll: 200×…` (statuses per operation).
    fn summary(events: &[Event]) -> String {
        let mut counts: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
        for e in events {
            let s = e.status.map_or("network".to_string(), |s| s.to_string());
            *counts.entry(e.op).or_default().entry(s).or_default() += 1;
        }
        counts
            .iter()
            .map(|(op, by)| {
                let parts: Vec<String> = by.iter().map(|(s, n)| format!("{s}×{n}")).collect();
                format!("{op}: {}", parts.join(" "))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

fn short(text: &str) -> String {
    let t: String = text.chars().take(160).collect();
    t.replace('\n', " ")
}

/// How long a 503/429 asks to wait (`Retry-After`, seconds), at most 1 s
/// here; `None` without the header.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis((25u64 << attempt.min(5)).min(800))
}

/// One logical publish and how it ended.
#[derive(Clone, Debug)]
struct Publish {
    marker: String,
    recipients: Vec<usize>,
    /// The publish id of the 202, if one came.
    accepted: Option<String>,
    attempts: usize,
}

/// Registers with retries (register is idempotent per fingerprint).
async fn register(s: &Server, history: &History, who: &str) -> Creds {
    let fingerprint = random_fingerprint();
    for attempt in 0..PUBLISH_ATTEMPTS {
        let sent = s
            .request(Method::POST, &format!("{API}/clients/register"))
            .json(&json!({ "fingerprint": fingerprint }))
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let wait = retry_after(&resp);
                let text = resp.text().await.unwrap_or_default();
                history.record("register", who, Some(status), short(&text));
                if status == 200 || status == 201 {
                    let v: Value = serde_json::from_str(&text).expect("register body is JSON");
                    return Creds::from_json(&v);
                }
                assert!(
                    status >= 500 || status == 429,
                    "register answered {status}: {text}"
                );
                tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
            }
            Err(e) => {
                history.record("register", who, None, e.to_string());
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    panic!(
        "{who}: register failed {PUBLISH_ATTEMPTS} times; history: {}",
        History::summary(&history.events())
    );
}

async fn publisher(
    s: Arc<Server>,
    clients: Arc<Vec<Creds>>,
    history: History,
    p: usize,
    deadline: Instant,
) -> Vec<Publish> {
    let who = format!("publisher {p}");
    let mut out = Vec::new();
    for n in 0..PER_PUBLISHER {
        let g = p * PER_PUBLISHER + n;
        let recipients: Vec<usize> = FAN.iter().map(|k| (g + k) % CLIENTS).collect();
        let marker = format!("p{p}-n{n}-{}", uuid::Uuid::new_v4().simple());
        let key = uuid::Uuid::new_v4().to_string();
        // Serialised once: every retry sends the very same bytes.
        let body = serde_json::to_vec(&json!({
            "to_client_ids": recipients.iter().map(|&r| clients[r].client_id.clone()).collect::<Vec<_>>(),
            "type": "fault",
            "payload": { "marker": marker, "publisher": p, "n": n },
        }))
        .unwrap();
        let mut publish = Publish {
            marker: marker.clone(),
            recipients,
            accepted: None,
            attempts: 0,
        };
        while publish.attempts < PUBLISH_ATTEMPTS && Instant::now() < deadline {
            let attempt = publish.attempts;
            publish.attempts += 1;
            let sent = s
                .request(Method::POST, &format!("{API}/messages/publish"))
                .header("X-Admin-Token", s.admin_token())
                .header("Idempotency-Key", &key)
                .header("Content-Type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let resp = match sent {
                Ok(resp) => resp,
                Err(e) => {
                    history.record("publish", &who, None, format!("{marker}: {e}"));
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let wait = retry_after(&resp);
            let text = resp.text().await.unwrap_or_default();
            history.record(
                "publish",
                &who,
                Some(status),
                format!("{marker} attempt {}: {}", attempt + 1, short(&text)),
            );
            if status == 202 {
                let v: Value = serde_json::from_str(&text).expect("202 body is JSON");
                assert_eq!(v["recipients"], json!(FAN.len()), "{v}");
                publish.accepted = Some(v["publish_id"].as_str().expect("publish_id").into());
                break;
            }
            if status < 500 && status != 429 {
                break; // a 4xx: retrying cannot help; checked at the end
            }
            tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
        }
        out.push(publish);
    }
    out
}

/// What one poller saw.
struct Inbox {
    client: usize,
    /// (id, marker) in delivery order.
    delivered: Vec<(u64, String)>,
    violations: Vec<String>,
}

async fn poller(
    s: Arc<Server>,
    c: Creds,
    client: usize,
    history: History,
    drain: Arc<AtomicBool>,
    deadline: Instant,
) -> Inbox {
    let who = format!("client {client}");
    let mut inbox = Inbox {
        client,
        delivered: Vec::new(),
        violations: Vec::new(),
    };
    let mut last = 0u64;
    let mut attempt = 0usize;
    loop {
        if Instant::now() > deadline {
            inbox.violations.push(format!(
                "{who}: the inbox was not drained within {HARD_BUDGET:?} (last id {last})"
            ));
            return inbox;
        }
        // A 204 to a poll sent after the drain began means the inbox is done.
        let draining = drain.load(Ordering::SeqCst);
        let sent = s
            .poll_request(&c, &format!("cursor={last}&limit={POLL_LIMIT}"))
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                history.record("poll", &who, None, format!("cursor={last}: {e}"));
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        };
        let status = resp.status().as_u16();
        let wait = retry_after(&resp);
        let text = resp.text().await.unwrap_or_default();
        match status {
            200 => {
                attempt = 0;
                let body: Value = serde_json::from_str(&text).expect("poll body is JSON");
                let msgs = body["messages"].as_array().cloned().unwrap_or_default();
                let ids: Vec<u64> = msgs.iter().map(|m| m["id"].as_u64().unwrap()).collect();
                history.record(
                    "poll",
                    &who,
                    Some(200),
                    format!("cursor={last} ids={ids:?}"),
                );
                if ids.is_empty() {
                    inbox
                        .violations
                        .push(format!("{who}: 200 with no messages: {text}"));
                    continue;
                }
                if ids[0] != last + 1 || ids.windows(2).any(|w| w[1] != w[0] + 1) {
                    inbox.violations.push(format!(
                        "{who}: page {ids:?} after cursor {last} is not contiguous"
                    ));
                }
                if body["next_cursor"] != json!(ids.last().unwrap()) {
                    inbox.violations.push(format!(
                        "{who}: next_cursor {} for page {ids:?}",
                        body["next_cursor"]
                    ));
                }
                for (m, &id) in msgs.iter().zip(&ids) {
                    if id <= last {
                        inbox.violations.push(format!(
                            "{who}: id {id} delivered after {last} (not increasing)"
                        ));
                    }
                    last = last.max(id);
                    let pt = open_message(&c, m);
                    let marker = pt["payload"]["marker"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no marker in {pt}"))
                        .to_string();
                    inbox.delivered.push((id, marker));
                }
                ack(&s, &c, &who, last, &history).await;
            }
            204 => {
                attempt = 0;
                history.record("poll", &who, Some(204), format!("cursor={last}"));
                if draining {
                    return inbox;
                }
                tokio::time::sleep(IDLE_POLL).await;
            }
            503 | 429 => {
                history.record("poll", &who, Some(status), short(&text));
                attempt += 1;
                tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
            }
            _ => {
                history.record("poll", &who, Some(status), short(&text));
                if status < 500 {
                    inbox
                        .violations
                        .push(format!("{who}: poll answered {status}: {}", short(&text)));
                }
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

/// Acks `upto`, retrying a few times (a later ack would cover it anyway).
async fn ack(s: &Server, c: &Creds, who: &str, upto: u64, history: &History) {
    for attempt in 0..4 {
        let sent = c
            .auth(s.request(Method::POST, &format!("{API}/messages/ack")))
            .json(&json!({ "last_received_id": upto }))
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let wait = retry_after(&resp);
                let text = resp.text().await.unwrap_or_default();
                history.record(
                    "ack",
                    who,
                    Some(status),
                    format!("{upto}: {}", short(&text)),
                );
                if status == 200 {
                    return;
                }
                tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
            }
            Err(e) => {
                history.record("ack", who, None, format!("{upto}: {e}"));
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_and_poll_under_injected_faults() {
    if backend() != Backend::Aws {
        eprintln!(
            "skipped: publish_and_poll_under_injected_faults needs {BACKEND_VAR}=aws \
             (the faults are injected between the server and DynamoDB/SQS)"
        );
        return;
    }
    let history = History::new();
    let started = history.started;
    let rate = std::env::var(RATE_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "0.2".into());
    let mut args = vec!["--rate".to_string(), rate.clone()];
    if let Ok(seed) = std::env::var(SEED_VAR) {
        if !seed.trim().is_empty() {
            args.extend(["--seed".to_string(), seed.trim().to_string()]);
        }
    }
    let proxy = FaultProxy::start(support::aws_support::endpoint(), &args);
    eprintln!(
        "faults: proxy {} in front of {} at rate {rate}, seed {} (replay: {SEED_VAR}={})",
        proxy.url,
        support::aws_support::endpoint(),
        proxy.seed,
        proxy.seed
    );
    // Tables and queues are provisioned through the real endpoint; only the
    // server talks to the proxy.
    let s = Arc::new(
        Server::start_with(Config {
            extra_env: vec![
                ("AWS_ENDPOINT_URL".into(), proxy.url.clone()),
                ("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url.clone()),
                ("AWS_ENDPOINT_URL_SQS".into(), proxy.url.clone()),
            ],
            ..Config::default()
        })
        .await,
    );
    let aws = s.aws().expect("aws backend");
    aws.sqs
        .set_queue_attributes()
        .queue_url(&aws.env.provisioned.queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            VISIBILITY_SECS,
        )
        .send()
        .await
        .expect("shorten the fan-out queue's visibility timeout");
    let shortened = Instant::now();

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(register(&s, &history, &format!("client {i}")).await);
    }
    let clients = Arc::new(clients);
    tokio::time::sleep(ORPHANED_RECEIVE.saturating_sub(shortened.elapsed())).await;

    let drain = Arc::new(AtomicBool::new(false));
    let hard_deadline = started + HARD_BUDGET;
    let pollers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(poller(
                s.clone(),
                clients[i].clone(),
                i,
                history.clone(),
                drain.clone(),
                hard_deadline,
            ))
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            tokio::spawn(publisher(
                s.clone(),
                clients.clone(),
                history.clone(),
                p,
                started + PUBLISH_BUDGET,
            ))
        })
        .collect();
    let mut publishes = Vec::new();
    for p in publishers {
        publishes.extend(p.await.expect("publisher task"));
    }
    let publish_time = started.elapsed();

    // The faults stay on while the fan-out works through the queue (jobs
    // whose fan-out failed come back after the visibility timeout) and the
    // pollers poll; then they are turned off for the rest of the fan-out and
    // for the final reads.
    let mut violations = Vec::new();
    let mut pending_at_faults_off = s.fanout_pending().await;
    while Instant::now() < started + FAULT_BUDGET && pending_at_faults_off > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pending_at_faults_off = s.fanout_pending().await;
    }
    proxy.set_rate(0.0).await;
    let faults_off = started.elapsed();
    loop {
        let pending = s.fanout_pending().await;
        if pending == 0 {
            break;
        }
        if Instant::now() > hard_deadline {
            violations.push(format!(
                "the fan-out queue still holds {pending} job(s) after {HARD_BUDGET:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fanout_time = started.elapsed();
    drain.store(true, Ordering::SeqCst);
    let mut inboxes = Vec::new();
    for p in pollers {
        inboxes.push(p.await.expect("poller task"));
    }
    let total_time = started.elapsed();

    // ---- checks -----------------------------------------------------------
    let events = history.events();
    for inbox in &inboxes {
        violations.extend(inbox.violations.iter().cloned());
    }
    // Where each marker arrived: marker -> client -> count.
    let mut arrivals: HashMap<&str, BTreeMap<usize, usize>> = HashMap::new();
    for inbox in &inboxes {
        for (_, marker) in &inbox.delivered {
            *arrivals
                .entry(marker.as_str())
                .or_default()
                .entry(inbox.client)
                .or_default() += 1;
        }
    }
    let mut accepted = 0;
    let mut never_accepted = Vec::new();
    let (mut duplicated, mut lost, mut misdelivered) = (Vec::new(), Vec::new(), Vec::new());
    let by_marker: HashMap<&str, &Publish> =
        publishes.iter().map(|p| (p.marker.as_str(), p)).collect();
    for p in &publishes {
        let got = arrivals.get(p.marker.as_str());
        if p.accepted.is_some() {
            accepted += 1;
        } else {
            never_accepted.push(format!("{} ({} attempts)", p.marker, p.attempts));
        }
        for &r in &p.recipients {
            let n = got.and_then(|g| g.get(&r)).copied().unwrap_or(0);
            if n > 1 {
                duplicated.push(format!("{} ×{n} to client {r}", p.marker));
            } else if n == 0 && p.accepted.is_some() {
                lost.push(format!("{} to client {r}", p.marker));
            }
        }
    }
    for (marker, to) in &arrivals {
        match by_marker.get(marker) {
            None => misdelivered.push(format!("unknown marker {marker}")),
            Some(p) => {
                for r in to.keys() {
                    if !p.recipients.contains(r) {
                        misdelivered.push(format!("{marker} to client {r}, not a recipient"));
                    }
                }
            }
        }
    }
    if !never_accepted.is_empty() {
        violations.push(format!(
            "{} publish(es) never answered 202: {}",
            never_accepted.len(),
            never_accepted.join(", ")
        ));
    }
    if !duplicated.is_empty() {
        violations.push(format!(
            "{} delivery(ies) more than once: {}",
            duplicated.len(),
            duplicated.join(", ")
        ));
    }
    if !lost.is_empty() {
        violations.push(format!(
            "{} accepted delivery(ies) never arrived: {}",
            lost.len(),
            lost.join(", ")
        ));
    }
    if !misdelivered.is_empty() {
        violations.push(format!("misdelivered: {}", misdelivered.join(", ")));
    }

    // The final read, faults off: the stored inbox is exactly what the
    // poller saw.
    for inbox in &inboxes {
        let c = &clients[inbox.client];
        let mut stored = Vec::new();
        let mut cursor = 0;
        while let Some(body) = s.poll(c, Some(cursor), Some(100)).await {
            for m in body["messages"].as_array().unwrap() {
                let pt = open_message(c, m);
                stored.push((
                    m["id"].as_u64().unwrap(),
                    pt["payload"]["marker"].as_str().unwrap_or("").to_string(),
                ));
            }
            cursor = body["next_cursor"].as_u64().unwrap();
        }
        if stored != inbox.delivered {
            violations.push(format!(
                "client {}: the final read ({} messages, ids {:?}) differs from what the poller saw ({} messages, ids {:?})",
                inbox.client,
                stored.len(),
                stored.iter().map(|m| m.0).collect::<Vec<_>>(),
                inbox.delivered.len(),
                inbox.delivered.iter().map(|m| m.0).collect::<Vec<_>>(),
            ));
        }
    }

    // Nothing dead-lettered.
    {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = aws
            .sqs
            .get_queue_attributes()
            .queue_url(&aws.env.provisioned.dlq_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("dead-letter queue attributes");
        let dead: u64 = out
            .attributes
            .unwrap_or_default()
            .values()
            .map(|v| v.parse::<u64>().unwrap_or(0))
            .sum();
        if dead > 0 {
            violations.push(format!("{dead} fan-out job(s) in the dead-letter queue"));
        }
    }

    // No client ever saw a 500 (a 503 with Retry-After is fine).
    let fives: Vec<&Event> = events.iter().filter(|e| e.status == Some(500)).collect();
    if !fives.is_empty() {
        let per_op = History::summary(&fives.iter().map(|e| (*e).clone()).collect::<Vec<_>>());
        let examples: Vec<String> = fives
            .iter()
            .take(5)
            .map(|e| format!("[{:.1?} {} {}: {}]", e.at, e.op, e.who, e.detail))
            .collect();
        violations.push(format!(
            "{} responses with 500 ({per_op}); e.g. {}",
            fives.len(),
            examples.join(" ")
        ));
    }

    let stats = proxy.stats().await;
    if rate.parse::<f64>().is_ok_and(|r| r > 0.0) && stats["total_faults"] == json!(0) {
        violations.push("no fault was injected: the run proves nothing".into());
    }
    let delivered: usize = inboxes.iter().map(|i| i.delivered.len()).sum();
    let last_delivery = events
        .iter()
        .filter(|e| e.op == "poll" && e.status == Some(200))
        .map(|e| e.at)
        .max()
        .unwrap_or_default();
    let per_op: Vec<String> = stats["by_operation"]
        .as_object()
        .map(|ops| {
            ops.iter()
                .map(|(op, v)| {
                    let kinds: Vec<String> = ["throttle", "conflict", "server_error", "lost"]
                        .iter()
                        .filter(|k| v[**k].as_u64().unwrap_or(0) > 0)
                        .map(|k| format!("{k} {}", v[*k]))
                        .collect();
                    format!("{op} {} ({})", v["requests"], kinds.join(", "))
                })
                .collect()
        })
        .unwrap_or_default();
    let summary = History::summary(&events);
    let report = format!(
        "faults: seed {seed} (replay with {SEED_VAR}={seed}), rate {rate}\n\
         faults: {accepted}/{} publishes accepted, {delivered} messages delivered to {CLIENTS} clients; \
         publishing done {publish_time:.1?}, faults off {faults_off:.1?} \
         ({pending_at_faults_off} fan-out job(s) pending then), fan-out done {fanout_time:.1?}, \
         last delivery {last_delivery:.1?}, total {total_time:.1?}\n\
         faults: history (status×count): {summary}\n\
         faults: injected {} faults into {} eligible requests ({} requests in all): {}\n\
         faults: by error: {}\n\
         faults: by operation (requests, faults): {}",
        publishes.len(),
        stats["total_faults"],
        stats["eligible"],
        stats["requests"],
        stats["faults"],
        stats["errors"],
        per_op.join("; "),
        seed = proxy.seed,
    );
    eprintln!("{report}");
    let proxy_log = proxy.log();
    if !proxy_log.trim().is_empty() {
        eprintln!("faults: proxy stderr:\n{proxy_log}");
    }
    if !violations.is_empty() {
        panic!(
            "{} violation(s) under injected faults (seed {seed}, replay with {SEED_VAR}={seed}):\n- {}\n\
             history (status×count): {summary}\n--- the server's last warnings and errors ---\n{}",
            violations.len(),
            violations.join("\n- "),
            warnings(&s.stderr(), 12),
            seed = proxy.seed,
        );
    }
}

/// The last `lines` WARN and ERROR lines of a log, each cut to 300 characters.
fn warnings(text: &str, lines: usize) -> String {
    let all: Vec<String> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(|l| l.chars().take(300).collect())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
