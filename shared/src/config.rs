//! Configuration every deployment reads the same way.
//!
//! Values come from a lookup function (the process environment, in
//! production) so that the local server can layer its own generated secrets
//! underneath and tests can pass a map.

use crate::crypto::Key;
use std::time::Duration;

pub const DEFAULT_POLL_RATE_LIMIT: u32 = 120;
pub const DEFAULT_SEND_RATE_LIMIT: u32 = 60;
pub const DEFAULT_REGISTER_RATE_LIMIT: u32 = 60;
pub const DEFAULT_ACKED_RETENTION_SECS: u64 = 86_400;
pub const DEFAULT_SENT_RETENTION_SECS: u64 = 7 * 86_400;

/// The secrets a deployment can hold. Each Lambda function is given only
/// the ones its route needs (the poll function never sees the admin token,
/// nor a key it does not use), so each declares them at cold start.
///
/// The four keys are separate secrets so that stealing one function's
/// configuration gives away only what that function does. `MASTER_KEY`, when
/// set, stands in for all four (each is derived from it): the local server's
/// one generated secret, and deployments made before the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Secret {
    AdminToken,
    OperatorTokens,
    /// Makes and checks clients' API tokens.
    TokenKey,
    /// Hashes fingerprints for lookup.
    FingerprintKey,
    /// Wraps clients' personal keys.
    WrappingKey,
    /// Seals what the server keeps for itself: queued publishes, sent
    /// messages.
    AtRestKey,
}

impl Secret {
    pub const ALL: [Secret; 6] = [
        Secret::AdminToken,
        Secret::OperatorTokens,
        Secret::TokenKey,
        Secret::FingerprintKey,
        Secret::WrappingKey,
        Secret::AtRestKey,
    ];

    pub const KEYS: [Secret; 4] = [
        Secret::TokenKey,
        Secret::FingerprintKey,
        Secret::WrappingKey,
        Secret::AtRestKey,
    ];

    pub fn env_name(self) -> &'static str {
        match self {
            Secret::AdminToken => "ADMIN_TOKEN",
            Secret::OperatorTokens => "OPERATOR_TOKENS",
            Secret::TokenKey => "TOKEN_KEY",
            Secret::FingerprintKey => "FINGERPRINT_KEY",
            Secret::WrappingKey => "WRAPPING_KEY",
            Secret::AtRestKey => "AT_REST_KEY",
        }
    }

    pub fn is_key(self) -> bool {
        Secret::KEYS.contains(&self)
    }
}

/// Where a purpose key comes from: its own secret, or `MASTER_KEY`. Either
/// way the key is HMAC-SHA256(material, purpose label), so a key given on
/// its own equals the one derived from a master with the same bytes.
#[derive(Clone, Default)]
pub struct KeyMaterials {
    pub master: Option<Key>,
    /// Per-purpose material (at least [`MIN_KEY_MATERIAL_BYTES`]), which
    /// wins over the master.
    pub own: Vec<(Secret, Vec<u8>)>,
}

/// A purpose key's own secret must carry at least 256 bits; AWS Secrets
/// Manager's generated 64-character passwords carry about 380.
pub const MIN_KEY_MATERIAL_BYTES: usize = 32;

impl KeyMaterials {
    /// The material for one purpose, when this process holds it.
    pub fn material(&self, purpose: Secret) -> Option<&[u8]> {
        self.own
            .iter()
            .find(|(s, _)| *s == purpose)
            .map(|(_, m)| m.as_slice())
            .or_else(|| self.master.as_ref().map(|k| k.as_bytes().as_slice()))
    }
}

