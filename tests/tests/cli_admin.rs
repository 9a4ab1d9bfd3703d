//! The `pigeonhole` CLI's admin, operator and load-test side against the real
//! local server: publish, clients (and `clients delete`), rate limiting
//! (polls, registrations, sends), bad tokens, simulate. Then, against a
//! scripted fake server (answers the real one cannot be made to give on
//! demand): publish retrying a 503 under the same `Idempotency-Key`, not
//! retrying a 422, `listen` waiting out a 503's `Retry-After`, register and
//! send waiting out a 429, `rotate` completing a rotation whose answer was
//! lost, `Content-Type: application/json` on every POST, names with terminal
//! escapes, and `--insecure-http` through a proxy. `inbox` (what clients
//! sent, read by the admin) runs against both: order, `--after`, `--json`,
//! errors and `--follow` against the real server; retries, Retry-After, the
//! backoff and escaping against the fake one.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn publish_to_file_reaches_every_listed_client() {
    let s = Server::start().await;
    let (a, b) = (Cli::new(&s), Cli::new(&s));
    let (id_a, id_b) = (a.register("a"), b.register("b"));

    let list = a.home.path().join("recipients.txt");
    std::fs::write(
        &list,
        format!(
            "# on-call\n{id_a}\n\n{}   # shouting\n{id_b}\n",
            id_b.to_uppercase()
        ),
    )
    .unwrap();
    let out = a.run_env(
        &[
            "publish",
            "--to-file",
            list.to_str().unwrap(),
            "--type",
            "notice",
            "--payload",
            "\"maintenance at 22:00\"",
            "--json",
        ],
        &[("PIGEONHOLE_ADMIN_TOKEN", s.admin_token())],
    );
    out.expect_ok();
    let receipt: Value = serde_json::from_str(out.stdout.trim()).expect("JSON receipt");
    assert_eq!(receipt["recipients"], json!(2), "duplicates removed");

    s.settle().await;
    for cli in [&a, &b] {
        let out = cli.run(&["listen", "--once", "--json"]);
        out.expect_ok();
        let msg: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(msg["payload"], json!("maintenance at 22:00"));
    }

    // A bad line is named; nothing is published.
    std::fs::write(&list, format!("{id_a}\nnot-a-uuid\n")).unwrap();
    let out = a.run_env(
        &[
            "publish",
            "--to-file",
            list.to_str().unwrap(),
            "--type",
            "t",
            "--payload",
            "1",
        ],
        &[("PIGEONHOLE_ADMIN_TOKEN", s.admin_token())],
    );
    out.expect_code(2);
    assert!(out.stderr.contains("line 2"), "{out:#?}");
    s.settle().await;
    a.run(&["listen", "--once"]).expect_code(3);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_unauthorized_with_a_non_zero_exit() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let id = cli.register("x");

    let out = cli.run(&[
        "publish",
        "--to",
        &id,
        "--type",
        "t",
        "--payload",
        "{}",
        "--admin-token",
        "wrong",
    ]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: unauthorized: "), "{out:#?}");

    let out = cli.run_env(&["clients"], &[("PIGEONHOLE_OPERATOR_TOKEN", "wrong")]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: unauthorized: "), "{out:#?}");

    // The token is never echoed, even in --help.
    let out = cli.run_env(
        &["publish", "--help"],
        &[("PIGEONHOLE_ADMIN_TOKEN", "super-secret-admin")],
    );
    out.expect_ok();
    assert!(!out.stdout.contains("super-secret-admin"), "{out:#?}");

    // Missing token: a usage error naming the flag.
    let out = cli.run(&["publish", "--to", &id, "--type", "t", "--payload", "{}"]);
    out.expect_code(2);
    assert!(out.stderr.contains("--admin-token"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_lists_sorts_filters_and_prints_json() {
    let s = Server::start().await;
    let (a, b) = (Cli::new(&s), Cli::new(&s));
    let id_a = a.register("zulu-online");
    let id_b = b.register("alpha-offline");
    // Only A makes an authenticated request, so only A is online.
    a.run(&["listen", "--once"]).expect_code(3);
    let op = [("PIGEONHOLE_OPERATOR_TOKEN", s.operator_token())];

    let out = a.run_env(&["clients"], &op);
    out.expect_ok();
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 4, "header, two rows, total: {out:#?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "NAME", "STATUS", "SENT", "LAST", "SEEN", "TAGS"]
    );
    // Online first, even though its name sorts last.
    assert!(lines[1].starts_with(&id_a), "{out:#?}");
    assert!(lines[1].contains("zulu-online") && lines[1].contains(" online "));
    assert!(
        lines[1].contains(" just now ") || lines[1].contains(" s ago "),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with(" -"), "no tags: {}", lines[1]);
    assert!(lines[2].starts_with(&id_b), "{out:#?}");
    assert!(lines[2].contains("offline") && lines[2].contains(" never "));
    assert_eq!(lines[3], "2 clients, 1 online");

    let out = a.run_env(&["clients", "--json"], &op);
    out.expect_ok();
    let all: Value = serde_json::from_str(&out.stdout).expect("--json is JSON");
    let all = all.as_array().expect("an array");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["id"], json!(id_a));
    assert_eq!(all[0]["status"], json!("online"));
    assert_eq!(all[1]["last_seen_at"], Value::Null);

    let out = a.run_env(&["clients", "--json", "--status", "offline"], &op);
    out.expect_ok();
    let offline: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(offline, json!([all[1].clone()]));

    let out = a.run_env(&["clients", "--status", "online", "--sort", "name"], &op);
    out.expect_ok();
    assert!(out.stdout.contains(&id_a) && !out.stdout.contains(&id_b));
    assert!(out.stdout.contains("1 of 2 clients shown"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_walks_every_page() {
    let s = Server::start().await;
    for _ in 0..5 {
        s.new_client().await;
    }
    let cli = Cli::new(&s);
    // Pages of 2 (a hidden testing flag; the default is the maximum, 1000).
    let out = cli.run_env(
        &["clients", "--json", "--sort", "created", "--page-size", "2"],
        &[("PIGEONHOLE_OPERATOR_TOKEN", s.operator_token())],
    );
    out.expect_ok();
    let got: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let (want, pages) = s.list_all_clients(2).await;
    assert_eq!(pages, 3);
    assert_eq!(got.len(), 5);
    // Sorted by creation time, whatever order the store's pages came in.
    let created: Vec<&str> = got
        .iter()
        .map(|c| c["created_at"].as_str().unwrap())
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] <= w[1]),
        "--sort created: {created:?}"
    );
    let by_id = |mut v: Vec<Value>| {
        v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        v
    };
    assert_eq!(by_id(got), by_id(want), "every client of every page");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_poll_is_reported_cleanly() {
    let s = Server::start_with(Config {
        poll_rate_limit: Some("1".into()),
        ..Config::default()
    })
    .await;
    let cli = Cli::new(&s);
    cli.register("eager");
    cli.run(&["listen", "--once"]).expect_code(3);
    let out = cli.run(&["listen", "--once"]);
    out.expect_code(1);
    assert!(
        out.stderr.starts_with("error: rate_limited: "),
        "second poll: {out:#?}"
    );
    assert!(out.stderr.contains("retry after"), "{out:#?}");

    // The loop waits instead of failing; Ctrl-C still ends it with 0.
    let mut child = cli.spawn(&["listen", "--interval-base-ms", "100"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !child.stderr().contains("rate limited") {
        assert!(std::time::Instant::now() < deadline, "{}", child.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    child.interrupt();
    let status = child.wait_timeout(Duration::from_secs(10));
    let out = child.output(status);
    out.expect_ok();
    assert!(out.stderr.contains("next poll in"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn simulate_polls_decrypts_and_stops_by_itself() {
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let started = std::time::Instant::now();
    let out = cli.run(&[
        "simulate",
        "--clients",
        "4",
        "--duration",
        "3",
        "--interval-base-ms",
        "100",
        "--publish-every",
        "0.5",
        "--admin-token",
        s.admin_token(),
        "--json",
    ]);
    out.expect_ok();
    assert!(started.elapsed() < Duration::from_secs(20), "bounded");
    let summary: Value = serde_json::from_str(out.stdout.trim()).expect("JSON summary");
    assert_eq!(summary["clients"], json!(4), "{summary}");
    assert!(summary["polls"].as_u64().unwrap() >= 8, "{summary}");
    assert!(summary["received"].as_u64().unwrap() >= 4, "{summary}");
    assert_eq!(summary["failed_verification"], json!(0), "{summary}");
    assert_eq!(summary["errors"], json!(0), "{summary}");
    assert!(summary["p50_ms"].as_f64().is_some(), "{summary}");
    assert!(summary["p99_ms"].as_f64().is_some(), "{summary}");
    // The peak-to-mean ratio of polls per second is reported. With 4
    // clients over 3 one-second buckets it is too noisy to bound tightly.
    let ratio = summary["peak_to_mean"]
        .as_f64()
        .expect("a peak-to-mean ratio");
    assert!(ratio.is_finite() && ratio >= 1.0, "{summary}");
    // The delivery lag of what was published and received: publish sent to
    // message received, so at most the run's 3 s plus its grace.
    let lag_p50 = summary["delivery_p50_ms"].as_f64().expect("a p50 lag");
    let lag_p99 = summary["delivery_p99_ms"].as_f64().expect("a p99 lag");
    assert!(0.0 <= lag_p50 && lag_p50 <= lag_p99, "{summary}");
    assert!(lag_p99 < 10_000.0, "{summary}");

    let (clients, _) = s.list_all_clients(100).await;
    let mut names: Vec<&str> = clients
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["sim-1", "sim-2", "sim-3", "sim-4"]);
    // Nothing was saved: simulate needs no profile.
    assert!(!cli.config_path().exists());

    // The human summary.
    let out = cli.run(&[
        "simulate",
        "--clients",
        "2",
        "--duration",
        "1",
        "--interval-base-ms",
        "100",
    ]);
    out.expect_ok();
    assert!(out.stdout.contains("simulated 2 clients"), "{out:#?}");
    assert!(out.stdout.contains("latency    p50"), "{out:#?}");
    assert!(out.stdout.contains("peak-to-mean "), "{out:#?}");
    // Nothing published: no lag to report, and it says why.
    assert!(
        out.stdout.contains("delivery   - (nothing published"),
        "{out:#?}"
    );
}

// ---------------------------------------------------------------------------
// clients delete, register and send limits (need the issue-8 endpoints)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn clients_delete_revokes_a_client_and_a_second_delete_is_not_found() {
    let s = Server::start().await;
    let (keep, gone) = (Cli::new(&s), Cli::new(&s));
    let id_keep = keep.register("keeper");
    let id_gone = gone.register("stolen-laptop");
    let op = [("PIGEONHOLE_OPERATOR_TOKEN", s.operator_token())];

    // Without --yes and without a terminal (stdin is /dev/null): refused,
    // and nothing is deleted.
    let out = keep.run_env(&["clients", "delete", &id_gone], &op);
    out.expect_code(2);
    assert!(out.stderr.contains("--yes"), "{out:#?}");
    assert!(out.stderr.contains(&id_gone), "names the client: {out:#?}");
    gone.run(&["listen", "--once"]).expect_code(3);

    let out = keep.run_env(
        &["clients", "delete", &id_gone.to_uppercase(), "--yes"],
        &op,
    );
    out.expect_ok();
    assert_eq!(
        out.stdout.trim(),
        format!("Deleted client {id_gone}."),
        "{out:#?}"
    );

    // Gone from the listing; the other client stays.
    let out = keep.run_env(&["clients", "--json"], &op);
    out.expect_ok();
    let listed: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let ids: Vec<&str> = listed.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id_keep.as_str()]);
    let out = keep.run_env(&["clients"], &op);
    out.expect_ok();
    assert!(!out.stdout.contains(&id_gone), "{out:#?}");
    assert!(out.stdout.contains("1 clients, "), "{out:#?}");

    // Its token is refused at once.
    let out = gone.run(&["listen", "--once"]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: unauthorized: "), "{out:#?}");

    // Again: an error naming not_found, exit 1.
    let out = keep.run_env(&["clients", "delete", &id_gone, "--yes"], &op);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: not_found: "), "{out:#?}");

    // Not a UUID: a usage error; a wrong token: unauthorized.
    let out = keep.run_env(&["clients", "delete", "laptop", "--yes"], &op);
    out.expect_code(2);
    assert!(out.stderr.contains("not a client id"), "{out:#?}");
    let out = keep.run_env(
        &["clients", "delete", &id_keep, "--yes"],
        &[("PIGEONHOLE_OPERATOR_TOKEN", "wrong")],
    );
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: unauthorized: "), "{out:#?}");
    keep.run(&["listen", "--once"]).expect_code(3);
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_and_sends_are_rate_limited_except_with_the_admin_token() {
    let s = Server::start_with(Config {
        extra_env: vec![
            ("REGISTER_RATE_LIMIT".into(), "1".into()),
            // No exemption for loopback: this test's CLI is on 127.0.0.1.
            ("REGISTER_RATE_LIMIT_EXEMPT".into(), String::new()),
            ("SEND_RATE_LIMIT".into(), "1".into()),
        ],
        ..Config::default()
    })
    .await;
    let (a, b) = (Cli::new(&s), Cli::new(&s));
    a.run(&["register", "--fingerprint", &random_fingerprint()])
        .expect_ok();
    let out = b.run(&[
        "register",
        "--fingerprint",
        &random_fingerprint(),
        "--retries",
        "0",
    ]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: rate_limited: "), "{out:#?}");
    assert!(out.stderr.contains("retry after"), "{out:#?}");
    assert!(!b.config_path().exists());

    // simulate with the admin token: its registrations are not limited.
    let out = a.run(&[
        "simulate",
        "--clients",
        "3",
        "--duration",
        "1",
        "--interval-base-ms",
        "100",
        "--admin-token",
        s.admin_token(),
        "--json",
    ]);
    out.expect_ok();
    assert!(!out.stderr.contains("registrations failed"), "{out:#?}");
    let summary: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(summary["clients"], json!(3), "{summary}");

    // One send a minute: the second is refused with Retry-After.
    a.run(&["send", "--type", "t", "--payload", "1"])
        .expect_ok();
    let out = a.run(&["send", "--type", "t", "--payload", "2", "--retries", "0"]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: rate_limited: "), "{out:#?}");
    assert!(out.stderr.contains("retry after"), "{out:#?}");
}

// ---------------------------------------------------------------------------
// inbox: what clients sent, read back by the admin (issue 9)
// ---------------------------------------------------------------------------

/// Sends `{"n": n}` as type `reply` from the CLI's default profile; returns the id.
fn send_numbered(cli: &Cli, n: u64) -> u64 {
    let out = cli.run(&[
        "send",
        "--type",
        "reply",
        "--payload",
        &format!("{{\"n\": {n}}}"),
    ]);
    out.expect_ok();
    out.stdout
        .split(|c: char| !c.is_ascii_digit())
        .find(|part| !part.is_empty())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id in {out:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_prints_what_a_client_sent_in_order() {
    let s = Server::start().await;
    let sender = Cli::new(&s);
    let id = sender.register("sender");
    let ids: Vec<u64> = (1..=3).map(|n| send_numbered(&sender, n)).collect();
    assert_eq!(ids, [1, 2, 3]);
    let admin = Cli::new(&s);
    let env = [("PIGEONHOLE_ADMIN_TOKEN", s.admin_token())];

    let out = admin.run_env(&["inbox", &id], &env);
    out.expect_ok();
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 3, "{out:#?}");
    for (n, line) in (1..=3).zip(&lines) {
        assert!(line.starts_with('['), "{line}");
        assert!(
            line.ends_with(&format!("] #{n} reply: {{\"n\":{n}}}")),
            "in order, one line each: {line}"
        );
    }
    // Paging one message at a time prints the same; an upper-case id works.
    let out = admin.run_env(&["inbox", &id.to_uppercase(), "--limit", "1"], &env);
    out.expect_ok();
    assert_eq!(out.stdout_lines(), lines, "{out:#?}");

    let out = admin.run_env(&["inbox", &id, "--after", "2"], &env);
    out.expect_ok();
    assert_eq!(out.stdout_lines(), [lines[2]], "{out:#?}");
    let out = admin.run_env(&["inbox", &id, "--after", "3"], &env);
    out.expect_ok();
    assert!(out.stdout.is_empty(), "nothing newer: {out:#?}");

    let out = admin.run_env(&["inbox", &id, "--json"], &env);
    out.expect_ok();
    let msgs: Vec<Value> = out
        .stdout_lines()
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(msgs.len(), 3, "{out:#?}");
    for (n, m) in (1..=3).zip(&msgs) {
        assert_keys(m, &["id", "type", "payload", "aad", "created_at"]);
        assert_eq!(m["id"], json!(n));
        assert_eq!(m["type"], json!("reply"));
        assert_eq!(m["payload"], json!({"n": n}));
        assert_eq!(m["aad"], json!({"client_id": id}), "the CLI's send aad");
        assert_timestamp(m["created_at"].as_str().unwrap());
    }

    // The operators' listing shows the newest sent id.
    let op = [("PIGEONHOLE_OPERATOR_TOKEN", s.operator_token())];
    let out = admin.run_env(&["clients", "--json"], &op);
    out.expect_ok();
    let listed: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(listed[0]["sent_head"], json!(3), "{listed:?}");
    let out = admin.run_env(&["clients"], &op);
    out.expect_ok();
    let row: Vec<&str> = out.stdout_lines()[1].split_whitespace().collect();
    assert_eq!(
        &row[..4],
        [id.as_str(), "sender", "online", "3"],
        "{out:#?}"
    );

    // Errors: an unknown client, not a UUID, a wrong or missing admin token.
    let unknown = uuid::Uuid::new_v4().to_string();
    let out = admin.run_env(&["inbox", &unknown], &env);
    out.expect_code(1);
    assert!(
        out.stderr.starts_with("error: not_found: "),
        "a clear error: {out:#?}"
    );
    assert!(out.stdout.is_empty(), "{out:#?}");
    let out = admin.run_env(&["inbox", "laptop"], &env);
    out.expect_code(2);
    assert!(out.stderr.contains("not a client id"), "{out:#?}");
    let out = admin.run_env(&["inbox", &id], &[("PIGEONHOLE_ADMIN_TOKEN", "wrong")]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: unauthorized: "), "{out:#?}");
    let out = admin.run(&["inbox", &id]);
    out.expect_code(2);
    assert!(out.stderr.contains("--admin-token"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_follow_picks_up_a_message_sent_after_it_started() {
    let s = Server::start().await;
    let sender = Cli::new(&s);
    let id = sender.register("follower");
    send_numbered(&sender, 1);

    let admin = Cli::new(&s);
    let mut cmd = admin.command(&[
        "inbox",
        &id,
        "--follow",
        "--json",
        "--interval-base-ms",
        "100",
    ]);
    cmd.env("PIGEONHOLE_ADMIN_TOKEN", s.admin_token());
    let mut child = admin.spawn_with(cmd);
    let lines = child.wait_for_lines(1, Duration::from_secs(20));
    assert_eq!(
        serde_json::from_str::<Value>(&lines[0]).unwrap()["id"],
        json!(1)
    );

    // Let it reach the end and poll a few times on the (scaled) schedule.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(send_numbered(&sender, 2), 2);
    let lines = child.wait_for_lines(2, Duration::from_secs(20));
    assert_eq!(lines.len(), 2, "{lines:?}");
    let second: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["id"], json!(2));
    assert_eq!(second["payload"], json!({"n": 2}));

    // Ctrl-C ends it cleanly and says where to go on from.
    child.interrupt();
    let status = child.wait_timeout(Duration::from_secs(10));
    let out = child.output(status);
    out.expect_ok();
    assert!(out.stderr.contains("--after 2"), "{out:#?}");
    assert_eq!(
        out.stdout_lines().len(),
        2,
        "nothing printed twice: {out:#?}"
    );
}

// ---------------------------------------------------------------------------
// A scripted fake server
// ---------------------------------------------------------------------------

/// One request as the fake server received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query, e.g. `/api/v1/messages/poll?limit=100`.
    target: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: String,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// A reply: status, extra headers, JSON body (`None`: no body).
type Reply = (u16, Vec<(&'static str, String)>, Option<Value>);

fn error_reply(status: u16, code: &str, message: &str) -> Reply {
    (
        status,
        Vec::new(),
        Some(json!({"error": {"code": code, "message": message}})),
    )
}

/// An HTTP/1.1 server on 127.0.0.1 that answers each request with the next
/// scripted reply for its path (first match wins) and records every request.
/// Unscripted: 204 for a poll, 200 `{"cursor": …}` for an ack, else a 500
/// naming the request (which no test expects). One request per connection.
struct FakeServer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeServer {
    fn start(script: Vec<(&'static str, Reply)>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake server");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let log = seen.clone();
        // Lives as long as the test process; the listener is never reused.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, script) = (log.clone(), script.clone());
                std::thread::spawn(move || serve(stream, &log, &script));
            }
        });
        FakeServer { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn seen_on(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|r| r.path() == path)
            .collect()
    }
}

fn serve(
    mut stream: TcpStream,
    log: &Mutex<Vec<Seen>>,
    script: &Mutex<Vec<(&'static str, Reply)>>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let target = request_line.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let seen = Seen {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string(),
        at: Instant::now(),
    };
    let scripted = {
        let mut script = script.lock().unwrap();
        script
            .iter()
            .position(|(path, _)| *path == seen.path())
            .map(|i| script.remove(i).1)
    };
    let (status, extra, body) = scripted.unwrap_or_else(|| match seen.path() {
        "/api/v1/messages/poll" => (204, Vec::new(), None),
        "/api/v1/messages/ack" => {
            let sent: Value = serde_json::from_str(&seen.body).unwrap_or(Value::Null);
            (
                200,
                Vec::new(),
                Some(json!({"cursor": sent["last_received_id"]})),
            )
        }
        _ => error_reply(
            500,
            "unscripted",
            &format!("{} {}", seen.method, seen.target),
        ),
    });
    log.lock().unwrap().push(seen);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut response = format!("HTTP/1.1 {status} Scripted\r\nConnection: close\r\n");
    if !body.is_empty() {
        response.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in extra {
        response.push_str(&format!("{k}: {v}\r\n"));
    }
    response.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

const PUBLISH: &str = "/api/v1/messages/publish";
const RECIPIENT: &str = "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13";

fn publish_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "publish",
        "--to",
        RECIPIENT,
        "--type",
        "greeting",
        "--payload",
        r#"{"text": "hello"}"#,
        "--admin-token",
        "fake-admin-token",
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

fn receipt(recipients: u64) -> Reply {
    (
        202,
        Vec::new(),
        Some(
            json!({"publish_id": "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b", "recipients": recipients}),
        ),
    )
}

#[test]
fn publish_retries_a_503_after_retry_after_with_the_same_idempotency_key() {
    let fake = FakeServer::start(vec![
        (
            PUBLISH,
            (
                503,
                vec![("Retry-After", "1".to_string())],
                Some(
                    json!({"error": {"code": "unavailable", "message": "storage is unavailable"}}),
                ),
            ),
        ),
        (PUBLISH, receipt(1)),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&publish_args(&[]));
    out.expect_ok();
    let printed: Value = serde_json::from_str(out.stdout.trim()).expect("a JSON receipt");
    assert_eq!(printed["recipients"], json!(1), "{out:#?}");
    assert!(
        out.stderr
            .contains("retrying with the same Idempotency-Key"),
        "a note on stderr for the retry: {out:#?}"
    );

    let tries = fake.seen_on(PUBLISH);
    assert_eq!(tries.len(), 2, "one retry: {tries:#?}");
    let key = tries[0]
        .header("idempotency-key")
        .unwrap_or_else(|| panic!("no Idempotency-Key: {:#?}", tries[0]));
    assert!(uuid::Uuid::parse_str(key).is_ok(), "a UUID: {key}");
    assert_eq!(
        tries[1].header("idempotency-key"),
        Some(key),
        "the same key"
    );
    assert_eq!(tries[0].body, tries[1].body, "the same body");
    assert_eq!(tries[0].header("x-admin-token"), Some("fake-admin-token"));
    let body: Value = serde_json::from_str(&tries[0].body).unwrap();
    assert_eq!(
        body,
        json!({"to_client_ids": [RECIPIENT], "type": "greeting", "payload": {"text": "hello"}})
    );
    let waited = tries[1].at - tries[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 honoured, waited {waited:?}"
    );

    // Another publish is another logical publish: a fresh key. One given
    // with --idempotency-key is sent as it is.
    let fake = FakeServer::start(vec![(PUBLISH, receipt(1)), (PUBLISH, receipt(1))]);
    let cli = Cli::with_url(&fake.url);
    cli.run(&publish_args(&[])).expect_ok();
    cli.run(&publish_args(&[
        "--idempotency-key",
        "nightly-report:2026-11-25",
    ]))
    .expect_ok();
    let tries = fake.seen_on(PUBLISH);
    assert_eq!(tries.len(), 2);
    assert_ne!(tries[0].header("idempotency-key"), Some(key));
    assert_eq!(
        tries[1].header("idempotency-key"),
        Some("nightly-report:2026-11-25")
    );
}

#[test]
fn publish_does_not_retry_a_client_error() {
    for (code, message) in [
        ("validation_failed", "to_client_ids[0] must be a UUID"),
        (
            "idempotency_key_reused",
            "Idempotency-Key was used with a different body",
        ),
    ] {
        let fake = FakeServer::start(vec![(PUBLISH, error_reply(422, code, message))]);
        let cli = Cli::with_url(&fake.url);
        let out = cli.run(&publish_args(&[]));
        out.expect_code(1);
        assert!(
            out.stderr.starts_with(&format!("error: {code}: {message}")),
            "{out:#?}"
        );
        assert!(!out.stderr.contains("retrying"), "{out:#?}");
        assert_eq!(fake.seen_on(PUBLISH).len(), 1, "not retried: {code}");
    }

    // A key the server would refuse is refused before anything is sent.
    let fake = FakeServer::start(Vec::new());
    let cli = Cli::with_url(&fake.url);
    for bad in ["has space", "", &"k".repeat(256)] {
        let out = cli.run(&publish_args(&["--idempotency-key", bad]));
        out.expect_code(2);
        assert!(out.stderr.contains("--idempotency-key"), "{out:#?}");
    }
    assert!(fake.seen().is_empty(), "{:#?}", fake.seen());
}

#[test]
fn publish_gives_up_after_its_retries_and_names_the_key_to_rerun_with() {
    let down = || error_reply(502, "http_502", "bad gateway");
    let fake = FakeServer::start(vec![(PUBLISH, down()), (PUBLISH, down())]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&publish_args(&["--retries", "1"]));
    out.expect_code(1);
    let tries = fake.seen_on(PUBLISH);
    assert_eq!(tries.len(), 2, "the first attempt and one retry");
    let key = tries[0].header("idempotency-key").unwrap();
    assert_eq!(tries[1].header("idempotency-key"), Some(key));
    assert!(
        out.stderr.contains(&format!(
            "rerun the same command with --idempotency-key {key}"
        )),
        "{out:#?}"
    );
}

#[test]
fn listen_waits_out_a_503_retry_after_and_keeps_its_cursor() {
    let key = [7u8; 32];
    let client_id = "00000000-0000-4000-8000-0000000000aa";
    let created_at = "2026-11-25T12:00:00.000Z";
    let aad = json!({"client_id": client_id, "created_at": created_at, "id": 1});
    let sealed = encrypt(
        &key,
        &serde_json::to_vec(&json!({"type": "greeting", "payload": {"n": 1}})).unwrap(),
        Some(&aad),
    );
    let page = json!({"messages": [{
        "id": 1, "type": "greeting", "ciphertext": sealed.ciphertext, "nonce": sealed.nonce,
        "tag": sealed.tag, "aad": aad, "created_at": created_at,
    }], "next_cursor": 1});
    use base64::Engine as _;
    let fake = FakeServer::start(vec![
        (
            "/api/v1/clients/register",
            (
                201,
                Vec::new(),
                Some(json!({
                    "client_id": client_id,
                    "personal_token": base64::engine::general_purpose::STANDARD.encode(key),
                    "api_token": format!("pht_{}", "A".repeat(43)),
                })),
            ),
        ),
        (
            "/api/v1/messages/poll",
            (
                503,
                vec![("Retry-After", "1".to_string())],
                Some(
                    json!({"error": {"code": "unavailable", "message": "storage is unavailable"}}),
                ),
            ),
        ),
        ("/api/v1/messages/poll", (200, Vec::new(), Some(page))),
    ]);
    let cli = Cli::with_url(&fake.url);
    cli.run(&["register", "--fingerprint", &random_fingerprint()])
        .expect_ok();

    // A 100 ms step: without Retry-After the next poll would follow at once.
    let mut child = cli.spawn(&["listen", "--json", "--interval-base-ms", "100"]);
    let lines = child.wait_for_lines(1, Duration::from_secs(20));
    let msg: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(msg["payload"], json!({"n": 1}));
    assert!(
        child.stderr().contains("server unavailable"),
        "{}",
        child.stderr()
    );
    child.interrupt();
    let status = child.wait_timeout(Duration::from_secs(10));
    child.output(status).expect_ok();

    let polls = fake.seen_on("/api/v1/messages/poll");
    assert!(polls.len() >= 2, "{polls:#?}");
    let waited = polls[1].at - polls[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
    assert_eq!(
        polls[1].target, polls[0].target,
        "the same cursor after the 503"
    );
    let acks = fake.seen_on("/api/v1/messages/ack");
    assert_eq!(acks.len(), 1, "{acks:#?}");
    assert_eq!(
        serde_json::from_str::<Value>(&acks[0].body).unwrap(),
        json!({"last_received_id": 1})
    );
    assert_eq!(cli.profile("default")["cursor"], json!(1));
}

// ---------------------------------------------------------------------------
// Fake-server tests of issue 8's client side
// ---------------------------------------------------------------------------

/// A register (or rotate) answer for `client_id` whose key is 32 × `key_byte`.
fn creds_reply(status: u16, client_id: &str, key_byte: u8, token: char) -> Reply {
    use base64::Engine as _;
    (
        status,
        Vec::new(),
        Some(json!({
            "client_id": client_id,
            "personal_token": base64::engine::general_purpose::STANDARD.encode([key_byte; 32]),
            "api_token": format!("pht_{}", token.to_string().repeat(43)),
        })),
    )
}

const REGISTER: &str = "/api/v1/clients/register";
const ROTATE: &str = "/api/v1/clients/rotate";
const POLL: &str = "/api/v1/messages/poll";
const SEND: &str = "/api/v1/messages/send";
const CLIENT: &str = "00000000-0000-4000-8000-0000000000bb";

fn body_of(seen: &Seen) -> Value {
    serde_json::from_str(&seen.body).unwrap_or(Value::Null)
}

#[test]
fn every_post_says_content_type_json() {
    let key = [7u8; 32];
    let created_at = "2026-11-25T12:00:00.000Z";
    let aad = json!({"client_id": CLIENT, "created_at": created_at, "id": 1});
    let sealed = encrypt(
        &key,
        &serde_json::to_vec(&json!({"type": "t", "payload": 1})).unwrap(),
        Some(&aad),
    );
    let page = json!({"messages": [{
        "id": 1, "type": "t", "ciphertext": sealed.ciphertext, "nonce": sealed.nonce,
        "tag": sealed.tag, "aad": aad, "created_at": created_at,
    }], "next_cursor": 1});
    let fake = FakeServer::start(vec![
        (REGISTER, creds_reply(201, CLIENT, 7, 'A')),
        (POLL, (200, Vec::new(), Some(page))),
        (SEND, (201, Vec::new(), Some(json!({"id": 1})))),
        (PUBLISH, receipt(1)),
        (ROTATE, creds_reply(200, CLIENT, 8, 'B')),
    ]);
    let cli = Cli::with_url(&fake.url);
    cli.run(&["register", "--fingerprint", &random_fingerprint()])
        .expect_ok();
    cli.run(&["listen", "--once"]).expect_ok(); // poll, then POST /messages/ack
    cli.run(&["send", "--type", "t", "--payload", "1"])
        .expect_ok();
    cli.run(&publish_args(&[])).expect_ok();
    cli.run(&["rotate"]).expect_ok();

    let posts: Vec<Seen> = fake
        .seen()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    let paths: Vec<&str> = posts.iter().map(|r| r.path()).collect();
    assert_eq!(
        paths,
        [REGISTER, "/api/v1/messages/ack", SEND, PUBLISH, ROTATE],
        "{posts:#?}"
    );
    for post in &posts {
        let ct = post.header("content-type").unwrap_or_default();
        assert!(
            ct == "application/json" || ct.starts_with("application/json;"),
            "{} without Content-Type: application/json: {post:#?}",
            post.path()
        );
    }
    // Rotate: the client's own token and id, an empty object as the body.
    let rotate = posts.last().unwrap();
    assert_eq!(
        rotate.header("authorization"),
        Some(format!("Bearer pht_{}", "A".repeat(43)).as_str())
    );
    assert_eq!(rotate.header("x-client-id"), Some(CLIENT));
    assert_eq!(body_of(rotate), json!({}));
    let saved = cli.creds("default");
    assert_eq!(saved.api_token, format!("pht_{}", "B".repeat(43)));
    assert_eq!(saved.key(), [8u8; 32]);
}

#[test]
fn rotate_checks_after_a_lost_answer_and_completes_the_rotation() {
    // The answer is lost (502), the old token is then refused: the server
    // did rotate, and registering with the fingerprint fetches the new
    // credentials.
    let fake = FakeServer::start(vec![
        (REGISTER, creds_reply(201, CLIENT, 1, 'A')),
        (ROTATE, error_reply(502, "http_502", "bad gateway")),
        (POLL, error_reply(401, "unauthorized", "bad token")),
        (REGISTER, creds_reply(200, CLIENT, 2, 'B')),
    ]);
    let cli = Cli::with_url(&fake.url);
    let fp = random_fingerprint();
    cli.run(&["register", "--fingerprint", &fp]).expect_ok();
    let out = cli.run(&["rotate"]);
    out.expect_ok();
    assert!(
        out.stderr.contains("checking whether the server rotated"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("Rotated"), "{out:#?}");
    let saved = cli.creds("default");
    assert_eq!(saved.key(), [2u8; 32]);
    let profile = cli.profile("default");
    assert!(profile.get("pending_fingerprint").is_none(), "{profile}");
    assert_eq!(profile["fingerprint"], json!(fp));
    let registers = fake.seen_on(REGISTER);
    assert_eq!(registers.len(), 2);
    assert_eq!(body_of(&registers[1])["fingerprint"], json!(fp));

    // The old token still works: nothing was rotated, nothing is left pending.
    let fake = FakeServer::start(vec![
        (REGISTER, creds_reply(201, CLIENT, 1, 'A')),
        (
            ROTATE,
            error_reply(503, "unavailable", "storage is unavailable"),
        ),
    ]);
    let cli = Cli::with_url(&fake.url);
    cli.run(&["register", "--fingerprint", &fp]).expect_ok();
    let out = cli.run(&["rotate"]);
    out.expect_code(1);
    assert!(out.stderr.contains("nothing was changed"), "{out:#?}");
    assert_eq!(cli.creds("default").key(), [1u8; 32]);
    assert!(cli.profile("default").get("pending_fingerprint").is_none());
    assert_eq!(
        fake.seen_on(REGISTER).len(),
        1,
        "no registration to recover"
    );

    // Neither the answer nor the check get through: the profile remembers
    // the rotation (and its new fingerprint), register refuses to guess,
    // and the next rotate completes it.
    let fake = FakeServer::start(vec![
        (REGISTER, creds_reply(201, CLIENT, 1, 'A')),
        (ROTATE, error_reply(502, "http_502", "bad gateway")),
        (POLL, error_reply(502, "http_502", "bad gateway")),
        (POLL, error_reply(401, "unauthorized", "bad token")),
        (REGISTER, creds_reply(200, CLIENT, 3, 'C')),
    ]);
    let cli = Cli::with_url(&fake.url);
    cli.run(&["register", "--fingerprint", &fp]).expect_ok();
    let out = cli.run(&["rotate", "--new-fingerprint"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("run `pigeonhole rotate` again"),
        "{out:#?}"
    );
    let pending = cli.profile("default")["pending_fingerprint"]
        .as_str()
        .expect("the rotation is remembered")
        .to_string();
    assert_ne!(pending, fp);
    assert_eq!(
        body_of(&fake.seen_on(ROTATE)[0]),
        json!({"fingerprint": pending})
    );
    assert_eq!(cli.creds("default").key(), [1u8; 32], "not changed yet");
    assert!(!out.stderr.contains(&pending) && !out.stdout.contains(&pending));

    let out = cli.run(&["register"]);
    out.expect_code(2);
    assert!(out.stderr.contains("pigeonhole rotate"), "{out:#?}");

    let out = cli.run(&["rotate"]);
    out.expect_ok();
    assert!(
        out.stdout.contains("Completed an earlier rotation"),
        "{out:#?}"
    );
    let profile = cli.profile("default");
    assert_eq!(profile["fingerprint"], json!(pending));
    assert!(profile.get("pending_fingerprint").is_none(), "{profile}");
    assert_eq!(cli.creds("default").key(), [3u8; 32]);
    let registers = fake.seen_on(REGISTER);
    assert_eq!(
        body_of(registers.last().unwrap())["fingerprint"],
        json!(pending)
    );
    assert_eq!(fake.seen_on(ROTATE).len(), 1, "not rotated a second time");
}

#[test]
fn register_and_send_wait_out_a_429_retry_after() {
    let limited = || {
        (
            429,
            vec![("Retry-After", "1".to_string())],
            Some(json!({"error": {"code": "rate_limited", "message": "too many registrations"}})),
        )
    };
    let fake = FakeServer::start(vec![
        (REGISTER, limited()),
        (REGISTER, creds_reply(201, CLIENT, 1, 'A')),
        (SEND, limited()),
        (SEND, (201, Vec::new(), Some(json!({"id": 1})))),
        (REGISTER, limited()),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&["register", "--fingerprint", &random_fingerprint()]);
    out.expect_ok();
    assert!(out.stderr.contains("retrying"), "{out:#?}");
    let tries = fake.seen_on(REGISTER);
    assert_eq!(tries.len(), 2);
    assert!(
        tries[1].at - tries[0].at >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(tries[0].body, tries[1].body);

    let out = cli.run(&["send", "--type", "t", "--payload", "1"]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "1");
    let tries = fake.seen_on(SEND);
    assert_eq!(tries.len(), 2);
    assert!(
        tries[1].at - tries[0].at >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(tries[0].body, tries[1].body, "the same body (same nonce)");

    // --retries 0: the 429 is reported, with its Retry-After.
    let other = Cli::with_url(&fake.url);
    let out = other.run(&[
        "register",
        "--fingerprint",
        &random_fingerprint(),
        "--retries",
        "0",
    ]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: rate_limited: "), "{out:#?}");
    assert!(out.stderr.contains("retry after 1 s"), "{out:#?}");
    assert_eq!(fake.seen_on(REGISTER).len(), 3);

    // A network error is not retried by register: it fails at once.
    let down = Cli::with_url("http://127.0.0.1:9");
    let started = Instant::now();
    down.run(&["register", "--fingerprint", &random_fingerprint()])
        .expect_code(1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn simulate_sends_the_admin_token_on_its_registrations() {
    let fake = FakeServer::start(vec![
        (REGISTER, creds_reply(201, CLIENT, 1, 'A')),
        (
            REGISTER,
            creds_reply(201, "00000000-0000-4000-8000-0000000000cc", 2, 'B'),
        ),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&[
        "simulate",
        "--clients",
        "2",
        "--duration",
        "1",
        "--interval-base-ms",
        "100",
        "--admin-token",
        "fake-admin-token",
        "--json",
    ]);
    out.expect_ok();
    let registers = fake.seen_on(REGISTER);
    assert_eq!(registers.len(), 2);
    for r in &registers {
        assert_eq!(
            r.header("x-admin-token"),
            Some("fake-admin-token"),
            "{r:#?}"
        );
    }

    // Without the token: no header, and a 429 is waited out.
    let fake = FakeServer::start(vec![
        (
            REGISTER,
            (
                429,
                vec![("Retry-After", "1".to_string())],
                Some(json!({"error": {"code": "rate_limited", "message": "slow down"}})),
            ),
        ),
        (REGISTER, creds_reply(201, CLIENT, 1, 'A')),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&[
        "simulate",
        "--clients",
        "1",
        "--duration",
        "1",
        "--interval-base-ms",
        "100",
        "--json",
    ]);
    out.expect_ok();
    let summary: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(summary["clients"], json!(1), "{out:#?}");
    let registers = fake.seen_on(REGISTER);
    assert_eq!(registers.len(), 2);
    assert!(registers
        .iter()
        .all(|r| r.header("x-admin-token").is_none()));
}

#[test]
fn clients_delete_sends_one_delete_and_reports_not_found() {
    let path = format!("/api/v1/operators/clients/{RECIPIENT}");
    let path: &'static str = Box::leak(path.into_boxed_str());
    let fake = FakeServer::start(vec![
        (path, (204, Vec::new(), None)),
        (path, error_reply(404, "not_found", "no such client")),
    ]);
    let cli = Cli::with_url(&fake.url);
    let op = [("PIGEONHOLE_OPERATOR_TOKEN", "fake-operator-token")];

    // No terminal and no --yes: refused before anything is sent.
    let out = cli.run_env(&["clients", "delete", RECIPIENT], &op);
    out.expect_code(2);
    assert!(out.stderr.contains("--yes"), "{out:#?}");
    let out = cli.run_env(&["clients", "delete", "not-a-uuid", "--yes"], &op);
    out.expect_code(2);
    assert!(fake.seen().is_empty(), "{:#?}", fake.seen());

    let out = cli.run_env(
        &["clients", "delete", &RECIPIENT.to_uppercase(), "--yes"],
        &op,
    );
    out.expect_ok();
    assert_eq!(out.stdout.trim(), format!("Deleted client {RECIPIENT}."));
    let out = cli.run_env(&["clients", "delete", RECIPIENT, "-y"], &op);
    out.expect_code(1);
    assert!(
        out.stderr.starts_with("error: not_found: no such client"),
        "{out:#?}"
    );

    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.method, "DELETE");
        assert_eq!(r.path(), path, "the id, lower case");
        assert_eq!(r.header("x-operator-token"), Some("fake-operator-token"));
        assert!(r.body.is_empty(), "no body: {r:#?}");
    }
}

#[test]
fn names_with_terminal_escapes_are_shown_escaped() {
    let evil = "evil\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m\u{202e}gpj.exe\u{200b}";
    let listing = || {
        (
            200,
            Vec::new(),
            Some(json!({"clients": [{
                "id": RECIPIENT, "name": evil, "created_at": "2026-11-25T12:00:00.000Z",
                "last_seen_at": null, "status": "offline",
            }]})),
        )
    };
    let fake = FakeServer::start(vec![
        ("/api/v1/operators/clients", listing()),
        ("/api/v1/operators/clients", listing()),
    ]);
    let cli = Cli::with_url(&fake.url);
    let op = [("PIGEONHOLE_OPERATOR_TOKEN", "fake-operator-token")];
    let raw = |text: &str| {
        text.chars()
            .any(|c| matches!(c, '\u{1b}' | '\u{7}' | '\u{9b}' | '\u{202e}' | '\u{200b}'))
    };

    let out = cli.run_env(&["clients"], &op);
    out.expect_ok();
    assert!(!raw(&out.stdout), "{:?}", out.stdout);
    // Escaped, then shortened to the column's 40 characters.
    assert!(
        out.stdout.contains("evil\\u{1b}[2J\\u{1b}]0;pwned"),
        "{}",
        out.stdout
    );

    let out = cli.run_env(&["clients", "--json"], &op);
    out.expect_ok();
    assert!(!raw(&out.stdout), "{:?}", out.stdout);
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        listed[0]["name"],
        json!(evil),
        "the same value, escaped as JSON"
    );
}

#[test]
fn insecure_http_goes_through_with_the_flag_and_the_profile_remembers_it() {
    // The fake server plays an HTTP proxy, so a non-loopback http:// URL
    // can be served on 127.0.0.1: requests arrive in absolute form.
    let fake = FakeServer::start(vec![
        (
            "http://pigeonhole.test:8080/api/v1/clients/register",
            creds_reply(201, CLIENT, 1, 'A'),
        ),
        (
            "http://pigeonhole.test:8080/api/v1/messages/poll",
            (204, Vec::new(), None),
        ),
    ]);
    let cli = Cli::with_url("http://pigeonhole.test:8080");
    let run = |args: &[&str]| {
        let mut cmd = cli.command(args);
        cmd.env_remove("PIGEONHOLE_INSECURE_HTTP")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env("HTTP_PROXY", &fake.url)
            .env("http_proxy", &fake.url)
            .env("NO_PROXY", "")
            .env("no_proxy", "");
        cli.run_with(cmd)
    };
    let fp = random_fingerprint();

    let out = run(&["register", "--fingerprint", &fp]);
    out.expect_code(2);
    assert!(out.stderr.contains("--insecure-http"), "{out:#?}");
    assert!(
        fake.seen().is_empty(),
        "nothing was sent: {:#?}",
        fake.seen()
    );

    let out = run(&["register", "--fingerprint", &fp, "--insecure-http"]);
    out.expect_ok();
    assert_eq!(fake.seen().len(), 1, "{:#?}", fake.seen());
    let profile = cli.profile("default");
    assert_eq!(profile["insecure_http"], json!(true), "{profile}");

    // The profile's own URL: allowed without the flag from now on.
    run(&["listen", "--once"]).expect_code(3);
    // Another URL needs the flag again.
    let out = run(&["--url", "http://other.test:8080", "listen", "--once"]);
    out.expect_code(2);
    assert!(out.stderr.contains("other.test"), "{out:#?}");
    assert_eq!(fake.seen().len(), 2);
}

/// `pigeonhole clients delete ID` on a terminal (a pty from util-linux's
/// `script`), answering `answer`; returns (exit code, everything printed).
fn delete_on_a_terminal(cli: &Cli, s: &Server, id: &str, answer: &str) -> (Option<i32>, String) {
    use std::process::{Command, Stdio};
    let line = format!("{} clients delete {id}", cli_binary().display());
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("HOME", cli.home.path())
        .env("PIGEONHOLE_URL", &s.base)
        .env("PIGEONHOLE_OPERATOR_TOKEN", s.operator_token())
        .env_remove("PIGEONHOLE_CONFIG")
        .env_remove("PIGEONHOLE_INSECURE_HTTP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script(1)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), printed)
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_delete_on_a_terminal_names_the_client_and_asks() {
    let script_works = std::process::Command::new("script")
        .args(["-qec", "true", "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !script_works {
        eprintln!("skipped: util-linux `script` is not available to give the CLI a terminal");
        return;
    }
    let s = Server::start().await;
    let cli = Cli::new(&s);
    let id = cli.register("tty-laptop");

    let (code, printed) = delete_on_a_terminal(&cli, &s, &id, "n\n");
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains(&format!("Delete client {id} \"tty-laptop\" (offline")),
        "the question names the client: {printed}"
    );
    assert!(
        printed.contains("[y/N]") && printed.contains("not deleted"),
        "{printed}"
    );
    cli.run(&["listen", "--once"]).expect_code(3);

    let (code, printed) = delete_on_a_terminal(&cli, &s, &id, "y\n");
    assert_eq!(code, Some(0), "{printed}");
    assert!(
        printed.contains(&format!("Deleted client {id}.")),
        "{printed}"
    );
    cli.run(&["listen", "--once"]).expect_code(1);
}

// ---------------------------------------------------------------------------
// inbox against the fake server: retries, Retry-After, escaping
// ---------------------------------------------------------------------------

fn sent_path() -> &'static str {
    Box::leak(format!("/api/v1/clients/{RECIPIENT}/sent").into_boxed_str())
}

fn sent_page(ids: &[u64], payload: Value) -> Reply {
    let messages: Vec<Value> = ids
        .iter()
        .map(|&id| {
            json!({"id": id, "type": "reply", "payload": payload, "aad": {"client_id": RECIPIENT},
                   "created_at": "2026-11-25T12:00:00.000Z"})
        })
        .collect();
    (
        200,
        Vec::new(),
        Some(json!({"messages": messages, "next_after": ids.last()})),
    )
}

/// The `after` of a recorded read.
fn after_of(r: &Seen) -> u64 {
    r.target
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("after="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no after in {}", r.target))
}

#[test]
fn inbox_retries_a_503_after_retry_after_and_escapes_what_it_prints() {
    let path = sent_path();
    let evil = json!({"text": "a\u{1b}[2J\u{9b}31m\u{202e}b\u{200b}"});
    let fake = FakeServer::start(vec![
        (
            path,
            (
                503,
                vec![("Retry-After", "1".to_string())],
                Some(
                    json!({"error": {"code": "unavailable", "message": "storage is unavailable"}}),
                ),
            ),
        ),
        (path, sent_page(&[1, 2], evil.clone())),
        (path, sent_page(&[4], json!(null))),
        (path, (204, Vec::new(), None)),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&[
        "inbox",
        RECIPIENT,
        "--admin-token",
        "fake-admin-token",
        "--limit",
        "2",
    ]);
    out.expect_ok();
    assert!(out.stderr.contains("retrying in"), "{out:#?}");
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 3, "{out:#?}");
    assert!(lines[2].ends_with("] #4 reply: null"), "{out:#?}");
    let raw = |text: &str| {
        text.chars()
            .any(|c| matches!(c, '\u{1b}' | '\u{9b}' | '\u{202e}' | '\u{200b}'))
    };
    assert!(!raw(&out.stdout), "{:?}", out.stdout);
    assert!(lines[0].contains("\\u{9b}31m\\u{202e}b"), "{}", lines[0]);

    let reads = fake.seen_on(path);
    assert_eq!(reads.len(), 4, "{reads:#?}");
    let afters: Vec<u64> = reads.iter().map(after_of).collect();
    assert_eq!(
        afters,
        [0, 0, 2, 4],
        "next_after each time, the same after a 503"
    );
    for r in &reads {
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("x-admin-token"), Some("fake-admin-token"));
        assert!(r.target.contains("limit=2"), "{}", r.target);
    }
    let waited = reads[1].at - reads[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1, waited {waited:?}"
    );

    // --json: the same value, escaped.
    let fake = FakeServer::start(vec![
        (path, sent_page(&[1], evil.clone())),
        (path, (204, Vec::new(), None)),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run_env(
        &["inbox", RECIPIENT, "--json"],
        &[("PIGEONHOLE_ADMIN_TOKEN", "fake-admin-token")],
    );
    out.expect_ok();
    assert!(!raw(&out.stdout), "{:?}", out.stdout);
    let line: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(line["payload"], evil);

    // A page that does not move forward is an error, not an endless loop.
    let fake = FakeServer::start(vec![(path, sent_page(&[1], json!(1)))]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run_env(
        &["inbox", RECIPIENT, "--after", "5"],
        &[("PIGEONHOLE_ADMIN_TOKEN", "fake-admin-token")],
    );
    out.expect_code(1);
    assert!(out.stderr.contains("unexpected response"), "{out:#?}");
}

#[test]
fn inbox_follow_waits_out_a_429_and_backs_off_while_nothing_comes() {
    let path = sent_path();
    let mut script = vec![
        (path, (204, Vec::new(), None)),
        (
            path,
            (
                429,
                vec![("Retry-After", "1".to_string())],
                Some(json!({"error": {"code": "rate_limited", "message": "slow down"}})),
            ),
        ),
        (path, sent_page(&[7], json!("late"))),
    ];
    script.extend((0..40).map(|_| (path, (204, Vec::new(), None))));
    let fake = FakeServer::start(script);
    let cli = Cli::with_url(&fake.url);
    let mut cmd = cli.command(&["inbox", RECIPIENT, "--follow", "--interval-base-ms", "100"]);
    cmd.env("PIGEONHOLE_ADMIN_TOKEN", "fake-admin-token");
    let mut child = cli.spawn_with(cmd);
    let lines = child.wait_for_lines(1, Duration::from_secs(20));
    assert!(lines[0].ends_with("] #7 reply: \"late\""), "{lines:?}");
    // A few empty reads after it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.seen_on(path).len() < 7 {
        assert!(Instant::now() < deadline, "{:#?}", fake.seen_on(path));
        std::thread::sleep(Duration::from_millis(50));
    }
    child.interrupt();
    let status = child.wait_timeout(Duration::from_secs(10));
    let out = child.output(status);
    out.expect_ok();
    assert!(out.stderr.contains("rate limited"), "{out:#?}");
    assert!(out.stderr.contains("--after 7"), "{out:#?}");

    let reads = fake.seen_on(path);
    let afters: Vec<u64> = reads.iter().take(5).map(after_of).collect();
    assert_eq!(afters, [0, 0, 0, 7, 7], "{reads:#?}");
    let gap = |i: usize| reads[i + 1].at - reads[i].at;
    assert!(
        gap(1) >= Duration::from_secs(1),
        "Retry-After: 1, waited {:?}",
        gap(1)
    );
    // Empty reads back off on the (scaled) schedule, 100 ms more each time;
    // the reset after messages is unit-tested in backoff.rs.
    for (i, at_least) in [(3, 100), (4, 200), (5, 300)] {
        assert!(
            gap(i) >= Duration::from_millis(at_least),
            "read {i}: {:?} < {at_least} ms",
            gap(i)
        );
    }
}

// ---------------------------------------------------------------------------
// Issue 9: tags, audiences, delivery status, expiry (the real server)
// ---------------------------------------------------------------------------

/// Runs `pigeonhole` as the operator.
fn as_operator(cli: &Cli, s: &Server, args: &[&str]) -> CliOutput {
    cli.run_env(args, &[("PIGEONHOLE_OPERATOR_TOKEN", s.operator_token())])
}

/// Runs `pigeonhole` as the admin.
fn as_admin(cli: &Cli, s: &Server, args: &[&str]) -> CliOutput {
    cli.run_env(args, &[("PIGEONHOLE_ADMIN_TOKEN", s.admin_token())])
}

fn json_of(out: &CliOutput) -> Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {out:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_tag_replaces_and_clears_tags_and_the_listing_filters_by_tag() {
    let s = Server::start().await;
    let (a, b) = (Cli::new(&s), Cli::new(&s));
    let (id_a, id_b) = (a.register("a"), b.register("b"));

    let out = as_operator(
        &a,
        &s,
        &[
            "clients",
            "tag",
            &id_a.to_uppercase(),
            "eu",
            "door-sensors,eu",
        ],
    );
    out.expect_ok();
    assert_eq!(
        out.stdout.trim(),
        format!("Client {id_a} tags: door-sensors, eu"),
        "sorted, duplicates folded"
    );
    let out = as_operator(&a, &s, &["clients", "tag", &id_b, "us", "--json"]);
    out.expect_ok();
    assert_eq!(json_of(&out), json!({"id": id_b, "tags": ["us"]}));

    // The listing shows the tags and filters by one, on the server.
    let out = as_operator(&a, &s, &["clients", "--json", "--sort", "created"]);
    out.expect_ok();
    let all = json_of(&out);
    assert_eq!(all[0]["tags"], json!(["door-sensors", "eu"]), "{all}");
    assert_eq!(all[1]["tags"], json!(["us"]), "{all}");
    let out = as_operator(&a, &s, &["clients", "--tag", "eu", "--json"]);
    out.expect_ok();
    let tagged = json_of(&out);
    assert_eq!(tagged.as_array().map(Vec::len), Some(1), "{tagged}");
    assert_eq!(tagged[0]["id"], json!(id_a));
    let out = as_operator(&a, &s, &["clients", "--tag", "eu"]);
    out.expect_ok();
    let lines = out.stdout_lines();
    assert!(lines[0].ends_with(" TAGS"), "{out:#?}");
    assert!(
        lines[1].starts_with(&id_a) && lines[1].ends_with(" door-sensors,eu"),
        "{out:#?}"
    );
    assert!(lines[2].starts_with("1 clients tagged eu"), "{out:#?}");
    let seen = s
        .list_clients_raw(s.operator_token(), "tag=eu&limit=1000")
        .await;
    assert_eq!(seen.status(), 200, "the server filters by ?tag=");

    // No tags clears them.
    let out = as_operator(&a, &s, &["clients", "tag", &id_a]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), format!("Client {id_a} has no tags."));
    let out = as_operator(&a, &s, &["clients", "--tag", "eu", "--json"]);
    out.expect_ok();
    assert_eq!(json_of(&out), json!([]));

    // Bad tags never reach the server; an unknown client is the server's 404.
    for bad in ["EU", "door sensors", "caf\u{e9}"] {
        let out = as_operator(&a, &s, &["clients", "tag", &id_a, bad]);
        out.expect_code(2);
        assert!(out.stderr.contains("a-z 0-9 _ . -"), "{out:#?}");
    }
    as_operator(&a, &s, &["clients", "--tag", "Bad Tag"]).expect_code(2);
    let out = as_operator(
        &a,
        &s,
        &["clients", "tag", &uuid::Uuid::new_v4().to_string(), "eu"],
    );
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: not_found: "), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_to_a_tag_reaches_exactly_the_tagged_clients() {
    let s = Server::start().await;
    let (a, b, c) = (Cli::new(&s), Cli::new(&s), Cli::new(&s));
    let (id_a, id_b, id_c) = (a.register("a"), b.register("b"), c.register("c"));
    as_operator(&a, &s, &["clients", "tag", &id_a, "eu"]).expect_ok();
    as_operator(&a, &s, &["clients", "tag", &id_b, "door-sensors", "eu"]).expect_ok();
    as_operator(&a, &s, &["clients", "tag", &id_c, "us"]).expect_ok();

    let out = as_admin(
        &a,
        &s,
        &[
            "publish",
            "--to-tag",
            "eu,door-sensors",
            "--type",
            "alarm",
            "--payload",
            "\"door open\"",
            "--ttl",
            "600",
            "--json",
        ],
    );
    out.expect_ok();
    let receipt = json_of(&out);
    assert_eq!(receipt["recipients"], Value::Null, "counted by the fan-out");
    let publish_id = receipt["publish_id"].as_str().unwrap().to_string();

    s.settle().await;
    for cli in [&a, &b] {
        let out = cli.run(&["listen", "--once", "--json"]);
        out.expect_ok();
        let lines = out.stdout_lines();
        assert_eq!(lines.len(), 1, "once, even for two matching tags: {out:#?}");
        let msg: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(msg["payload"], json!("door open"));
    }
    c.run(&["listen", "--once"]).expect_code(3);

    let out = as_admin(&a, &s, &["status", &publish_id, "--json"]);
    out.expect_ok();
    let status = json_of(&out);
    assert_eq!(
        status["audience"],
        json!({"to_tags": ["eu", "door-sensors"]})
    );
    assert_eq!(status["recipients"], json!(2), "{status}");
    assert_eq!(status["acknowledged"], json!(2), "{status}");
    assert_eq!(status["state"], json!("done"), "{status}");
    assert!(status["expires_at"].is_string(), "--ttl 600: {status}");

    // --all reaches every client registered before it.
    let out = as_admin(
        &a,
        &s,
        &["publish", "--all", "--type", "notice", "--payload", "1"],
    );
    out.expect_ok();
    assert!(
        out.stdout.contains(" to every client "),
        "no count yet: {out:#?}"
    );
    s.settle().await;
    for cli in [&a, &b, &c] {
        cli.run(&["listen", "--once"]).expect_ok();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_wait_reaches_done_once_a_listening_client_acks() {
    let s = Server::start().await;
    let (a, b) = (Cli::new(&s), Cli::new(&s));
    let (id_a, id_b) = (a.register("listening"), b.register("asleep"));
    let mut listener = a.spawn(&["listen", "--json", "--interval-base-ms", "100"]);

    let mut publish = a.command(&[
        "publish",
        "--to",
        &id_a,
        "--type",
        "greeting",
        "--payload",
        "{\"text\": \"hello\"}",
        "--wait",
        "--timeout",
        "60",
        "--json",
        "--wait-base-ms",
        "100",
    ]);
    publish.env("PIGEONHOLE_ADMIN_TOKEN", s.admin_token());
    let out = a.run_with(publish);
    out.expect_ok();
    let status = json_of(&out);
    assert_eq!(status["state"], json!("done"), "{out:#?}");
    assert_eq!(
        (
            &status["recipients"],
            &status["delivered"],
            &status["acknowledged"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "{status}"
    );
    let lines = listener.wait_for_lines(1, Duration::from_secs(10));
    assert!(lines[0].contains("hello"), "{lines:?}");
    listener.interrupt();
    let status = listener.wait_timeout(Duration::from_secs(10));
    listener.output(status).expect_ok();

    // Nobody acknowledges: the wait ends at --timeout, exit 1, with the
    // counts so far on stdout.
    let out = as_admin(
        &b,
        &s,
        &[
            "publish",
            "--to",
            &id_b,
            "--type",
            "greeting",
            "--payload",
            "1",
            "--wait",
            "--timeout",
            "2",
            "--wait-base-ms",
            "100",
        ],
    );
    out.expect_code(1);
    assert!(out.stderr.contains("timed out after 2 s"), "{out:#?}");
    assert!(out.stderr.contains("pigeonhole status "), "{out:#?}");
    assert!(
        out.stdout.contains("acknowledged 0/1"),
        "the last counts: {out:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_lists_every_recipient_across_pages() {
    let s = Server::start().await;
    let (a, b, c) = (Cli::new(&s), Cli::new(&s), Cli::new(&s));
    let (id_a, id_b, id_c) = (a.register("a"), b.register("b"), c.register("c"));
    let unknown = uuid::Uuid::new_v4().to_string();

    let out = as_admin(
        &a,
        &s,
        &[
            "publish",
            "--to",
            &id_a,
            &id_b,
            &id_c,
            &unknown,
            "--type",
            "t",
            "--payload",
            "1",
            "--json",
        ],
    );
    out.expect_ok();
    let publish_id = json_of(&out)["publish_id"].as_str().unwrap().to_string();
    s.settle().await;
    a.run(&["listen", "--once"]).expect_ok();

    // Pages of 2 (a hidden testing flag; the default is the maximum, 1000).
    let out = as_admin(
        &a,
        &s,
        &[
            "status",
            &publish_id,
            "--recipients",
            "--json",
            "--page-size",
            "2",
        ],
    );
    out.expect_ok();
    let status = json_of(&out);
    assert_eq!(
        [
            &status["recipients"],
            &status["delivered"],
            &status["acknowledged"],
            &status["unknown"],
            &status["pending"],
        ],
        [&json!(4), &json!(3), &json!(1), &json!(1), &json!(0)],
        "{status}"
    );
    assert_eq!(status["state"], json!("done"));
    assert!(status.get("next_page_token").is_none(), "{status}");
    let rows = status["recipient_status"].as_array().expect("every page");
    assert_eq!(rows.len(), 4, "{status}");
    let of = |id: &str| {
        rows.iter()
            .find(|r| r["client_id"] == json!(id))
            .unwrap_or_else(|| panic!("{id} not listed: {status}"))
    };
    assert_eq!(of(&id_a)["status"], json!("acknowledged"));
    assert_eq!(of(&id_a)["message_id"], json!(1));
    assert_eq!(of(&id_b)["status"], json!("delivered"));
    assert_eq!(of(&id_c)["status"], json!("delivered"));
    assert_eq!(of(&unknown)["status"], json!("unknown"));
    assert_eq!(of(&unknown)["message_id"], Value::Null);

    let out = as_admin(&a, &s, &["status", &publish_id, "--recipients"]);
    out.expect_ok();
    let lines = out.stdout_lines();
    assert!(lines.contains(&"state     done"), "{out:#?}");
    assert!(
        lines.contains(&"delivered 3/4 · acknowledged 1/4 · expired 0 · unknown 1 · pending 0"),
        "{out:#?}"
    );
    let header = lines
        .iter()
        .position(|l| l.starts_with("CLIENT ID"))
        .expect("a table");
    assert_eq!(lines.len(), header + 5, "{out:#?}");
    let row_a = lines
        .iter()
        .find(|l| l.starts_with(&id_a))
        .expect("a's row");
    assert_eq!(
        row_a.split_whitespace().collect::<Vec<_>>(),
        [id_a.as_str(), "1", "acknowledged"]
    );
    let row_unknown = lines.iter().find(|l| l.starts_with(&unknown)).unwrap();
    assert_eq!(
        row_unknown.split_whitespace().collect::<Vec<_>>(),
        [unknown.as_str(), "-", "unknown"]
    );

    let out = as_admin(&a, &s, &["status", &uuid::Uuid::new_v4().to_string()]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: not_found: "), "{out:#?}");
    as_admin(&a, &s, &["status", "not-a-publish"]).expect_code(2);
}

// ---------------------------------------------------------------------------
// Issue 9 against the scripted fake server
// ---------------------------------------------------------------------------

const PUBLISH_ID: &str = "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b";

fn status_path() -> &'static str {
    Box::leak(format!("{PUBLISH}/{PUBLISH_ID}").into_boxed_str())
}

/// A status answer: `counts` are delivered, acknowledged, expired, unknown,
/// pending.
fn status_reply(recipients: Value, counts: [u64; 5], state: &str, extra: Value) -> Reply {
    let [delivered, acknowledged, expired, unknown, pending] = counts;
    let mut body = json!({
        "publish_id": PUBLISH_ID, "type": "alarm", "created_at": "2026-11-25T12:00:00.000Z",
        "audience": {"to_tags": ["eu"]}, "expires_at": "2026-11-25T12:05:00.000Z",
        "recipients": recipients, "delivered": delivered, "acknowledged": acknowledged,
        "expired": expired, "unknown": unknown, "pending": pending, "state": state,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    (200, Vec::new(), Some(body))
}

fn tag_receipt() -> Reply {
    (
        202,
        Vec::new(),
        Some(json!({"publish_id": PUBLISH_ID, "recipients": null})),
    )
}

#[test]
fn publish_wait_follows_the_status_until_every_recipient_acknowledged() {
    let path = status_path();
    let fake = FakeServer::start(vec![
        (PUBLISH, tag_receipt()),
        (
            path,
            status_reply(Value::Null, [0, 0, 0, 0, 0], "queued", json!({})),
        ),
        // A failed read is tried again.
        (path, error_reply(503, "http_503", "busy")),
        (
            path,
            status_reply(Value::Null, [2, 0, 0, 0, 0], "delivering", json!({})),
        ),
        // Done, but one copy still waits for its ack.
        (
            path,
            status_reply(json!(3), [3, 1, 0, 0, 0], "done", json!({})),
        ),
        // One acknowledged, one expired unacknowledged, one unknown: finished.
        (
            path,
            status_reply(json!(4), [2, 2, 1, 1, 0], "done", json!({})),
        ),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&[
        "publish",
        "--to-tag",
        "eu",
        "--type",
        "alarm",
        "--payload",
        "\"door open\"",
        "--ttl",
        "300",
        "--admin-token",
        "fake-admin-token",
        "--wait",
        "--wait-base-ms",
        "100",
    ]);
    out.expect_ok();
    assert_eq!(
        out.stdout.trim(),
        format!(
            "publish {PUBLISH_ID} done: delivered 2/4 · acknowledged 2/4 · expired 1 · unknown 1 · pending 0"
        ),
        "one final line, not a live one (no terminal): {out:#?}"
    );
    assert!(
        out.stderr.contains("published 9b7e4a10"),
        "the receipt goes to stderr: {out:#?}"
    );
    let published = fake.seen_on(PUBLISH);
    assert_eq!(
        body_of(&published[0]),
        json!({"to_tags": ["eu"], "type": "alarm", "payload": "door open", "ttl_secs": 300})
    );
    assert!(published[0].header("idempotency-key").is_some());
    let reads = fake.seen_on(path);
    assert_eq!(reads.len(), 5, "until finished: {reads:#?}");
    for r in &reads {
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("x-admin-token"), Some("fake-admin-token"));
    }
    // 100, 200, 400, 500 ms: doubling, at most five times the first.
    let gaps: Vec<Duration> = reads.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, least) in gaps.iter().zip([100u64, 200, 400, 500]) {
        assert!(
            *gap >= Duration::from_millis(least),
            "{gaps:?} (want at least {least} ms)"
        );
    }

    // --json: the final status, as the server sent it.
    let fake = FakeServer::start(vec![
        (PUBLISH, tag_receipt()),
        (
            path,
            status_reply(json!(1), [1, 1, 0, 0, 0], "done", json!({})),
        ),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&[
        "publish",
        "--all",
        "--type",
        "alarm",
        "--payload",
        "1",
        "--admin-token",
        "fake-admin-token",
        "--wait",
        "--json",
    ]);
    out.expect_ok();
    let status = json_of(&out);
    assert_eq!(status["acknowledged"], json!(1));
    assert_eq!(status["state"], json!("done"));
    assert_eq!(
        body_of(&fake.seen_on(PUBLISH)[0]),
        json!({"to_all": true, "type": "alarm", "payload": 1}),
        "no ttl_secs without --ttl"
    );
}

#[test]
fn publish_wait_gives_up_at_its_timeout_and_says_what_is_missing() {
    let path = status_path();
    let still = || status_reply(json!(50), [37, 12, 0, 1, 12], "delivering", json!({}));
    let mut script = vec![(PUBLISH, tag_receipt())];
    script.extend((0..40).map(|_| (path, still())));
    let fake = FakeServer::start(script);
    let cli = Cli::with_url(&fake.url);
    let started = Instant::now();
    let out = cli.run(&[
        "publish",
        "--to-tag",
        "eu",
        "--type",
        "alarm",
        "--payload",
        "1",
        "--admin-token",
        "fake-admin-token",
        "--wait",
        "--timeout",
        "1",
        "--wait-base-ms",
        "100",
    ]);
    out.expect_code(1);
    assert!(started.elapsed() < Duration::from_secs(10), "{out:#?}");
    assert_eq!(
        out.stdout.trim(),
        format!(
            "publish {PUBLISH_ID} delivering: delivered 37/50 · acknowledged 12/50 · expired 0 · unknown 1 · pending 12"
        )
    );
    assert!(
        out.stderr.contains(
            "timed out after 1 s waiting for the publish: of 50 recipients, 12 not reached by the \
             fan-out yet, 25 delivered but not acknowledged"
        ),
        "{out:#?}"
    );
    assert!(
        out.stderr
            .contains(&format!("pigeonhole status {PUBLISH_ID}")),
        "{out:#?}"
    );

    // A request the server refuses ends the wait at once.
    let fake = FakeServer::start(vec![
        (PUBLISH, tag_receipt()),
        (path, error_reply(401, "unauthorized", "bad admin token")),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&[
        "publish",
        "--to-tag",
        "eu",
        "--type",
        "alarm",
        "--payload",
        "1",
        "--admin-token",
        "fake-admin-token",
        "--wait",
    ]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("error: unauthorized: bad admin token"),
        "{out:#?}"
    );
    assert_eq!(fake.seen_on(path).len(), 1);
}

#[test]
fn status_recipients_walks_every_page_and_escapes_what_it_prints() {
    let path = status_path();
    let row = |id: &str, message_id: Value, status: &str| json!({"client_id": id, "message_id": message_id, "status": status});
    let evil = "evil\u{1b}[2J";
    let fake = FakeServer::start(vec![
        (
            path,
            status_reply(
                json!(3),
                [2, 1, 0, 1, 0],
                "done",
                json!({"type": evil, "recipient_status": [
                    row(RECIPIENT, json!(7), "acknowledged"),
                    row(CLIENT, json!(3), "delivered"),
                ], "next_page_token": "r2"}),
            ),
        ),
        (
            path,
            status_reply(
                json!(3),
                [2, 1, 0, 1, 0],
                "done",
                json!({"recipient_status": [row(PUBLISH_ID, Value::Null, "unknown")]}),
            ),
        ),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&[
        "status",
        &PUBLISH_ID.to_uppercase(),
        "--recipients",
        "--admin-token",
        "fake-admin-token",
    ]);
    out.expect_ok();
    assert!(!out.stdout.contains('\u{1b}'), "{out:#?}");
    let lines = out.stdout_lines();
    assert_eq!(lines[0], format!("publish   {PUBLISH_ID}"));
    assert_eq!(lines[1], "type      evil\\u{1b}[2J");
    assert_eq!(lines[3], "audience  the clients tagged eu");
    assert_eq!(lines[4], "expires   2026-11-25T12:05:00.000Z");
    assert_eq!(lines[5], "state     done");
    assert_eq!(
        lines[6],
        "delivered 2/3 · acknowledged 1/3 · expired 0 · unknown 1 · pending 0"
    );
    assert_eq!(
        lines[7],
        "CLIENT ID                             MESSAGE ID  STATUS"
    );
    assert_eq!(lines[8], format!("{RECIPIENT}  7           acknowledged"));
    assert_eq!(lines[9], format!("{CLIENT}  3           delivered"));
    assert_eq!(lines[10], format!("{PUBLISH_ID}  -           unknown"));
    let reads = fake.seen_on(path);
    assert_eq!(reads.len(), 2);
    assert!(
        reads[0].target.contains("recipients=1") && reads[0].target.contains("limit=1000"),
        "{:?}",
        reads[0].target
    );
    assert!(!reads[0].target.contains("page_token"));
    assert!(
        reads[1].target.contains("page_token=r2"),
        "{:?}",
        reads[1].target
    );

    // While the audience is still being enumerated the server hands back the
    // same token at the end: the listing stops there and says so.
    let fake = FakeServer::start(vec![
        (
            path,
            status_reply(
                Value::Null,
                [1, 0, 0, 0, 0],
                "delivering",
                json!({"recipient_status": [row(RECIPIENT, json!(7), "delivered")],
                       "next_page_token": "r1"}),
            ),
        ),
        (
            path,
            status_reply(
                Value::Null,
                [1, 0, 0, 0, 0],
                "delivering",
                json!({"recipient_status": [], "next_page_token": "r1"}),
            ),
        ),
    ]);
    let cli = Cli::with_url(&fake.url);
    let out = cli.run(&[
        "status",
        PUBLISH_ID,
        "--recipients",
        "--json",
        "--admin-token",
        "fake-admin-token",
    ]);
    out.expect_ok();
    let status = json_of(&out);
    assert_eq!(status["recipient_status"].as_array().map(Vec::len), Some(1));
    assert!(status.get("next_page_token").is_none(), "{status}");
    assert!(out.stderr.contains("still being enumerated"), "{out:#?}");
    assert_eq!(fake.seen_on(path).len(), 2);
}

#[test]
fn clients_tag_puts_the_tags_and_the_listing_asks_for_the_tag() {
    let tags_path: &'static str =
        Box::leak(format!("/api/v1/operators/clients/{RECIPIENT}/tags").into_boxed_str());
    let fake = FakeServer::start(vec![
        (
            tags_path,
            (
                200,
                Vec::new(),
                Some(json!({"id": RECIPIENT, "tags": ["door-sensors", "eu"]})),
            ),
        ),
        (
            tags_path,
            (200, Vec::new(), Some(json!({"id": RECIPIENT, "tags": []}))),
        ),
        (
            "/api/v1/operators/clients",
            (
                200,
                Vec::new(),
                Some(json!({"clients": [{
                    "id": RECIPIENT, "name": "laptop", "created_at": "2026-11-25T12:00:00.000Z",
                    "last_seen_at": null, "status": "offline", "sent_head": 0,
                    "tags": ["door-sensors", "e\u{1b}[2Ju"],
                }]})),
            ),
        ),
    ]);
    let cli = Cli::with_url(&fake.url);
    let op = [("PIGEONHOLE_OPERATOR_TOKEN", "fake-operator-token")];

    let out = cli.run_env(
        &["clients", "tag", RECIPIENT, "eu", "door-sensors", "eu"],
        &op,
    );
    out.expect_ok();
    assert_eq!(
        out.stdout.trim(),
        format!("Client {RECIPIENT} tags: door-sensors, eu")
    );
    let out = cli.run_env(&["clients", "tag", RECIPIENT], &op);
    out.expect_ok();
    assert_eq!(
        out.stdout.trim(),
        format!("Client {RECIPIENT} has no tags.")
    );
    let puts = fake.seen_on(tags_path);
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[0].method, "PUT");
    assert_eq!(
        puts[0].header("x-operator-token"),
        Some("fake-operator-token")
    );
    assert!(
        puts[0]
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:#?}",
        puts[0]
    );
    assert_eq!(body_of(&puts[0]), json!({"tags": ["eu", "door-sensors"]}));
    assert_eq!(body_of(&puts[1]), json!({"tags": []}), "none clears them");

    let out = cli.run_env(&["clients", "--tag", "eu"], &op);
    out.expect_ok();
    assert!(!out.stdout.contains('\u{1b}'), "{out:#?}");
    let lines = out.stdout_lines();
    assert!(
        lines[1].ends_with(" door-sensors,e\\u{1b}[2Ju"),
        "tags last, escaped: {out:#?}"
    );
    assert_eq!(lines[2], "1 clients tagged eu, 0 online");
    let listing = fake.seen_on("/api/v1/operators/clients");
    assert!(
        listing[0].target.contains("tag=eu"),
        "{:?}",
        listing[0].target
    );

    // Bad tags are refused before anything is sent.
    let before = fake.seen().len();
    cli.run_env(&["clients", "tag", RECIPIENT, "EU"], &op)
        .expect_code(2);
    cli.run_env(&["clients", "--tag", "no spaces"], &op)
        .expect_code(2);
    cli.run_env(&["clients", "tag", "not-a-uuid", "eu"], &op)
        .expect_code(2);
    assert_eq!(fake.seen().len(), before);
}

#[test]
fn listen_acks_next_cursor_past_expired_ids_and_pages_with_no_message() {
    let key = [7u8; 32];
    let created_at = "2026-11-25T12:00:00.000Z";
    let aad = json!({"client_id": CLIENT, "created_at": created_at, "id": 1});
    let sealed = encrypt(
        &key,
        &serde_json::to_vec(&json!({"type": "greeting", "payload": {"n": 1}})).unwrap(),
        Some(&aad),
    );
    // Message 1, then ids 2 and 3 expired: next_cursor is 3, not 1.
    let page = json!({"messages": [{
        "id": 1, "type": "greeting", "ciphertext": sealed.ciphertext, "nonce": sealed.nonce,
        "tag": sealed.tag, "aad": aad, "created_at": created_at,
    }], "next_cursor": 3});
    // Then a page whose messages all expired.
    let expired = json!({"messages": [], "next_cursor": 5});
    let fake = FakeServer::start(vec![
        (REGISTER, creds_reply(201, CLIENT, 7, 'A')),
        (POLL, (200, Vec::new(), Some(page))),
        (POLL, (200, Vec::new(), Some(expired.clone()))),
    ]);
    let cli = Cli::with_url(&fake.url);
    cli.run(&["register", "--fingerprint", &random_fingerprint()])
        .expect_ok();
    // A 1 s step: "at once" and "after the step" are far apart.
    let mut child = cli.spawn(&["listen", "--json", "--interval-base-ms", "1000"]);
    let lines = child.wait_for_lines(1, Duration::from_secs(20));
    assert_eq!(
        serde_json::from_str::<Value>(&lines[0]).unwrap()["payload"],
        json!({"n": 1})
    );
    // Wait for the third poll (the unscripted 204) before stopping.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.seen_on(POLL).len() < 3 {
        assert!(Instant::now() < deadline, "{:#?}", fake.seen());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.interrupt();
    let status = child.wait_timeout(Duration::from_secs(10));
    let out = child.output(status);
    out.expect_ok();
    assert_eq!(
        out.stdout_lines().len(),
        1,
        "nothing printed for expired ids"
    );

    let acked: Vec<Value> = fake
        .seen_on("/api/v1/messages/ack")
        .iter()
        .map(|r| body_of(r)["last_received_id"].clone())
        .collect();
    assert_eq!(acked, [json!(3), json!(5)], "next_cursor of each page");
    let polls = fake.seen_on(POLL);
    assert!(
        polls[1].target.contains("cursor=3"),
        "{:?}",
        polls[1].target
    );
    assert!(
        polls[2].target.contains("cursor=5"),
        "{:?}",
        polls[2].target
    );
    // The empty page is followed by another poll at once (more may wait).
    assert!(
        polls[2].at - polls[1].at < Duration::from_millis(500),
        "{:?}",
        polls[2].at - polls[1].at
    );
    assert_eq!(cli.profile("default")["cursor"], json!(5));

    // --once: a page of expired ids only is acked, and is "nothing new".
    let fake = FakeServer::start(vec![
        (REGISTER, creds_reply(201, CLIENT, 7, 'A')),
        (
            POLL,
            (
                200,
                Vec::new(),
                Some(json!({"messages": [], "next_cursor": 9})),
            ),
        ),
    ]);
    let cli = Cli::with_url(&fake.url);
    cli.run(&["register", "--fingerprint", &random_fingerprint()])
        .expect_ok();
    let out = cli.run(&["listen", "--once"]);
    out.expect_code(3);
    let acks = fake.seen_on("/api/v1/messages/ack");
    assert_eq!(acks.len(), 1, "{out:#?}");
    assert_eq!(body_of(&acks[0]), json!({"last_received_id": 9}));
    assert_eq!(cli.profile("default")["cursor"], json!(9));
}
