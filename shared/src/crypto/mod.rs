//! AES-256-GCM as Pigeonhole uses it, and the server's own keys.
//!
//! The wire format (documented in `docs/encryption.md`) keeps ciphertext,
//! nonce and tag as separate base64 fields; [`Sealed`] mirrors that.

mod aad;
mod server_keys;

pub use aad::{canonical_aad, AadError};
pub use server_keys::{MissingKey, ServerKeys, API_TOKEN_PREFIX};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use subtle::ConstantTimeEq;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// A 256-bit AES key. Its `Debug` form never shows the bytes.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    pub fn random() -> Key {
        Key(random_bytes())
    }

    /// Accepts standard base64 (with or without padding) of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Option<Key> {
        let bytes = decode_base64(text.trim())?;
        <[u8; KEY_LEN]>::try_from(bytes.as_slice()).ok().map(Key)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// One AES-GCM encryption: ciphertext without the tag, the nonce, the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
    pub tag: [u8; TAG_LEN],
}

/// Authentication failed: wrong key, or something was altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AES-GCM authentication failed")]
pub struct OpenError;

impl Sealed {
    /// The compact binary form used where the server stores its own
    /// ciphertexts: nonce ‖ ciphertext ‖ tag.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(NONCE_LEN + self.ciphertext.len() + TAG_LEN);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out.extend_from_slice(&self.tag);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Sealed> {
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        Some(Sealed {
            ciphertext: ciphertext.to_vec(),
            nonce: nonce.try_into().ok()?,
            tag: tag.try_into().ok()?,
        })
    }
}

/// Encrypts under a fresh random nonce.
pub fn seal(key: &Key, plaintext: &[u8], aad: &[u8]) -> Sealed {
    seal_with_nonce(key, random_bytes(), plaintext, aad)
}

/// Encrypts under the given nonce. Only for test vectors: reusing a nonce
/// under one key destroys GCM's security.
pub fn seal_with_nonce(key: &Key, nonce: [u8; NONCE_LEN], plaintext: &[u8], aad: &[u8]) -> Sealed {
    let mut buffer = plaintext.to_vec();
    let tag = key
        .cipher()
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut buffer)
        .expect("AES-GCM encryption only fails for inputs over 64 GiB");
    Sealed {
        ciphertext: buffer,
        nonce,
        tag: tag.into(),
    }
}

pub fn open(key: &Key, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, OpenError> {
    let mut buffer = sealed.ciphertext.clone();
    key.cipher()
        .decrypt_in_place_detached(
            Nonce::from_slice(&sealed.nonce),
            aad,
            &mut buffer,
            Tag::from_slice(&sealed.tag),
        )
        .map_err(|_| OpenError)?;
    Ok(buffer)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Standard base64, padding optional (clients differ in whether they pad).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok().or_else(|| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .ok()
    })
}

pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Constant-time equality for secrets of any length. Both sides are hashed
/// first so that not even the length of the expected secret leaks.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.ct_eq(&hb).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_tampering() {
        let key = Key::random();
        let sealed = seal(&key, b"hello", b"aad");
        assert_eq!(open(&key, &sealed, b"aad").unwrap(), b"hello");

        let mut bad_tag = sealed.clone();
        bad_tag.tag[0] ^= 1;
        assert_eq!(open(&key, &bad_tag, b"aad"), Err(OpenError));

        let mut bad_ct = sealed.clone();
        bad_ct.ciphertext[0] ^= 1;
        assert_eq!(open(&key, &bad_ct, b"aad"), Err(OpenError));

        assert_eq!(open(&key, &sealed, b"other aad"), Err(OpenError));
        assert_eq!(open(&Key::random(), &sealed, b"aad"), Err(OpenError));
    }

    #[test]
    fn fresh_nonce_every_time() {
        let key = Key::random();
        assert_ne!(seal(&key, b"x", b"").nonce, seal(&key, b"x", b"").nonce);
    }

    #[test]
    fn binary_form_round_trips() {
        let sealed = seal(&Key::random(), b"payload", b"");
        assert_eq!(Sealed::from_bytes(&sealed.to_bytes()), Some(sealed));
        assert_eq!(Sealed::from_bytes(&[0u8; 27]), None);
    }

    #[test]
    fn key_parsing_demands_32_bytes() {
        assert!(Key::from_base64(&STANDARD.encode([7u8; 32])).is_some());
        assert!(Key::from_base64(&STANDARD.encode([7u8; 31])).is_none());
        assert!(Key::from_base64("not base64!").is_none());
        assert_eq!(format!("{:?}", Key::random()), "Key(<redacted>)");
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal(b"token", b"token"));
        assert!(!secrets_equal(b"token", b"tokem"));
        assert!(!secrets_equal(b"token", b"token2"));
    }
}
