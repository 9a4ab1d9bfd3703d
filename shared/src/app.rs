//! Everything a request needs, built once per process (per Lambda cold
//! start, or at local server start) and shared by every request.

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::crypto::ServerKeys;
use crate::error::ApiError;
use crate::handlers::fanout::Fanout;
use crate::queue::{InProcessQueue, Queue};
use crate::rate_limit::PollRateLimit;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

pub struct App {
    pub store: Arc<dyn Store>,
    queue: Option<Arc<dyn Queue>>,
    keys: Option<Arc<ServerKeys>>,
    pub clock: Arc<dyn Clock>,
    pub admin_token: Option<String>,
    pub operator_tokens: Vec<String>,
    pub poll_rate_limit: Option<PollRateLimit>,
    pub acked_retention: Duration,
    pub sent_retention: Duration,
}

impl App {
    /// An app whose fan-out runs in-process, inside the publish request.
    pub fn in_process(config: &Config, store: Arc<dyn Store>) -> Result<App, ConfigError> {
        Self::in_process_with_clock(config, store, Arc::new(SystemClock))
    }

    pub fn in_process_with_clock(
        config: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<App, ConfigError> {
        let keys = server_keys(config)
            .ok_or_else(|| ConfigError("MASTER_KEY not set (the fan-out needs it)".into()))?;
        let fanout = Fanout::new(Arc::clone(&store), Arc::clone(&keys), Arc::clone(&clock));
        let queue = Arc::new(InProcessQueue::new(fanout));
        Ok(Self::new(config, store, Some(queue), clock))
    }

    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        queue: Option<Arc<dyn Queue>>,
        clock: Arc<dyn Clock>,
    ) -> App {
        App {
            store,
            queue,
            keys: server_keys(config),
            clock,
            admin_token: config.admin_token.clone(),
            operator_tokens: config.operator_tokens.clone(),
            poll_rate_limit: PollRateLimit::per_minute(config.poll_rate_limit),
            acked_retention: config.acked_retention,
            sent_retention: config.sent_retention,
        }
    }

    /// The keys derived from `MASTER_KEY`. A function deployed without it
    /// (list-clients needs none) answers 500 on an endpoint that does.
    pub fn keys(&self) -> Result<&Arc<ServerKeys>, ApiError> {
        self.keys
            .as_ref()
            .ok_or_else(|| ApiError::internal(&"MASTER_KEY is not configured for this function"))
    }
}

impl App {
    /// The fan-out queue. Only the functions that publish are given one.
    pub fn queue(&self) -> Result<&Arc<dyn Queue>, ApiError> {
        self.queue
            .as_ref()
            .ok_or_else(|| ApiError::internal(&"no fan-out queue is configured for this function"))
    }
}

/// The server keys for a configuration, when it has a master key.
pub fn server_keys(config: &Config) -> Option<Arc<ServerKeys>> {
    config
        .master_key
        .as_ref()
        .map(|k| Arc::new(ServerKeys::derive(k)))
}
