//! The default registration fingerprint: stable for one user and profile on
//! one machine, and hashed so the machine id never leaves it.

use sha2::{Digest, Sha256};

/// SHA-256 (hex) of the machine id, user and profile. Versioned so a future
/// scheme cannot collide with this one.
pub fn derive(machine: &str, user: &str, profile: &str) -> String {
    let mut hasher = Sha256::new();
    for part in ["pigeonhole-cli fingerprint v1", machine, user, profile] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
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

/// The fingerprint `register` uses when `--fingerprint` is not given.
pub fn default_for(profile: &str) -> Option<String> {
    machine_identity().map(|machine| derive(&machine, &user_name(), profile))
}

/// A random fingerprint, for simulated clients.
pub fn random() -> String {
    format!("sim-{}", hex(&pigeonhole::crypto::random_bytes::<16>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeonhole::domain::FINGERPRINT_CHARS;

    #[test]
    fn stable_distinct_and_not_revealing() {
        let a = derive("machine-id:abc123", "alice", "default");
        assert_eq!(a, derive("machine-id:abc123", "alice", "default"));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!a.contains("abc123"));
        assert_ne!(a, derive("machine-id:abc123", "bob", "default"));
        assert_ne!(a, derive("machine-id:abc123", "alice", "work"));
        assert_ne!(a, derive("machine-id:abc124", "alice", "default"));
        // Length-prefixing keeps the parts apart.
        assert_ne!(derive("ab", "c", "d"), derive("a", "bc", "d"));
        assert!(FINGERPRINT_CHARS.contains(&a.len()));
    }

    #[test]
    fn random_ones_differ_and_are_valid() {
        let (a, b) = (random(), random());
        assert_ne!(a, b);
        assert!(FINGERPRINT_CHARS.contains(&a.chars().count()));
    }
}
