//! `POST /clients/register`: creates a client, or returns the existing one
//! for a known fingerprint with exactly the same credentials.

use super::input::JsonBody;
use crate::crypto::Key;
use crate::domain::{ClientId, FINGERPRINT_CHARS, MAX_NAME_CHARS};
use crate::error::ApiError;
use crate::store::ClientRecord;
use crate::App;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterInput {
    pub name: Option<String>,
    pub fingerprint: String,
}

impl RegisterInput {
    pub fn from_body(body: &JsonBody) -> Result<Self, ApiError> {
        Ok(RegisterInput {
            name: body.optional_string("name", 0..=MAX_NAME_CHARS)?,
            fingerprint: body.string("fingerprint", FINGERPRINT_CHARS)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Credentials {
    pub client_id: String,
    /// base64 of the client's 32-byte AES key.
    pub personal_token: String,
    pub api_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub credentials: Credentials,
    /// False when the fingerprint was known (HTTP 200 rather than 201).
    pub created: bool,
}

pub async fn register(app: &App, input: RegisterInput) -> Result<Registered, ApiError> {
    let keys = app.keys()?;
    let id = ClientId::new();
    let candidate = ClientRecord {
        id,
        name: input.name,
        wrapped_key: keys.wrap_personal_key(id, &Key::random()),
        created_at: app.clock.now(),
    };
    let fingerprint = keys.fingerprint_hash(&input.fingerprint);
    let registration = app.store.register_client(fingerprint, candidate).await?;
    let client = registration.client;
    let key = keys
        .unwrap_personal_key(client.id, &client.wrapped_key)
        .map_err(|_| {
            ApiError::internal(&format!(
                "personal key of {} does not unwrap (wrong MASTER_KEY?)",
                client.id
            ))
        })?;
    if registration.created {
        tracing::info!(client_id = %client.id, "registered client");
    }
    Ok(Registered {
        credentials: Credentials {
            client_id: client.id.to_string(),
            personal_token: key.to_base64(),
            api_token: keys.api_token(client.id),
        },
        created: registration.created,
    })
}
