//! What every Pigeonhole Lambda function shares: logging set-up, the one
//! cold-start step that builds the app from the environment, and the
//! conversion between `lambda_http`'s request/response and the shared HTTP
//! adapter's. Each binary in `src/bin/` is only a `main` naming its route.
//!
//! No endpoint logic lives here: requests go to
//! [`pigeonhole::http::handle_route`], the same adapter the local server uses.
//!
//! Metrics: each function installs the Embedded Metric Format recorder at
//! cold start and writes what an invocation recorded to its log at the end
//! of the invocation ([`pigeonhole::metrics::emf`]); CloudWatch Logs turns
//! those lines into metrics in the `Pigeonhole` namespace.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use bytes::Bytes;
use lambda_http::{service_fn, Body, Request, Response};
pub use pigeonhole::aws::{FanoutQueue, InboundQueue, NoQueue, Queues};
use pigeonhole::handlers::sqs_batch::FanoutFunction;
use pigeonhole::http::{handle_route, Route, SourceAddr};
use pigeonhole::metrics::emf::{self, EmfHandle};
use pigeonhole::App;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing_subscriber::filter::LevelFilter;

pub type Error = lambda_http::Error;

/// Logs as `lambda_runtime`'s default subscriber writes them: JSON when
/// the function's `LoggingConfig` asks for it (`AWS_LAMBDA_LOG_FORMAT=JSON`),
/// plain text otherwise, at the level `AWS_LAMBDA_LOG_LEVEL` or else
/// `RUST_LOG` names (`info` when neither names one), without targets or
/// times (CloudWatch stamps each line).
pub fn init_logging() {
    let level = ["AWS_LAMBDA_LOG_LEVEL", "RUST_LOG"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let logs = tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_max_level(level);
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// Logs a configuration problem the way an operator will find it (one
/// error line, structured like every other, naming what is missing) and
/// stops the cold start. Exiting here rather than returning the error from
/// `main` keeps it to that one line: Lambda reports the exit as
/// `Runtime.ExitError` and the log says why.
fn fail_cold_start(what: &str, error: impl std::fmt::Display) -> ! {
    tracing::error!(%error, "{what}: cannot start; fix the function's configuration");
    std::process::exit(1)
}

/// The environment variable naming the CloudFormation stack (the template
/// sets it to `AWS::StackName`): the `Stack` dimension of every metric, so
/// the dashboards of two stacks in one account stay apart.
pub const STACK_NAME: &str = "STACK_NAME";

/// Installs the Embedded Metric Format recorder for `function` (its binary
/// name, the `Function` dimension). Metrics are no reason to stop a cold
/// start: if a recorder is somehow installed already, this one is skipped.
pub fn init_metrics(function: &str) -> Option<EmfHandle> {
    let stack = std::env::var(STACK_NAME)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "pigeonhole".to_string());
    match emf::install(&stack, function) {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed");
            None
        }
    }
}

/// Writes what the invocation recorded to the log, before the runtime
/// hands the result back (work after that is not guaranteed to run).
fn flush_metrics(metrics: Option<&EmfHandle>) {
    if let Some(metrics) = metrics {
        metrics.flush();
    }
}

/// Serves one HTTP route with the queues `Q` (which the binary names, so
/// that it links the SQS client only if it uses a queue): builds the app
/// once, then answers every invocation through the shared adapter.
pub async fn serve_route<Q: Queues>(route: Route) -> Result<(), Error> {
    init_logging();
    let metrics = init_metrics(pigeonhole::metrics::route_label(Some(route)));
    if (Q::FANOUT, Q::INBOUND) != (route.publishes(), route.announces()) {
        fail_cold_start(
            route.path(),
            "the binary's queue wiring does not match its route (a bug in src/bin/)",
        );
    }
    let app = pigeonhole::aws::app_from_env::<Q>(route.secrets())
        .await
        .unwrap_or_else(|e| fail_cold_start(route.path(), e));
    let app = Arc::new(app);
    lambda_http::run(service_fn(move |request: Request| {
        let (app, metrics) = (Arc::clone(&app), metrics.clone());
        async move {
            let response = respond(&app, route, request).await;
            flush_metrics(metrics.as_ref());
            Ok::<_, Infallible>(response)
        }
    }))
    .await
}

