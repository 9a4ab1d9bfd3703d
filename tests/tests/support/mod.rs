//! Shared harness for the end-to-end tests: starts the real `pigeonhole-local`
//! binary on a free port with a fresh data directory, talks to it over HTTP,
//! and encrypts/decrypts with `ring` (an AES-GCM implementation independent of
//! the server's own crypto code).
//!
//! `PIGEONHOLE_E2E_BACKEND` picks the server's backend:
//! - unset or `embedded`: the embedded SQLite store in the data directory;
//! - `aws`: `--backend aws`, DynamoDB and SQS on moto (see `aws_support`:
//!   `PIGEONHOLE_TEST_AWS_ENDPOINT`, or a moto server of this test process).
//!   Every `Server` gets tables and queues of its own under a fresh prefix,
//!   kept across restarts, and the server gets their names as infra writes
//!   them (`CLIENTS_TABLE=…`, `FANOUT_QUEUE_URL=…`, `INBOUND_QUEUE_URL=…`:
//!   sends are announced on the inbound queue, see `inbound.rs`; a test's
//!   `extra_env` may blank one). The fan-out runs on what the server receives
//!   from its queue, so it finishes after publish answers 202: `publish`
//!   waits for it ([`Server::settle`]).
#![allow(dead_code)]

#[path = "../aws_support/mod.rs"]
pub mod aws_support;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};

pub const API: &str = "/api/v1";

// ---------------------------------------------------------------------------
// Which backend the server runs on
// ---------------------------------------------------------------------------

pub const BACKEND_VAR: &str = "PIGEONHOLE_E2E_BACKEND";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite store (the default).
    Embedded,
    /// `--backend aws`: DynamoDB and SQS on moto.
    Aws,
}

/// The backend chosen by `PIGEONHOLE_E2E_BACKEND` (`embedded`, the default,
/// or `aws`); anything else is a mistake and fails the test.
pub fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| {
        let value = std::env::var(BACKEND_VAR).unwrap_or_default();
        match value.trim() {
            "" | "embedded" => Backend::Embedded,
            "aws" => Backend::Aws,
            other => panic!("{BACKEND_VAR}={other:?}: expected `embedded` or `aws`"),
        }
    })
}

// ---------------------------------------------------------------------------
// Locating (and building) the server binary
// ---------------------------------------------------------------------------

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// Path of the `pigeonhole-local` binary. `PIGEONHOLE_LOCAL_BIN` wins (on the
/// aws backend it must have been built with `--features aws`); otherwise
/// `cargo build -p pigeonhole-local` (plus `--features aws` on the aws
/// backend) is run once per test process (a no-op when it is up to date, and
/// it keeps the tests from running a stale binary).
pub fn server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let features: &[&str] = if backend() == Backend::Aws {
            &["--features", "aws"]
        } else {
            &[]
        };
        workspace_binary(
            "PIGEONHOLE_LOCAL_BIN",
            "pigeonhole-local",
            "pigeonhole-local",
            features,
        )
    })
}

/// A workspace binary: the path in `env_var` when set, otherwise built with
/// `cargo build -p package` (a no-op when up to date, and it keeps the tests
/// from running a stale binary).
fn workspace_binary(env_var: &str, package: &str, bin: &str, extra_args: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env_var}={} does not exist", p.display());
        return p;
    }
    let ws = workspace_dir();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_relative() { ws.join(t) } else { t })
        .unwrap_or_else(|| ws.join("target"));
    let path = target.join("debug").join(bin);
    let mut args = vec!["build", "-p", package];
    args.extend_from_slice(extra_args);
    let shown = format!("cargo {}", args.join(" "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(&args).current_dir(&ws).stdin(Stdio::null());
    without_crate_env(&mut build);
    let out = build
        .output()
        .unwrap_or_else(|e| panic!("failed to run `{shown}`: {e}"));
    assert!(
        out.status.success(),
        "`{shown}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        path.is_file(),
        "built {package} but {} does not exist",
        path.display()
    );
    path
}

/// Cargo runs a test with the variables it sets for a crate
/// (CARGO_MANIFEST_DIR, CARGO_PKG_*, …). Some build scripts (ring's) track
/// CARGO_MANIFEST_DIR, so passing them on to a nested `cargo build` would
/// make it and a plain one from the shell rebuild each other.
fn without_crate_env(build: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
        {
            build.env_remove(name.as_ref());
        }
    }
}

// ---------------------------------------------------------------------------
// Randomness and small utilities
// ---------------------------------------------------------------------------

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("system randomness");
    b
}

pub fn random_token(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn random_fingerprint() -> String {
    format!("fp-{}", uuid::Uuid::new_v4())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

// ---------------------------------------------------------------------------
// Server configuration and lifecycle
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Config {
    /// `None` leaves the variable unset (the server then generates one).
    pub admin_token: Option<String>,
    pub operator_tokens: Option<Vec<String>>,
    pub master_key: Option<String>,
    /// `None` leaves `POLL_RATE_LIMIT` unset (server default 120/min).
    pub poll_rate_limit: Option<String>,
    pub acked_retention_secs: Option<String>,
    pub extra_args: Vec<String>,
    /// Extra environment variables (applied last, may override the above).
    pub extra_env: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_token: Some(random_token("admin")),
            operator_tokens: Some(vec![random_token("op1"), random_token("op2")]),
            master_key: Some(B64.encode(random_bytes::<32>())),
            // High enough never to interfere, except in the rate-limit tests.
            poll_rate_limit: Some("1000000".into()),
            acked_retention_secs: None,
            extra_args: Vec::new(),
            extra_env: Vec::new(),
        }
    }
}

impl Config {
    /// No secrets in the environment: the server must generate them.
    pub fn without_secrets() -> Self {
        Config {
            admin_token: None,
            operator_tokens: None,
            master_key: None,
            ..Config::default()
        }
    }

    /// This configuration plus the environment variable `name=value` (in
    /// `extra_env`), e.g. `Config::default().with_env("SEND_RATE_LIMIT", "2")`.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.extra_env.push((name.into(), value.into()));
        self
    }
}

pub struct Server {
    pub config: Config,
    pub addr: String,
    pub base: String,
    pub http: reqwest::Client,
    root: tempfile::TempDir,
    child: Option<Child>,
    generation: u32,
    /// The tables and queues of this server on the aws backend.
    aws: Option<AwsBackend>,
    /// When the last run was stopped (aws backend only; see `restart`).
    stopped_at: Option<Instant>,
}

