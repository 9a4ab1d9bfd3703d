//! Throughput of the main paths through the shared HTTP adapter on the
//! embedded SQLite store (no sockets: this measures Pigeonhole's own work).
//!
//! Run: `cargo bench -p pigeonhole --features sqlite --bench endpoints`
//! Prints one line per scenario: operations, elapsed time, ops/s, µs/op.
//!
//! `-- --emf` installs the Lambda functions' metrics recorder and, after
//! every request, renders what it recorded as a function does at the end of
//! an invocation (the lines are counted, not written), so the two runs side
//! by side give the recorder's cost per request and its bytes of log.

use bytes::Bytes;
use http::Request;
use pigeonhole::config::{Config, Secret};
use pigeonhole::crypto::Key;
use pigeonhole::metrics::emf::EmfHandle;
use pigeonhole::store::sqlite::SqliteStore;
use pigeonhole::App;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

const ADMIN: &str = "bench-admin";

/// The EMF recorder, with `--emf`.
static EMF: OnceLock<EmfHandle> = OnceLock::new();
/// Bytes of EMF log the requests produced.
static EMF_BYTES: AtomicUsize = AtomicUsize::new(0);

async fn call(app: &App, request: Request<Bytes>) -> (u16, Value) {
    let response = pigeonhole::http::handle(app, request).await;
    if let Some(emf) = EMF.get() {
        let lines = emf.take_lines(1_700_000_000_000);
        let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        EMF_BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
    let status = response.status().as_u16();
    let body = response.into_body();
    (
        status,
        if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        },
    )
}

fn report(name: &str, ops: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let emf = match EMF.get() {
        Some(_) => format!(
            "  {:>6.0} B EMF/op",
            EMF_BYTES.swap(0, Ordering::Relaxed) as f64 / ops as f64
        ),
        None => String::new(),
    };
    println!(
        "{name:<44} {ops:>6} ops  {:>8.1} ms  {:>9.0} ops/s  {:>7.1} µs/op{emf}",
        secs * 1000.0,
        ops as f64 / secs,
        secs * 1e6 / ops as f64
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--emf") {
        let handle = pigeonhole::metrics::emf::install("bench", "bench").unwrap();
        EMF.set(handle).ok();
        println!("with the EMF recorder, rendered after every request");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_lookup(
        |name| match name {
            "ADMIN_TOKEN" => Some(ADMIN.into()),
            "OPERATOR_TOKENS" => Some("bench-operator".into()),
            "MASTER_KEY" => Some(Key::from_bytes([1; 32]).to_base64()),
            "POLL_RATE_LIMIT" => Some("0".into()),
            // One process registering a thousand clients from no address.
            "REGISTER_RATE_LIMIT" => Some("0".into()),
            _ => None,
        },
        &Secret::ALL,
    )
    .unwrap();
    let app = App::in_process(
        &config,
        Arc::new(SqliteStore::open(&dir.path().join("bench.db")).unwrap()),
    )
    .unwrap();

    let register = |i: usize| {
        Request::post("/api/v1/clients/register")
            .header("content-type", "application/json")
            .body(Bytes::from(
                json!({"fingerprint": format!("bench-fingerprint-{i}")}).to_string(),
            ))
            .unwrap()
    };
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..1000 {
        clients.push(call(&app, register(i)).await.1);
    }
    report("register (new client)", 1000, started);

    let poll = |c: &Value| {
        Request::get("/api/v1/messages/poll")
            .header(
                "authorization",
                format!("Bearer {}", c["api_token"].as_str().unwrap()),
            )
            .header("x-client-id", c["client_id"].as_str().unwrap())
            .body(Bytes::new())
            .unwrap()
    };
    let started = Instant::now();
    for _ in 0..5 {
        for c in &clients {
            assert_eq!(call(&app, poll(c)).await.0, 204);
        }
    }
    report("poll, nothing new (204)", 5000, started);

    let ids: Vec<&str> = clients
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    let publish =
        json!({"to_client_ids": ids, "type": "bench", "payload": {"text": "x".repeat(200)}})
            .to_string();
    let started = Instant::now();
    let (status, _) = call(
        &app,
        Request::post("/api/v1/messages/publish")
            .header("x-admin-token", ADMIN)
            .header("content-type", "application/json")
            .body(Bytes::from(publish))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202);
    report(
        "publish + in-process fan-out (per recipient)",
        1000,
        started,
    );

    let started = Instant::now();
    for c in &clients {
        assert_eq!(call(&app, poll(c)).await.0, 200);
    }
    report("poll, one message (200)", 1000, started);
}
