//! The local server holds up when exposed: slow and idle connections are
//! closed, the number of connections served at once is bounded, and the
//! secrets are kept private and not printed again.
//!
//! The request-head timeout is tested at its real 10 s. The body timeout
//! (30 s) is shortened with the hidden `--body-timeout-secs` flag so the
//! suite does not wait half a minute; the default is checked by a unit test
//! in `local/src/main.rs`.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Runs blocking socket code off the async test's worker.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking part")
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads until the server closes the connection (or resets it), giving up
/// after `limit`. Returns what was read and when it was closed, or `None`
/// when it was still open after `limit`.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return (got, None);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (got, Some(started.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, None)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset is a close too.
            Err(_) => return (got, Some(started.elapsed())),
        }
    }
}

/// Reads one response (head and a `Content-Length` body) within `limit`;
/// `None` when none arrived in time.
fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Some(text);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => panic!("connection closed mid-response: {text:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading a response: {e} (after {text:?})"),
        }
    }
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: pigeonhole\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_without_a_complete_request_head_is_closed_after_10_s() {
    let s = Server::start().await;
    let addr = s.addr.clone();
    let (half, silent) = blocking(move || {
        let mut half = connect(&addr);
        let mut silent = connect(&addr);
        // Half a request head, then nothing.
        half.write_all(b"POST /api/v1/clients/register HTTP/1.1\r\nHost: pigeonhole\r\nContent-")
            .unwrap();
        let other =
            std::thread::spawn(move || read_until_closed(&mut silent, Duration::from_secs(25)));
        let half = read_until_closed(&mut half, Duration::from_secs(25));
        (half, other.join().unwrap())
    })
    .await;
    for (what, (got, closed)) in [("half a head", half), ("nothing", silent)] {
        let after = closed
            .unwrap_or_else(|| panic!("a connection that sent {what} was still open after 25 s"));
        assert!(
            after >= Duration::from_secs(9) && after <= Duration::from_secs(20),
            "a connection that sent {what} was closed after {after:?}, not about 10 s"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.starts_with("HTTP/1.1 2"),
            "a connection that sent {what} got an answer: {text:?}"
        );
    }
    // The server still serves.
    let resp = s
        .request(reqwest::Method::GET, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed() {
    let s = Server::start_with(Config {
        extra_args: vec!["--body-timeout-secs".into(), "2".into()],
        ..Config::default()
    })
    .await;
    let addr = s.addr.clone();
    let (got, closed) = blocking(move || {
        let mut c = connect(&addr);
        c.write_all(
            b"POST /api/v1/clients/register HTTP/1.1\r\nHost: pigeonhole\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"fingerp",
        )
        .unwrap();
        read_until_closed(&mut c, Duration::from_secs(30))
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let after = closed.unwrap_or_else(|| panic!("still open after 30 s; got {text:?}"));
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_secs(15),
        "closed after {after:?}, not about 2 s: {text:?}"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "not a 408: {text:?}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_keys(&body, &["error"]);
    assert_keys(&body["error"], &["code", "message"]);
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_max_connections_2_a_third_connection_waits_until_one_closes() {
    let s = Server::start_with(Config {
        extra_args: vec!["--max-connections".into(), "2".into()],
        ..Config::default()
    })
    .await;
    let addr = s.addr.clone();
    blocking(move || {
        // Two connections, each served once and kept open (keep-alive).
        // The start-up probe's connection may take a moment to be released.
        let mut first = connect(&addr);
        first.write_all(GET_HEALTH).unwrap();
        let r = read_response(&mut first, Duration::from_secs(5)).expect("first served");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let mut second = connect(&addr);
        second.write_all(GET_HEALTH).unwrap();
        let r = read_response(&mut second, Duration::from_secs(5)).expect("second served");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        // The third is not served while both are open…
        let mut third = connect(&addr);
        third.write_all(GET_HEALTH).unwrap();
        assert_eq!(
            read_response(&mut third, Duration::from_millis(1500)),
            None,
            "a third connection was served while two were open"
        );
        // …and the open ones still are.
        second.write_all(GET_HEALTH).unwrap();
        let r = read_response(&mut second, Duration::from_secs(5)).expect("second served again");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        // Once one closes, the waiting one is served.
        drop(first);
        let started = Instant::now();
        let r = read_response(&mut third, Duration::from_secs(5))
            .expect("the third connection was not served after the first closed");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await;
}

/// The value printed on a `label: value` line of `stdout`.
fn printed(stdout: &str, label: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label).map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty())
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_printed_on_the_first_start_only_and_the_secrets_are_private() {
    let mut s = Server::start_with(Config::without_secrets()).await;
    let secrets = s.data_dir().join("secrets.json");
    let first = s.stdout();
    let admin = printed(&first, "admin token: ")
        .unwrap_or_else(|| panic!("no admin token printed on the first start:\n{first}"));
    let operator = printed(&first, "operator token: ")
        .unwrap_or_else(|| panic!("no operator token printed on the first start:\n{first}"));
    assert_eq!(mode(&secrets), 0o600, "secrets.json");
    assert_eq!(mode(&s.data_dir()), 0o700, "the data directory");
    // Only secrets.json and the database's files: no temporary file left.
    for entry in std::fs::read_dir(s.data_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "secrets.json" || name.starts_with("pigeonhole.db"),
            "unexpected {name} in the data directory"
        );
    }

    s.interrupt(Duration::from_secs(15))
        .expect("the server stops");
    s.restart().await;
    let second = s.stdout()[first.len()..].to_string();
    assert!(
        !second.contains(&admin) && !second.contains(&operator),
        "a later start printed a token:\n{second}"
    );
    assert!(
        printed(&second, "admin token: ").is_none()
            && printed(&second, "operator token: ").is_none(),
        "{second}"
    );
    assert!(
        second.contains(&secrets.display().to_string()),
        "a later start does not say where the tokens are ({}):\n{second}",
        secrets.display()
    );
    assert!(second.contains("listening on http://"), "{second}");
    assert_eq!(mode(&secrets), 0o600, "secrets.json after a restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secrets_file_others_can_read_stops_the_server_with_how_to_fix_it() {
    let mut s = Server::start_with(Config::without_secrets()).await;
    s.interrupt(Duration::from_secs(15))
        .expect("the server stops");
    let secrets = s.data_dir().join("secrets.json");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();

    // The same data directory; the check comes before anything is served,
    // whatever the secrets in the environment.
    let mut cmd = Command::new(server_binary());
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(s.data_dir())
        .env("ADMIN_TOKEN", random_token("admin"))
        .env_remove("OPERATOR_TOKENS")
        .env_remove("MASTER_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn pigeonhole-local");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the server started on a secrets.json with mode 644:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = child.wait_with_output().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(&format!("chmod 600 {}", secrets.display())),
        "the error does not say how to fix it:\n{output}"
    );
    assert!(!output.contains("listening on"), "{output}");
    assert_eq!(
        mode(&secrets),
        0o644,
        "the server must not change it itself"
    );
}
