//! Every Lambda function's handler, invoked the way Lambda invokes it.
//!
//! HTTP functions get API Gateway HTTP API (payload format 2.0) events,
//! parsed by `lambda_http::request::from_str` exactly as the runtime parses
//! them, and answer through `pigeonhole_functions::respond`. The fan-out
//! function gets SQS events whose records are the messages publish really
//! put on the queue, received back from moto with the SDK. Each function
//! gets its own `App`, holding only the secrets its route declares (and a
//! queue only when it publishes), over DynamoDB tables and an SQS queue
//! provisioned on moto from `template.yaml`.
//!
//! The events are templates in `tests/data/events/`, written the way they
//! appear in CloudWatch, with `{{placeholders}}` for what changes per
//! request.

mod support;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use lambda_http::{Body, Response};
use pigeonhole::app::server_keys;
use pigeonhole::clock::SystemClock;
use pigeonhole::config::Config;
use pigeonhole::handlers::fanout::Fanout;
use pigeonhole::handlers::sqs_batch::FanoutFunction;
use pigeonhole::http::Route;
use pigeonhole::queue::{Queue, SqsQueue};
use pigeonhole::store::dynamodb::DynamoStore;
use pigeonhole::store::Store;
use pigeonhole::App;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{aws_support, Creds};

// ---------------------------------------------------------------------------
// Event templates
// ---------------------------------------------------------------------------

const EVENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/events");

/// Placeholders filled in when the caller does not give them.
const AUTOMATIC: [&str; 3] = ["request_id", "trace_id", "content_length"];

/// The template `name` with its `{{placeholders}}` filled in. Every
/// placeholder sits inside a JSON string, so values are JSON-escaped.
/// `request_id` and `trace_id` get fresh values and `content_length` the
/// length of `body`, unless given.
fn fixture(name: &str, vars: &[(&str, &str)]) -> Value {
    let path = format!("{EVENTS}/{name}");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body_len = vars
        .iter()
        .find(|(k, _)| k == "body")
        .map_or(0, |(_, v)| v.len());
    let request_id = B64.encode(support::random_bytes::<11>());
    let trace_id = uuid::Uuid::new_v4().simple().to_string()[..24].to_string();
    for (key, value) in [
        ("request_id", request_id),
        ("trace_id", trace_id),
        ("content_length", body_len.to_string()),
    ] {
        if !vars.iter().any(|(k, _)| k == key) {
            vars.push((key.to_string(), value));
        }
    }
    for (key, value) in &vars {
        let placeholder = format!("{{{{{key}}}}}");
        if !text.contains(&placeholder) {
            assert!(
                AUTOMATIC.contains(&key.as_str()),
                "{path} has no placeholder {placeholder}"
            );
            continue;
        }
        let escaped = serde_json::to_string(value).unwrap();
        text = text.replace(&placeholder, &escaped[1..escaped.len() - 1]);
    }
    assert!(
        !text.contains("{{"),
        "{path}: a placeholder is left: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON once filled: {e}"))
}

/// Sets the query string the way API Gateway delivers it: `rawQueryString`
/// and `queryStringParameters`, the latter absent when there is no query.
fn set_query(event: &mut Value, pairs: &[(&str, &str)]) {
    let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    event["rawQueryString"] = json!(raw.join("&"));
    let object = event.as_object_mut().expect("an event is an object");
    if pairs.is_empty() {
        object.remove("queryStringParameters");
    } else {
        let params: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        object.insert("queryStringParameters".into(), Value::Object(params));
    }
}

fn remove_header(event: &mut Value, name: &str) {
    event["headers"]
        .as_object_mut()
        .expect("headers")
        .remove(name)
        .unwrap_or_else(|| panic!("the event has no {name} header"));
}

/// The same request with another method, as API Gateway's `$default` route
/// would pass it on.
fn set_method(event: &mut Value, method: &str) {
    event["requestContext"]["http"]["method"] = json!(method);
    event["requestContext"]["routeKey"] = json!("$default");
    event["routeKey"] = json!("$default");
}

fn register_event(body: &str) -> Value {
    fixture("apigw-v2-register.json", &[("body", body)])
}

fn publish_event(admin_token: &str, body: &str) -> Value {
    fixture(
        "apigw-v2-publish.json",
        &[("admin_token", admin_token), ("body", body)],
    )
}

