//! The machine's limit for an answer that does nothing: a hyper HTTP/1.1
//! server (the same hyper and tokio as the local server, same runtime
//! flavour and worker count) that answers every request with an empty 204.
//! `bench/empty-poll.sh` measures the empty poll against it, side by side,
//! so the ratio holds however busy the machine is.
//!
//! Usage: `bare-204 [ADDR]` (default 127.0.0.1:0); prints
//! `listening on http://ADDR` once bound.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(|_request| async {
                let mut response = Response::new(Empty::<Bytes>::new());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok::<_, Infallible>(response)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
