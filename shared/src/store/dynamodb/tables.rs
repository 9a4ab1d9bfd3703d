//! The names of the tables the DynamoDB store uses.

use crate::config::ConfigError;

/// One table per kind of item, as `template.yaml` declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    /// Clients, keyed `client_id`: record, cursor, sequence heads, rate state.
    pub clients: String,
    /// The fingerprint lookup, keyed `fingerprint_hash`.
    pub fingerprints: String,
    /// Server-to-client messages, keyed `(client_id, seq)`.
    pub messages: String,
    /// Client-to-server messages, keyed `(client_id, seq)`.
    pub client_messages: String,
    /// Idempotency markers, keyed `dedup_id`, expiring by TTL.
    pub dedup: String,
    /// Tag entries (`tag#<tag>`, client id) and publish status records
    /// (`publish#<id>`, `header` or `page#<n>`), keyed `(pk, sk)`; the
    /// publish records expire by TTL.
    pub audiences: String,
}

impl TableNames {
    /// The environment variable that names each table.
    pub const ENV: [&'static str; 6] = [
        "CLIENTS_TABLE",
        "FINGERPRINTS_TABLE",
        "MESSAGES_TABLE",
        "CLIENT_MESSAGES_TABLE",
        "DEDUP_TABLE",
        "AUDIENCES_TABLE",
    ];

    /// Tables named `<prefix>clients`, `<prefix>fingerprints`, …
    pub fn with_prefix(prefix: &str) -> TableNames {
        TableNames {
            clients: format!("{prefix}clients"),
            fingerprints: format!("{prefix}fingerprints"),
            messages: format!("{prefix}messages"),
            client_messages: format!("{prefix}client-messages"),
            dedup: format!("{prefix}dedup"),
            audiences: format!("{prefix}audiences"),
        }
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<TableNames, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let missing: Vec<&str> = Self::ENV.into_iter().filter(|n| get(n).is_none()).collect();
        if !missing.is_empty() {
            return Err(ConfigError(format!("{} not set", missing.join(", "))));
        }
        let value = |name: &str| get(name).unwrap_or_default();
        Ok(TableNames {
            clients: value("CLIENTS_TABLE"),
            fingerprints: value("FINGERPRINTS_TABLE"),
            messages: value("MESSAGES_TABLE"),
            client_messages: value("CLIENT_MESSAGES_TABLE"),
            dedup: value("DEDUP_TABLE"),
            audiences: value("AUDIENCES_TABLE"),
        })
    }

    pub fn all(&self) -> [&str; 6] {
        [
            &self.clients,
            &self.fingerprints,
            &self.messages,
            &self.client_messages,
            &self.dedup,
            &self.audiences,
        ]
    }
}
