//! The default registration fingerprint.
//!
//! Whoever knows a fingerprint can register with it and get that client's
//! credentials back, so the default must not be computable from public facts.
//! It hashes the per-user secret from the config file (32 random bytes, mode
//! 0600, see [`crate::config::fingerprint_secret`]) with the machine id, user
//! name and profile: stable for one user and profile on one machine while the
//! config file lives, different on every machine, unknowable to anyone who
//! cannot read the config file, and never revealing the machine id.

use sha2::{Digest, Sha256};

/// SHA-256 (hex) of the secret, machine id, user and profile, each
/// length-prefixed. Versioned so no other scheme (v1 hashed no secret) can
/// produce the same value.
pub fn derive(secret: &[u8], machine: &str, user: &str, profile: &str) -> String {
    let mut hasher = Sha256::new();
    let parts: [&[u8]; 5] = [
        b"pigeonhole-cli fingerprint v2",
        secret,
        machine.as_bytes(),
        user.as_bytes(),
        profile.as_bytes(),
    ];
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_trimmed(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// `/etc/machine-id` (or the D-Bus copy), else the host name.
fn machine_identity() -> Option<String> {
    read_trimmed("/etc/machine-id")
        .or_else(|| read_trimmed("/var/lib/dbus/machine-id"))
        .map(|id| format!("machine-id:{id}"))
        .or_else(|| {
            read_trimmed("/proc/sys/kernel/hostname")
                .or_else(|| read_trimmed("/etc/hostname"))
                .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
                .map(|h| format!("hostname:{h}"))
        })
}

fn user_name() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .or_else(|| std::env::var("HOME").ok())
        .unwrap_or_default()
}

/// The fingerprint `register` uses when `--fingerprint` is not given, from
/// the config file's `fingerprint_secret`; `None` without a machine identity.
pub fn default_for(profile: &str, secret: &[u8]) -> Option<String> {
    machine_identity().map(|machine| derive(secret, &machine, &user_name(), profile))
}

/// True when this machine has an identity to derive a default from.
pub fn can_derive() -> bool {
    machine_identity().is_some()
}

/// A new secret fingerprint (`rotate --new-fingerprint`): 32 random bytes,
/// hex, kept in the profile from then on.
pub fn random_secret() -> String {
    hex(&pigeonhole::crypto::random_bytes::<32>())
}

/// A random fingerprint, for simulated clients.
pub fn random() -> String {
    format!("sim-{}", hex(&pigeonhole::crypto::random_bytes::<16>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use pigeonhole::domain::FINGERPRINT_CHARS;

    const SECRET: [u8; 32] = [7; 32];

    #[test]
    fn stable_distinct_and_not_revealing() {
        let a = derive(&SECRET, "machine-id:abc123", "alice", "default");
        assert_eq!(a, derive(&SECRET, "machine-id:abc123", "alice", "default"));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!a.contains("abc123"));
        assert_ne!(a, derive(&SECRET, "machine-id:abc123", "bob", "default"));
        assert_ne!(a, derive(&SECRET, "machine-id:abc123", "alice", "work"));
        assert_ne!(a, derive(&SECRET, "machine-id:abc124", "alice", "default"));
        // Length-prefixing keeps the parts apart.
        assert_ne!(
            derive(&SECRET, "ab", "c", "d"),
            derive(&SECRET, "a", "bc", "d")
        );
        assert_ne!(derive(b"ab", "c", "d", "e"), derive(b"a", "bc", "d", "e"));
        assert!(FINGERPRINT_CHARS.contains(&a.len()));
    }

    #[test]
    fn a_different_secret_gives_a_different_fingerprint() {
        let mut other = SECRET;
        other[31] ^= 1;
        let machine = "machine-id:abc123";
        assert_ne!(
            derive(&SECRET, machine, "alice", "default"),
            derive(&other, machine, "alice", "default")
        );
        // Someone who knows the machine id, user and profile but not the
        // secret gets nowhere: not with no secret, nor with the v1 scheme.
        let known: [&[u8]; 4] = [
            b"pigeonhole-cli fingerprint v1",
            machine.as_bytes(),
            b"alice",
            b"default",
        ];
        let mut v1 = Sha256::new();
        for part in known {
            v1.update((part.len() as u64).to_be_bytes());
            v1.update(part);
        }
        let v1 = hex(&v1.finalize());
        let ours = derive(&SECRET, machine, "alice", "default");
        assert_ne!(ours, v1);
        assert_ne!(ours, derive(&[], machine, "alice", "default"));
    }

    #[test]
    fn the_default_is_stable_for_one_config_and_differs_between_configs() {
        if !can_derive() {
            return; // no machine id nor host name here: nothing to derive from
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let first = default_for("default", &config::fingerprint_secret(&path).unwrap()).unwrap();
        // Later runs (say, registering again) read the same secret back.
        let again = default_for("default", &config::fingerprint_secret(&path).unwrap()).unwrap();
        assert_eq!(first, again);
        assert_ne!(
            first,
            default_for("work", &config::fingerprint_secret(&path).unwrap()).unwrap()
        );

        // Another user on this machine has another config file, so another
        // secret and another fingerprint, even with the same user name.
        let other = dir.path().join("other.json");
        let theirs = default_for("default", &config::fingerprint_secret(&other).unwrap()).unwrap();
        assert_ne!(first, theirs);

        // The raw machine id does not show through (a short host name could
        // appear in any hex string by chance, so only long ids are checked).
        let machine = machine_identity().unwrap();
        let raw = machine.split_once(':').unwrap().1.to_ascii_lowercase();
        if raw.len() >= 16 {
            assert!(!first.contains(&raw), "{first} contains {raw}");
        }
        let id = "0123456789abcdef0123456789abcdef";
        let fp = derive(&SECRET, &format!("machine-id:{id}"), "alice", "default");
        assert!(!fp.contains(id) && !fp.contains(&id[..16]), "{fp}");
        assert!(FINGERPRINT_CHARS.contains(&first.len()));
    }

    #[test]
    fn random_ones_differ_and_are_valid() {
        let (a, b) = (random(), random());
        assert_ne!(a, b);
        assert!(FINGERPRINT_CHARS.contains(&a.chars().count()));
        let (a, b) = (random_secret(), random_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