/// One server's DynamoDB tables and SQS queues (on moto), provisioned once
/// and kept across restarts.
pub struct AwsBackend {
    pub env: aws_support::AwsEnv,
    pub sqs: aws_sdk_sqs::Client,
}

const AWS_REGION: &str = "us-east-1";

/// How long a receive of a stopped server's fan-out loop can outlive it. The
/// loop long-polls the queue for 2 s; moto does not notice that the client
/// went away and still hands the next job to that dead receive, which hides
/// it for the queue's visibility timeout (6 minutes), as SQS would. moto
/// checks for new messages at least once a second, so 2 + 1 s and a margin.
const ORPHANED_RECEIVE: Duration = Duration::from_secs(4);

/// What the AWS SDK in the server reads: the endpoint, a region and dummy
/// credentials, and nothing from this machine's AWS setup (no profile, no
/// config files, no instance metadata, no per-service endpoint overrides).
fn aws_client_env(cmd: &mut Command, endpoint: &str, root: &Path) {
    for var in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", AWS_REGION)
        .env("AWS_DEFAULT_REGION", AWS_REGION)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", empty_file(&root.join("aws-config")))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            empty_file(&root.join("aws-credentials")),
        );
}

/// Creates `path` empty unless it exists; returns it.
fn empty_file(path: &Path) -> &Path {
    if !path.exists() {
        std::fs::write(path, "").expect("create an empty file");
    }
    path
}

/// What the server prints when it was built without `--features aws`.
const NO_AWS_SUPPORT: &str = "has no AWS support";

