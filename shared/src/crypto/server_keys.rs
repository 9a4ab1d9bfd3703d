//! The server's keys, one per purpose.
//!
//! A copy of the database alone must reveal nothing usable, so every secret
//! at rest depends on a key that lives only in configuration:
//! - personal keys are stored wrapped (AES-GCM) under the wrapping key;
//! - API tokens are not stored at all: a token is an HMAC of the client id
//!   and its credential generation, under the token key;
//! - fingerprints are stored only as keyed hashes;
//! - publish payloads in the queue and client-to-server messages at rest are
//!   sealed under the at-rest key.
//!
//! Each purpose key is HMAC-SHA256(material, label), where the material is
//! the purpose's own secret or `MASTER_KEY` (see [`KeyMaterials`]): with
//! uniformly random material HMAC is a sound key-derivation function, and
//! separate labels keep a weakness in one use from spilling into another.
//! A process holds only the keys it was given; using one it lacks is a
//! [`MissingKey`] error, never a panic.

use super::{open, seal, secrets_equal, Key, OpenError, Sealed};
use crate::config::{KeyMaterials, Secret};
use crate::domain::ClientId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Every API token starts with this, so a leaked one is easy to recognise
/// (secret scanners, logs).
pub const API_TOKEN_PREFIX: &str = "pht_";

/// The length of a token's MAC in URL-safe base64.
const MAC_CHARS: usize = 43;

/// A key this process was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} is not configured for this function", .0.env_name())]
pub struct MissingKey(pub Secret);

#[derive(Clone, Default)]
pub struct ServerKeys {
    api_token: Option<[u8; 32]>,
    key_wrapping: Option<Key>,
    fingerprint: Option<[u8; 32]>,
    at_rest: Option<Key>,
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

fn label(purpose: Secret) -> &'static [u8] {
    match purpose {
        Secret::TokenKey => b"pigeonhole/v1/api-token",
        Secret::WrappingKey => b"pigeonhole/v1/key-wrapping",
        Secret::FingerprintKey => b"pigeonhole/v1/fingerprint",
        Secret::AtRestKey => b"pigeonhole/v1/at-rest",
        Secret::AdminToken | Secret::OperatorTokens => b"",
    }
}

impl ServerKeys {
    /// All four keys, derived from one master key.
    pub fn derive(master: &Key) -> ServerKeys {
        Self::from_materials(&KeyMaterials {
            master: Some(master.clone()),
            own: Vec::new(),
        })
    }

    /// The keys whose material this process holds.
    pub fn from_materials(materials: &KeyMaterials) -> ServerKeys {
        let derive = |purpose| {
            materials
                .material(purpose)
                .map(|m| hmac(m, &[label(purpose)]))
        };
        ServerKeys {
            api_token: derive(Secret::TokenKey),
            key_wrapping: derive(Secret::WrappingKey).map(Key::from_bytes),
            fingerprint: derive(Secret::FingerprintKey),
            at_rest: derive(Secret::AtRestKey).map(Key::from_bytes),
        }
    }

    /// Whether this process holds the key for `purpose`.
    pub fn holds(&self, purpose: Secret) -> bool {
        match purpose {
            Secret::TokenKey => self.api_token.is_some(),
            Secret::WrappingKey => self.key_wrapping.is_some(),
            Secret::FingerprintKey => self.fingerprint.is_some(),
            Secret::AtRestKey => self.at_rest.is_some(),
            Secret::AdminToken | Secret::OperatorTokens => false,
        }
    }

    fn token_key(&self) -> Result<&[u8; 32], MissingKey> {
        self.api_token.as_ref().ok_or(MissingKey(Secret::TokenKey))
    }

    fn wrapping_key(&self) -> Result<&Key, MissingKey> {
        self.key_wrapping
            .as_ref()
            .ok_or(MissingKey(Secret::WrappingKey))
    }

    fn at_rest_key(&self) -> Result<&Key, MissingKey> {
        self.at_rest.as_ref().ok_or(MissingKey(Secret::AtRestKey))
    }

