//! Retention: acknowledged messages are removed once they are older than
//! the configured retention. Unacknowledged messages are never removed.

use crate::store::StoreResult;
use crate::App;

/// Removes acknowledged messages older than the retention; returns how many.
pub async fn purge_acknowledged(app: &App) -> StoreResult<u64> {
    let retention_ms = i64::try_from(app.acked_retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = app.clock.now().plus_millis(-retention_ms);
    let removed = app.store.purge_acknowledged(cutoff).await?;
    if removed > 0 {
        tracing::info!(removed, "purged acknowledged messages");
    }
    Ok(removed)
}
