//! One module per subcommand, plus what they share: where the config is,
//! which profile and server to use, and reading user-given JSON.

pub mod clients;
pub mod completions;
pub mod listen;
pub mod profiles;
pub mod publish;
pub mod register;
pub mod send;
pub mod simulate;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use pigeonhole::crypto::Key;
use pigeonhole::domain::{valid_type, MAX_TYPE_CHARS};
use serde_json::Value;

use crate::config::{self, Profile};
use crate::error::CliError;

/// The global options every command sees.
pub struct Ctx {
    pub profile: String,
    /// `--url` or `$PIGEONHOLE_URL`.
    pub url: Option<String>,
    config_path: Option<PathBuf>,
}

impl Ctx {
    pub fn new(profile: String, url: Option<String>, config_path: Option<PathBuf>) -> Ctx {
        Ctx {
            profile,
            url: url.filter(|u| !u.trim().is_empty()),
            config_path: config_path
                .filter(|p| !p.as_os_str().is_empty())
                .or_else(config::default_path),
        }
    }

    pub fn config_path(&self) -> Result<&Path, CliError> {
        self.config_path
            .as_deref()
            .ok_or(CliError::Config(config::ConfigError::NoLocation))
    }

    /// The selected profile, or `None` when it does not exist.
    pub fn find_profile(&self) -> Result<Option<Profile>, CliError> {
        let path = self.config_path()?;
        let mut file = config::load(path)?;
        let profile = file.profiles.remove(&self.profile);
        if profile.is_some() && config::too_open(path) {
            eprintln!(
                "warning: {} is readable by other users; it holds your credentials \
                 (it is rewritten with mode 0600 on the next save; `chmod 600` it now)",
                path.display()
            );
        }
        Ok(profile)
    }

    /// The selected profile; a clear error when it was never registered.
    pub fn profile(&self) -> Result<Profile, CliError> {
        self.find_profile()?.ok_or_else(|| {
            let path = self
                .config_path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            CliError::Usage(format!(
                "no profile {:?} in {path}: run `pigeonhole{} register --url URL` first",
                self.profile,
                if self.profile == "default" {
                    String::new()
                } else {
                    format!(" --profile {}", self.profile)
                }
            ))
        })
    }

    /// Server URL for commands that need no credentials: `--url` /
    /// `$PIGEONHOLE_URL`, else the profile's saved URL.
    pub fn server_url(&self) -> Result<String, CliError> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let saved = match self.config_path {
            Some(_) => self.find_profile().ok().flatten().map(|p| p.url),
            None => None,
        };
        saved.ok_or_else(|| {
            CliError::Usage(
                "no server URL: pass --url URL, set PIGEONHOLE_URL, or register a profile first"
                    .into(),
            )
        })
    }

    /// Server URL for a registered profile: `--url` / `$PIGEONHOLE_URL` win.
    pub fn url_for(&self, profile: &Profile) -> String {
        self.url.clone().unwrap_or_else(|| profile.url.clone())
    }
}

/// The profile's personal key.
pub fn profile_key(profile: &Profile) -> Result<Key, CliError> {
    Key::from_base64(&profile.credentials.personal_token).ok_or_else(|| {
        CliError::Failed(
            "the saved personal_token is not base64 of 32 bytes; register again".into(),
        )
    })
}

/// Parses a `--payload` argument: JSON text, or `-` to read it from stdin.
pub fn parse_payload(arg: &str) -> Result<Value, CliError> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Failed(format!("cannot read the payload from stdin: {e}")))?;
        text
    } else {
        arg.to_string()
    };
    serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "--payload is not valid JSON ({e}); quote strings, e.g. --payload '\"hello\"' or \
             --payload '{{\"text\": \"hello\"}}'"
        ))
    })
}

/// Checks a `--type` argument against the API's rule (1–64 characters).
pub fn check_type(kind: &str) -> Result<(), CliError> {
    if valid_type(kind) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--type must be 1 to {MAX_TYPE_CHARS} characters (got {})",
            kind.chars().count()
        )))
    }
}

/// Writes one line to stdout and flushes it, so a reader sees each message
/// before it is acknowledged.
pub fn print_line(line: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(CliError::Output)
}

/// Resolves when Ctrl-C is pressed; never, if the handler cannot be set up.
pub async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_must_be_json() {
        assert_eq!(
            parse_payload("{\"a\": 1}").unwrap(),
            serde_json::json!({"a": 1})
        );
        assert_eq!(parse_payload("null").unwrap(), Value::Null);
        let err = parse_payload("{oops").unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert!(parse_payload("hello").is_err());
    }

    #[test]
    fn types_follow_the_api_rule() {
        assert!(check_type("greeting").is_ok());
        assert!(check_type("").is_err());
        assert!(check_type(&"x".repeat(65)).is_err());
        assert!(check_type(&"é".repeat(64)).is_ok());
    }
}