fn new_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Server {
        let mut aws = match backend() {
            Backend::Embedded => None,
            Backend::Aws => {
                let env = aws_support::fresh_env().await;
                let sqs = env.sqs();
                Some(AwsBackend { env, sqs })
            }
        };
        let mut last_err = String::new();
        // A freshly picked free port may be grabbed by a parallel test before
        // the server binds it: retry with another port a few times.
        for _ in 0..3 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut server = Server {
                config: config.clone(),
                base: format!("http://{addr}"),
                addr,
                http: new_http_client(),
                root: tempfile::tempdir().expect("tempdir"),
                child: None,
                generation: 0,
                aws: aws.take(),
                stopped_at: None,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return server,
                Err(e) => {
                    Self::fail_without_aws_support(&e);
                    aws = server.aws.take();
                    last_err = e;
                }
            }
        }
        panic!("pigeonhole-local did not start: {last_err}");
    }

    /// A binary without AWS support cannot run these tests: say how to get one
    /// at once instead of retrying.
    fn fail_without_aws_support(err: &str) {
        if err.contains(NO_AWS_SUPPORT) {
            panic!(
                "{BACKEND_VAR}=aws needs pigeonhole-local built with `--features aws`: \
                 unset PIGEONHOLE_LOCAL_BIN (the tests then build it) or rebuild it with \
                 `cargo build -p pigeonhole-local --features aws`.\n{err}"
            );
        }
    }

    /// The backend this server runs on.
    pub fn backend(&self) -> Backend {
        if self.aws.is_some() {
            Backend::Aws
        } else {
            Backend::Embedded
        }
    }

    /// The tables and queues of this server, on the aws backend.
    pub fn aws(&self) -> Option<&AwsBackend> {
        self.aws.as_ref()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn stdout_path(&self) -> PathBuf {
        self.root.path().join("stdout.log")
    }

    fn stderr_path(&self) -> PathBuf {
        self.root.path().join("stderr.log")
    }

    /// Everything the server wrote to stdout so far (all runs).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stdout_path()).unwrap_or_default()
    }

    /// Everything the server wrote to stderr so far (all runs).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!("{}\n{}", self.stdout(), self.stderr())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(server_binary());
        cmd.arg("--listen")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(self.data_dir());
        if let Some(aws) = &self.aws {
            cmd.args(["--backend", "aws"]);
            aws_client_env(&mut cmd, aws_support::endpoint(), self.root.path());
            for line in aws.env.provisioned.env_lines() {
                let (name, value) = line
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not NAME=value: {line}"));
                cmd.env(name, value);
            }
        }
        cmd.args(&self.config.extra_args)
            .current_dir(self.root.path())
            .stdin(Stdio::null());
        for var in [
            "ADMIN_TOKEN",
            "OPERATOR_TOKENS",
            "MASTER_KEY",
            "POLL_RATE_LIMIT",
            "ACKED_RETENTION_SECS",
            // Set only through `extra_env`: never inherited from the shell.
            "SEND_RATE_LIMIT",
            "REGISTER_RATE_LIMIT",
            "REGISTER_RATE_LIMIT_EXEMPT",
        ] {
            cmd.env_remove(var);
        }
        let c = &self.config;
        if let Some(t) = &c.admin_token {
            cmd.env("ADMIN_TOKEN", t);
        }
        if let Some(t) = &c.operator_tokens {
            cmd.env("OPERATOR_TOKENS", t.join(","));
        }
        if let Some(k) = &c.master_key {
            cmd.env("MASTER_KEY", k);
        }
        if let Some(r) = &c.poll_rate_limit {
            cmd.env("POLL_RATE_LIMIT", r);
        }
        if let Some(r) = &c.acked_retention_secs {
            cmd.env("ACKED_RETENTION_SECS", r);
        }
        for (k, v) in &c.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    fn open_log(path: &Path) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log file")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.generation += 1;
        let mut cmd = self.command();
        cmd.stdout(Self::open_log(&self.stdout_path()))
            .stderr(Self::open_log(&self.stderr_path()));
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", server_binary().display()))?;
        self.child = Some(child);
        self.http = new_http_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "server exited early with {status} (addr {})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.addr,
                    self.stdout(),
                    self.stderr()
                ));
            }
            if let Ok(r) = probe.get(format!("{}/health", self.base)).send().await {
                if r.status() == StatusCode::OK {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(format!(
                    "GET /health did not answer 200 within 20 s (addr {})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.addr,
                    self.stdout(),
                    self.stderr()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start the binary with `config` expecting it to exit by itself (e.g. on
    /// invalid configuration) within `timeout`. Returns the exit status (None
    /// if it was still running, then it is killed) and stdout+stderr.
    ///
    /// On the aws backend it runs with `--backend aws` and the AWS client
    /// environment but provisions nothing (no table or queue names): the
    /// configuration is checked before the backend is opened.
    pub fn run_to_exit(
        config: Config,
        timeout: Duration,
    ) -> (Option<std::process::ExitStatus>, String) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut server = Server {
            config,
            base: format!("http://{addr}"),
            addr,
            http: new_http_client(),
            root: tempfile::tempdir().expect("tempdir"),
            child: None,
            generation: 0,
            aws: None,
            stopped_at: None,
        };
        let mut cmd = server.command();
        if backend() == Backend::Aws {
            cmd.args(["--backend", "aws"]);
            let endpoint = std::env::var(aws_support::ENDPOINT_VAR)
                .ok()
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| "http://127.0.0.1:9".into());
            aws_client_env(&mut cmd, &endpoint, server.root.path());
            for name in pigeonhole::store::dynamodb::TableNames::ENV {
                cmd.env_remove(name);
            }
            cmd.env_remove(pigeonhole::aws::FANOUT_QUEUE_URL);
            cmd.env_remove(pigeonhole::aws::INBOUND_QUEUE_URL);
        }
        cmd.stdout(Self::open_log(&server.stdout_path()))
            .stderr(Self::open_log(&server.stderr_path()));
        let mut child = cmd.spawn().expect("spawn server");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        server.child = None;
        (status, server.logs())
    }

    /// SIGKILL the server process (no chance to flush or clean up) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.stopped();
        }
    }

    fn stopped(&mut self) {
        if self.aws.is_some() {
            self.stopped_at = Some(Instant::now());
        }
    }

    /// Send SIGINT (Ctrl-C) and wait up to `timeout` for the process to exit.
    /// Returns its exit status, or `None` if it did not exit in time (it is
    /// then killed).
    pub fn interrupt(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let ok = Command::new("kill")
            .arg("-INT")
            .arg(child.id().to_string())
            .status()
            .expect("run kill -INT");
        assert!(ok.success(), "kill -INT failed");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.stopped();
        status
    }

    /// Start the server again on the same port, data dir and environment
    /// (and, on the aws backend, the same tables and queues). On the aws
    /// backend it first waits until the stopped run's last receive from the
    /// fan-out queue has surely ended (`ORPHANED_RECEIVE`), so that receive
    /// cannot swallow a job published after the restart.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() needs a stopped server");
        if let Some(stopped) = self.stopped_at.take() {
            tokio::time::sleep(ORPHANED_RECEIVE.saturating_sub(stopped.elapsed())).await;
        }
        // The port was just freed; retry briefly in case the OS lags.
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("restart failed: {last}");
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    // -----------------------------------------------------------------------
    // HTTP helpers
    // -----------------------------------------------------------------------

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub fn admin_token(&self) -> &str {
        self.config
            .admin_token
            .as_deref()
            .expect("admin token set in config")
    }

    pub fn operator_token(&self) -> &str {
        &self
            .config
            .operator_tokens
            .as_ref()
            .expect("operator tokens set in config")[0]
    }

    pub async fn register_raw(&self, body: &Value) -> Response {
        self.request(Method::POST, &format!("{API}/clients/register"))
            .json(body)
            .send()
            .await
            .expect("register request")
    }

    /// Register (or re-register) `fingerprint`; returns the HTTP status and creds.
    pub async fn register_status(&self, fingerprint: &str, name: Option<&str>) -> (u16, Creds) {
        let mut body = json!({ "fingerprint": fingerprint });
        if let Some(n) = name {
            body["name"] = json!(n);
        }
        let resp = self.register_raw(&body).await;
        let status = resp.status().as_u16();
        let v = json_body(resp).await;
        assert!(
            status == 200 || status == 201,
            "register answered {status}: {v}"
        );
        (status, Creds::from_json(&v))
    }

    pub async fn register(&self, fingerprint: &str) -> Creds {
        self.register_status(fingerprint, None).await.1
    }

    pub async fn new_client(&self) -> Creds {
        self.register(&random_fingerprint()).await
    }

    pub async fn publish_raw(&self, body: &Value) -> Response {
        self.request(Method::POST, &format!("{API}/messages/publish"))
            .header("X-Admin-Token", self.admin_token())
            .json(body)
            .send()
            .await
            .expect("publish request")
    }

    /// Publish and assert 202, then wait for the fan-out to finish (see
    /// [`Server::settle`]), so the message is in every recipient's inbox as
    /// on the embedded backend. Returns the response body.
    pub async fn publish(&self, to: &[&str], kind: &str, payload: Value) -> Value {
        let v = self.publish_nowait(to, kind, payload).await;
        self.settle().await;
        v
    }

    /// Publish and assert 202 without waiting for the fan-out: on the aws
    /// backend the messages reach the inboxes some time later.
    pub async fn publish_nowait(&self, to: &[&str], kind: &str, payload: Value) -> Value {
        let resp = self
            .publish_raw(&json!({ "to_client_ids": to, "type": kind, "payload": payload }))
            .await;
        let status = resp.status();
        let v = json_body(resp).await;
        assert_eq!(status, StatusCode::ACCEPTED, "publish: {v}");
        v
    }

    /// Waits until every publish answered so far has been fanned out. The
    /// embedded backend fans out before publish answers 202: nothing to do.
    /// On the aws backend publish answers once its jobs are on the fan-out
    /// queue, and the server deletes a job only after the fan-out handler has
    /// written it to every inbox, so an empty queue (see
    /// [`Server::fanout_pending`]) means all of it is delivered. Panics when
    /// the queue makes no progress for 60 s (a failing fan-out: its records
    /// come back only after the visibility timeout).
    pub async fn settle(&self) {
        let mut last = u64::MAX;
        let mut progress = Instant::now();
        loop {
            let pending = self.fanout_pending().await;
            if pending == 0 {
                return;
            }
            if pending < last {
                last = pending;
                progress = Instant::now();
            }
            assert!(
                progress.elapsed() < Duration::from_secs(60),
                "the fan-out is stuck: {pending} job(s) on the queue for 60 s\n--- server stderr ---\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many fan-out jobs are not done yet: on the aws backend the jobs on
    /// the fan-out queue, visible, in flight (received, not yet deleted) or
    /// delayed (moto counts them exactly); always 0 on the embedded backend.
    pub async fn fanout_pending(&self) -> u64 {
        let Some(aws) = &self.aws else { return 0 };
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = aws
            .sqs
            .get_queue_attributes()
            .queue_url(&aws.env.provisioned.queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(A::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "GetQueueAttributes of {}: {}",
                    aws.env.provisioned.queue_url,
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            });
        let attrs = out.attributes.unwrap_or_default();
        assert_eq!(attrs.len(), 3, "asked for 3 counts, got {attrs:?}");
        attrs
            .values()
            .map(|v| v.parse::<u64>().expect("a message count"))
            .sum()
    }

    /// Everything the server keeps at rest, as (where, bytes): each file in
    /// the data directory and, on the aws backend, each item of each of its
    /// DynamoDB tables (the raw bytes of every attribute name and value).
    pub async fn data_at_rest(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        fn read_dir(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    read_dir(&path, out);
                } else {
                    let data = std::fs::read(&path).expect("read a data file");
                    out.push((path.display().to_string(), data));
                }
            }
        }
        read_dir(&self.data_dir(), &mut out);
        if let Some(aws) = &self.aws {
            let ddb = aws.env.dynamodb();
            for table in aws.env.tables().all() {
                let mut start = None;
                let mut n = 0;
                loop {
                    let page = ddb
                        .scan()
                        .table_name(table)
                        .consistent_read(true)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .unwrap_or_else(|e| {
                            panic!(
                                "scan {table}: {}",
                                aws_sdk_dynamodb::error::DisplayErrorContext(e)
                            )
                        });
                    for item in page.items.unwrap_or_default() {
                        let mut bytes = Vec::new();
                        for (name, value) in &item {
                            bytes.extend_from_slice(name.as_bytes());
                            bytes.push(0);
                            attribute_bytes(value, &mut bytes);
                        }
                        n += 1;
                        out.push((format!("DynamoDB table {table}, item {n}"), bytes));
                    }
                    start = page.last_evaluated_key;
                    if start.is_none() {
                        break;
                    }
                }
            }
        }
        out
    }

    pub fn poll_request(&self, c: &Creds, query: &str) -> RequestBuilder {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        c.auth(self.request(Method::GET, &format!("{API}/messages/poll{q}")))
    }

    pub async fn poll_raw(&self, c: &Creds, cursor: Option<u64>, limit: Option<u32>) -> Response {
        let mut q = Vec::new();
        if let Some(cur) = cursor {
            q.push(format!("cursor={cur}"));
        }
        if let Some(l) = limit {
            q.push(format!("limit={l}"));
        }
        self.poll_request(c, &q.join("&"))
            .send()
            .await
            .expect("poll request")
    }

    /// Poll; `None` on 204 (asserting an empty body), the body on 200.
    pub async fn poll(&self, c: &Creds, cursor: Option<u64>, limit: Option<u32>) -> Option<Value> {
        let resp = self.poll_raw(c, cursor, limit).await;
        match resp.status() {
            StatusCode::NO_CONTENT => {
                let body = resp.bytes().await.expect("204 body");
                assert!(body.is_empty(), "204 with a body: {body:?}");
                None
            }
            StatusCode::OK => Some(json_body(resp).await),
            s => panic!(
                "poll answered {s}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }

    pub async fn ack_raw(&self, c: &Creds, body: &Value) -> Response {
        c.auth(self.request(Method::POST, &format!("{API}/messages/ack")))
            .json(body)
            .send()
            .await
            .expect("ack request")
    }

    /// Ack and assert 200 `{"cursor": n}`; returns n.
    pub async fn ack(&self, c: &Creds, last_received_id: u64) -> u64 {
        let resp = self
            .ack_raw(c, &json!({ "last_received_id": last_received_id }))
            .await;
        let status = resp.status();
        let v = json_body(resp).await;
        assert_eq!(status, StatusCode::OK, "ack {last_received_id}: {v}");
        assert_keys(&v, &["cursor"]);
        v["cursor"].as_u64().expect("cursor is an integer")
    }

    pub async fn send_raw(&self, c: &Creds, body: &Value) -> Response {
        c.auth(self.request(Method::POST, &format!("{API}/messages/send")))
            .json(body)
            .send()
            .await
            .expect("send request")
    }

    /// `POST /clients/rotate` with the client's credentials and `body`.
    pub async fn rotate_raw(&self, c: &Creds, body: &Value) -> Response {
        c.auth(self.request(Method::POST, &format!("{API}/clients/rotate")))
            .json(body)
            .send()
            .await
            .expect("rotate request")
    }

    /// Rotate (to `fingerprint` when given) and assert 200 with the same
    /// client id and a new token and key; returns the new credentials.
    pub async fn rotate(&self, c: &Creds, fingerprint: Option<&str>) -> Creds {
        let body = match fingerprint {
            Some(fp) => json!({ "fingerprint": fp }),
            None => json!({}),
        };
        let resp = self.rotate_raw(c, &body).await;
        let status = resp.status();
        let v = json_body(resp).await;
        assert_eq!(status, StatusCode::OK, "rotate: {v}");
        let new = Creds::from_json(&v);
        assert_eq!(new.client_id, c.client_id, "rotate keeps the client id");
        assert_ne!(new.api_token, c.api_token, "rotate gives a new api_token");
        assert_ne!(
            new.personal_token, c.personal_token,
            "rotate gives a new personal key"
        );
        new
    }

    /// `DELETE /operators/clients/{client_id}` with `token` as `X-Operator-Token`.
    pub async fn delete_client_raw(&self, token: &str, client_id: &str) -> Response {
        self.request(
            Method::DELETE,
            &format!("{API}/operators/clients/{}", urlencode(client_id)),
        )
        .header("X-Operator-Token", token)
        .send()
        .await
        .expect("delete client request")
    }

    /// Delete a client with the first operator token; asserts 204 and an empty body.
    pub async fn delete_client(&self, client_id: &str) {
        let resp = self
            .delete_client_raw(self.operator_token(), client_id)
            .await;
        let status = resp.status();
        let body = resp.bytes().await.expect("delete body");
        assert_eq!(
            status,
            StatusCode::NO_CONTENT,
            "delete {client_id}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(body.is_empty(), "204 with a body: {body:?}");
    }

    pub async fn list_clients_raw(&self, token: &str, query: &str) -> Response {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        self.request(Method::GET, &format!("{API}/operators/clients{q}"))
            .header("X-Operator-Token", token)
            .send()
            .await
            .expect("list clients request")
    }

    /// Walk every page with the given `limit`; returns all clients in order
    /// and the number of pages visited.
    pub async fn list_all_clients(&self, limit: u32) -> (Vec<Value>, usize) {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut q = format!("limit={limit}");
            if let Some(t) = &token {
                q.push_str(&format!("&page_token={}", urlencode(t)));
            }
            let resp = self.list_clients_raw(self.operator_token(), &q).await;
            let status = resp.status();
            let v = json_body(resp).await;
            assert_eq!(status, StatusCode::OK, "list clients: {v}");
            pages += 1;
            let clients = v["clients"].as_array().expect("clients array").clone();
            assert!(clients.len() <= limit as usize, "page larger than limit");
            all.extend(clients);
            match v.get("next_page_token") {
                Some(Value::String(t)) => token = Some(t.clone()),
                None | Some(Value::Null) => break,
                Some(other) => panic!("next_page_token not a string: {other}"),
            }
            assert!(pages < 1000, "paging does not terminate");
        }
        (all, pages)
    }

    // -----------------------------------------------------------------------
    // Tags, audiences, delivery status (audiences.rs, publish_status.rs,
    // expiry.rs)
    // -----------------------------------------------------------------------

    /// `PUT /operators/clients/{client_id}/tags` with `token` as
    /// `X-Operator-Token` and `body` as JSON.
    pub async fn set_tags_raw(&self, token: &str, client_id: &str, body: &Value) -> Response {
        self.request(
            Method::PUT,
            &format!("{API}/operators/clients/{}/tags", urlencode(client_id)),
        )
        .header("X-Operator-Token", token)
        .json(body)
        .send()
        .await
        .expect("set tags request")
    }

    /// Replaces a client's tags with the first operator token; asserts 200
    /// `{"id", "tags"}` naming the client, and returns the tags it answered.
    pub async fn set_tags(&self, client_id: &str, tags: &[&str]) -> Vec<String> {
        let resp = self
            .set_tags_raw(self.operator_token(), client_id, &json!({ "tags": tags }))
            .await;
        let status = resp.status();
        let v = json_body(resp).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "set tags {tags:?} on {client_id}: {v}"
        );
        assert_keys(&v, &["id", "tags"]);
        assert_eq!(v["id"], json!(client_id), "set tags answers the client id");
        v["tags"]
            .as_array()
            .unwrap_or_else(|| panic!("tags is not an array: {v}"))
            .iter()
            .map(|t| t.as_str().expect("a tag is a string").to_string())
            .collect()
    }

    /// Publishes `body` (any audience), asserts 202 `{"publish_id",
    /// "recipients"}`, then waits for the fan-out ([`Server::settle`]).
    /// Returns the 202 body.
    pub async fn publish_with(&self, body: &Value) -> Value {
        let resp = self.publish_raw(body).await;
        let status = resp.status();
        let v = json_body(resp).await;
        assert_eq!(status, StatusCode::ACCEPTED, "publish {body}: {v}");
        assert_keys(&v, &["publish_id", "recipients"]);
        self.settle().await;
        v
    }

    /// `GET /messages/publish/{publish_id}{query}` with `token` as
    /// `X-Admin-Token` (`query` is empty or starts with `?`).
    pub async fn publish_status_raw(&self, token: &str, publish_id: &str, query: &str) -> Response {
        self.request(
            Method::GET,
            &format!("{API}/messages/publish/{}{query}", urlencode(publish_id)),
        )
        .header("X-Admin-Token", token)
        .send()
        .await
        .expect("publish status request")
    }

    /// A publish's delivery status: asserts 200 and a well-formed body
    /// whose counts add up ([`check_publish_status`]). Returns the body.
    pub async fn publish_status(&self, publish_id: &str, query: &str) -> Value {
        let resp = self
            .publish_status_raw(self.admin_token(), publish_id, query)
            .await;
        let status = resp.status();
        let v = json_body(resp).await;
        assert_eq!(status, StatusCode::OK, "status of {publish_id}{query}: {v}");
        check_publish_status(&v, query.contains("recipients=1"));
        assert_eq!(
            v["publish_id"],
            json!(publish_id),
            "status of another publish"
        );
        v
    }

    /// Every entry of a publish's `recipient_status`, walking the pages
    /// with `limit` (`?recipients=1&limit=…&page_token=…`): each page at
    /// most `limit` long, `next_page_token` on every page but the last, no
    /// recipient twice. Returns them in the order given.
    pub async fn recipient_statuses(&self, publish_id: &str, limit: u32) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10_000 {
            let mut query = format!("?recipients=1&limit={limit}");
            if let Some(t) = &token {
                query.push_str(&format!("&page_token={}", urlencode(t)));
            }
            let v = self.publish_status(publish_id, &query).await;
            let page = v["recipient_status"].as_array().unwrap();
            assert!(
                page.len() <= limit as usize,
                "a page of {} with limit={limit}: {v}",
                page.len()
            );
            for r in page {
                assert!(
                    all.iter().all(|seen| seen["client_id"] != r["client_id"]),
                    "{} listed twice in the recipients of {publish_id}",
                    r["client_id"]
                );
                all.push(r.clone());
            }
            match v.get("next_page_token") {
                None => return all,
                Some(Value::String(t)) => token = Some(t.clone()),
                Some(other) => panic!("next_page_token is not a string: {other}"),
            }
        }
        panic!("the recipient pages of {publish_id} do not end");
    }

    /// On the aws backend, makes the fan-out queue hold every job sent to
    /// it from now on for [`FANOUT_HOLD`] (the queue's `DelaySeconds`), so
    /// a test can look at a publish before the fan-out has touched it.
    /// [`Server::release_fanout`] ends that for new jobs; [`Server::settle`]
    /// waits for the held ones too. Nothing on the embedded backend, whose
    /// fan-out runs inside the publish request.
    pub async fn hold_fanout(&self) {
        self.fanout_delay(FANOUT_HOLD.as_secs()).await;
    }

    /// Ends [`Server::hold_fanout`] for jobs sent from now on.
    pub async fn release_fanout(&self) {
        self.fanout_delay(0).await;
    }

    async fn fanout_delay(&self, secs: u64) {
        let Some(aws) = &self.aws else { return };
        use aws_sdk_sqs::types::QueueAttributeName as A;
        aws.sqs
            .set_queue_attributes()
            .queue_url(&aws.env.provisioned.queue_url)
            .attributes(A::DelaySeconds, secs.to_string())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "SetQueueAttributes DelaySeconds={secs} on {}: {}",
                    aws.env.provisioned.queue_url,
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            });
    }
}

