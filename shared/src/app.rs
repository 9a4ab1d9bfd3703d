//! Everything a request needs, built once per process (per Lambda cold
//! start, or at local server start) and shared by every request.

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError, Secret};
use crate::crypto::ServerKeys;
use crate::error::ApiError;
use crate::handlers::fanout::Fanout;
use crate::queue::{InProcessQueue, Inbound, Queue};
use crate::rate_limit::{PollRateLimit, WindowLimit};
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

pub struct App {
    pub store: Arc<dyn Store>,
    queue: Option<Arc<dyn Queue>>,
    /// Where send announces each stored message (AWS only; see
    /// [`App::with_inbound`]).
    inbound: Option<Arc<dyn Inbound>>,
    keys: Arc<ServerKeys>,
    pub clock: Arc<dyn Clock>,
    pub admin_token: Option<String>,
    pub operator_tokens: Vec<String>,
    pub poll_rate_limit: Option<PollRateLimit>,
    pub send_rate_limit: Option<PollRateLimit>,
    pub register_rate_limit: Option<WindowLimit>,
    pub register_rate_limit_exempt: Vec<ipnet::IpNet>,
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
        let keys = fanout_keys(config)?;
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
            inbound: None,
            keys: server_keys(config),
            clock,
            admin_token: config.admin_token.clone(),
            operator_tokens: config.operator_tokens.clone(),
            poll_rate_limit: PollRateLimit::per_minute(config.poll_rate_limit),
            send_rate_limit: PollRateLimit::per_minute(config.send_rate_limit),
            register_rate_limit: WindowLimit::per_minute(config.register_rate_limit),
            register_rate_limit_exempt: config.register_rate_limit_exempt.clone(),
            acked_retention: config.acked_retention,
            sent_retention: config.sent_retention,
        }
    }

    /// The keys this process holds. Using one it lacks is a 500 naming
    /// the missing secret in the log (a function declares the keys its
    /// route needs and refuses to start without them).
    pub fn keys(&self) -> &Arc<ServerKeys> {
        &self.keys
    }

    /// This app announces every message a client sends on `inbound`
    /// ([`crate::aws`] gives it one when `INBOUND_QUEUE_URL` is set: the
    /// send function, and the local server's `--backend aws`). Without
    /// one, sends notify no one, as on the embedded server.
    pub fn with_inbound(mut self, inbound: Arc<dyn Inbound>) -> App {
        self.inbound = Some(inbound);
        self
    }

    /// The inbound notifier, if this app has one.
    pub fn inbound(&self) -> Option<&Arc<dyn Inbound>> {
        self.inbound.as_ref()
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

/// The server keys a configuration holds.
pub fn server_keys(config: &Config) -> Arc<ServerKeys> {
    Arc::new(ServerKeys::from_materials(&config.keys))
}

/// The keys of a fan-out worker: it unwraps personal keys and opens
/// queued publishes.
pub fn fanout_keys(config: &Config) -> Result<Arc<ServerKeys>, ConfigError> {
    let keys = server_keys(config);
    for needed in [Secret::WrappingKey, Secret::AtRestKey] {
        if !keys.holds(needed) {
            return Err(ConfigError(format!(
                "{} not set (the fan-out needs it)",
                needed.env_name()
            )));
        }
    }
    Ok(keys)
}
