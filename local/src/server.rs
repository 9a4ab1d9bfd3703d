//! The HTTP/1.1 server: accepts connections, reads bodies up to the API's
//! limit, hands requests to the shared adapter, shuts down gracefully.
//!
//! It holds up when exposed: a connection must send its request head
//! within [`HEADER_TIMEOUT`] and the body within [`BODY_TIMEOUT`], and at
//! most `--max-connections` are served at once, so slow or idle clients
//! cannot pile up connections, memory and tasks.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use pigeonhole::error::ApiError;
use pigeonhole::http::{body_limit, body_too_large, error_response, handle, SourceAddr};
use pigeonhole::App;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[path = "static_page.rs"]
mod static_page;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may take to send a complete request head, from
/// when it is accepted or its previous response was sent. An idle
/// keep-alive connection is closed after this long too.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may take to arrive in full once its head has.
/// The largest body the API takes is 256 KiB: 30 s allows under 9 KB/s.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the log says that the server is at its connection limit.
const AT_LIMIT_LOG_EVERY: Duration = Duration::from_secs(60);

/// What one client, or many, may hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

pub async fn serve(app: Arc<App>, addr: SocketAddr, limits: Limits) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{bound}");
    let _ = std::io::stdout().flush();
    tracing::info!(%bound, "listening");

    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // One permit per connection being served. At the limit the server stops
    // accepting rather than accepting and closing: further connections wait
    // in the kernel's listen backlog (and are refused by it once that is
    // full), so a burst of honest clients is served a moment later instead
    // of failing, and a flood costs the server nothing but the backlog.
    // Closing them at once would not help against a flood (the slots are
    // freed only by the timeouts either way) and would break honest
    // clients. The timeouts bound how long a stalled client holds a slot.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_at_limit_log: Option<Instant> = None;
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if last_at_limit_log.is_none_or(|t| t.elapsed() >= AT_LIMIT_LOG_EVERY) {
                    last_at_limit_log = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "at the connection limit; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => {
                        permit.expect("the semaphore is never closed")
                    }
                    _ = &mut shutdown => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Running out of file descriptors and the like is
                        // transient; keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let app = Arc::clone(&app);
                let service = service_fn(move |request| {
                    let app = Arc::clone(&app);
                    async move {
                        let mut request = request;
                        // Registration is limited per source address.
                        request.extensions_mut().insert(SourceAddr(peer.ip()));
                        Ok::<_, Infallible>(respond(&app, request, limits.body_timeout).await)
                    }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish in time");
    }
    Ok(())
}

async fn respond(
    app: &App,
    request: Request<Incoming>,
    body_timeout: Duration,
) -> Response<Full<Bytes>> {
    // Operators' metrics (GET /metrics, operator token).
    let (method, path, headers) = (request.method(), request.uri().path(), request.headers());
    if let Some(metrics) = crate::metrics_endpoint::respond(app, method, path, headers) {
        return metrics.map(Full::new);
    }
    // The browser pages' files (client page and console); every other path
    // is the API's.
    if let Some(page) = static_page::respond(request.method(), request.uri().path()) {
        tracing::debug!(
            method = %request.method(),
            path = %request.uri().path(),
            status = page.status().as_u16(),
            "static"
        );
        return page.map(Full::new);
    }
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    // Stop reading at the limit rather than buffering whatever is sent.
    let limit = body_limit(parts.uri.path());
    let read = tokio::time::timeout(body_timeout, Limited::new(body, limit).collect()).await;
    let response = match read {
        Ok(Ok(collected)) => {
            return handle(app, Request::from_parts(parts, collected.to_bytes()))
                .await
                .map(Full::new)
        }
        Err(_) => request_timeout(body_timeout),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            error_response(&body_too_large(limit))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "could not read request body");
            error_response(&pigeonhole::ApiError::invalid_json(
                "the request body could not be read",
            ))
        }
    };
    // The shared adapter logs the requests it answers; these it never saw.
    tracing::info!(
        method = %parts.method,
        path = %parts.uri.path(),
        status = response.status().as_u16(),
        latency_ms = (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0,
        "request"
    );
    response.map(Full::new)
}

/// The answer to a body that did not arrive in time, in the API's error
/// shape. `Connection: close`: the rest of the body may still come, and
/// nothing after it could be told apart from it.
fn request_timeout(after: Duration) -> Response<Bytes> {
    let mut response = error_response(&ApiError::request_timeout(after));
    // The rest of the body may still be on its way: this connection cannot
    // carry another request.
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::CONTENT_TYPE;
    use hyper::StatusCode;

    #[test]
    fn a_late_body_gets_408_in_the_api_error_shape_and_closes_the_connection() {
        let response = request_timeout(BODY_TIMEOUT);
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()[CONNECTION], "close");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["code"], "request_timeout");
        assert_eq!(
            body["error"]["message"],
            "the request body did not arrive within 30 s"
        );
        assert_eq!(body.as_object().unwrap().len(), 1);
        assert_eq!(body["error"].as_object().unwrap().len(), 2);
    }
}
