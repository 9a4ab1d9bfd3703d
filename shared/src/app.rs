//! Everything a request needs, built once per process (per Lambda cold
//! start, or at local server start) and shared by every request.

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::crypto::ServerKeys;
use crate::handlers::fanout::Fanout;
use crate::queue::{InProcessQueue, Queue};
use crate::rate_limit::PollRateLimit;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

pub struct App {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub keys: Arc<ServerKeys>,
    pub clock: Arc<dyn Clock>,
    pub admin_token: String,
    pub operator_tokens: Vec<String>,
    pub poll_rate_limit: Option<PollRateLimit>,
    pub acked_retention: Duration,
}

impl App {
    /// An app whose fan-out runs in-process, inside the publish request.
    pub fn in_process(config: &Config, store: Arc<dyn Store>) -> App {
        Self::in_process_with_clock(config, store, Arc::new(SystemClock))
    }

    pub fn in_process_with_clock(
        config: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> App {
        let keys = Arc::new(ServerKeys::derive(&config.master_key));
        let fanout = Fanout::new(Arc::clone(&store), Arc::clone(&keys), Arc::clone(&clock));
        let queue = Arc::new(InProcessQueue::new(fanout));
        Self::new(config, store, queue, keys, clock)
    }

    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        keys: Arc<ServerKeys>,
        clock: Arc<dyn Clock>,
    ) -> App {
        App {
            store,
            queue,
            keys,
            clock,
            admin_token: config.admin_token.clone(),
            operator_tokens: config.operator_tokens.clone(),
            poll_rate_limit: PollRateLimit::per_minute(config.poll_rate_limit),
            acked_retention: config.acked_retention,
        }
    }
}
