//! `pigeonhole-local`: the whole Pigeonhole API on one machine.
//!
//! Serves every endpoint over HTTP from the embedded SQLite store, runs the
//! fan-out in-process, and removes acknowledged messages past their
//! retention. Secrets missing from the environment are generated once and
//! kept in the data directory, so `cargo run` is enough to try it.

mod secrets;
mod server;

use clap::Parser;
use pigeonhole::config::{Config, Secret};
use pigeonhole::store::sqlite::SqliteStore;
use pigeonhole::App;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Serve the Pigeonhole API locally on the embedded store.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Environment: ADMIN_TOKEN, OPERATOR_TOKENS (comma-separated), MASTER_KEY (base64 of 32 bytes), \
POLL_RATE_LIMIT (polls per minute per client, default 120, 0 = unlimited), ACKED_RETENTION_SECS (default 86400), RUST_LOG.\n\
Secrets not set in the environment are generated on first start and kept in <data-dir>/secrets.json."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory for the database and generated secrets.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Seconds between cleanups of acknowledged messages.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    cleanup_interval_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pigeonhole-local: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            args.data_dir.display()
        )
    })?;
    let secrets = secrets::LocalSecrets::load_or_create(&args.data_dir)?;
    let config = Config::from_lookup(
        |name| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .or_else(|| secrets.get(name))
        },
        &Secret::ALL,
    )
    .map_err(|e| e.to_string())?;
    secrets.announce_generated();

    let db_path = args.data_dir.join("pigeonhole.db");
    let store = SqliteStore::open(&db_path)
        .map_err(|e| format!("cannot open {}: {e}", db_path.display()))?;
    let app = Arc::new(App::in_process(&config, Arc::new(store)).map_err(|e| e.to_string())?);
    tracing::info!(
        data_dir = %args.data_dir.display(),
        poll_rate_limit = config.poll_rate_limit,
        acked_retention_secs = config.acked_retention.as_secs(),
        "starting"
    );

    tokio::spawn(cleanup_loop(
        Arc::clone(&app),
        Duration::from_secs(args.cleanup_interval_secs),
    ));
    server::serve(app, args.listen).await
}

/// Periodically removes acknowledged messages past their retention.
async fn cleanup_loop(app: Arc<App>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = pigeonhole::maintenance::purge_acknowledged(&app).await {
            tracing::error!(error = %e, "cleanup failed; will retry");
        }
    }
}
