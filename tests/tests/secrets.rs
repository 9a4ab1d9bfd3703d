//! The functions' secrets on AWS: each function's environment names its
//! secrets by ARN (`<NAME>_SECRET_ARN`), and its cold start reads them from
//! Secrets Manager (`pigeonhole::aws`).
//!
//! - In process, against moto: the cold start of `pigeonhole::aws::app_from`
//!   with secrets created in moto, then the app answers API Gateway events
//!   through `pigeonhole_functions::respond`, as the deployed function does.
//!   Functions holding different subsets of the keys agree with each other.
//! - Against a stub Secrets Manager: a forbidden secret stops the cold start
//!   at once, throttling is retried (the SDK's own retries are off, as in
//!   the functions).
//! - The real `register` binary, started the way Lambda starts it: with a
//!   missing secret it exits at cold start, logging one line that names the
//!   variable and no value; with its secrets it answers an invocation
//!   through a fake Lambda Runtime API. Both at `RUST_LOG=debug`, the most
//!   verbose level the template allows, and neither output holds a secret.
//!
//! Secrets Manager is reached where SQS is: moto (or LocalStack), started or
//! named by `aws_support`.

mod support;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use lambda_http::{Body, Response};
use pigeonhole::aws::{Env, SECRET_ARN_SUFFIX};
use pigeonhole::config::Secret;
use pigeonhole::http::Route;
use pigeonhole::App;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use support::{aws_support, Creds};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const REGION: &str = "us-east-1";

// ---------------------------------------------------------------------------
// Secrets Manager on the emulator
// ---------------------------------------------------------------------------

/// Where Secrets Manager requests go: with the store suite's split set-up
/// (`PIGEONHOLE_TEST_SQS_ENDPOINT`, DynamoDB alone at the main endpoint)
/// the emulator that serves SQS, otherwise the one endpoint.
fn secrets_endpoint() -> String {
    aws_support::sqs_endpoint().unwrap_or_else(|| aws_support::endpoint().to_string())
}

/// An SDK configuration for the emulator, configured like the functions'
/// (`pigeonhole::aws::sdk_config`): the SDK's retries off, so only the
/// shared retry policy retries.
async fn sdk_config() -> aws_config::SdkConfig {
    let dynamodb = aws_support::endpoint().to_string();
    let secrets = secrets_endpoint();
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .empty_test_environment()
        .http_client(pigeonhole::aws::https_client())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "secrets-tests",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled());
    if dynamodb == secrets {
        loader.endpoint_url(dynamodb).load().await
    } else {
        per_service(loader, &dynamodb, &secrets).load().await
    }
}

/// DynamoDB at one endpoint, SQS and Secrets Manager at another (see
/// `aws_support::sdk_config`, which does the same for SQS).
#[allow(deprecated)] // aws-config exports the profile file types only under deprecated aliases
fn per_service(
    loader: aws_config::ConfigLoader,
    dynamodb: &str,
    other: &str,
) -> aws_config::ConfigLoader {
    use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
    let profile = format!(
        "[profile secrets-tests]\n\
         services = secrets-tests\n\
         [services secrets-tests]\n\
         dynamodb =\n  endpoint_url = {dynamodb}\n\
         sqs =\n  endpoint_url = {other}\n\
         secrets_manager =\n  endpoint_url = {other}\n"
    );
    loader
        .profile_files(
            ProfileFiles::builder()
                .with_contents(ProfileFileKind::Config, profile)
                .build(),
        )
        .profile_name("secrets-tests")
}

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// Calls a Secrets Manager action on the emulator (JSON protocol). The
/// emulators route by the credential scope and do not check signatures.
async fn secrets_manager(action: &str, body: Value) -> Value {
    let response = http()
        .post(format!("{}/", secrets_endpoint()))
        .header("x-amz-target", format!("secretsmanager.{action}"))
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/secretsmanager/aws4_request, \
                 SignedHeaders=host, Signature=00"
            ),
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{action} on {}: {e}", secrets_endpoint()));
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{action}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{action}: not JSON ({e}): {text}"))
}