/// How long [`Server::hold_fanout`] holds a fan-out job on the aws backend.
/// A test that relies on the hold checks that less than this has passed
/// since it published.
pub const FANOUT_HOLD: Duration = Duration::from_secs(5);

/// What a recipient of a publish can be, in `recipient_status`.
pub const RECIPIENT_STATES: [&str; 5] =
    ["pending", "delivered", "acknowledged", "expired", "unknown"];

/// Checks a 200 body of `GET /messages/publish/{publish_id}`: its fields
/// and their types, and that its counts add up. `recipients` is null only
/// while the audience is still being enumerated (never when `done`);
/// otherwise `delivered` (which includes `acknowledged`), `expired`,
/// `unknown` and `pending` are a partition of it. `done` means the
/// recipients are known and none is pending; `queued` means nothing
/// settled yet. With `detail` (`?recipients=1`) it has `recipient_status`,
/// each entry well-formed.
pub fn check_publish_status(v: &Value, detail: bool) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("status is not an object: {v}"));
    let mut keys = vec![
        "acknowledged",
        "audience",
        "created_at",
        "delivered",
        "expired",
        "expires_at",
        "pending",
        "publish_id",
        "recipients",
        "state",
        "type",
        "unknown",
    ];
    if detail {
        keys.push("recipient_status");
        if obj.contains_key("next_page_token") {
            keys.push("next_page_token");
        }
    }
    assert_keys(v, &keys);
    uuid::Uuid::parse_str(v["publish_id"].as_str().expect("publish_id string"))
        .expect("publish_id is a UUID");
    assert!(v["type"].is_string(), "type: {v}");
    assert_timestamp(v["created_at"].as_str().expect("created_at string"));
    match &v["expires_at"] {
        Value::Null => {}
        Value::String(t) => {
            assert_timestamp(t);
            assert!(
                t.as_str() > v["created_at"].as_str().unwrap(),
                "expires before it was created: {v}"
            );
        }
        other => panic!("expires_at is neither null nor a timestamp: {other}"),
    }
    let audience = v["audience"]
        .as_object()
        .unwrap_or_else(|| panic!("audience is not an object: {v}"));
    assert_eq!(audience.len(), 1, "exactly one audience: {v}");
    let (kind, value) = audience.iter().next().unwrap();
    match kind.as_str() {
        "to_client_ids" => assert!(value.as_u64().is_some_and(|n| n >= 1), "{v}"),
        "to_tags" => assert!(
            value
                .as_array()
                .is_some_and(|t| !t.is_empty() && t.iter().all(Value::is_string)),
            "{v}"
        ),
        "to_all" => assert_eq!(value, &json!(true), "{v}"),
        other => panic!("unknown audience {other:?}: {v}"),
    }
    let count = |name: &str| {
        v[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} is not a count: {v}"))
    };
    let (delivered, acknowledged, expired, unknown, pending) = (
        count("delivered"),
        count("acknowledged"),
        count("expired"),
        count("unknown"),
        count("pending"),
    );
    assert!(
        acknowledged <= delivered,
        "acknowledged ones are delivered: {v}"
    );
    let recipients = match &v["recipients"] {
        Value::Null => None,
        n => Some(
            n.as_u64()
                .unwrap_or_else(|| panic!("recipients is neither null nor a count: {v}")),
        ),
    };
    if let Some(n) = recipients {
        assert_eq!(
            delivered + expired + unknown + pending,
            n,
            "delivered + expired + unknown + pending = recipients: {v}"
        );
    }
    if let Some(n) = v.get("audience").and_then(|a| a.get("to_client_ids")) {
        assert_eq!(
            v["recipients"], *n,
            "named recipients are known at once: {v}"
        );
    }
    let state = v["state"].as_str().expect("state string");
    let done = recipients.is_some() && pending == 0;
    let settled = delivered + expired + unknown;
    let want = if done {
        "done"
    } else if settled == 0 {
        "queued"
    } else {
        "delivering"
    };
    assert_eq!(state, want, "state: {v}");
    if detail {
        let entries = v["recipient_status"]
            .as_array()
            .unwrap_or_else(|| panic!("recipient_status is not an array: {v}"));
        for r in entries {
            assert_keys(r, &["client_id", "message_id", "status"]);
            uuid::Uuid::parse_str(r["client_id"].as_str().expect("client_id string"))
                .expect("client_id is a UUID");
            let status = r["status"].as_str().expect("status string");
            assert!(RECIPIENT_STATES.contains(&status), "status {status}: {v}");
            match status {
                "pending" | "unknown" => {
                    assert_eq!(r["message_id"], Value::Null, "{status} with a message: {r}")
                }
                "delivered" | "acknowledged" => assert!(
                    r["message_id"].as_u64().is_some_and(|id| id >= 1),
                    "{status} without a message id: {r}"
                ),
                _ => assert!(
                    r["message_id"].is_null() || r["message_id"].as_u64().is_some_and(|id| id >= 1),
                    "{r}"
                ),
            }
        }
    }
}

