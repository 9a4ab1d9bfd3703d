//! Test support for code that talks to DynamoDB and SQS. The tests call
//! moto's server over real HTTP.
//!
//! `PIGEONHOLE_TEST_AWS_ENDPOINT` points at an endpoint that is already
//! running (moto, LocalStack). When it is unset, each test binary starts
//! one serialising moto server of its own (`scripts/moto_server.py`) with
//! the Python in `target/pyenv`, on a free loopback port, and the server
//! dies when the test process exits. Each test then gets its own tables and
//! queues, created by `pigeonhole-infra` from `template.yaml` under a unique
//! prefix. Tests share no data, so they run in parallel.
//!
//! Two settings let the tests use an endpoint that is DynamoDB and only
//! DynamoDB, as AWS's DynamoDB Local is (scripts/test.sh runs the DynamoDB
//! store suite on it that way):
//! - `PIGEONHOLE_TEST_SQS_ENDPOINT` takes the SQS requests of [`sdk_config`]
//!   (and so the queues of [`fresh_env`]) to another endpoint, moto in
//!   scripts/test.sh. The local server that the end-to-end tests start
//!   still gets `PIGEONHOLE_TEST_AWS_ENDPOINT` alone.
//! - `PIGEONHOLE_TEST_AWS_NO_PITR=1`: [`fresh_env`] creates the tables
//!   without the template's point-in-time recovery, which DynamoDB Local
//!   does not implement (UpdateContinuousBackups is an unknown operation).
//!
//! And one says what the endpoint's figures are worth:
//! - `PIGEONHOLE_TEST_AWS_CAPACITY=1`: the endpoint reports consumed
//!   capacity by DynamoDB's rules (DynamoDB Local does), so
//!   `each_store_call_consumes_the_expected_capacity` asserts its pinned
//!   read and write units; without it (moto) that test only runs the calls.
#![allow(dead_code)]

use pigeonhole::store::dynamodb::TableNames;
use pigeonhole_infra::template::Plan;
use pigeonhole_infra::Provisioned;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const ENDPOINT_VAR: &str = "PIGEONHOLE_TEST_AWS_ENDPOINT";
pub const SQS_ENDPOINT_VAR: &str = "PIGEONHOLE_TEST_SQS_ENDPOINT";
pub const NO_PITR_VAR: &str = "PIGEONHOLE_TEST_AWS_NO_PITR";
pub const CAPACITY_VAR: &str = "PIGEONHOLE_TEST_AWS_CAPACITY";
const REGION: &str = "us-east-1";

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

pub fn template_path() -> PathBuf {
    workspace_dir().join("template.yaml")
}

/// The endpoint every test in this binary uses. Started on first use.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| match std::env::var(ENDPOINT_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_string(),
        _ => start_moto(),
    })
}

/// Where SQS requests go when that is not [`endpoint`]: `None` when
/// `PIGEONHOLE_TEST_SQS_ENDPOINT` is unset or empty.
pub fn sqs_endpoint() -> Option<String> {
    std::env::var(SQS_ENDPOINT_VAR)
        .ok()
        .map(|url| url.trim().trim_end_matches('/').to_string())
        .filter(|url| !url.is_empty())
}

/// Whether this process started the endpoint: then nobody else uses it.
fn own_endpoint() -> bool {
    std::env::var(ENDPOINT_VAR).map_or(true, |v| v.trim().is_empty())
}