/// Creates a secret holding `value`; returns its ARN.
async fn create_secret(value: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "{}secret-{}",
        aws_support::unique_prefix(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let out = secrets_manager(
        "CreateSecret",
        json!({ "Name": name, "SecretString": value }),
    )
    .await;
    out["ARN"]
        .as_str()
        .expect("CreateSecret returns an ARN")
        .to_string()
}

/// An ARN in the right form that names no secret.
fn missing_arn() -> String {
    format!(
        "arn:aws:secretsmanager:{REGION}:123456789012:secret:{}missing-AbCdEf",
        aws_support::unique_prefix()
    )
}

fn variable(name: &str) -> String {
    format!("{name}{SECRET_ARN_SUFFIX}")
}

/// Every secret a deployment holds, with fresh values: the four keys as
/// Secrets Manager generates them (64 letters and digits), and the tokens.
#[derive(Clone)]
struct Values(HashMap<&'static str, String>);

impl Values {
    fn random() -> Values {
        let key = || {
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            support::random_bytes::<64>()
                .iter()
                .map(|b| alphabet[*b as usize % alphabet.len()] as char)
                .collect::<String>()
        };
        let mut values = HashMap::new();
        for secret in Secret::KEYS {
            values.insert(secret.env_name(), key());
        }
        values.insert("ADMIN_TOKEN", support::random_token("admin"));
        values.insert(
            "OPERATOR_TOKENS",
            format!(
                "{},{}",
                support::random_token("op"),
                support::random_token("op")
            ),
        );
        values.insert("MASTER_KEY", B64.encode(support::random_bytes::<32>()));
        Values(values)
    }

    fn get(&self, name: &str) -> &str {
        &self.0[name]
    }

    /// Every value, each long enough that finding it in a text is no
    /// accident.
    fn all(&self) -> impl Iterator<Item = (&&'static str, &String)> {
        self.0.iter()
    }
}

/// A stack on the emulator: its tables, and its secrets in Secrets Manager.
struct Stack {
    env: aws_support::AwsEnv,
    sdk: aws_config::SdkConfig,
    values: Values,
    arns: HashMap<&'static str, String>,
}

impl Stack {
    async fn new() -> Stack {
        let env = aws_support::fresh_env().await;
        let values = Values::random();
        let mut arns = HashMap::new();
        for (name, value) in values.all() {
            arns.insert(*name, create_secret(value).await);
        }
        Stack {
            env,
            sdk: sdk_config().await,
            values,
            arns,
        }
    }

    /// The variables every function gets besides its secrets: the tables
    /// and the queue.
    fn base_vars(&self) -> Vec<(String, String)> {
        self.env
            .provisioned
            .env_lines()
            .iter()
            .map(|line| {
                let (k, v) = line.split_once('=').expect("NAME=value");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// The environment the template gives the function for `secrets`:
    /// `<NAME>_SECRET_ARN` for each (`MASTER_KEY` for the keys, in legacy
    /// mode), no value.
    fn function_env(&self, secrets: &[Secret], legacy: bool) -> Vec<(String, String)> {
        let mut vars = self.base_vars();
        let mut names: Vec<&str> = secrets
            .iter()
            .filter(|s| !(legacy && s.is_key()))
            .map(|s| s.env_name())
            .collect();
        if legacy && secrets.iter().any(|s| s.is_key()) {
            names.push("MASTER_KEY");
        }
        for name in names {
            vars.push((variable(name), self.arns[name].clone()));
        }
        vars
    }

    async fn cold_start(&self, route: Route, vars: Vec<(String, String)>) -> App {
        self.try_cold_start(route, vars)
            .await
            .unwrap_or_else(|e| panic!("{route:?}: {e}"))
    }

    async fn try_cold_start(
        &self,
        route: Route,
        vars: Vec<(String, String)>,
    ) -> Result<App, pigeonhole::config::ConfigError> {
        pigeonhole::aws::app_from(
            &self.sdk,
            &Env::from_pairs(vars),
            route.secrets(),
            route.publishes(),
        )
        .await
    }

    /// Asserts that `text` holds none of this stack's secret values.
    fn assert_no_secret_in(&self, what: &str, text: &str) {
        for (name, value) in self.values.all() {
            assert!(
                !text.contains(value.as_str()),
                "{what} shows the value of {name}:\n{text}"
            );
            for part in value.split(',') {
                assert!(!text.contains(part), "{what} shows part of {name}:\n{text}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// API Gateway events
// ---------------------------------------------------------------------------

/// An API Gateway HTTP API (payload 2.0) event.
fn event(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Value {
    let mut all: serde_json::Map<String, Value> = serde_json::Map::new();
    all.insert(
        "host".into(),
        json!("r7pq2x9k1d.execute-api.us-east-1.amazonaws.com"),
    );
    all.insert("x-forwarded-for".into(), json!("198.51.100.23"));
    all.insert("x-forwarded-proto".into(), json!("https"));
    if let Some(body) = body {
        all.insert("content-type".into(), json!("application/json"));
        all.insert("content-length".into(), json!(body.len().to_string()));
    }
    for (k, v) in headers {
        all.insert(k.to_string(), json!(v));
    }
    let mut event = json!({
        "version": "2.0",
        "routeKey": format!("{method} {path}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": all,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "r7pq2x9k1d",
            "domainName": "r7pq2x9k1d.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "r7pq2x9k1d",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "198.51.100.23",
                "userAgent": "secrets-tests"
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": format!("{method} {path}"),
            "stage": "$default",
            "time": "26/Nov/2026:09:41:52 +0000",
            "timeEpoch": 1795686112345u64
        },
        "isBase64Encoded": false
    });
    if let Some(body) = body {
        event["body"] = json!(body);
    }
    event
}

fn register_event(fingerprint: &str) -> Value {
    let body = json!({ "name": "secrets-test", "fingerprint": fingerprint }).to_string();
    event("POST", Route::Register.path(), &[], Some(&body))
}

fn poll_event(c: &Creds) -> Value {
    let bearer = format!("Bearer {}", c.api_token);
    event(
        "GET",
        Route::Poll.path(),
        &[("authorization", &bearer), ("x-client-id", &c.client_id)],
        None,
    )
}

async fn invoke(app: &App, route: Route, event: &Value) -> (u16, Value) {
    let request = lambda_http::request::from_str(&event.to_string())
        .unwrap_or_else(|e| panic!("lambda_http rejects the event ({e}): {event}"));
    let response: Response<Body> = pigeonhole_functions::respond(app, route, request).await;
    let status = response.status().as_u16();
    let body = match response.body() {
        Body::Text(text) => serde_json::from_str(text).unwrap_or(Value::String(text.clone())),
        Body::Empty => Value::Null,
        other => panic!("unexpected body {other:?}"),
    };
    (status, body)
}

async fn register(app: &App) -> Creds {
    let (status, body) = invoke(
        app,
        Route::Register,
        &register_event(&support::random_fingerprint()),
    )
    .await;
    assert_eq!(status, 201, "register: {body}");
    Creds::from_json(&body)
}

async fn poll_status(app: &App, c: &Creds) -> u16 {
    invoke(app, Route::Poll, &poll_event(c)).await.0
}

// ---------------------------------------------------------------------------
// Cold starts in process, against the emulator
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_reads_its_secrets_from_secrets_manager_and_the_app_answers() {
    let stack = Stack::new().await;
    let register_app = stack
        .cold_start(
            Route::Register,
            stack.function_env(Route::Register.secrets(), false),
        )
        .await;
    let creds = register(&register_app).await;
    // Another function, holding another subset of the keys, read from the
    // same secrets: the token register made is the one poll checks.
    let poll_app = stack
        .cold_start(
            Route::Poll,
            stack.function_env(Route::Poll.secrets(), false),
        )
        .await;
    assert_eq!(poll_status(&poll_app, &creds).await, 204);
    let forged = Creds {
        api_token: format!("{}x", creds.api_token),
        ..creds
    };
    assert_eq!(poll_status(&poll_app, &forged).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_secret_wins_over_a_plain_variable() {
    let stack = Stack::new().await;
    // Register holds the token key from Secrets Manager and a different
    // plain TOKEN_KEY; poll holds the Secrets Manager value as a plain
    // variable (as the local server would).
    let mut vars = stack.function_env(Route::Register.secrets(), false);
    vars.push(("TOKEN_KEY".into(), "p".repeat(48)));
    let register_app = stack.cold_start(Route::Register, vars).await;
    let creds = register(&register_app).await;
    let mut vars = stack.base_vars();
    vars.push((
        "TOKEN_KEY".into(),
        stack.values.get("TOKEN_KEY").to_string(),
    ));
    vars.push((
        "WRAPPING_KEY".into(),
        stack.values.get("WRAPPING_KEY").to_string(),
    ));
    let poll_app = stack.cold_start(Route::Poll, vars).await;
    assert_eq!(poll_status(&poll_app, &creds).await, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_master_key_stands_in_for_every_key() {
    let stack = Stack::new().await;
    let register_app = stack
        .cold_start(
            Route::Register,
            stack.function_env(Route::Register.secrets(), true),
        )
        .await;
    let creds = register(&register_app).await;
    let poll_app = stack
        .cold_start(Route::Poll, stack.function_env(Route::Poll.secrets(), true))
        .await;
    assert_eq!(poll_status(&poll_app, &creds).await, 204);
    // The same master given as a plain variable derives the same keys.
    let mut vars = stack.base_vars();
    vars.push((
        "MASTER_KEY".into(),
        stack.values.get("MASTER_KEY").to_string(),
    ));
    let plain = stack.cold_start(Route::Poll, vars).await;
    assert_eq!(poll_status(&plain, &creds).await, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fanout_reads_its_keys_from_secrets_manager() {
    let stack = Stack::new().await;
    let secrets = pigeonhole::aws::FANOUT_SECRETS;
    let env = Env::from_pairs(stack.function_env(&secrets, false));
    pigeonhole::aws::fanout_from(&stack.sdk, &env)
        .await
        .unwrap_or_else(|e| panic!("fanout: {e}"));
    // Without one of them it does not start, and says which.
    let vars: Vec<(String, String)> = stack
        .function_env(&secrets, false)
        .into_iter()
        .filter(|(k, _)| *k != variable("AT_REST_KEY"))
        .collect();
    let err = pigeonhole::aws::fanout_from(&stack.sdk, &Env::from_pairs(vars))
        .await
        .err()
        .expect("the fan-out starts without its at-rest key");
    assert!(err.to_string().contains("AT_REST_KEY"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_stops_the_cold_start_naming_each_variable_not_a_value() {
    let stack = Stack::new().await;
    let mut vars: Vec<(String, String)> = stack
        .function_env(Route::Register.secrets(), false)
        .into_iter()
        .filter(|(k, _)| *k != variable("TOKEN_KEY") && *k != variable("WRAPPING_KEY"))
        .collect();
    vars.push((variable("TOKEN_KEY"), missing_arn()));
    vars.push((variable("WRAPPING_KEY"), missing_arn()));
    let err = stack
        .try_cold_start(Route::Register, vars)
        .await
        .err()
        .expect("a cold start with missing secrets");
    let message = err.to_string();
    for name in [
        "TOKEN_KEY_SECRET_ARN",
        "WRAPPING_KEY_SECRET_ARN",
        "ResourceNotFoundException",
    ] {
        assert!(message.contains(name), "{name} not in {message}");
    }
    assert!(!message.contains("FINGERPRINT_KEY"), "{message}");
    stack.assert_no_secret_in("the error", &message);

    // A secret that is not set at all is named too, with where it may come
    // from.
    let vars: Vec<(String, String)> = stack
        .function_env(Route::Register.secrets(), false)
        .into_iter()
        .filter(|(k, _)| *k != variable("FINGERPRINT_KEY"))
        .collect();
    let message = stack
        .try_cold_start(Route::Register, vars)
        .await
        .err()
        .expect("a cold start without FINGERPRINT_KEY")
        .to_string();
    assert!(
        message.contains("FINGERPRINT_KEY not set") && message.contains(SECRET_ARN_SUFFIX),
        "{message}"
    );
    stack.assert_no_secret_in("the error", &message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_too_short_to_be_a_key_is_refused_without_showing_it() {
    let stack = Stack::new().await;
    let short = "short-but-secret-value";
    let arn = create_secret(short).await;
    let vars: Vec<(String, String)> = stack
        .function_env(Route::Ack.secrets(), false)
        .into_iter()
        .map(|(k, v)| {
            if k == variable("TOKEN_KEY") {
                (k, arn.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    let message = stack
        .try_cold_start(Route::Ack, vars)
        .await
        .err()
        .expect("a 22-character token key")
        .to_string();
    assert!(
        message.contains("TOKEN_KEY") && !message.contains(short),
        "{message}"
    );
}

// ---------------------------------------------------------------------------
// A stub Secrets Manager: refusals and throttling
// ---------------------------------------------------------------------------

/// One HTTP request as the stubs see it.
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// An HTTP response; `None` from a handler means never answering.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, headers: &[(&str, &str)], body: Value) -> Reply {
        let mut all = vec![(
            "content-type".to_string(),
            "application/x-amz-json-1.1".to_string(),
        )];
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Reply {
            status,
            headers: all,
            body: body.to_string().into_bytes(),
        }
    }
}

type Handler = Arc<dyn Fn(Request) -> Option<Reply> + Send + Sync>;

/// A loopback HTTP/1.1 server (keep-alive, bodies by length or chunked)
/// answering with `handler`; returns its address.
async fn serve(handler: Handler) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let _ = connection(stream, handler).await;
            });
        }
    });
    addr
}

async fn connection(stream: TcpStream, handler: Handler) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            read.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let mut body = Vec::new();
        if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                read.read_line(&mut size).await?;
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                read.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = headers.get("content-length").and_then(|v| v.parse().ok()) {
            body = vec![0; len];
            read.read_exact(&mut body).await?;
        }
        let Some(reply) = handler(Request {
            method,
            path,
            headers,
            body,
        }) else {
            // Never answer: hold the connection until the peer goes.
            let mut rest = Vec::new();
            let _ = read.read_to_end(&mut rest).await;
            return Ok(());
        };
        let mut head = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        write.write_all(head.as_bytes()).await?;
        write.write_all(&reply.body).await?;
        write.flush().await?;
    }
}

/// A stub Secrets Manager answering `GetSecretValue` with `answers` in
/// turn (the last one for ever); returns its URL and the request count.
async fn stub_secrets_manager(answers: Vec<Reply>) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let answers = Arc::new(Mutex::new(answers));
    let addr = serve(Arc::new(move |request: Request| {
        assert_eq!(
            request.headers.get("x-amz-target").map(String::as_str),
            Some("secretsmanager.GetSecretValue")
        );
        counter.fetch_add(1, Ordering::SeqCst);
        let mut answers = answers.lock().unwrap();
        let answer = if answers.len() > 1 {
            answers.remove(0)
        } else {
            let last = &answers[0];
            Reply {
                status: last.status,
                headers: last.headers.clone(),
                body: last.body.clone(),
            }
        };
        Some(answer)
    }))
    .await;
    (format!("http://{addr}"), calls)
}

fn error_reply(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(
        status,
        &[("x-amzn-errortype", code)],
        json!({ "__type": code, "message": message }),
    )
}

async fn stub_sdk(url: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .empty_test_environment()
        .http_client(pigeonhole::aws::https_client())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "secrets-tests",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .endpoint_url(url)
        .load()
        .await
}

/// The environment of an ack function (tables named, never reached) whose
/// token key is at `arn`.
fn ack_env(arn: &str) -> Env {
    Env::from_pairs([
        ("CLIENTS_TABLE", "c"),
        ("FINGERPRINTS_TABLE", "f"),
        ("MESSAGES_TABLE", "m"),
        ("CLIENT_MESSAGES_TABLE", "cm"),
        ("DEDUP_TABLE", "d"),
        ("AUDIENCES_TABLE", "a"),
        ("TOKEN_KEY_SECRET_ARN", arn),
    ])
}

const STUB_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:token-key-AbCdEf";

#[tokio::test]
async fn a_forbidden_secret_stops_the_cold_start_at_once() {
    let denied = format!(
        "User: arn:aws:sts::123456789012:assumed-role/AckRole/ack is not authorized to perform: \
         secretsmanager:GetSecretValue on resource: {STUB_ARN} because no identity-based policy \
         allows the secretsmanager:GetSecretValue action"
    );
    let (url, calls) =
        stub_secrets_manager(vec![error_reply(400, "AccessDeniedException", &denied)]).await;
    let err = pigeonhole::aws::app_from(
        &stub_sdk(&url).await,
        &ack_env(STUB_ARN),
        Route::Ack.secrets(),
        false,
    )
    .await
    .err()
    .expect("a cold start refused its secret");
    let message = err.to_string();
    assert!(
        message.contains("TOKEN_KEY_SECRET_ARN") && message.contains("AccessDeniedException"),
        "{message}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a refusal is not retried");
}

#[tokio::test]
async fn a_throttled_read_is_retried_within_the_cold_start() {
    let value = "t".repeat(64);
    let ok = Reply::json(
        200,
        &[],
        json!({
            "ARN": STUB_ARN,
            "Name": "token-key",
            "SecretString": value,
            "VersionId": "v1",
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 1.7e9
        }),
    );
    let throttled = || error_reply(400, "ThrottlingException", "Rate exceeded");
    let (url, calls) = stub_secrets_manager(vec![throttled(), throttled(), ok]).await;
    pigeonhole::aws::app_from(
        &stub_sdk(&url).await,
        &ack_env(STUB_ARN),
        Route::Ack.secrets(),
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("a throttled read was not retried: {e}"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_secret_without_text_is_refused() {
    let binary = Reply::json(
        200,
        &[],
        json!({ "ARN": STUB_ARN, "Name": "token-key", "SecretBinary": B64.encode([7u8; 40]), "VersionId": "v1" }),
    );
    let (url, _) = stub_secrets_manager(vec![binary]).await;
    let message = pigeonhole::aws::app_from(
        &stub_sdk(&url).await,
        &ack_env(STUB_ARN),
        Route::Ack.secrets(),
        false,
    )
    .await
    .err()
    .expect("a binary secret")
    .to_string();
    assert!(
        message.contains("TOKEN_KEY_SECRET_ARN") && message.contains("SecretString"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------
// The real binary, started the way Lambda starts it
// ---------------------------------------------------------------------------

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// The `register` Lambda binary: `PIGEONHOLE_REGISTER_BIN` when set, else
/// `cargo build -p pigeonhole-functions --bin register` (a no-op when up
/// to date) once per test process.
fn register_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("PIGEONHOLE_REGISTER_BIN") {
            return PathBuf::from(p);
        }
        let ws = workspace_dir();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_relative() { ws.join(t) } else { t })
            .unwrap_or_else(|| ws.join("target"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "-p", "pigeonhole-functions", "--bin", "register"])
            .current_dir(&ws)
            .stdin(Stdio::null());
        // Cargo's per-crate variables would make the nested build and a
        // plain one rebuild each other (see support::without_crate_env).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().to_string();
            if name == "CARGO_MANIFEST_DIR"
                || name == "CARGO_MANIFEST_PATH"
                || name == "CARGO_CRATE_NAME"
                || name == "CARGO_PRIMARY_PACKAGE"
                || name == "CARGO_TARGET_TMPDIR"
                || name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_")
            {
                build.env_remove(name);
            }
        }
        let out = build.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build -p pigeonhole-functions --bin register failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug").join("register")
    })
}

/// Runs the register binary with `vars` (and nothing else from this
/// process's environment) plus what Lambda sets, at `RUST_LOG=debug`.
fn lambda_process(vars: &[(String, String)], runtime_api: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(register_binary());
    cmd.env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "pigeonhole-RegisterFunction")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let dynamodb = aws_support::endpoint();
    let secrets = secrets_endpoint();
    if dynamodb == secrets {
        cmd.env("AWS_ENDPOINT_URL", dynamodb);
    } else {
        cmd.env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb)
            .env("AWS_ENDPOINT_URL_SQS", &secrets)
            .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &secrets);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// What a fake Lambda Runtime API saw: the response to its one event.
#[derive(Default)]
struct RuntimeApi {
    event: Mutex<Option<String>>,
    response: Mutex<Option<String>>,
    errors: Mutex<Vec<String>>,
}

const REQUEST_ID: &str = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";

/// Serves the Runtime API to one function process: its first `next` gets
/// `event`, later ones wait for ever.
async fn fake_runtime_api(event: Value) -> (String, Arc<RuntimeApi>) {
    let api = Arc::new(RuntimeApi::default());
    *api.event.lock().unwrap() = Some(event.to_string());
    let seen = Arc::clone(&api);
    let addr = serve(Arc::new(move |request: Request| {
        let body = String::from_utf8_lossy(&request.body).to_string();
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/2018-06-01/runtime/invocation/next") => {
                let event = seen.event.lock().unwrap().take()?;
                let deadline = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
                    + 10_000;
                Some(Reply {
                    status: 200,
                    headers: vec![
                        ("content-type".into(), "application/json".into()),
                        ("lambda-runtime-aws-request-id".into(), REQUEST_ID.into()),
                        ("lambda-runtime-deadline-ms".into(), deadline.to_string()),
                        (
                            "lambda-runtime-invoked-function-arn".into(),
                            "arn:aws:lambda:us-east-1:123456789012:function:register".into(),
                        ),
                        (
                            "lambda-runtime-trace-id".into(),
                            "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1".into(),
                        ),
                    ],
                    body: event.into_bytes(),
                })
            }
            ("POST", path) if path.ends_with("/response") => {
                *seen.response.lock().unwrap() = Some(body);
                Some(Reply::json(202, &[], json!({ "status": "OK" })))
            }
            ("POST", _) => {
                seen.errors.lock().unwrap().push(format!("{} {body}", request.path));
                Some(Reply::json(202, &[], json!({ "status": "OK" })))
            }
            _ => Some(Reply::json(404, &[], json!({}))),
        }
    }))
    .await;
    (addr, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_register_binary_starts_from_its_secrets_and_answers() {
    let stack = Stack::new().await;
    let (addr, api) = fake_runtime_api(register_event(&support::random_fingerprint())).await;
    let vars = stack.function_env(Route::Register.secrets(), false);
    let mut child = lambda_process(&vars, &addr)
        .spawn()
        .expect("start the register binary");
    // Read its output as it comes: a debug log fills a pipe's buffer long
    // before the function answers, and a full pipe blocks the writer.
    let drain = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut text).await;
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let response = loop {
        if let Some(response) = api.response.lock().unwrap().take() {
            break response;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the function exited ({status}) without answering:\n{}{}",
                stdout.await.unwrap(),
                stderr.await.unwrap()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no response within 60 s; errors reported: {:?}",
            api.errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let logs = format!("{}{}", stdout.await.unwrap(), stderr.await.unwrap());
    let response: Value = serde_json::from_str(&response).expect("the response is JSON");
    assert_eq!(response["statusCode"], json!(201), "{response}\n{logs}");
    let body: Value = serde_json::from_str(response["body"].as_str().expect("a body")).unwrap();
    Creds::from_json(&body);
    assert!(
        logs.contains("read the function's secrets from Secrets Manager"),
        "{logs}"
    );
    stack.assert_no_secret_in("the function's debug log", &logs);
    assert!(
        api.errors.lock().unwrap().is_empty(),
        "{:?}",
        api.errors.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_register_binary_stops_at_cold_start_naming_the_missing_secret() {
    let stack = Stack::new().await;
    let mut vars: Vec<(String, String)> = stack
        .function_env(Route::Register.secrets(), false)
        .into_iter()
        .filter(|(k, _)| *k != variable("TOKEN_KEY"))
        .collect();
    vars.push((variable("TOKEN_KEY"), missing_arn()));
    // No Runtime API is needed: the process must stop before it asks.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        lambda_process(&vars, "127.0.0.1:9").output(),
    )
    .await
    .expect("the cold start did not end within 60 s")
    .expect("run the register binary");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{logs}");
    let line = logs
        .lines()
        .find(|l| l.contains("cannot start"))
        .unwrap_or_else(|| panic!("no cold-start error line in:\n{logs}"));
    let line: Value = serde_json::from_str(line).expect("the error line is JSON");
    assert_eq!(line["level"], json!("ERROR"), "{line}");
    let text = line.to_string();
    assert!(
        text.contains("TOKEN_KEY_SECRET_ARN") && text.contains("ResourceNotFoundException"),
        "{text}"
    );
    stack.assert_no_secret_in("the function's debug log", &logs);
}