#[derive(Clone)]
pub struct Config {
    /// Absent: every publish is refused as unauthorized.
    pub admin_token: Option<String>,
    /// Empty: every operator request is refused as unauthorized.
    pub operator_tokens: Vec<String>,
    /// The keys this process holds. One it lacks makes endpoints that need
    /// it answer 500 (a function that needs it declares so and refuses to
    /// start without it).
    pub keys: KeyMaterials,
    /// Polls per minute per client; 0 disables the limit.
    pub poll_rate_limit: u32,
    /// Sends per minute per client; 0 disables the limit.
    pub send_rate_limit: u32,
    /// Registrations per minute per source address; 0 disables the limit.
    pub register_rate_limit: u32,
    /// Source addresses never limited at registration.
    pub register_rate_limit_exempt: Vec<ipnet::IpNet>,
    /// How long acknowledged messages are kept before cleanup removes them.
    pub acked_retention: Duration,
    /// How long messages clients sent are kept.
    pub sent_retention: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |present: bool| if present { "<set>" } else { "<unset>" };
        f.debug_struct("Config")
            .field("admin_token", &set(self.admin_token.is_some()))
            .field(
                "operator_tokens",
                &format!("<{} set>", self.operator_tokens.len()),
            )
            .field("master_key", &set(self.keys.master.is_some()))
            .field(
                "own_keys",
                &self
                    .keys
                    .own
                    .iter()
                    .map(|(s, _)| s.env_name())
                    .collect::<Vec<_>>(),
            )
            .field("poll_rate_limit", &self.poll_rate_limit)
            .field("send_rate_limit", &self.send_rate_limit)
            .field("register_rate_limit", &self.register_rate_limit)
            .field(
                "register_rate_limit_exempt",
                &self.register_rate_limit_exempt,
            )
            .field("acked_retention", &self.acked_retention)
            .field("sent_retention", &self.sent_retention)
            .finish()
    }
}

/// A configuration problem, phrased for the operator who has to fix it.
/// Never includes a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads the process environment; fails naming every secret in
    /// `required` that is missing.
    pub fn from_env(required: &[Secret]) -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok(), required)
    }

    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        required: &[Secret],
    ) -> Result<Config, ConfigError> {
        let present = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());

        let master_set = present("MASTER_KEY").is_some();
        let missing: Vec<&str> = required
            .iter()
            .filter(|s| present(s.env_name()).is_none() && !(s.is_key() && master_set))
            .map(|s| s.env_name())
            .collect();
        if !missing.is_empty() {
            return Err(ConfigError(format!("{} not set", missing.join(", "))));
        }

        let admin_token = present("ADMIN_TOKEN").map(|t| t.trim().to_string());
        let operator_tokens: Vec<String> = present("OPERATOR_TOKENS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        if required.contains(&Secret::OperatorTokens) && operator_tokens.is_empty() {
            return Err(ConfigError(
                "OPERATOR_TOKENS must hold at least one comma-separated token".into(),
            ));
        }
        let master = present("MASTER_KEY")
            .map(|text| {
                Key::from_base64(&text).ok_or_else(|| {
                    ConfigError(
                        "MASTER_KEY must be standard base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`)"
                            .into(),
                    )
                })
            })
            .transpose()?;
        let mut own = Vec::new();
        for secret in Secret::KEYS {
            if let Some(text) = present(secret.env_name()) {
                let material = text.trim().as_bytes().to_vec();
                if material.len() < MIN_KEY_MATERIAL_BYTES {
                    return Err(ConfigError(format!(
                        "{} must hold at least {MIN_KEY_MATERIAL_BYTES} characters of random key material",
                        secret.env_name()
                    )));
                }
                own.push((secret, material));
            }
        }
        let poll_rate_limit = parse_number(
            present("POLL_RATE_LIMIT"),
            "POLL_RATE_LIMIT",
            DEFAULT_POLL_RATE_LIMIT,
        )?;
        let send_rate_limit = parse_number(
            present("SEND_RATE_LIMIT"),
            "SEND_RATE_LIMIT",
            DEFAULT_SEND_RATE_LIMIT,
        )?;
        let register_rate_limit = parse_number(
            present("REGISTER_RATE_LIMIT"),
            "REGISTER_RATE_LIMIT",
            DEFAULT_REGISTER_RATE_LIMIT,
        )?;
        let register_rate_limit_exempt = parse_cidrs(
            present("REGISTER_RATE_LIMIT_EXEMPT"),
            "REGISTER_RATE_LIMIT_EXEMPT",
        )?;
        let retention = parse_number(
            present("ACKED_RETENTION_SECS"),
            "ACKED_RETENTION_SECS",
            DEFAULT_ACKED_RETENTION_SECS,
        )?;
        let sent_retention = parse_number(
            present("SENT_RETENTION_SECS"),
            "SENT_RETENTION_SECS",
            DEFAULT_SENT_RETENTION_SECS,
        )?;
        Ok(Config {
            admin_token,
            operator_tokens,
            keys: KeyMaterials { master, own },
            poll_rate_limit,
            send_rate_limit,
            register_rate_limit,
            register_rate_limit_exempt,
            acked_retention: Duration::from_secs(retention),
            sent_retention: Duration::from_secs(sent_retention),
        })
    }
}

/// A comma-separated list of CIDRs; a bare address means just itself.
pub fn parse_cidrs(value: Option<String>, name: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    ConfigError(format!(
                        "{name} must be comma-separated CIDRs such as 10.0.0.0/8,::1/128; {c:?} is not one"
                    ))
                })
        })
        .collect()
}

