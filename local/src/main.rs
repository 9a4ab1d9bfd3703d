//! `pigeonhole-local`: the whole Pigeonhole API on one machine.
//!
//! Serves every endpoint over HTTP from the embedded SQLite store, runs the
//! fan-out in-process, and removes acknowledged messages past their
//! retention. Secrets missing from the environment are generated once and
//! kept in the data directory, so `cargo run` is enough to try it.

#[cfg(feature = "aws")]
mod event_source;
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

/// Where the data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// The embedded SQLite store in --data-dir, fan-out in-process.
    Embedded,
    /// DynamoDB and SQS at AWS_ENDPOINT_URL (or AWS itself), with the table
    /// and queue names in CLIENTS_TABLE, …, FANOUT_QUEUE_URL (as written by
    /// pigeonhole-infra); the fan-out runs on messages received from the
    /// queue, as the Lambda event source mapping would.
    Aws,
}

/// Serve the Pigeonhole API locally on the embedded store.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Environment: ADMIN_TOKEN, OPERATOR_TOKENS (comma-separated), MASTER_KEY (base64 of 32 bytes), \
POLL_RATE_LIMIT (polls per minute per client, default 120, 0 = unlimited), ACKED_RETENTION_SECS (default 86400), SENT_RETENTION_SECS (default 604800), RUST_LOG.\n\
Secrets not set in the environment are generated on first start and kept in <data-dir>/secrets.json."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the data lives.
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    backend: Backend,
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

    let app = Arc::new(match args.backend {
        Backend::Embedded => embedded_app(&config, &args)?,
        Backend::Aws => aws_app(&config).await?,
    });
    tracing::info!(
        backend = ?args.backend,
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

fn embedded_app(config: &Config, args: &Args) -> Result<App, String> {
    let db_path = args.data_dir.join("pigeonhole.db");
    let store = SqliteStore::open(&db_path)
        .map_err(|e| format!("cannot open {}: {e}", db_path.display()))?;
    App::in_process(config, Arc::new(store)).map_err(|e| e.to_string())
}

/// The serverless data path, offline: the same store, queue and fan-out
/// handler the Lambda functions use.
#[cfg(feature = "aws")]
async fn aws_app(config: &Config) -> Result<App, String> {
    let app = pigeonhole::aws::app_with_config(config, true)
        .await
        .map_err(|e| e.to_string())?;
    let function = pigeonhole::aws::fanout_with_config(config)
        .await
        .map_err(|e| e.to_string())?;
    let sdk = pigeonhole::aws::sdk_config().await;
    let queue_url = std::env::var(pigeonhole::aws::FANOUT_QUEUE_URL)
        .map_err(|_| "FANOUT_QUEUE_URL not set".to_string())?;
    tokio::spawn(event_source::run(
        aws_sdk_sqs::Client::new(&sdk),
        queue_url,
        function,
    ));
    Ok(app)
}

#[cfg(not(feature = "aws"))]
async fn aws_app(_: &Config) -> Result<App, String> {
    Err("this build has no AWS support; rebuild with `cargo run -p pigeonhole-local --features aws`".into())
}

/// How long one cleanup pass may run; the next resumes where it stopped.
const CLEANUP_BUDGET: Duration = Duration::from_secs(300);

/// Periodically removes messages past their retention.
async fn cleanup_loop(app: Arc<App>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let deadline = std::time::Instant::now() + CLEANUP_BUDGET;
        let run = pigeonhole::maintenance::purge_expired(&app);
        if let Err(e) = pigeonhole::retry::within(deadline, run).await {
            tracing::error!(error = %e, "cleanup failed; will retry");
        }
    }
}
