//! `POST /clients/rotate`: a client trades its credentials for new ones (a
//! new token and a new personal key, optionally a new fingerprint). From
//! the response on, the old token answers 401. Messages sealed under the
//! old key stay readable: the store keeps the retired key while they may
//! need it, and polls re-seal them under the new one (docs/encryption.md).

use super::auth::ClientAuth;
use super::input::JsonBody;
use super::register::Credentials;
use crate::crypto::Key;
use crate::domain::FINGERPRINT_CHARS;
use crate::error::ApiError;
use crate::store::{Rotated, Rotation};
use crate::App;

/// How long a retired key is kept even when no unacknowledged message
/// needs it: a fan-out that loaded the client just before the rotation may
/// still seal with it. A fan-out invocation lasts at most minutes.
pub const RETIRED_KEY_GRACE_MS: i64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RotateInput {
    /// A new fingerprint: the old one stops finding this client.
    pub fingerprint: Option<String>,
}

impl RotateInput {
    pub fn from_body(body: &JsonBody) -> Result<Self, ApiError> {
        Ok(RotateInput {
            fingerprint: body.optional_string("fingerprint", FINGERPRINT_CHARS)?,
        })
    }
}

pub async fn rotate(
    app: &App,
    client: &ClientAuth,
    input: RotateInput,
) -> Result<Credentials, ApiError> {
    let keys = app.keys();
    let id = client.id();
    let now = app.clock.now();
    let rotation = Rotation {
        id,
        from_generation: client.generation(),
        wrapped_key: keys.wrap_personal_key(id, &Key::random())?,
        fingerprint: input
            .fingerprint
            .as_deref()
            .map(|f| keys.fingerprint_hash(f))
            .transpose()?,
        now,
        keep_retired_since: now.plus_millis(-RETIRED_KEY_GRACE_MS),
    };
    match app.store.rotate_client(rotation).await? {
        Rotated::Rotated(record) => {
            tracing::info!(client_id = %id, generation = record.generation, "rotated credentials");
            Credentials::of(app, &record)
        }
        // Rotated or deleted since the token was checked.
        Rotated::Stale => Err(ApiError::unauthorized()),
        Rotated::FingerprintTaken => Err(ApiError::validation(
            "fingerprint is already registered to another client",
        )),
    }
}
