//! `pigeonhole-local`: the whole Pigeonhole API on one machine.
//!
//! Serves every endpoint over HTTP from the embedded SQLite store, runs the
//! fan-out in-process, and removes acknowledged messages past their
//! retention. Secrets missing from the environment are generated once and
//! kept in the data directory, so `cargo run` is enough to try it.

#[cfg(feature = "aws")]
mod event_source;
mod metrics_endpoint;
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
Secrets not set in the environment are generated on first start and kept in <data-dir>/secrets.json (mode 0600; \
the server refuses to start if group or others have any access to it). The tokens are printed only on the start that generated them.\n\
Connections: a request head must arrive within 10 s of the connection opening (or of the previous response), \
and its body within 30 s of the head."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the data lives.
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    backend: Backend,
    /// Directory for the database and generated secrets (created with mode
    /// 0700).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Seconds between cleanups of acknowledged messages.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    cleanup_interval_secs: u64,
    /// Most connections served at once; further ones wait in the listen
    /// backlog until one closes.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a request body may take to arrive in full (408 after).
    /// Hidden: for the tests, which cannot wait 30 s.
    #[arg(long, hide = true, default_value_t = server::BODY_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_secs: u64,
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
    // Before anything records: GET /metrics renders this recorder.
    metrics_endpoint::install()?;
    create_data_dir(&args.data_dir)?;
    let secrets = secrets::LocalSecrets::load_or_create(&args.data_dir)?;
    let config = Config::from_lookup(
        |name| match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Some(value),
            // Set but empty: no exemptions at all.
            Ok(_) if name == "REGISTER_RATE_LIMIT_EXEMPT" => None,
            _ => secrets.get(name).or_else(|| local_default(name)),
        },
        &Secret::ALL,
    )
    .map_err(|e| e.to_string())?;
    secrets.announce();

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
    let limits = server::Limits {
        max_connections: args.max_connections as usize,
        header_timeout: server::HEADER_TIMEOUT,
        body_timeout: Duration::from_secs(args.body_timeout_secs),
    };
    server::serve(app, args.listen, limits).await
}

/// Creates the data directory (and any missing parent) readable by the
/// owner only: it holds the secrets and the database. An existing one is
/// left as it is.
fn create_data_dir(dir: &std::path::Path) -> Result<(), String> {
    let error = |e: std::io::Error| format!("cannot create data directory {}: {e}", dir.display());
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).map_err(error)?;
        // Exactly 0700 whatever the umask.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(error)
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(error)
}

/// Where the local server's defaults differ from a deployment's: a
/// developer's own machine (and `pigeonhole simulate` on it) is never
/// slowed down by the registration limit.
fn local_default(name: &str) -> Option<String> {
    (name == "REGISTER_RATE_LIMIT_EXEMPT").then(|| "127.0.0.0/8,::1/128".to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn connection_limits_default_to_10_000_connections_and_a_30_s_body() {
        let args = Args::try_parse_from(["pigeonhole-local"]).unwrap();
        assert_eq!(args.max_connections, 10_000);
        assert_eq!(args.body_timeout_secs, 30);
        assert_eq!(server::HEADER_TIMEOUT, Duration::from_secs(10));
        let args = Args::try_parse_from(["pigeonhole-local", "--max-connections", "2"]).unwrap();
        assert_eq!(args.max_connections, 2);
        assert!(Args::try_parse_from(["pigeonhole-local", "--max-connections", "0"]).is_err());
    }

    #[test]
    fn help_documents_the_limits_but_not_the_test_only_flag() {
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("--max-connections"), "{help}");
        assert!(
            help.contains("within 10 s") && help.contains("within 30 s"),
            "{help}"
        );
        assert!(!help.contains("body-timeout"), "{help}");
    }

    #[cfg(unix)]
    #[test]
    fn the_data_directory_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!(
            "pigeonhole-local-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let dir = root.join("a").join("data");
        create_data_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(mode, 0o700);
    }
}