/// The raw bytes of a DynamoDB attribute value (strings as UTF-8, numbers as
/// their text, binaries as they are), each followed by a NUL.
fn attribute_bytes(v: &aws_sdk_dynamodb::types::AttributeValue, out: &mut Vec<u8>) {
    use aws_sdk_dynamodb::types::AttributeValue as V;
    match v {
        V::S(s) | V::N(s) => out.extend_from_slice(s.as_bytes()),
        V::B(b) => out.extend_from_slice(b.as_ref()),
        V::Ss(l) | V::Ns(l) => {
            for s in l {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
        }
        V::Bs(l) => {
            for b in l {
                out.extend_from_slice(b.as_ref());
                out.push(0);
            }
        }
        V::M(m) => {
            for (k, v) in m {
                out.extend_from_slice(k.as_bytes());
                out.push(0);
                attribute_bytes(v, out);
            }
        }
        V::L(l) => {
            for v in l {
                attribute_bytes(v, out);
            }
        }
        V::Bool(b) => out.extend_from_slice(b.to_string().as_bytes()),
        V::Null(_) => {}
        other => panic!("an attribute type the scan does not know: {other:?}"),
    }
    out.push(0);
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Client credentials
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub client_id: String,
    pub personal_token: String,
    pub api_token: String,
}

impl Creds {
    pub fn from_json(v: &Value) -> Creds {
        assert_keys(v, &["api_token", "client_id", "personal_token"]);
        Creds {
            client_id: v["client_id"].as_str().expect("client_id string").into(),
            personal_token: v["personal_token"]
                .as_str()
                .expect("personal_token string")
                .into(),
            api_token: v["api_token"].as_str().expect("api_token string").into(),
        }
    }

    pub fn key(&self) -> [u8; 32] {
        let k = B64
            .decode(&self.personal_token)
            .expect("personal_token is standard base64");
        k.try_into().expect("personal_token decodes to 32 bytes")
    }

    pub fn auth(&self, rb: RequestBuilder) -> RequestBuilder {
        rb.header("Authorization", format!("Bearer {}", self.api_token))
            .header("X-Client-Id", &self.client_id)
    }
}

// ---------------------------------------------------------------------------
// Response helpers
// ---------------------------------------------------------------------------

pub async fn json_body(resp: Response) -> Value {
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.expect("response body");
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    assert!(
        ct.starts_with("application/json"),
        "status {status}: content-type {ct:?} is not application/json (body {text})"
    );
    v
}

/// Assert `v` is an object with exactly these keys.
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v}"));
    let got: BTreeSet<&str> = obj.keys().map(|k| k.as_str()).collect();
    let want: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(got, want, "object keys differ in {v}");
}

