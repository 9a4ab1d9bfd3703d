//! Retention: acknowledged inbox messages are removed once they are older
//! than `ACKED_RETENTION_SECS`, messages clients sent once they are older
//! than `SENT_RETENTION_SECS`, and publish idempotency keys after their
//! 24-hour window. Unacknowledged inbox messages are never removed, except
//! that an expired one (publish `ttl_secs`) keeps only its position.
//! Publish status records are forgotten after [`PUBLISH_STATUS_DAYS`].

use crate::clock::Timestamp;
use crate::domain::PUBLISH_STATUS_DAYS;
use crate::handlers::publish::IDEMPOTENCY_WINDOW;
use crate::store::{Cutoffs, Purged, StoreResult};
use crate::App;
use std::time::Duration;

fn before(now: Timestamp, age: Duration) -> Timestamp {
    now.plus_millis(-i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// Runs one cleanup pass. Within [`crate::retry::within`] it stops at the
/// deadline and the next pass resumes where it stopped.
pub async fn purge_expired(app: &App) -> StoreResult<Purged> {
    let now = app.clock.now();
    let cutoffs = Cutoffs {
        acked_before: before(now, app.acked_retention),
        sent_before: before(now, app.sent_retention),
        keys_before: before(now, IDEMPOTENCY_WINDOW),
        now,
        publishes_before: now.plus_millis(-PUBLISH_STATUS_DAYS * 86_400_000),
    };
    let purged = app.store.purge(cutoffs).await?;
    if purged.inbox + purged.outbox + purged.expired > 0 || !purged.finished {
        tracing::info!(
            inbox = purged.inbox,
            outbox = purged.outbox,
            expired = purged.expired,
            finished = purged.finished,
            "purged expired messages"
        );
    }
    Ok(purged)
}