/// The server process and the write end of its stdin. The server ends when
/// that pipe closes, and the pipe closes when this process exits, however
/// it exits. Nothing ever drops this static, on purpose.
struct Server {
    _child: Child,
    _stdin: ChildStdin,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

fn start_moto() -> String {
    let ws = workspace_dir();
    let python = ws.join("target/pyenv/bin/python");
    assert!(
        python.is_file(),
        "the DynamoDB/SQS tests need moto's server in a Python virtualenv at {}, which \
         does not exist. Create it from the repository root with\n    \
         python3 -m venv target/pyenv && target/pyenv/bin/pip install -r tests/requirements-aws.txt\n\
         or set {ENDPOINT_VAR} to a running moto or LocalStack endpoint.",
        python.display()
    );
    let script = ws.join("scripts/moto_server.py");
    let log_path =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("moto-{}.log", std::process::id()));
    // A port can be taken between choosing and binding it; try a few.
    for _ in 0..3 {
        let port = free_port();
        let log = std::fs::File::create(&log_path).expect("create the moto log file");
        // sh starts moto, and a background reader waits for EOF on the pipe
        // that was sh's stdin (kept as fd 3). Only this process holds the
        // other end of that pipe. When this process exits, even by a panic
        // or a signal, the read returns and moto is killed. sh itself
        // waits for moto, so if moto dies early, sh exits with it and
        // `try_wait` notices.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(concat!(
                "exec 3<&0 </dev/null; ",
                r#""$0" "$1" 127.0.0.1 "$2" 3<&- & pid=$!; "#,
                r#"(read _ignored <&3; kill "$pid" 2>/dev/null) & "#,
                r#"wait "$pid""#,
            ))
            .arg(&python)
            .arg(&script)
            .arg(port.to_string())
            .current_dir(&ws)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("failed to start sh for the moto server");
        let stdin = child.stdin.take().expect("piped stdin");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if moto_answers(port) {
                *SERVER.lock().unwrap() = Some(Server {
                    _child: child,
                    _stdin: stdin,
                });
                return url;
            }
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                let log = log();
                if log.contains("Address already in use") {
                    break; // lost the port to someone else: another port
                }
                panic!(
                    "moto's server exited ({status}) before answering. Is moto installed in \
                     target/pyenv? (target/pyenv/bin/pip install -r tests/requirements-aws.txt) \
                     Its log ({}):\n{log}",
                    log_path.display()
                );
            }
            if Instant::now() > deadline {
                drop(stdin); // stops moto
                panic!(
                    "moto did not answer on {url} within 60 s; its log ({}):\n{}",
                    log_path.display(),
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("moto could not get a free port in 3 tries");
}

/// Whether `GET /moto-api/data.json` answers 200.
fn moto_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /moto-api/data.json HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok()
        && (head.starts_with(b"HTTP/1.0 200") || head.starts_with(b"HTTP/1.1 200"))
}

/// An SDK configuration for the test endpoint: us-east-1 and fixed
/// dummy credentials, with nothing taken from this machine's AWS setup.
/// SQS requests go to [`sqs_endpoint`] when it is set.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .empty_test_environment()
        .http_client(pigeonhole::aws::https_client())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "pigeonhole-tests",
        ));
    match sqs_endpoint() {
        None => loader.endpoint_url(endpoint()),
        Some(sqs) => endpoint_per_service(loader, endpoint(), &sqs),
    }
    .load()
    .await
}

/// DynamoDB at `dynamodb`, SQS at `sqs`. An endpoint set in code applies to
/// every service, and the SDK reads one per service only from the
/// environment (which [`sdk_config`] ignores) or from a profile: so this
/// gives it a profile, in memory, that says so.
#[allow(deprecated)] // aws-config exports the profile file types only under deprecated aliases
fn endpoint_per_service(
    loader: aws_config::ConfigLoader,
    dynamodb: &str,
    sqs: &str,
) -> aws_config::ConfigLoader {
    use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
    let profile = format!(
        "[profile pigeonhole-tests]\n\
         services = pigeonhole-tests\n\
         [services pigeonhole-tests]\n\
         dynamodb =\n  endpoint_url = {dynamodb}\n\
         sqs =\n  endpoint_url = {sqs}\n"
    );
    loader
        .profile_files(
            ProfileFiles::builder()
                .with_contents(ProfileFileKind::Config, profile)
                .build(),
        )
        .profile_name("pigeonhole-tests")
}

/// A prefix that no other test, and no other run against a shared
/// endpoint, uses.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    if own_endpoint() {
        format!("t{pid}-{n}-")
    } else {
        // Against a long-lived endpoint a pid can come around again.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 1_000_000)
            .unwrap_or(0);
        format!("t{pid}-{stamp}-{n}-")
    }
}

/// The tables and queues one test owns.
pub struct AwsEnv {
    pub sdk: aws_config::SdkConfig,
    pub provisioned: Provisioned,
}

impl AwsEnv {
    pub fn tables(&self) -> &TableNames {
        &self.provisioned.tables
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk)
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }
}

/// The tables and queues of `template.yaml`, less point-in-time recovery
/// when `PIGEONHOLE_TEST_AWS_NO_PITR=1`.
pub fn plan() -> Plan {
    let path = template_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut plan = Plan::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if std::env::var(NO_PITR_VAR).is_ok_and(|v| v.trim() == "1") {
        for table in &mut plan.tables {
            table.point_in_time_recovery = None;
        }
    }
    plan
}

/// Creates a fresh set of tables and queues from `template.yaml` ([`plan`]).
pub async fn fresh_env() -> AwsEnv {
    let sdk = sdk_config().await;
    let prefix = unique_prefix();
    let provisioned = pigeonhole_infra::apply(&sdk, &plan(), &prefix)
        .await
        .unwrap_or_else(|e| {
            let sqs = sqs_endpoint().map_or(String::new(), |url| format!(" (SQS on {url})"));
            panic!("provisioning {prefix}* on {}{sqs}: {e}", endpoint())
        });
    AwsEnv { sdk, provisioned }
}