fn parse_number<T: std::str::FromStr>(
    value: Option<String>,
    name: &str,
    default: T,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("{name} must be a whole number ≥ 0, got {v:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn reads_everything_with_defaults() {
        let c = Config::from_lookup(
            lookup(&[
                ("ADMIN_TOKEN", "adm"),
                ("OPERATOR_TOKENS", " op1, ,op2 "),
                ("MASTER_KEY", KEY),
            ]),
            &Secret::ALL,
        )
        .unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("adm"));
        assert_eq!(c.operator_tokens, vec!["op1", "op2"]);
        assert!(c.keys.master.is_some());
        assert_eq!(c.poll_rate_limit, 120);
        assert_eq!(c.acked_retention, Duration::from_secs(86_400));
        assert_eq!(c.sent_retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn secrets_not_required_may_be_absent() {
        let c = Config::from_lookup(lookup(&[("MASTER_KEY", KEY)]), &Secret::KEYS).unwrap();
        assert_eq!(c.admin_token, None);
        assert!(c.operator_tokens.is_empty());
    }

    #[test]
    fn names_every_missing_secret_at_once() {
        let err = Config::from_lookup(lookup(&[("ADMIN_TOKEN", "a")]), &Secret::ALL).unwrap_err();
        assert_eq!(
            err.0,
            "OPERATOR_TOKENS, TOKEN_KEY, FINGERPRINT_KEY, WRAPPING_KEY, AT_REST_KEY not set"
        );
    }

    #[test]
    fn explains_what_is_wrong_without_echoing_secrets() {
        let err =
            Config::from_lookup(lookup(&[("MASTER_KEY", "c2VjcmV0LXZhbHVl")]), &[]).unwrap_err();
        assert!(err.0.contains("32 bytes") && !err.0.contains("c2VjcmV0LXZhbHVl"));
        let err = Config::from_lookup(lookup(&[("POLL_RATE_LIMIT", "fast")]), &[]).unwrap_err();
        assert!(err.0.contains("POLL_RATE_LIMIT"));
        let err = Config::from_lookup(
            lookup(&[("OPERATOR_TOKENS", " , ")]),
            &[Secret::OperatorTokens],
        )
        .unwrap_err();
        assert!(err.0.contains("OPERATOR_TOKENS"));
    }

    #[test]
    fn purpose_keys_come_from_their_own_secret_or_the_master() {
        let own = "k".repeat(40);
        let c = Config::from_lookup(lookup(&[("TOKEN_KEY", own.as_str())]), &[Secret::TokenKey])
            .unwrap();
        assert_eq!(c.keys.material(Secret::TokenKey), Some(own.as_bytes()));
        assert_eq!(c.keys.material(Secret::AtRestKey), None);
        let c = Config::from_lookup(
            lookup(&[("MASTER_KEY", KEY), ("TOKEN_KEY", own.as_str())]),
            &Secret::KEYS,
        )
        .unwrap();
        assert_eq!(c.keys.material(Secret::TokenKey), Some(own.as_bytes()));
        assert_eq!(
            c.keys.material(Secret::AtRestKey),
            Some([0u8; 32].as_slice())
        );
        let err = Config::from_lookup(lookup(&[("AT_REST_KEY", "short")]), &[]).unwrap_err();
        assert!(err.0.contains("AT_REST_KEY") && !err.0.contains("short"));
    }

    #[test]
    fn reads_rate_limits_and_exempt_networks() {
        let c = Config::from_lookup(lookup(&[]), &[]).unwrap();
        assert_eq!((c.send_rate_limit, c.register_rate_limit), (60, 60));
        assert!(c.register_rate_limit_exempt.is_empty());
        let c = Config::from_lookup(
            lookup(&[
                ("SEND_RATE_LIMIT", "0"),
                (
                    "REGISTER_RATE_LIMIT_EXEMPT",
                    "127.0.0.0/8, ::1/128,10.1.2.3",
                ),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.send_rate_limit, 0);
        let nets: Vec<String> = c
            .register_rate_limit_exempt
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["127.0.0.0/8", "::1/128", "10.1.2.3/32"]);
        let err = Config::from_lookup(
            lookup(&[("REGISTER_RATE_LIMIT_EXEMPT", "10.0.0.0/33")]),
            &[],
        )
        .unwrap_err();
        assert!(err.0.contains("REGISTER_RATE_LIMIT_EXEMPT"));
    }
}
