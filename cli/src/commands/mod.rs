//! One module per subcommand, plus what they share: where the config is,
//! which profile and server to use, and reading user-given JSON.

pub mod clients;
pub mod completions;
pub mod inbox;
pub mod listen;
pub mod profiles;
pub mod publish;
pub mod publish_status;
pub mod register;
pub mod rotate;
pub mod send;
pub mod simulate;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use pigeonhole::crypto::Key;
use pigeonhole::domain::{valid_type, FINGERPRINT_CHARS, MAX_TYPE_CHARS};
use serde_json::Value;

use crate::api::{insecure_http_host, normalize_url, Api};
use crate::config::{self, Profile};
use crate::error::CliError;

/// The global options every command sees.
pub struct Ctx {
    pub profile: String,
    /// `--url` or `$PIGEONHOLE_URL`.
    pub url: Option<String>,
    config_path: Option<PathBuf>,
    /// `--insecure-http` or `$PIGEONHOLE_INSECURE_HTTP`: plain `http://` to a
    /// host that is not loopback is allowed.
    pub insecure_http: bool,
}

impl Ctx {
    pub fn new(
        profile: String,
        url: Option<String>,
        config_path: Option<PathBuf>,
        insecure_http: bool,
    ) -> Ctx {
        Ctx {
            profile,
            url: url.filter(|u| !u.trim().is_empty()),
            config_path: config_path
                .filter(|p| !p.as_os_str().is_empty())
                .or_else(config::default_path),
            insecure_http,
        }
    }

    /// An API client for `url`. Plain `http://` to a host that is not
    /// loopback is refused (exit 2) unless `--insecure-http` was given or
    /// `allowed` (the profile was registered with it for this very URL).
    pub fn api(&self, url: &str, allowed: bool) -> Result<Api, CliError> {
        let api = Api::new(url)?;
        match insecure_http_host(api.base()) {
            Some(host) if !(self.insecure_http || allowed) => {
                Err(CliError::Usage(insecure_http_refusal(api.base(), &host)))
            }
            _ => Ok(api),
        }
    }

    /// The API of a registered profile: `--url` / `$PIGEONHOLE_URL`, else
    /// the profile's URL (see [`Ctx::api`]).
    pub fn profile_api(&self, profile: &Profile) -> Result<Api, CliError> {
        let url = self.url_for(profile);
        self.api(&url, profile_allows_http(profile, &url))
    }

