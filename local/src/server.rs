//! The HTTP/1.1 server: accepts connections, reads bodies up to the API's
//! limit, hands requests to the shared adapter, shuts down gracefully.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use pigeonhole::http::{body_limit, body_too_large, error_response, handle};
use pigeonhole::App;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[path = "static_page.rs"]
mod static_page;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(app: Arc<App>, addr: SocketAddr) -> Result<(), String> {
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
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
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
                    async move { Ok::<_, Infallible>(respond(&app, request).await) }
                });
                let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
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

async fn respond(app: &App, request: Request<Incoming>) -> Response<Full<Bytes>> {
    // The browser client's files; every other path is the API's.
    if let Some(page) = static_page::respond(request.method(), request.uri().path()) {
        tracing::debug!(
            method = %request.method(),
            path = %request.uri().path(),
            status = page.status().as_u16(),
            "static"
        );
        return page.map(Full::new);
    }
    let (parts, body) = request.into_parts();
    // Stop reading at the limit rather than buffering whatever is sent.
    let limit = body_limit(parts.uri.path());
    let response = match Limited::new(body, limit).collect().await {
        Ok(collected) => handle(app, Request::from_parts(parts, collected.to_bytes())).await,
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            error_response(&body_too_large(limit))
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not read request body");
            error_response(&pigeonhole::ApiError::invalid_json(
                "the request body could not be read",
            ))
        }
    };
    response.map(Full::new)
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
