//! Who is calling: clients by bearer token, admins and operators by their
//! configured tokens. Every failure is the same `unauthorized`.

use crate::crypto::secrets_equal;
use crate::domain::ClientId;
use crate::error::ApiError;
use crate::App;

/// The raw credentials a client request carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The `X-Client-Id` header.
    pub client_id: Option<String>,
    /// The token from `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
}

/// Proof that a request came from this client. Only [`authenticate_client`]
/// makes one, so a handler that takes it cannot be called unauthenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAuth {
    id: ClientId,
    generation: u32,
}

impl ClientAuth {
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The credential generation the token was made for; the store call
    /// that follows checks it is still the client's current one.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// Proof that the caller holds the admin token.
#[derive(Debug)]
pub struct AdminAuth(());

/// Proof that the caller holds an operator token.
#[derive(Debug)]
pub struct OperatorAuth(());

/// Checks the token against the client id. This is pure computation (tokens
/// are derived, not stored), so a request with a wrong token never reaches
/// the store. Whether the client still exists, and the token's generation
/// is still its current one (not rotated away, not deleted), is checked by
/// the store call that follows.
pub fn authenticate_client(
    app: &App,
    credentials: &ClientCredentials,
) -> Result<ClientAuth, ApiError> {
    let id = credentials
        .client_id
        .as_deref()
        .and_then(ClientId::parse)
        .ok_or_else(ApiError::unauthorized)?;
    let token = credentials
        .bearer
        .as_deref()
        .ok_or_else(ApiError::unauthorized)?;
    match app.keys().verify_api_token(id, token)? {
        Some(generation) => Ok(ClientAuth { id, generation }),
        None => Err(ApiError::unauthorized()),
    }
}

pub fn authorize_admin(app: &App, presented: Option<&str>) -> Result<AdminAuth, ApiError> {
    match presented {
        Some(token)
            if app
                .admin_token
                .as_deref()
                .is_some_and(|admin| secrets_equal(token.as_bytes(), admin.as_bytes())) =>
        {
            Ok(AdminAuth(()))
        }
        _ => Err(ApiError::unauthorized()),
    }
}

pub fn authorize_operator(app: &App, presented: Option<&str>) -> Result<OperatorAuth, ApiError> {
    let Some(token) = presented else {
        return Err(ApiError::unauthorized());
    };
    // Compare against every token, without stopping early, so timing does
    // not tell which position matched.
    let matched = app.operator_tokens.iter().fold(false, |found, t| {
        secrets_equal(token.as_bytes(), t.as_bytes()) | found
    });
    if matched {
        Ok(OperatorAuth(()))
    } else {
        Err(ApiError::unauthorized())
    }
}
