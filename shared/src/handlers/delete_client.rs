//! `DELETE /operators/clients/{client_id}`: revokes a client for good. Its
//! token stops working at once; its record, fingerprint entry, inbox and
//! outbox are removed, and its fingerprint registers a new client.

use super::auth::OperatorAuth;
use crate::domain::ClientId;
use crate::error::ApiError;
use crate::store::Deleted;
use crate::App;

fn no_such_client() -> ApiError {
    ApiError::no_such("no such client (unknown, or already deleted)")
}

pub async fn delete_client(
    app: &App,
    _operator: &OperatorAuth,
    client_id: &str,
) -> Result<(), ApiError> {
    let id = ClientId::parse(client_id).ok_or_else(no_such_client)?;
    match app.store.delete_client(id).await? {
        Deleted::Deleted => {
            tracing::info!(client_id = %id, "deleted client");
            Ok(())
        }
        Deleted::Unknown => Err(no_such_client()),
    }
}