    /// The bearer token of a client's credential generation. Deterministic,
    /// so re-registering returns the current token without it ever being
    /// stored; a new generation (rotation) makes a new token, and the store
    /// refuses tokens of any other generation. Generation 0 keeps the format
    /// of tokens issued before rotation existed.
    pub fn api_token(&self, client: ClientId, generation: u32) -> Result<String, MissingKey> {
        let key = self.token_key()?;
        let id = client.to_string();
        Ok(if generation == 0 {
            let mac = hmac(key, &[id.as_bytes()]);
            format!("{API_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(mac))
        } else {
            let mac = hmac(
                key,
                &[id.as_bytes(), b"/", generation.to_string().as_bytes()],
            );
            format!(
                "{API_TOKEN_PREFIX}{generation}_{}",
                URL_SAFE_NO_PAD.encode(mac)
            )
        })
    }

    /// The credential generation a presented token was made for, when it
    /// is a genuine token of this client. Pure computation: whether that
    /// generation is still the client's current one is for the store call
    /// the request makes anyway.
    pub fn verify_api_token(
        &self,
        client: ClientId,
        presented: &str,
    ) -> Result<Option<u32>, MissingKey> {
        let Some(rest) = presented.strip_prefix(API_TOKEN_PREFIX) else {
            return Ok(None);
        };
        let generation = if rest.len() == MAC_CHARS {
            0
        } else {
            match rest.split_once('_').map(|(g, _)| g.parse::<u32>()) {
                Some(Ok(g)) if g > 0 => g,
                _ => return Ok(None),
            }
        };
        let expected = self.api_token(client, generation)?;
        Ok(secrets_equal(expected.as_bytes(), presented.as_bytes()).then_some(generation))
    }

    pub fn fingerprint_hash(&self, fingerprint: &str) -> Result<[u8; 32], MissingKey> {
        let key = self
            .fingerprint
            .as_ref()
            .ok_or(MissingKey(Secret::FingerprintKey))?;
        Ok(hmac(key, &[fingerprint.as_bytes()]))
    }

    /// Wraps a client's personal key; the client id is bound in as AAD so a
    /// wrapped key copied onto another client's row will not unwrap.
    pub fn wrap_personal_key(&self, client: ClientId, key: &Key) -> Result<Vec<u8>, MissingKey> {
        Ok(seal(self.wrapping_key()?, key.as_bytes(), &wrap_aad(client)).to_bytes())
    }

    pub fn unwrap_personal_key(&self, client: ClientId, wrapped: &[u8]) -> Result<Key, OpenError> {
        let wrapping = self.wrapping_key().map_err(|_| OpenError)?;
        let sealed = Sealed::from_bytes(wrapped).ok_or(OpenError)?;
        let bytes = open(wrapping, &sealed, &wrap_aad(client))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(Key::from_bytes)
            .map_err(|_| OpenError)
    }

    /// Seals server-held plaintext; `context` names what it is and where it
    /// belongs, so one sealed blob cannot be substituted for another.
    pub fn seal_at_rest(&self, context: &str, plaintext: &[u8]) -> Result<Sealed, MissingKey> {
        Ok(seal(self.at_rest_key()?, plaintext, context.as_bytes()))
    }

    pub fn open_at_rest(&self, context: &str, sealed: &Sealed) -> Result<Vec<u8>, OpenError> {
        open(
            self.at_rest_key().map_err(|_| OpenError)?,
            sealed,
            context.as_bytes(),
        )
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
        let token = k.api_token(a, 0).unwrap();
        assert!(token.starts_with(API_TOKEN_PREFIX));
        assert_eq!(token.len(), API_TOKEN_PREFIX.len() + 43);
        assert_eq!(token, k.api_token(a, 0).unwrap());
        assert_eq!(k.verify_api_token(a, &token), Ok(Some(0)));
        assert_eq!(k.verify_api_token(b, &token), Ok(None));
        let other_master = ServerKeys::derive(&Key::from_bytes([8u8; 32]));
        assert_eq!(other_master.verify_api_token(a, &token), Ok(None));
    }

    #[test]
    fn each_generation_has_its_own_token() {
        let a = ClientId::new();
        let k = keys();
        let first = k.api_token(a, 0).unwrap();
        let third = k.api_token(a, 3).unwrap();
        assert!(third.starts_with("pht_3_"));
        assert_ne!(first, third);
        assert_eq!(k.verify_api_token(a, &third), Ok(Some(3)));
        // A token cannot be moved to another generation by editing it.
        let forged = third.replacen("pht_3_", "pht_4_", 1);
        assert_eq!(k.verify_api_token(a, &forged), Ok(None));
        for junk in ["", "pht_", "pht_0_abc", "pht_x_abc", "bearer"] {
            assert_eq!(k.verify_api_token(a, junk), Ok(None), "{junk:?}");
        }
    }

    #[test]
    fn a_process_holds_only_the_keys_it_was_given() {
        let own = KeyMaterials {
            master: None,
            own: vec![(Secret::TokenKey, vec![5; 40])],
        };
        let k = ServerKeys::from_materials(&own);
        assert!(k.holds(Secret::TokenKey) && !k.holds(Secret::WrappingKey));
        assert!(k.api_token(ClientId::new(), 0).is_ok());
        assert_eq!(
            k.fingerprint_hash("fp").unwrap_err(),
            MissingKey(Secret::FingerprintKey)
        );
        assert!(k.seal_at_rest("c", b"x").is_err());
        assert!(k.unwrap_personal_key(ClientId::new(), &[0; 60]).is_err());
        // A key given on its own equals the one derived from a master with
        // the same bytes, so splitting a master into its parts is possible.
        let master = Key::from_bytes([5; 32]);
        let split = ServerKeys::from_materials(&KeyMaterials {
            master: None,
            own: vec![(Secret::TokenKey, vec![5; 32])],
        });
        let id = ClientId::new();
        assert_eq!(
            split.api_token(id, 0).unwrap(),
            ServerKeys::derive(&master).api_token(id, 0).unwrap()
        );
    }

    #[test]
    fn wrapped_keys_unwrap_only_for_their_client() {
        let (a, b) = (ClientId::new(), ClientId::new());
        let personal = Key::random();
        let wrapped = keys().wrap_personal_key(a, &personal).unwrap();
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
            keys().fingerprint_hash("fp-1").unwrap(),
            keys().fingerprint_hash("fp-1").unwrap()
        );
        assert_ne!(
            keys().fingerprint_hash("fp-1").unwrap(),
            keys().fingerprint_hash("fp-2").unwrap()
        );
        assert_ne!(
            keys().fingerprint_hash("fp-1").unwrap(),
            other.fingerprint_hash("fp-1").unwrap()
        );
    }

    #[test]
    fn at_rest_context_is_bound() {
        let sealed = keys().seal_at_rest("ctx-a", b"secret").unwrap();
        assert_eq!(keys().open_at_rest("ctx-a", &sealed).unwrap(), b"secret");
        assert!(keys().open_at_rest("ctx-b", &sealed).is_err());
    }
}
