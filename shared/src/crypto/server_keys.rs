//! Keys the server derives from its one master key.
//!
//! A copy of the database alone must reveal nothing usable, so every secret
//! at rest depends on `MASTER_KEY`, which lives only in configuration:
//! - personal keys are stored wrapped (AES-GCM) under a wrapping key;
//! - API tokens are not stored at all: a token is an HMAC of the client id;
//! - fingerprints are stored only as keyed hashes;
//! - publish payloads in the queue and client-to-server messages at rest are
//!   sealed under an at-rest key.
//!
//! Each purpose gets its own key, derived as HMAC-SHA256(master, label): with
//! a uniformly random master key HMAC is a sound key-derivation function, and
//! separate labels keep a weakness in one use from spilling into another.

use super::{open, seal, secrets_equal, Key, OpenError, Sealed};
use crate::domain::ClientId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Every API token starts with this, so a leaked one is easy to recognise
/// (secret scanners, logs).
pub const API_TOKEN_PREFIX: &str = "pht_";

#[derive(Clone)]
pub struct ServerKeys {
    api_token: [u8; 32],
    key_wrapping: Key,
    fingerprint: [u8; 32],
    at_rest: Key,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKeys(<redacted>)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl ServerKeys {
    pub fn derive(master: &Key) -> ServerKeys {
        let m = master.as_bytes();
        ServerKeys {
            api_token: hmac(m, &[b"pigeonhole/v1/api-token"]),
            key_wrapping: Key::from_bytes(hmac(m, &[b"pigeonhole/v1/key-wrapping"])),
            fingerprint: hmac(m, &[b"pigeonhole/v1/fingerprint"]),
            at_rest: Key::from_bytes(hmac(m, &[b"pigeonhole/v1/at-rest"])),
        }
    }

    /// The bearer token of a client. Deterministic, so re-registering returns
    /// the same token without the token ever being stored.
    pub fn api_token(&self, client: ClientId) -> String {
        let mac = hmac(&self.api_token, &[client.to_string().as_bytes()]);
        format!("{API_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(mac))
    }

    pub fn verify_api_token(&self, client: ClientId, presented: &str) -> bool {
        secrets_equal(self.api_token(client).as_bytes(), presented.as_bytes())
    }

    pub fn fingerprint_hash(&self, fingerprint: &str) -> [u8; 32] {
        hmac(&self.fingerprint, &[fingerprint.as_bytes()])
    }

    /// Wraps a client's personal key; the client id is bound in as AAD so a
    /// wrapped key copied onto another client's row will not unwrap.
    pub fn wrap_personal_key(&self, client: ClientId, key: &Key) -> Vec<u8> {
        seal(&self.key_wrapping, key.as_bytes(), &wrap_aad(client)).to_bytes()
    }

    pub fn unwrap_personal_key(&self, client: ClientId, wrapped: &[u8]) -> Result<Key, OpenError> {
        let sealed = Sealed::from_bytes(wrapped).ok_or(OpenError)?;
        let bytes = open(&self.key_wrapping, &sealed, &wrap_aad(client))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(Key::from_bytes)
            .map_err(|_| OpenError)
    }

    /// Seals server-held plaintext; `context` names what it is and where it
    /// belongs, so one sealed blob cannot be substituted for another.
    pub fn seal_at_rest(&self, context: &str, plaintext: &[u8]) -> Sealed {
        seal(&self.at_rest, plaintext, context.as_bytes())
    }

    pub fn open_at_rest(&self, context: &str, sealed: &Sealed) -> Result<Vec<u8>, OpenError> {
        open(&self.at_rest, sealed, context.as_bytes())
    }
}

fn wrap_aad(client: ClientId) -> Vec<u8> {
    format!("pigeonhole/v1/personal-key:{client}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ServerKeys {
        ServerKeys::derive(&Key::from_bytes([9u8; 32]))
    }

    #[test]
    fn api_tokens_are_stable_per_client_and_verify() {
        let (a, b) = (ClientId::new(), ClientId::new());
        let k = keys();
        let token = k.api_token(a);
        assert!(token.starts_with(API_TOKEN_PREFIX));
        assert_eq!(token.len(), API_TOKEN_PREFIX.len() + 43);
        assert_eq!(token, k.api_token(a));
        assert!(k.verify_api_token(a, &token));
        assert!(!k.verify_api_token(b, &token));
        let other_master = ServerKeys::derive(&Key::from_bytes([8u8; 32]));
        assert!(!other_master.verify_api_token(a, &token));
    }

    #[test]
    fn wrapped_keys_unwrap_only_for_their_client() {
        let (a, b) = (ClientId::new(), ClientId::new());
        let personal = Key::random();
        let wrapped = keys().wrap_personal_key(a, &personal);
        assert!(!wrapped
            .windows(32)
            .any(|w| w == personal.as_bytes().as_slice()));
        let unwrapped = keys().unwrap_personal_key(a, &wrapped).unwrap();
        assert_eq!(unwrapped.as_bytes(), personal.as_bytes());
        assert!(keys().unwrap_personal_key(b, &wrapped).is_err());
    }

    #[test]
    fn fingerprint_hash_is_keyed() {
        let other = ServerKeys::derive(&Key::from_bytes([1u8; 32]));
        assert_eq!(
            keys().fingerprint_hash("fp-1"),
            keys().fingerprint_hash("fp-1")
        );
        assert_ne!(
            keys().fingerprint_hash("fp-1"),
            keys().fingerprint_hash("fp-2")
        );
        assert_ne!(
            keys().fingerprint_hash("fp-1"),
            other.fingerprint_hash("fp-1")
        );
    }

    #[test]
    fn at_rest_context_is_bound() {
        let sealed = keys().seal_at_rest("ctx-a", b"secret");
        assert_eq!(keys().open_at_rest("ctx-a", &sealed).unwrap(), b"secret");
        assert!(keys().open_at_rest("ctx-b", &sealed).is_err());
    }
}
