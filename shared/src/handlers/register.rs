//! `POST /clients/register`: creates a client, or returns the existing one
//! for a known fingerprint with exactly the same credentials.

use super::auth::AdminAuth;
use super::input::JsonBody;
use crate::crypto::Key;
use crate::domain::{ClientId, FINGERPRINT_CHARS, MAX_NAME_CHARS};
use crate::error::ApiError;
use crate::store::{ClientRecord, Counted};
use crate::App;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterInput {
    pub name: Option<String>,
    pub fingerprint: String,
}

impl RegisterInput {
    pub fn from_body(body: &JsonBody) -> Result<Self, ApiError> {
        Ok(RegisterInput {
            name: body.optional_printable_string("name", 0..=MAX_NAME_CHARS)?,
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

impl Credentials {
    /// What a client record's current generation gives its holder.
    pub fn of(app: &App, client: &ClientRecord) -> Result<Credentials, ApiError> {
        let keys = app.keys();
        let key = keys
            .unwrap_personal_key(client.id, &client.wrapped_key)
            .map_err(|_| {
                ApiError::internal(&format!(
                    "personal key of {} does not unwrap (wrong WRAPPING_KEY or MASTER_KEY?)",
                    client.id
                ))
            })?;
        Ok(Credentials {
            client_id: client.id.to_string(),
            personal_token: key.to_base64(),
            api_token: keys.api_token(client.id, client.generation)?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub credentials: Credentials,
    /// False when the fingerprint was known (HTTP 200 rather than 201).
    pub created: bool,
}

/// Who is registering, for the per-source limit.
#[derive(Debug, Default)]
pub struct Caller {
    /// The connection's peer (local server) or API Gateway's `sourceIp`.
    pub source: Option<IpAddr>,
    /// Fleet provisioning with the admin token is never limited.
    pub admin: Option<AdminAuth>,
}

/// Charges a registration to its source address, unless it is exempt.
async fn check_register_limit(app: &App, caller: &Caller) -> Result<(), ApiError> {
    let Some(limit) = app.register_rate_limit else {
        return Ok(());
    };
    if caller.admin.is_some() {
        return Ok(());
    }
    // Without a known source (a transport that gives none) all such
    // registrations share one counter: limited, rather than unlimited.
    let unmapped = caller.source.map(|ip| ip.to_canonical());
    if unmapped.is_some_and(|ip| {
        app.register_rate_limit_exempt
            .iter()
            .any(|n| n.contains(&ip))
    }) {
        return Ok(());
    }
    let key = match unmapped.map(counted_source) {
        Some(ip) => format!("register:{ip}"),
        None => "register:unknown".to_string(),
    };
    match app
        .store
        .count_request(&key, limit, app.clock.now())
        .await?
    {
        Counted::Allowed => Ok(()),
        Counted::Full { retry_after } => Err(ApiError::too_many(
            "too many registrations from this address; retry later",
            retry_after,
        )),
    }
}

/// The address a registration is counted under: an IPv6 source by its
/// /64, since one host commonly holds a whole /64.
fn counted_source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
        v4 => v4,
    }
}

pub async fn register(
    app: &App,
    input: RegisterInput,
    caller: Caller,
) -> Result<Registered, ApiError> {
    check_register_limit(app, &caller).await?;
    let keys = app.keys();
    let id = ClientId::new();
    let candidate = ClientRecord {
        id,
        name: input.name,
        wrapped_key: keys.wrap_personal_key(id, &Key::random())?,
        created_at: app.clock.now(),
        generation: 0,
        retired_keys: Vec::new(),
    };
    let fingerprint = keys.fingerprint_hash(&input.fingerprint)?;
    let registration = app.store.register_client(fingerprint, candidate).await?;
    let client = registration.client;
    if registration.created {
        tracing::info!(client_id = %client.id, "registered client");
    }
    Ok(Registered {
        credentials: Credentials::of(app, &client)?,
        created: registration.created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_counted_by_host() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(counted_source(mapped), v4);
        assert_eq!(counted_source(v4), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(counted_source(a), counted_source(b));
        assert_eq!(
            counted_source(a),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }
}
