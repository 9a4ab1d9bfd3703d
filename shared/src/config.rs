//! Configuration every deployment reads the same way.
//!
//! Values come from a lookup function (the process environment, in
//! production) so that the local server can layer its own generated secrets
//! underneath and tests can pass a map.

use crate::crypto::Key;
use std::time::Duration;

pub const DEFAULT_POLL_RATE_LIMIT: u32 = 120;
pub const DEFAULT_ACKED_RETENTION_SECS: u64 = 86_400;
pub const DEFAULT_SENT_RETENTION_SECS: u64 = 7 * 86_400;

/// The secrets a deployment can hold. Each Lambda function is given only
/// the ones it needs (the poll function never sees the admin token), so each
/// declares them at cold start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    AdminToken,
    OperatorTokens,
    MasterKey,
}

impl Secret {
    pub const ALL: [Secret; 3] = [
        Secret::AdminToken,
        Secret::OperatorTokens,
        Secret::MasterKey,
    ];

    pub fn env_name(self) -> &'static str {
        match self {
            Secret::AdminToken => "ADMIN_TOKEN",
            Secret::OperatorTokens => "OPERATOR_TOKENS",
            Secret::MasterKey => "MASTER_KEY",
        }
    }
}

#[derive(Clone)]
pub struct Config {
    /// Absent: every publish is refused as unauthorized.
    pub admin_token: Option<String>,
    /// Empty: every operator request is refused as unauthorized.
    pub operator_tokens: Vec<String>,
    /// Absent: endpoints that need keys answer 500 (a function that needs
    /// it declares so and refuses to start without it).
    pub master_key: Option<Key>,
    /// Polls per minute per client; 0 disables the limit.
    pub poll_rate_limit: u32,
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
            .field("master_key", &set(self.master_key.is_some()))
            .field("poll_rate_limit", &self.poll_rate_limit)
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

        let missing: Vec<&str> = required
            .iter()
            .filter(|s| present(s.env_name()).is_none())
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
        let master_key = present("MASTER_KEY")
            .map(|text| {
                Key::from_base64(&text).ok_or_else(|| {
                    ConfigError(
                        "MASTER_KEY must be standard base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`)"
                            .into(),
                    )
                })
            })
            .transpose()?;
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
        let sent_retention = parse_number(
            present("SENT_RETENTION_SECS"),
            "SENT_RETENTION_SECS",
            DEFAULT_SENT_RETENTION_SECS,
        )?;
        Ok(Config {
            admin_token,
            operator_tokens,
            master_key,
            poll_rate_limit,
            acked_retention: Duration::from_secs(retention),
            sent_retention: Duration::from_secs(sent_retention),
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
        assert!(c.master_key.is_some());
        assert_eq!(c.poll_rate_limit, 120);
        assert_eq!(c.acked_retention, Duration::from_secs(86_400));
        assert_eq!(c.sent_retention, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn secrets_not_required_may_be_absent() {
        let c = Config::from_lookup(lookup(&[("MASTER_KEY", KEY)]), &[Secret::MasterKey]).unwrap();
        assert_eq!(c.admin_token, None);
        assert!(c.operator_tokens.is_empty());
    }

    #[test]
    fn names_every_missing_secret_at_once() {
        let err = Config::from_lookup(lookup(&[("ADMIN_TOKEN", "a")]), &Secret::ALL).unwrap_err();
        assert_eq!(err.0, "OPERATOR_TOKENS, MASTER_KEY not set");
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
}