/// Answers one API Gateway request for `route`.
pub async fn respond(app: &App, route: Route, request: Request) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match body {
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    let mut request = http::Request::from_parts(parts, body);
    if let Some(source) = source_ip(&request) {
        request.extensions_mut().insert(SourceAddr(source));
    }
    let response = handle_route(app, route, request).await;
    let (parts, body) = response.into_parts();
    let body = if body.is_empty() {
        Body::Empty
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => Body::Text(text),
            Err(e) => Body::Binary(e.into_bytes()),
        }
    };
    Response::from_parts(parts, body)
}

/// The caller's address as API Gateway's HTTP API saw it
/// (`requestContext.http.sourceIp`): the template deploys an HTTP API.
fn source_ip<B>(request: &http::Request<B>) -> Option<IpAddr> {
    use lambda_http::request::RequestContext;
    let text = match request.extensions().get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(context) => context.http.source_ip.clone(),
        _ => None,
    }?;
    text.parse().ok()
}

/// The invocation's deadline (Lambda gives it in milliseconds since the
/// epoch) as an `Instant`; `None` when the runtime gave none that lies
/// ahead (a local emulator may send none at all).
pub fn invocation_deadline(context: &lambda_runtime::Context) -> Option<Instant> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if context.deadline <= now_ms {
        tracing::warn!(
            deadline_ms = context.deadline,
            "the invocation has no deadline ahead; working without one"
        );
        return None;
    }
    Some(Instant::now() + Duration::from_millis(context.deadline - now_ms))
}

/// Runs the SQS-triggered fan-out: each batch's records are delivered one
/// by one within the invocation's deadline, and failures reported
/// individually.
pub async fn serve_fanout() -> Result<(), Error> {
    init_logging();
    let metrics = init_metrics("fanout");
    let function = pigeonhole::aws::fanout_from_env()
        .await
        .unwrap_or_else(|e| fail_cold_start("fanout", e));
    let function = Arc::new(function);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<SqsEvent>| {
            let (function, metrics) = (Arc::clone(&function), metrics.clone());
            async move {
                let deadline = invocation_deadline(&event.context);
                let response = fan_out(&function, event.payload, deadline).await;
                flush_metrics(metrics.as_ref());
                Ok::<SqsBatchResponse, Infallible>(response)
            }
        },
    ))
    .await
}

/// Answers one fan-out invocation that must end by `deadline`.
pub async fn fan_out(
    function: &FanoutFunction,
    event: SqsEvent,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    function.handle(event, deadline).await
}

/// Runs the scheduled cleanup within the invocation's deadline; a run cut
/// short resumes where it stopped at the next schedule.
pub async fn serve_cleanup() -> Result<(), Error> {
    init_logging();
    let metrics = init_metrics("cleanup");
    let app = pigeonhole::aws::app_from_env::<NoQueue>(&[])
        .await
        .unwrap_or_else(|e| fail_cold_start("cleanup", e));
    let app = Arc::new(app);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let (app, metrics) = (Arc::clone(&app), metrics.clone());
            async move {
                // Without one, a budget of its own: retries need an end.
                let deadline = invocation_deadline(&event.context)
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
                let purged = pigeonhole::retry::within(
                    deadline,
                    pigeonhole::maintenance::purge_expired(&app),
                )
                .await;
                flush_metrics(metrics.as_ref());
                let purged = purged?;
                Ok::<_, Error>(serde_json::json!({
                    "removed": purged.inbox,
                    "removed_sent": purged.outbox,
                    "finished": purged.finished,
                }))
            }
        },
    ))
    .await
}