/// Assert the response is the error `status`/`code` with exactly the shape
/// `{"error":{"code","message"}}`; returns the message.
pub async fn expect_error(resp: Response, status: u16, code: &str) -> String {
    let got = resp.status().as_u16();
    let url = resp.url().path().to_string();
    let v = json_body(resp).await;
    assert_eq!(
        got, status,
        "{url}: expected {status} {code}, got {got}: {v}"
    );
    assert_keys(&v, &["error"]);
    assert_keys(&v["error"], &["code", "message"]);
    assert_eq!(v["error"]["code"], json!(code), "{url}: wrong code in {v}");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("message is not a string: {v}"))
        .to_string();
    assert!(!msg.is_empty(), "empty error message: {v}");
    msg
}

/// Like `expect_error`, additionally requiring the message to name `field`.
pub async fn expect_validation(resp: Response, field: &str) -> String {
    let msg = expect_error(resp, 422, "validation_failed").await;
    assert!(
        msg.contains(field),
        "validation message {msg:?} does not name the field {field:?}"
    );
    msg
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T23:49:50.123Z`.
pub fn assert_timestamp(s: &str) {
    let b = s.as_bytes();
    let ok = b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19, 20..23]
            .iter()
            .all(|r| b[r.clone()].iter().all(u8::is_ascii_digit));
    assert!(ok, "not an RFC 3339 UTC timestamp with ms: {s:?}");
}

// ---------------------------------------------------------------------------
// Crypto with ring (independent of the server's implementation)
// ---------------------------------------------------------------------------

/// Canonical AAD bytes: compact JSON with object keys sorted (by code point,
/// matching Python's `sort_keys=True` for the keys used here), UTF-8 not
/// escaped. Done by hand so it does not depend on serde_json's map ordering.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::to_string(k).unwrap(),
                        canonical_json(&m[k])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(canonical_json).collect();
            format!("[{}]", parts.join(","))
        }
        other => serde_json::to_string(other).unwrap(),
    }
}

fn aad_bytes(aad: Option<&Value>) -> Vec<u8> {
    match aad {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => canonical_json(v).into_bytes(),
    }
}

pub struct Sealed {
    pub ciphertext: String,
    pub nonce: String,
    pub tag: String,
}

pub fn encrypt_with_nonce(key: &[u8; 32], nonce: [u8; 12], plaintext: &[u8], aad: &[u8]) -> Sealed {
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut buf = plaintext.to_vec();
    let tag = k
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .expect("seal");
    Sealed {
        ciphertext: B64.encode(&buf),
        nonce: B64.encode(nonce),
        tag: B64.encode(tag.as_ref()),
    }
}

pub fn encrypt(key: &[u8; 32], plaintext: &[u8], aad: Option<&Value>) -> Sealed {
    encrypt_with_nonce(key, random_bytes::<12>(), plaintext, &aad_bytes(aad))
}

/// Decrypt raw parts; `None` when authentication fails.
pub fn decrypt_parts(
    key: &[u8; 32],
    ciphertext: &str,
    nonce: &str,
    tag: &str,
    aad: &[u8],
) -> Option<Vec<u8>> {
    let nonce: [u8; 12] = B64
        .decode(nonce)
        .expect("nonce is standard base64")
        .try_into()
        .expect("nonce is 12 bytes");
    let tag = B64.decode(tag).expect("tag is standard base64");
    assert_eq!(tag.len(), 16, "tag is 16 bytes");
    let mut buf = B64
        .decode(ciphertext)
        .expect("ciphertext is standard base64");
    buf.extend_from_slice(&tag);
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let pt = k
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?;
    Some(pt.to_vec())
}

/// Build a `send` body: encrypt `plaintext` under the client's key with `aad`.
pub fn send_body(c: &Creds, plaintext: &Value, aad: Option<&Value>) -> Value {
    let pt = serde_json::to_vec(plaintext).unwrap();
    let s = encrypt(&c.key(), &pt, aad);
    let mut body = json!({ "ciphertext": s.ciphertext, "nonce": s.nonce, "tag": s.tag });
    if let Some(a) = aad {
        body["aad"] = a.clone();
    }
    body
}

/// Check a delivered message's shape and AAD, decrypt it with ring and return
/// the plaintext `{"type","payload"}` object.
pub fn open_message(c: &Creds, m: &Value) -> Value {
    assert_keys(
        m,
        &[
            "aad",
            "ciphertext",
            "created_at",
            "id",
            "nonce",
            "tag",
            "type",
        ],
    );
    let id = m["id"].as_u64().expect("id is a non-negative integer");
    let created_at = m["created_at"].as_str().expect("created_at string");
    assert_timestamp(created_at);
    let aad = &m["aad"];
    assert_keys(aad, &["client_id", "created_at", "id"]);
    assert_eq!(aad["client_id"], json!(c.client_id), "aad.client_id");
    assert_eq!(aad["created_at"], json!(created_at), "aad.created_at");
    assert_eq!(aad["id"], json!(id), "aad.id");
    let pt = decrypt_parts(
        &c.key(),
        m["ciphertext"].as_str().expect("ciphertext string"),
        m["nonce"].as_str().expect("nonce string"),
        m["tag"].as_str().expect("tag string"),
        canonical_json(aad).as_bytes(),
    )
    .unwrap_or_else(|| panic!("message {id} does not decrypt with the client's key: {m}"));
    let v: Value = serde_json::from_slice(&pt).expect("plaintext is JSON");
    assert_keys(&v, &["payload", "type"]);
    assert_eq!(v["type"], m["type"], "plaintext type matches the envelope");
    v
}

/// The messages array of a 200 poll body, checking `next_cursor`.
pub fn messages_of(body: &Value) -> Vec<Value> {
    assert_keys(body, &["messages", "next_cursor"]);
    let msgs = body["messages"].as_array().expect("messages array").clone();
    assert!(!msgs.is_empty(), "200 poll with no messages: {body}");
    let last = msgs.last().unwrap()["id"].as_u64().unwrap();
    assert_eq!(body["next_cursor"], json!(last), "next_cursor = last id");
    let ids: Vec<u64> = msgs.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not ascending: {ids:?}"
    );
    msgs
}

pub fn ids_of(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

// ---------------------------------------------------------------------------
// The `pigeonhole` CLI
// ---------------------------------------------------------------------------

/// Path of the `pigeonhole` CLI binary. `PIGEONHOLE_CLI_BIN` wins; otherwise
/// `cargo build -p pigeonhole-cli` is run once per test process.
pub fn cli_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("PIGEONHOLE_CLI_BIN", "pigeonhole-cli", "pigeonhole", &[]))
}

/// What one CLI run produced.
#[derive(Debug)]
pub struct CliOutput {
    /// `None` when it was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics with everything the run printed unless it exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "unexpected exit code: {self:#?}");
        assert!(
            !self.stderr.contains("panicked"),
            "the CLI panicked: {self:#?}"
        );
        self
    }

    pub fn expect_ok(&self) -> &Self {
        self.expect_code(0)
    }

    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// One CLI user: its own `HOME` (so the real one is never touched) and the
/// server URL. The environment is cleared of every `PIGEONHOLE_*` variable
/// the CLI reads, so the caller's shell cannot leak in.
pub struct Cli {
    pub home: tempfile::TempDir,
    pub url: String,
    /// Extra environment for every run (e.g. `PIGEONHOLE_CONFIG`).
    pub env: Vec<(String, String)>,
}

impl Cli {
    pub fn new(server: &Server) -> Cli {
        Cli::with_url(&server.base)
    }

    pub fn with_url(url: &str) -> Cli {
        Cli {
            home: tempfile::tempdir().expect("tempdir for HOME"),
            url: url.to_string(),
            env: Vec::new(),
        }
    }

    /// Where the CLI keeps its profiles with this `HOME` and no overrides.
    pub fn config_path(&self) -> PathBuf {
        self.env
            .iter()
            .find(|(k, _)| k == "PIGEONHOLE_CONFIG")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| {
                self.home
                    .path()
                    .join(".config")
                    .join("pigeonhole")
                    .join("config.json")
            })
    }

    /// The parsed config file.
    pub fn config(&self) -> Value {
        let text = std::fs::read_to_string(self.config_path()).expect("config file exists");
        serde_json::from_str(&text).expect("config file is JSON")
    }

    /// The saved profile `name`.
    pub fn profile(&self, name: &str) -> Value {
        let config = self.config();
        let p = config["profiles"][name].clone();
        assert!(p.is_object(), "no profile {name:?} in {config}");
        p
    }

    /// The credentials saved in profile `name`, for talking to the server directly.
    pub fn creds(&self, name: &str) -> Creds {
        let p = self.profile(name);
        Creds {
            client_id: p["client_id"].as_str().unwrap().into(),
            personal_token: p["personal_token"].as_str().unwrap().into(),
            api_token: p["api_token"].as_str().unwrap().into(),
        }
    }

    /// A `pigeonhole` command with a clean environment and `--url`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cli_binary());
        cmd.args(args)
            .current_dir(self.home.path())
            .stdin(Stdio::null())
            .env("HOME", self.home.path())
            .env("PIGEONHOLE_URL", &self.url)
            .env("NO_COLOR", "1");
        for var in [
            "PIGEONHOLE_CONFIG",
            "PIGEONHOLE_PROFILE",
            "PIGEONHOLE_ADMIN_TOKEN",
            "PIGEONHOLE_OPERATOR_TOKEN",
            "XDG_CONFIG_HOME",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs to completion (killed and failing after 60 s).
    pub fn run(&self, args: &[&str]) -> CliOutput {
        self.run_with(self.command(args))
    }

    /// Like `run` with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.run_with(cmd)
    }

    pub fn run_with(&self, cmd: Command) -> CliOutput {
        let mut child = self.spawn_with(cmd);
        let status = child.wait_timeout(Duration::from_secs(60));
        child.output(status)
    }

    /// Starts the command in the background; output goes to files.
    pub fn spawn(&self, args: &[&str]) -> CliChild {
        self.spawn_with(self.command(args))
    }

    pub fn spawn_with(&self, mut cmd: Command) -> CliChild {
        let dir = tempfile::tempdir().expect("tempdir for output");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        cmd.stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        let child = cmd.spawn().expect("spawn the pigeonhole CLI");
        CliChild {
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// `register` with a random fingerprint (two `Cli`s of one test never
    /// collide on the default derived from the machine and a per-user secret); returns the client id.
    pub fn register(&self, name: &str) -> String {
        let fp = random_fingerprint();
        self.run(&["register", "--name", name, "--fingerprint", &fp])
            .expect_ok();
        self.creds("default").client_id
    }
}

pub struct CliChild {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl CliChild {
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits until stdout holds `n` non-empty lines; panics after `timeout`.
    pub fn wait_for_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines: Vec<String> = self
                .stdout()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect();
            if lines.len() >= n {
                return lines;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the CLI exited ({status}) with {} of {n} lines\nstdout:\n{}\nstderr:\n{}",
                    lines.len(),
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} lines after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                lines.len(),
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        let ok = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill -INT");
        assert!(ok.success(), "kill -INT failed");
    }

    /// Waits for the exit status; kills the process after `timeout` (`None`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Collects the output of a finished run; panics if it timed out.
    pub fn output(&self, status: Option<std::process::ExitStatus>) -> CliOutput {
        let out = CliOutput {
            code: status.and_then(|s| s.code()),
            stdout: self.stdout(),
            stderr: self.stderr(),
        };
        assert!(status.is_some(), "the CLI did not finish in time: {out:#?}");
        out
    }
}

impl Drop for CliChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
