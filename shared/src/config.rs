//! Configuration every deployment reads the same way.
//!
//! Values come from a lookup function (the process environment, in
//! production) so that the local server can layer its own generated secrets
//! underneath and tests can pass a map.

use crate::crypto::Key;
use std::time::Duration;

pub const DEFAULT_POLL_RATE_LIMIT: u32 = 120;
pub const DEFAULT_ACKED_RETENTION_SECS: u64 = 86_400;

#[derive(Clone)]
pub struct Config {
    pub admin_token: String,
    pub operator_tokens: Vec<String>,
    pub master_key: Key,
    /// Polls per minute per client; 0 disables the limit.
    pub poll_rate_limit: u32,
    /// How long acknowledged messages are kept before cleanup removes them.
    pub acked_retention: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("admin_token", &"<redacted>")
            .field(
                "operator_tokens",
                &format!("<{} redacted>", self.operator_tokens.len()),
            )
            .field("master_key", &"<redacted>")
            .field("poll_rate_limit", &self.poll_rate_limit)
            .field("acked_retention", &self.acked_retention)
            .finish()
    }
}

/// A configuration problem, phrased for the operator who has to fix it.
/// Never includes a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let present = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let missing = |name: &str| ConfigError(format!("{name} is not set"));

        let admin_token = present("ADMIN_TOKEN").ok_or_else(|| missing("ADMIN_TOKEN"))?;
        let operator_tokens: Vec<String> = present("OPERATOR_TOKENS")
            .ok_or_else(|| missing("OPERATOR_TOKENS"))?
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect();
        if operator_tokens.is_empty() {
            return Err(ConfigError(
                "OPERATOR_TOKENS must hold at least one comma-separated token".into(),
            ));
        }
        let master_key = Key::from_base64(&present("MASTER_KEY").ok_or_else(|| missing("MASTER_KEY"))?)
            .ok_or_else(|| {
                ConfigError(
                    "MASTER_KEY must be standard base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`)"
                        .into(),
                )
            })?;
        let poll_rate_limit = parse_number(
            present("POLL_RATE_LIMIT"),
            "POLL_RATE_LIMIT",
            DEFAULT_POLL_RATE_LIMIT,
        )?;
        let retention = parse_number(
            present("ACKED_RETENTION_SECS"),
            "ACKED_RETENTION_SECS",
            DEFAULT_ACKED_RETENTION_SECS,
        )?;
        Ok(Config {
            admin_token: admin_token.trim().to_string(),
            operator_tokens,
            master_key,
            poll_rate_limit,
            acked_retention: Duration::from_secs(retention),
        })
    }
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
        let c = Config::from_lookup(lookup(&[
            ("ADMIN_TOKEN", "adm"),
            ("OPERATOR_TOKENS", " op1, ,op2 "),
            ("MASTER_KEY", KEY),
        ]))
        .unwrap();
        assert_eq!(c.operator_tokens, vec!["op1", "op2"]);
        assert_eq!(c.poll_rate_limit, 120);
        assert_eq!(c.acked_retention, Duration::from_secs(86_400));
    }

    #[test]
    fn explains_what_is_wrong_without_echoing_secrets() {
        let err = Config::from_lookup(lookup(&[("ADMIN_TOKEN", "a"), ("OPERATOR_TOKENS", "o")]))
            .unwrap_err();
        assert_eq!(err.0, "MASTER_KEY is not set");
        let err = Config::from_lookup(lookup(&[
            ("ADMIN_TOKEN", "a"),
            ("OPERATOR_TOKENS", "o"),
            ("MASTER_KEY", "c2VjcmV0LXZhbHVl"),
        ]))
        .unwrap_err();
        assert!(err.0.contains("32 bytes") && !err.0.contains("c2VjcmV0LXZhbHVl"));
        let err = Config::from_lookup(lookup(&[
            ("ADMIN_TOKEN", "a"),
            ("OPERATOR_TOKENS", "o"),
            ("MASTER_KEY", KEY),
            ("POLL_RATE_LIMIT", "fast"),
        ]))
        .unwrap_err();
        assert!(err.0.contains("POLL_RATE_LIMIT"));
        let err = Config::from_lookup(lookup(&[
            ("ADMIN_TOKEN", "a"),
            ("OPERATOR_TOKENS", " , "),
            ("MASTER_KEY", KEY),
        ]))
        .unwrap_err();
        assert!(err.0.contains("OPERATOR_TOKENS"));
    }
}
