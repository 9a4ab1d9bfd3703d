//! Scheduled Lambda function: removes acknowledged messages older than
//! `ACKED_RETENTION_SECS`.

#[tokio::main]
async fn main() -> Result<(), pigeonhole_functions::Error> {
    pigeonhole_functions::serve_cleanup().await
}