    /// The API for commands that need no credentials: the URL of
    /// [`Ctx::server_url`], allowed over plain http when the profile was
    /// registered with `--insecure-http` for that URL.
    pub fn server_api(&self) -> Result<Api, CliError> {
        let url = self.server_url()?;
        let allowed = !self.insecure_http
            && insecure_http_host(&url).is_some()
            && self.config_path.is_some()
            && self
                .find_profile()
                .ok()
                .flatten()
                .is_some_and(|p| profile_allows_http(&p, &url));
        self.api(&url, allowed)
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

/// True when `profile` was registered with `--insecure-http` and `url` is
/// its own URL.
pub fn profile_allows_http(profile: &Profile, url: &str) -> bool {
    profile.insecure_http
        && matches!((normalize_url(url), normalize_url(&profile.url)), (Ok(a), Ok(b)) if a == b)
}

/// Why plain http is refused, and how to override it.
pub fn insecure_http_refusal(base: &str, host: &str) -> String {
    format!(
        "refusing plain http:// to {host} ({base}): the API token, and in the register and \
         rotate answers the personal key, would cross the network unencrypted. Use https://, \
         or pass --insecure-http (or set PIGEONHOLE_INSECURE_HTTP=1) if you trust every \
         network between here and {host}. Loopback (localhost, 127.0.0.0/8, ::1) is always \
         allowed."
    )
}

/// Checks a fingerprint argument against the API's rule (8–256 characters).
pub fn check_fingerprint(fingerprint: &str, flag: &str) -> Result<(), CliError> {
    let chars = fingerprint.chars().count();
    if FINGERPRINT_CHARS.contains(&chars) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{flag} must be {} to {} characters (got {chars})",
            FINGERPRINT_CHARS.start(),
            FINGERPRINT_CHARS.end()
        )))
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
/// What a failed read means for a command that keeps polling (`listen`,
/// `inbox --follow`): 429, or 503 with Retry-After, waits as asked; a
/// network error or another 5xx backs off; anything else ends the command.
/// `what` names the request in the warning ("poll", "read").
pub fn follow_outcome(
    e: crate::api::ApiError,
    what: &str,
) -> Result<(crate::backoff::PollOutcome, Option<String>), CliError> {
    use crate::backoff::PollOutcome;
    Ok(match e.retry_after() {
        Some(wait) if e.rate_limited().is_some() => (
            PollOutcome::RetryAfter { wait },
            Some(format!("rate limited by the server ({e})")),
        ),
        Some(wait) => (
            PollOutcome::RetryAfter { wait },
            Some(format!("warning: server unavailable ({e})")),
        ),
        None if e.is_retryable() => (
            PollOutcome::Failed,
            Some(format!("warning: {what} failed: {e}")),
        ),
        None => return Err(e.into()),
    })
}

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

    fn ctx(insecure_http: bool) -> Ctx {
        Ctx::new(
            "default".into(),
            None,
            Some("/nonexistent/c.json".into()),
            insecure_http,
        )
    }

    #[test]
    fn plain_http_needs_loopback_or_consent() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:8080",
            "https://x.example",
        ] {
            assert!(ctx(false).api(url, false).is_ok(), "{url}");
        }
        let err = ctx(false)
            .api("http://192.168.1.10:8080/api/v1", false)
            .err()
            .expect("refused");
        assert!(matches!(err, CliError::Usage(_)), "exit 2: {err:?}");
        let text = err.to_string();
        assert!(
            text.contains("192.168.1.10") && text.contains("--insecure-http"),
            "{text}"
        );
        assert!(text.contains("personal key"), "says why: {text}");
        assert!(ctx(true).api("http://192.168.1.10:8080", false).is_ok());
        assert!(ctx(false).api("http://192.168.1.10:8080", true).is_ok());
    }

    #[test]
    fn a_profile_remembers_consent_for_its_own_url_only() {
        let mut profile = Profile {
            url: "http://192.168.1.10:8080".into(),
            credentials: crate::api::Credentials {
                client_id: "id".into(),
                api_token: "t".into(),
                personal_token: "k".into(),
            },
            fingerprint: "f".repeat(8),
            name: None,
            cursor: 0,
            insecure_http: true,
            pending_fingerprint: None,
        };
        assert!(ctx(false).profile_api(&profile).is_ok());
        assert!(profile_allows_http(
            &profile,
            "http://192.168.1.10:8080/api/v1/"
        ));
        assert!(!profile_allows_http(&profile, "http://192.168.1.11:8080"));
        let mut other = Ctx::new(
            "default".into(),
            Some("http://192.168.1.11:8080".into()),
            None,
            false,
        );
        assert!(
            other.profile_api(&profile).is_err(),
            "another URL needs the flag again"
        );
        other.insecure_http = true;
        assert!(other.profile_api(&profile).is_ok());
        profile.insecure_http = false;
        assert!(ctx(false).profile_api(&profile).is_err());
    }

    #[test]
    fn fingerprints_follow_the_api_rule() {
        assert!(check_fingerprint(&"a".repeat(8), "--fingerprint").is_ok());
        assert!(check_fingerprint(&"é".repeat(256), "--fingerprint").is_ok());
        let err = check_fingerprint("short", "--fingerprint").unwrap_err();
        assert!(
            err.to_string().contains("--fingerprint must be 8 to 256"),
            "{err}"
        );
        assert!(check_fingerprint(&"a".repeat(257), "--fingerprint").is_err());
    }

    #[test]
    fn types_follow_the_api_rule() {
        assert!(check_type("greeting").is_ok());
        assert!(check_type("").is_err());
        assert!(check_type(&"x".repeat(65)).is_err());
        assert!(check_type(&"é".repeat(64)).is_ok());
    }
}