fn client_vars(c: &Creds) -> [(&'static str, &str); 2] {
    [("api_token", &c.api_token), ("client_id", &c.client_id)]
}

fn send_event(c: &Creds, body: &str) -> Value {
    let [t, id] = client_vars(c);
    fixture("apigw-v2-send.json", &[t, id, ("body", body)])
}

fn ack_event(c: &Creds, body: &str) -> Value {
    let [t, id] = client_vars(c);
    fixture("apigw-v2-ack.json", &[t, id, ("body", body)])
}

fn poll_event(c: &Creds, query: &[(&str, &str)]) -> Value {
    let [t, id] = client_vars(c);
    let mut event = fixture("apigw-v2-poll.json", &[t, id, ("limit", "100")]);
    set_query(&mut event, query);
    event
}

fn rotate_event(c: &Creds, body: &str) -> Value {
    let [t, id] = client_vars(c);
    fixture("apigw-v2-rotate.json", &[t, id, ("body", body)])
}

fn sent_event(admin_token: &str, client_id: &str, after: u64) -> Value {
    fixture(
        "apigw-v2-sent.json",
        &[
            ("admin_token", admin_token),
            ("client_id", client_id),
            ("after", &after.to_string()),
            ("limit", "100"),
        ],
    )
}

fn delete_client_event(operator_token: &str, client_id: &str) -> Value {
    fixture(
        "apigw-v2-delete-client.json",
        &[("operator_token", operator_token), ("client_id", client_id)],
    )
}

fn set_tags_event(operator_token: &str, client_id: &str, body: &str) -> Value {
    fixture(
        "apigw-v2-set-tags.json",
        &[
            ("operator_token", operator_token),
            ("client_id", client_id),
            ("body", body),
        ],
    )
}

fn publish_status_event(admin_token: &str, publish_id: &str, query: &[(&str, &str)]) -> Value {
    let mut event = fixture(
        "apigw-v2-publish-status.json",
        &[("admin_token", admin_token), ("publish_id", publish_id)],
    );
    set_query(&mut event, query);
    event
}

fn list_clients_event(operator_token: &str, query: &[(&str, &str)]) -> Value {
    let mut event = fixture(
        "apigw-v2-list-clients.json",
        &[("operator_token", operator_token), ("limit", "100")],
    );
    set_query(&mut event, query);
    event
}

fn health_event(path: &str) -> Value {
    let mut event = fixture("apigw-v2-health.json", &[]);
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event["routeKey"] = json!(format!("GET {path}"));
    event["requestContext"]["routeKey"] = json!(format!("GET {path}"));
    event
}

/// A well-formed event for `route` with made-up credentials.
fn event_for(route: Route) -> Value {
    let nobody = Creds {
        client_id: uuid::Uuid::new_v4().to_string(),
        personal_token: B64.encode([0u8; 32]),
        api_token: "pht_nobody".into(),
    };
    match route {
        Route::Health | Route::HealthUnversioned => health_event(route.path()),
        Route::Register => register_event(r#"{"fingerprint":"route-table-probe"}"#),
        Route::Publish => publish_event("not-the-admin-token", "{}"),
        Route::Send => send_event(&nobody, "{}"),
        Route::Poll => poll_event(&nobody, &[]),
        Route::Ack => ack_event(&nobody, r#"{"last_received_id":0}"#),
        Route::ListClients => list_clients_event("not-an-operator-token", &[]),
        Route::Rotate => rotate_event(&nobody, "{}"),
        Route::Sent => sent_event("not-the-admin-token", &nobody.client_id, 0),
        Route::DeleteClient => delete_client_event("not-an-operator-token", &nobody.client_id),
        Route::PublishStatus => publish_status_event(
            "not-the-admin-token",
            &uuid::Uuid::new_v4().to_string(),
            &[],
        ),
        Route::SetTags => {
            set_tags_event("not-an-operator-token", &nobody.client_id, r#"{"tags":[]}"#)
        }
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// What a function returned to the runtime.
struct Reply(Response<Body>);

fn describe(body: &Body) -> String {
    match body {
        Body::Empty => "<empty>".into(),
        Body::Text(text) => format!("Text({text})"),
        Body::Binary(bytes) => format!("Binary({} bytes)", bytes.len()),
        _ => "<another body kind>".into(),
    }
}

impl Reply {
    fn status(&self) -> u16 {
        self.0.status().as_u16()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.0.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// The body, which must be `Body::Text` JSON labelled
    /// `application/json`, of a reply with this status.
    fn json(&self, status: u16) -> Value {
        let body = describe(self.0.body());
        assert_eq!(self.status(), status, "status; body {body}");
        let Body::Text(text) = self.0.body() else {
            panic!("a {status} body must be Body::Text JSON, got {body}");
        };
        let content_type = self.header("content-type").unwrap_or("");
        assert!(
            content_type.starts_with("application/json"),
            "content-type {content_type:?} for {body}"
        );
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }

    /// The error envelope `{"error":{"code","message"}}` and nothing else;
    /// returns the message.
    fn error(&self, status: u16, code: &str) -> String {
        let v = self.json(status);
        support::assert_keys(&v, &["error"]);
        support::assert_keys(&v["error"], &["code", "message"]);
        assert_eq!(v["error"]["code"], json!(code), "{v}");
        let message = v["error"]["message"].as_str().expect("a message string");
        assert!(!message.is_empty(), "empty message in {v}");
        message.to_string()
    }

    fn validation(&self, field: &str) -> String {
        let message = self.error(422, "validation_failed");
        assert!(message.contains(field), "{message:?} does not name {field}");
        message
    }

    fn no_content(&self) {
        assert_eq!(self.status(), 204, "body {}", describe(self.0.body()));
        assert!(
            matches!(self.0.body(), Body::Empty),
            "a 204 has Body::Empty, got {}",
            describe(self.0.body())
        );
    }
}

// ---------------------------------------------------------------------------
// The stack: one app per function over tables and a queue on moto
// ---------------------------------------------------------------------------

/// The HTTP functions of template.yaml, by the route each serves.
const FUNCTIONS: [Route; 11] = [
    Route::Register,
    Route::Rotate,
    Route::Sent,
    Route::Publish,
    Route::PublishStatus,
    Route::Send,
    Route::Poll,
    Route::Ack,
    Route::ListClients,
    Route::DeleteClient,
    Route::SetTags,
];

struct Secrets {
    admin_token: String,
    operator_token: String,
    master_key: String,
}

impl Secrets {
    fn random() -> Secrets {
        Secrets {
            admin_token: support::random_token("admin"),
            operator_token: support::random_token("op"),
            master_key: B64.encode(support::random_bytes::<32>()),
        }
    }

    fn value(&self, name: &str) -> Option<String> {
        match name {
            "ADMIN_TOKEN" => Some(self.admin_token.clone()),
            "OPERATOR_TOKENS" => Some(format!("{},another-operator", self.operator_token)),
            // A key of its own per purpose, as the template generates them.
            "TOKEN_KEY" | "FINGERPRINT_KEY" | "WRAPPING_KEY" | "AT_REST_KEY" => {
                Some(format!("{name}-{}", self.master_key))
            }
            _ => None,
        }
    }

    /// The configuration a function deployed for `route` reads: only the
    /// secrets the route declares are in its environment.
    fn config_for(&self, route: Route) -> Config {
        let declared: Vec<&str> = route.secrets().iter().map(|s| s.env_name()).collect();
        Config::from_lookup(
            |name| declared.contains(&name).then(|| self.value(name)).flatten(),
            route.secrets(),
        )
        .unwrap_or_else(|e| panic!("{route:?}: {e}"))
    }
}

struct Stack {
    env: aws_support::AwsEnv,
    secrets: Secrets,
    store: Arc<dyn Store>,
    functions: Vec<(Route, App)>,
    fanout: FanoutFunction,
    queue_arn: String,
}

impl Stack {
    async fn new() -> Stack {
        let env = aws_support::fresh_env().await;
        let secrets = Secrets::random();
        let store: Arc<dyn Store> =
            Arc::new(DynamoStore::new(env.dynamodb(), env.tables().clone()));
        let functions = FUNCTIONS
            .iter()
            .map(|&route| (route, function_app(&env, &store, &secrets, route)))
            .collect();
        // What `fanout_from_env` builds: the store and the two keys it uses.
        let fanout_secrets = [
            pigeonhole::config::Secret::WrappingKey,
            pigeonhole::config::Secret::AtRestKey,
        ];
        let fanout_config = Config::from_lookup(
            |name| {
                fanout_secrets
                    .iter()
                    .any(|s| s.env_name() == name)
                    .then(|| secrets.value(name))
                    .flatten()
            },
            &fanout_secrets,
        )
        .unwrap();
        let fanout = FanoutFunction::new(
            Fanout::new(
                Arc::clone(&store),
                server_keys(&fanout_config),
                Arc::new(SystemClock),
            ),
            Some(Arc::new(SqsQueue::new(
                env.sqs(),
                env.provisioned.queue_url.clone(),
            ))),
        );
        let queue_arn = env
            .sqs()
            .get_queue_attributes()
            .queue_url(&env.provisioned.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .expect("the queue has an ARN");
        Stack {
            env,
            secrets,
            store,
            functions,
            fanout,
            queue_arn,
        }
    }

    fn app(&self, route: Route) -> &App {
        &self
            .functions
            .iter()
            .find(|(r, _)| *r == route)
            .unwrap_or_else(|| panic!("no function serves {route:?}"))
            .1
    }

    /// Invokes the function serving `route` with `event`.
    async fn invoke(&self, route: Route, event: &Value) -> Reply {
        invoke(self.app(route), route, event).await
    }

    async fn register(&self, fingerprint: &str) -> (u16, Creds) {
        let body = json!({"name": "lambda-test", "fingerprint": fingerprint}).to_string();
        let reply = self.invoke(Route::Register, &register_event(&body)).await;
        let status = reply.status();
        assert!(status == 200 || status == 201, "register: {status}");
        (status, Creds::from_json(&reply.json(status)))
    }

    async fn new_client(&self) -> Creds {
        let (status, creds) = self.register(&support::random_fingerprint()).await;
        assert_eq!(status, 201);
        creds
    }

    /// Publishes through the publish function; returns the publish id.
    async fn publish(&self, to: &[&str], kind: &str, payload: Value) -> String {
        let body = json!({"to_client_ids": to, "type": kind, "payload": payload}).to_string();
        let reply = self
            .invoke(
                Route::Publish,
                &publish_event(&self.secrets.admin_token, &body),
            )
            .await;
        let v = reply.json(202);
        support::assert_keys(&v, &["publish_id", "recipients"]);
        let distinct: std::collections::HashSet<&&str> = to.iter().collect();
        assert_eq!(v["recipients"], json!(distinct.len()), "{v}");
        v["publish_id"].as_str().expect("publish_id").to_string()
    }

    async fn poll(&self, c: &Creds, query: &[(&str, &str)]) -> Reply {
        self.invoke(Route::Poll, &poll_event(c, query)).await
    }

    /// Everything in `c`'s inbox from the start, decrypted with ring:
    /// `(id, {"type","payload"})`.
    async fn inbox(&self, c: &Creds) -> Vec<(u64, Value)> {
        let reply = self.poll(c, &[("cursor", "0"), ("limit", "500")]).await;
        if reply.status() == 204 {
            reply.no_content();
            return Vec::new();
        }
        support::messages_of(&reply.json(200))
            .iter()
            .map(|m| (m["id"].as_u64().unwrap(), support::open_message(c, m)))
            .collect()
    }

    async fn ack(&self, c: &Creds, last_received_id: u64) -> Value {
        let body = json!({ "last_received_id": last_received_id }).to_string();
        self.invoke(Route::Ack, &ack_event(c, &body))
            .await
            .json(200)
    }

    /// Receives `n` messages from the fan-out queue (without deleting them:
    /// the event source mapping deletes what the function handled).
    async fn receive(&self, n: usize) -> Vec<Message> {
        let sqs = self.env.sqs();
        let mut received: Vec<Message> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages arrived on the fan-out queue",
                received.len()
            );
            let out = sqs
                .receive_message()
                .queue_url(&self.env.provisioned.queue_url)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            received.extend(out.messages.unwrap_or_default());
        }
        assert_eq!(
            received.len(),
            n,
            "more messages than expected on the queue"
        );
        received
    }

    /// Makes a received message visible again and receives it a second
    /// time, as SQS does when a function fails or times out.
    async fn redeliver(&self, message: &Message) -> Message {
        self.env
            .sqs()
            .change_message_visibility()
            .queue_url(&self.env.provisioned.queue_url)
            .receipt_handle(message.receipt_handle().expect("a receipt handle"))
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        let again = self.receive(1).await.remove(0);
        assert_eq!(again.message_id, message.message_id);
        again
    }

    /// The record the event source mapping hands the function for `m`.
    fn sqs_record(&self, m: &Message) -> Value {
        let attribute = |name: MessageSystemAttributeName| {
            m.attributes()
                .and_then(|a| a.get(&name))
                .cloned()
                .unwrap_or_else(|| panic!("moto gave no {name:?} for {m:?}"))
        };
        let event = fixture(
            "sqs-fanout.json",
            &[
                ("message_id", m.message_id().expect("a message id")),
                (
                    "receipt_handle",
                    m.receipt_handle().expect("a receipt handle"),
                ),
                ("body", m.body().expect("a body")),
                (
                    "approximate_receive_count",
                    &attribute(MessageSystemAttributeName::ApproximateReceiveCount),
                ),
                (
                    "sent_timestamp",
                    &attribute(MessageSystemAttributeName::SentTimestamp),
                ),
                (
                    "sender_id",
                    &attribute(MessageSystemAttributeName::SenderId),
                ),
                (
                    "approximate_first_receive_timestamp",
                    &attribute(MessageSystemAttributeName::ApproximateFirstReceiveTimestamp),
                ),
                ("md5_of_body", m.md5_of_body().expect("an MD5 of the body")),
                ("event_source_arn", &self.queue_arn),
            ],
        );
        event["Records"][0].clone()
    }

    /// The SQS event for these messages, in this order.
    fn sqs_event(&self, messages: &[&Message]) -> SqsEvent {
        let records: Vec<Value> = messages.iter().map(|m| self.sqs_record(m)).collect();
        let text = json!({ "Records": records }).to_string();
        let event: SqsEvent = serde_json::from_str(&text).expect("an SQS event parses");
        for (record, m) in event.records.iter().zip(messages) {
            assert_eq!(record.message_id.as_deref(), m.message_id());
            assert_eq!(record.body.as_deref(), m.body());
            assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
            assert_eq!(record.event_source_arn.as_deref(), Some(&*self.queue_arn));
            assert!(record.attributes.contains_key("ApproximateReceiveCount"));
        }
        event
    }

    /// Invokes the fan-out function; returns the ids it reported failed,
    /// after checking the response serializes the way Lambda expects.
    async fn fan_out(&self, event: SqsEvent) -> Vec<String> {
        // The fan-out function's timeout in template.yaml.
        let deadline = Instant::now() + Duration::from_secs(120);
        let response: SqsBatchResponse =
            pigeonhole_functions::fan_out(&self.fanout, event, Some(deadline)).await;
        let failed: Vec<String> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        let wire = serde_json::to_value(&response).unwrap();
        let items: Vec<Value> = failed
            .iter()
            .map(|id| json!({ "itemIdentifier": id }))
            .collect();
        assert_eq!(wire, json!({ "batchItemFailures": items }));
        failed
    }
}

/// The app a function deployed for `route` builds at cold start, as
/// `pigeonhole::aws::app_from_env` does: its own secrets, and the queue
/// only when it publishes.
fn function_app(
    env: &aws_support::AwsEnv,
    store: &Arc<dyn Store>,
    secrets: &Secrets,
    route: Route,
) -> App {
    let queue: Option<Arc<dyn Queue>> = route
        .publishes()
        .then(|| Arc::new(SqsQueue::new(env.sqs(), &env.provisioned.queue_url)) as Arc<dyn Queue>);
    App::new(
        &secrets.config_for(route),
        Arc::clone(store),
        queue,
        Arc::new(SystemClock),
    )
}

async fn invoke(app: &App, route: Route, event: &Value) -> Reply {
    let text = serde_json::to_string_pretty(event).unwrap();
    let request = lambda_http::request::from_str(&text)
        .unwrap_or_else(|e| panic!("lambda_http rejects the event ({e}):\n{text}"));
    Reply(pigeonhole_functions::respond(app, route, request).await)
}

fn job_of(m: &Message) -> Value {
    serde_json::from_str(m.body().expect("a body")).expect("a fan-out job is JSON")
}

fn message_id(m: &Message) -> String {
    m.message_id().expect("a message id").to_string()
}

/// The received message carrying the job of `publish_id` (other messages
/// on the queue need not be jobs).
fn job_for<'a>(messages: &'a [Message], publish_id: &str) -> &'a Message {
    messages
        .iter()
        .find(|m| {
            m.body()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
                .is_some_and(|job| job["publish_id"] == json!(publish_id))
        })
        .unwrap_or_else(|| panic!("no job for publish {publish_id} on the queue"))
}

// ---------------------------------------------------------------------------
// HTTP functions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_function_creates_then_returns_the_same_client() {
    let stack = Stack::new().await;
    let fingerprint = support::random_fingerprint();
    let (status, first) = stack.register(&fingerprint).await;
    assert_eq!(status, 201);
    assert!(uuid::Uuid::parse_str(&first.client_id).is_ok());
    assert!(first.api_token.starts_with("pht_"), "{}", first.api_token);
    assert_eq!(first.key().len(), 32);

    let (status, second) = stack.register(&fingerprint).await;
    assert_eq!(status, 200);
    assert_eq!(second, first);

    // API Gateway base64-encodes bodies it does not take for text (a JSON
    // body with a charset it does not know, say); the function reads them
    // the same.
    let mut event = register_event("");
    let body = json!({"fingerprint": fingerprint}).to_string();
    event["body"] = json!(B64.encode(&body));
    event["isBase64Encoded"] = json!(true);
    event["headers"]["content-length"] = json!(body.len().to_string());
    event["headers"]["content-type"] = json!("application/json; charset=x-unknown");
    let reply = stack.invoke(Route::Register, &event).await;
    assert_eq!(Creds::from_json(&reply.json(200)), first);
    // A body that does not say it is JSON is refused, base64 or not.
    event["headers"]["content-type"] = json!("application/octet-stream");
    stack
        .invoke(Route::Register, &event)
        .await
        .error(415, "unsupported_media_type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_answers_only_its_route_and_health() {
    let stack = Stack::new().await;
    for function in FUNCTIONS {
        for route in Route::ALL {
            let reply = stack.invoke(function, &event_for(route)).await;
            if route.is_health() {
                assert_eq!(
                    reply.json(200),
                    json!({"status": "ok"}),
                    "{function:?} on {}",
                    route.path()
                );
            } else if route != function {
                let message = reply.error(404, "not_found");
                assert!(!message.is_empty(), "{function:?} on {}", route.path());
            }
        }
    }
    // The case the brief names: register's function and the poll path.
    let creds = stack.new_client().await;
    stack
        .invoke(Route::Register, &poll_event(&creds, &[]))
        .await
        .error(404, "not_found");
    // The poll function itself answers it (nothing there yet).
    stack.poll(&creds, &[]).await.no_content();

    // Its own path with another method: 405 and Allow.
    for function in FUNCTIONS {
        let mut event = event_for(function);
        let other = if function.allow() == "GET" {
            "POST"
        } else {
            "GET"
        };
        set_method(&mut event, other);
        let reply = stack.invoke(function, &event).await;
        reply.error(405, "method_not_allowed");
        assert_eq!(
            reply.header("allow"),
            Some(function.allow()),
            "{function:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fan_out_poll_decrypt_ack() {
    let stack = Stack::new().await;
    let creds = stack.new_client().await;
    let marker = format!("hello-{}", uuid::Uuid::new_v4());
    let payload = json!({"text": marker, "n": 7, "list": [true, null]});
    let publish_id = stack
        .publish(&[&creds.client_id], "greeting", payload.clone())
        .await;

    // The job is on the queue, sealed: no plaintext in SQS.
    let messages = stack.receive(1).await;
    let job = job_of(&messages[0]);
    support::assert_keys(
        &job,
        &[
            "accepted_at",
            "publish_id",
            "recipients",
            "sealed_payload",
            "type",
        ],
    );
    // When the publish was accepted (ms since the epoch), for the fan-out's
    // delivery lag.
    let accepted_at = job["accepted_at"]
        .as_i64()
        .expect("accepted_at is a number");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now_ms - 60_000..=now_ms).contains(&accepted_at), "{job}");
    assert_eq!(job["publish_id"], json!(publish_id));
    assert_eq!(job["recipients"], json!([creds.client_id]));
    assert_eq!(job["type"], json!("greeting"));
    assert!(!messages[0].body().unwrap().contains(&marker));

    // Nothing is delivered before the fan-out runs.
    stack.poll(&creds, &[]).await.no_content();

    let failed = stack.fan_out(stack.sqs_event(&[&messages[0]])).await;
    assert!(failed.is_empty(), "{failed:?}");

    let reply = stack.poll(&creds, &[("limit", "10")]).await;
    let body = reply.json(200);
    let delivered = support::messages_of(&body);
    assert_eq!(delivered.len(), 1, "{body}");
    let plaintext = support::open_message(&creds, &delivered[0]);
    assert_eq!(plaintext, json!({"type": "greeting", "payload": payload}));
    let id = delivered[0]["id"].as_u64().unwrap();
    assert_eq!(id, 1);

    assert_eq!(stack.ack(&creds, id).await, json!({ "cursor": id }));
    stack.poll(&creds, &[]).await.no_content();
    stack.poll(&creds, &[("limit", "10")]).await.no_content();

    // The operator function sees the client, seen just now.
    let reply = stack
        .invoke(
            Route::ListClients,
            &list_clients_event(&stack.secrets.operator_token, &[("limit", "1000")]),
        )
        .await;
    let list = reply.json(200);
    let clients = list["clients"].as_array().expect("clients");
    let mine: Vec<&Value> = clients
        .iter()
        .filter(|c| c["id"] == json!(creds.client_id))
        .collect();
    assert_eq!(mine.len(), 1, "{list}");
    assert_eq!(mine[0]["name"], json!("lambda-test"));
    assert_eq!(mine[0]["status"], json!("online"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_function_stores_once_per_nonce() {
    let stack = Stack::new().await;
    let creds = stack.new_client().await;
    let aad = json!({"client_id": creds.client_id, "attempt": 1});
    let body = support::send_body(
        &creds,
        &json!({"type": "status", "payload": {"battery": 87}}),
        Some(&aad),
    )
    .to_string();

    let reply = stack.invoke(Route::Send, &send_event(&creds, &body)).await;
    assert_eq!(reply.json(201), json!({"id": 1}));
    // A retry with the identical body: the original id, nothing stored twice.
    let reply = stack.invoke(Route::Send, &send_event(&creds, &body)).await;
    assert_eq!(reply.json(200), json!({"id": 1}));

    let next =
        support::send_body(&creds, &json!({"type": "status", "payload": null}), None).to_string();
    let reply = stack.invoke(Route::Send, &send_event(&creds, &next)).await;
    assert_eq!(reply.json(201), json!({"id": 2}));

    // The sent function reads both back, opened, in order, once each.
    let admin = stack.secrets.admin_token.clone();
    let reply = stack
        .invoke(Route::Sent, &sent_event(&admin, &creds.client_id, 0))
        .await;
    let page = reply.json(200);
    assert_eq!(page["next_after"], json!(2));
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{page}");
    assert_eq!(
        (
            &messages[0]["id"],
            &messages[0]["type"],
            &messages[0]["payload"],
            &messages[0]["aad"]
        ),
        (&json!(1), &json!("status"), &json!({"battery": 87}), &aad)
    );
    assert_eq!(
        (&messages[1]["id"], &messages[1]["aad"]),
        (&json!(2), &json!({}))
    );
    stack
        .invoke(Route::Sent, &sent_event(&admin, &creds.client_id, 2))
        .await
        .no_content();
    stack
        .invoke(
            Route::Sent,
            &sent_event("not-the-admin", &creds.client_id, 0),
        )
        .await
        .error(401, "unauthorized");
    let stranger = uuid::Uuid::new_v4().to_string();
    stack
        .invoke(Route::Sent, &sent_event(&admin, &stranger, 0))
        .await
        .error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_status_function_follows_a_publish() {
    let stack = Stack::new().await;
    let creds = stack.new_client().await;
    let admin = stack.secrets.admin_token.clone();
    let publish_id = stack
        .publish(&[&creds.client_id], "tracked", json!({"n": 1}))
        .await;
    let status = |query: &'static [(&'static str, &'static str)]| {
        let event = publish_status_event(&admin, &publish_id, query);
        let stack = &stack;
        async move { stack.invoke(Route::PublishStatus, &event).await.json(200) }
    };

    // Accepted, not fanned out yet: its one recipient is pending.
    let queued = status(&[]).await;
    assert_eq!(queued["publish_id"], json!(publish_id));
    assert_eq!(queued["type"], json!("tracked"));
    assert_eq!(queued["audience"], json!({"to_client_ids": 1}));
    assert_eq!(queued["expires_at"], Value::Null);
    assert_eq!(
        (
            &queued["recipients"],
            &queued["pending"],
            &queued["delivered"],
            &queued["state"]
        ),
        (&json!(1), &json!(1), &json!(0), &json!("queued")),
        "{queued}"
    );
    assert!(queued.get("recipient_status").is_none(), "{queued}");

    // Fanned out: delivered, and done.
    let messages = stack.receive(1).await;
    assert!(stack
        .fan_out(stack.sqs_event(&[&messages[0]]))
        .await
        .is_empty());
    let done = status(&[("recipients", "1")]).await;
    assert_eq!(
        (
            &done["delivered"],
            &done["acknowledged"],
            &done["pending"],
            &done["state"]
        ),
        (&json!(1), &json!(0), &json!(0), &json!("done")),
        "{done}"
    );
    assert_eq!(
        done["recipient_status"],
        json!([{"client_id": creds.client_id, "message_id": 1, "status": "delivered"}])
    );
    assert!(done.get("next_page_token").is_none(), "{done}");

    // Acknowledged: still counted as delivered.
    assert_eq!(stack.ack(&creds, 1).await, json!({"cursor": 1}));
    let acked = status(&[]).await;
    assert_eq!(
        (&acked["delivered"], &acked["acknowledged"]),
        (&json!(1), &json!(1)),
        "{acked}"
    );

    // Unknown and malformed ids: 404. A bad page token: 422.
    for unknown in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_string()] {
        stack
            .invoke(
                Route::PublishStatus,
                &publish_status_event(&admin, &unknown, &[]),
            )
            .await
            .error(404, "not_found");
    }
    stack
        .invoke(
            Route::PublishStatus,
            &publish_status_event(
                &admin,
                &publish_id,
                &[("recipients", "1"), ("page_token", "garbled")],
            ),
        )
        .await
        .validation("page_token");

    // The admin token only: a wrong or missing one is 401, however good
    // the id.
    stack
        .invoke(
            Route::PublishStatus,
            &publish_status_event("not-the-admin", &publish_id, &[]),
        )
        .await
        .error(401, "unauthorized");
    let mut event = publish_status_event(&admin, &publish_id, &[]);
    remove_header(&mut event, "x-admin-token");
    stack
        .invoke(Route::PublishStatus, &event)
        .await
        .error(401, "unauthorized");
    let operator = stack.secrets.operator_token.clone();
    stack
        .invoke(
            Route::PublishStatus,
            &publish_status_event(&operator, &publish_id, &[]),
        )
        .await
        .error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tags_function_replaces_a_clients_tags() {
    let stack = Stack::new().await;
    let creds = stack.new_client().await;
    let other = stack.new_client().await;
    let operator = stack.secrets.operator_token.clone();
    let set = |client_id: &str, body: &str| set_tags_event(&operator, client_id, body);
    let tagged = |tag: &'static str| {
        let event = list_clients_event(&operator, &[("tag", tag)]);
        let stack = &stack;
        async move {
            let list = stack.invoke(Route::ListClients, &event).await.json(200);
            list["clients"]
                .as_array()
                .expect("clients")
                .iter()
                .map(|c| (c["id"].as_str().unwrap().to_string(), c["tags"].clone()))
                .collect::<Vec<_>>()
        }
    };

    // Sorted, duplicates folded.
    let reply = stack
        .invoke(
            Route::SetTags,
            &set(&creds.client_id, r#"{"tags":["eu","door-sensors","eu"]}"#),
        )
        .await;
    assert_eq!(
        reply.json(200),
        json!({"id": creds.client_id, "tags": ["door-sensors", "eu"]})
    );
    // The list function finds it by either tag, and only it.
    for tag in ["eu", "door-sensors"] {
        assert_eq!(
            tagged(tag).await,
            vec![(creds.client_id.clone(), json!(["door-sensors", "eu"]))],
            "{tag}"
        );
    }
    // Replaced, not added to.
    let reply = stack
        .invoke(Route::SetTags, &set(&creds.client_id, r#"{"tags":["us"]}"#))
        .await;
    assert_eq!(
        reply.json(200),
        json!({"id": creds.client_id, "tags": ["us"]})
    );
    assert!(tagged("eu").await.is_empty());
    assert_eq!(
        tagged("us").await,
        vec![(creds.client_id.clone(), json!(["us"]))]
    );
    // [] clears.
    let reply = stack
        .invoke(Route::SetTags, &set(&other.client_id, r#"{"tags":[]}"#))
        .await;
    assert_eq!(reply.json(200), json!({"id": other.client_id, "tags": []}));

    // Bad tags, or none named: 422.
    for body in [
        r#"{"tags":["EU"]}"#,
        r#"{"tags":[""]}"#,
        r#"{"tags":"eu"}"#,
        r#"{}"#,
    ] {
        stack
            .invoke(Route::SetTags, &set(&creds.client_id, body))
            .await
            .validation("tags");
    }
    stack
        .invoke(Route::SetTags, &set(&creds.client_id, TRUNCATED_JSON))
        .await
        .error(400, "invalid_json");

    // Unknown, malformed and deleted clients: 404.
    let stranger = uuid::Uuid::new_v4().to_string();
    for id in [stranger.as_str(), "not-a-uuid"] {
        stack
            .invoke(Route::SetTags, &set(id, r#"{"tags":["eu"]}"#))
            .await
            .error(404, "not_found");
    }
    stack
        .invoke(
            Route::DeleteClient,
            &delete_client_event(&operator, &creds.client_id),
        )
        .await
        .no_content();
    assert!(
        tagged("us").await.is_empty(),
        "a deleted client keeps no tag"
    );
    stack
        .invoke(Route::SetTags, &set(&creds.client_id, r#"{"tags":["eu"]}"#))
        .await
        .error(404, "not_found");

    // Operator tokens only: a wrong or missing one (the admin's included)
    // is 401.
    for token in ["not-an-operator", stack.secrets.admin_token.as_str()] {
        stack
            .invoke(
                Route::SetTags,
                &set_tags_event(token, &other.client_id, r#"{"tags":["eu"]}"#),
            )
            .await
            .error(401, "unauthorized");
    }
    let mut event = set(&other.client_id, r#"{"tags":["eu"]}"#);
    remove_header(&mut event, "x-operator-token");
    stack
        .invoke(Route::SetTags, &event)
        .await
        .error(401, "unauthorized");
    // Nothing the refused requests named was set.
    assert!(tagged("eu").await.is_empty());
}

// ---------------------------------------------------------------------------
// Bad input, per function
// ---------------------------------------------------------------------------

const TRUNCATED_JSON: &str = r#"{"fingerprint": "cut-off-mid-"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_function_rejects_bad_input() {
    let stack = Stack::new().await;
    for body in [TRUNCATED_JSON, "", "not json", "[1,2]", "\"a string\""] {
        stack
            .invoke(Route::Register, &register_event(body))
            .await
            .error(400, "invalid_json");
    }
    let reply = stack
        .invoke(
            Route::Register,
            &register_event(r#"{"fingerprint":"short"}"#),
        )
        .await;
    reply.validation("fingerprint");
    let reply = stack
        .invoke(Route::Register, &register_event(r#"{"name":"x"}"#))
        .await;
    reply.validation("fingerprint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_function_rejects_bad_input() {
    let stack = Stack::new().await;
    let admin = &stack.secrets.admin_token;
    let good =
        json!({"to_client_ids": [uuid::Uuid::new_v4().to_string()], "type": "t", "payload": 1})
            .to_string();

    let mut event = publish_event(admin, &good);
    remove_header(&mut event, "x-admin-token");
    let missing = stack
        .invoke(Route::Publish, &event)
        .await
        .error(401, "unauthorized");
    let wrong = stack
        .invoke(Route::Publish, &publish_event("wrong-admin-token", &good))
        .await
        .error(401, "unauthorized");
    assert_eq!(missing, wrong, "every auth failure reads the same");

    stack
        .invoke(Route::Publish, &publish_event(admin, TRUNCATED_JSON))
        .await
        .error(400, "invalid_json");
    let body = json!({"to_client_ids": [uuid::Uuid::new_v4().to_string(), "nope"], "type": "t", "payload": 1});
    stack
        .invoke(Route::Publish, &publish_event(admin, &body.to_string()))
        .await
        .validation("to_client_ids[1]");
    let body = json!({"to_client_ids": [uuid::Uuid::new_v4().to_string()], "type": "t"});
    stack
        .invoke(Route::Publish, &publish_event(admin, &body.to_string()))
        .await
        .validation("payload");
    let body = json!({"to_client_ids": [uuid::Uuid::new_v4().to_string()], "type": "t", "payload": "x".repeat(70_000)});
    stack
        .invoke(Route::Publish, &publish_event(admin, &body.to_string()))
        .await
        .error(413, "payload_too_large");

    // Nothing bad reached the queue.
    let out = stack
        .env
        .sqs()
        .receive_message()
        .queue_url(&stack.env.provisioned.queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert!(out.messages.unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_function_rejects_bad_input() {
    let stack = Stack::new().await;
    let creds = stack.new_client().await;
    let good = support::send_body(&creds, &json!({"type": "t", "payload": 1}), None).to_string();

    let mut event = send_event(&creds, &good);
    remove_header(&mut event, "authorization");
    let missing = stack
        .invoke(Route::Send, &event)
        .await
        .error(401, "unauthorized");
    let mut event = send_event(&creds, &good);
    remove_header(&mut event, "x-client-id");
    let no_id = stack
        .invoke(Route::Send, &event)
        .await
        .error(401, "unauthorized");
    let forged = Creds {
        api_token: format!("pht_{}", "A".repeat(43)),
        ..creds.clone()
    };
    let wrong = stack
        .invoke(Route::Send, &send_event(&forged, &good))
        .await
        .error(401, "unauthorized");
    assert_eq!(missing, wrong);
    assert_eq!(no_id, wrong);

    stack
        .invoke(Route::Send, &send_event(&creds, TRUNCATED_JSON))
        .await
        .error(400, "invalid_json");

    // Sealed under another key: the tag does not verify.
    let stranger = Creds {
        personal_token: B64.encode(support::random_bytes::<32>()),
        ..creds.clone()
    };
    let body = support::send_body(&stranger, &json!({"type": "t", "payload": 1}), None);
    stack
        .invoke(Route::Send, &send_event(&creds, &body.to_string()))
        .await
        .error(422, "decryption_failed");
    let mut body: Value = serde_json::from_str(&good).unwrap();
    body["nonce"] = json!(B64.encode([0u8; 8]));
    stack
        .invoke(Route::Send, &send_event(&creds, &body.to_string()))
        .await
        .validation("nonce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_function_rejects_bad_input() {
    let stack = Stack::new().await;
    let creds = stack.new_client().await;

    let mut event = poll_event(&creds, &[]);
    remove_header(&mut event, "authorization");
    stack
        .invoke(Route::Poll, &event)
        .await
        .error(401, "unauthorized");
    let mut event = poll_event(&creds, &[]);
    event["headers"]["authorization"] = json!("Basic dXNlcjpwYXNz");
    stack
        .invoke(Route::Poll, &event)
        .await
        .error(401, "unauthorized");

    for limit in ["0", "501", "abc", "-1", "1.5"] {
        stack
            .poll(&creds, &[("limit", limit)])
            .await
            .validation("limit");
    }
    stack
        .poll(&creds, &[("cursor", "-3")])
        .await
        .validation("cursor");
    // Within range it is fine (and empty).
    stack.poll(&creds, &[("limit", "500")]).await.no_content();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_function_rejects_bad_input() {
    let stack = Stack::new().await;
    let creds = stack.new_client().await;

    let mut event = ack_event(&creds, r#"{"last_received_id":0}"#);
    remove_header(&mut event, "x-client-id");
    stack
        .invoke(Route::Ack, &event)
        .await
        .error(401, "unauthorized");

    stack
        .invoke(Route::Ack, &ack_event(&creds, TRUNCATED_JSON))
        .await
        .error(400, "invalid_json");
    for body in [
        r#"{}"#,
        r#"{"last_received_id":-1}"#,
        r#"{"last_received_id":"1"}"#,
        // Beyond the newest message (there is none).
        r#"{"last_received_id":1}"#,
    ] {
        stack
            .invoke(Route::Ack, &ack_event(&creds, body))
            .await
            .validation("last_received_id");
    }
    assert_eq!(stack.ack(&creds, 0).await, json!({"cursor": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_clients_function_rejects_bad_input() {
    let stack = Stack::new().await;
    let token = stack.secrets.operator_token.clone();

    let mut event = list_clients_event(&token, &[]);
    remove_header(&mut event, "x-operator-token");
    stack
        .invoke(Route::ListClients, &event)
        .await
        .error(401, "unauthorized");
    stack
        .invoke(Route::ListClients, &list_clients_event("wrong", &[]))
        .await
        .error(401, "unauthorized");
    for limit in ["0", "1001", "many"] {
        stack
            .invoke(
                Route::ListClients,
                &list_clients_event(&token, &[("limit", limit)]),
            )
            .await
            .validation("limit");
    }
    stack
        .invoke(
            Route::ListClients,
            &list_clients_event(&token, &[("page_token", "%%garbled%%")]),
        )
        .await
        .validation("page_token");
    // The second operator token works too.
    let reply = stack
        .invoke(
            Route::ListClients,
            &list_clients_event("another-operator", &[]),
        )
        .await;
    assert!(reply.json(200)["clients"].is_array());
}

// ---------------------------------------------------------------------------
// The fan-out function
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fails_only_the_record_with_a_garbage_body() {
    let stack = Stack::new().await;
    let creds = stack.new_client().await;
    let first = stack
        .publish(&[&creds.client_id], "first", json!({"n": 1}))
        .await;
    // Something that is not a job lands on the queue.
    stack
        .env
        .sqs()
        .send_message()
        .queue_url(&stack.env.provisioned.queue_url)
        .message_body("this is not a fan-out job")
        .send()
        .await
        .unwrap();
    let last = stack
        .publish(&[&creds.client_id], "last", json!({"n": 3}))
        .await;

    let messages = stack.receive(3).await;
    let garbage = messages
        .iter()
        .find(|m| m.body() == Some("this is not a fan-out job"))
        .expect("the garbage message");
    let batch = [
        job_for(&messages, &first),
        garbage,
        job_for(&messages, &last),
    ];
    let failed = stack.fan_out(stack.sqs_event(&batch)).await;
    assert_eq!(failed, vec![message_id(garbage)]);

    let inbox = stack.inbox(&creds).await;
    let kinds: Vec<&Value> = inbox.iter().map(|(_, m)| &m["type"]).collect();
    assert_eq!(kinds, [&json!("first"), &json!("last")], "{inbox:?}");
    assert_eq!(inbox[0].1["payload"], json!({"n": 1}));
    assert_eq!(inbox[1].1["payload"], json!({"n": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fails_only_the_record_sealed_under_another_master_key() {
    let stack = Stack::new().await;
    let creds = stack.new_client().await;
    // A publish function deployed with another MASTER_KEY, writing to the
    // same queue.
    let other_secrets = Secrets {
        admin_token: stack.secrets.admin_token.clone(),
        ..Secrets::random()
    };
    let other_publish = function_app(&stack.env, &stack.store, &other_secrets, Route::Publish);

    let first = stack
        .publish(&[&creds.client_id], "first", json!({"n": 1}))
        .await;
    let body = json!({"to_client_ids": [creds.client_id], "type": "foreign", "payload": {"n": 2}});
    let reply = invoke(
        &other_publish,
        Route::Publish,
        &publish_event(&stack.secrets.admin_token, &body.to_string()),
    )
    .await;
    let foreign = reply.json(202)["publish_id"].as_str().unwrap().to_string();
    let last = stack
        .publish(&[&creds.client_id], "last", json!({"n": 3}))
        .await;

    let messages = stack.receive(3).await;
    let foreign = job_for(&messages, &foreign);
    let batch = [
        job_for(&messages, &first),
        foreign,
        job_for(&messages, &last),
    ];
    let failed = stack.fan_out(stack.sqs_event(&batch)).await;
    assert_eq!(failed, vec![message_id(foreign)]);

    let inbox = stack.inbox(&creds).await;
    let kinds: Vec<&Value> = inbox.iter().map(|(_, m)| &m["type"]).collect();
    assert_eq!(kinds, [&json!("first"), &json!("last")], "{inbox:?}");

    // Retried (as SQS retries it), it fails again and still delivers nothing.
    let again = stack.redeliver(foreign).await;
    let failed = stack.fan_out(stack.sqs_event(&[&again])).await;
    assert_eq!(failed, vec![message_id(foreign)]);
    assert_eq!(stack.inbox(&creds).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_redelivery_stores_one_copy() {
    let stack = Stack::new().await;
    let alice = stack.new_client().await;
    let bob = stack.new_client().await;
    let publish_id = stack
        .publish(
            &[&alice.client_id, &bob.client_id, &alice.client_id],
            "once",
            json!({"text": "exactly once"}),
        )
        .await;
    let messages = stack.receive(1).await;
    let job = job_for(&messages, &publish_id);

    // The same event twice: a retried invocation.
    let event = stack.sqs_event(&[job]);
    assert!(stack.fan_out(event.clone()).await.is_empty());
    assert!(stack.fan_out(event).await.is_empty());
    // The same message delivered again by SQS: another receipt handle and
    // receive count.
    let again = stack.redeliver(job).await;
    assert_ne!(again.receipt_handle, job.receipt_handle);
    let event = stack.sqs_event(&[&again]);
    assert_eq!(event.records[0].attributes["ApproximateReceiveCount"], "2");
    assert!(stack.fan_out(event).await.is_empty());

    for creds in [&alice, &bob] {
        let inbox = stack.inbox(creds).await;
        assert_eq!(inbox.len(), 1, "{}: {inbox:?}", creds.client_id);
        assert_eq!(inbox[0].0, 1);
        assert_eq!(
            inbox[0].1,
            json!({"type": "once", "payload": {"text": "exactly once"}})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_skips_unknown_recipients() {
    let stack = Stack::new().await;
    let known = stack.new_client().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let mixed = stack
        .publish(&[&unknown, &known.client_id], "mixed", json!(1))
        .await;
    let nobody = stack
        .publish(&[&uuid::Uuid::new_v4().to_string()], "nobody", json!(2))
        .await;

    let messages = stack.receive(2).await;
    let batch = [job_for(&messages, &mixed), job_for(&messages, &nobody)];
    let failed = stack.fan_out(stack.sqs_event(&batch)).await;
    assert!(
        failed.is_empty(),
        "unknown recipients are skipped: {failed:?}"
    );

    let inbox = stack.inbox(&known).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].1, json!({"type": "mixed", "payload": 1}));
}
