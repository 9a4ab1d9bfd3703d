//! `pigeonhole register`: create (or recover) this machine's client and save
//! its credentials to the profile.

use clap::Args;
use pigeonhole::crypto::Key;
use pigeonhole::domain::MAX_NAME_CHARS;

use super::{check_fingerprint, print_line, profile_allows_http, Ctx};
use crate::api::{insecure_http_host, normalize_url};
use crate::config::{self, Profile};
use crate::error::{CliError, EXIT_OK};
use crate::fingerprint;
use crate::retry::{seconds, Retry};

const EXAMPLES: &str = "\
Examples:
  pigeonhole register --url http://127.0.0.1:8080 --name laptop
  pigeonhole --profile work register --url https://pigeonhole.example.com
  pigeonhole register --url http://127.0.0.1:8080 --show-credentials | jq .client_id

Registering again with the same fingerprint returns the same credentials, so
running this twice on one machine is harmless. The default fingerprint is a
SHA-256 of a random secret kept in your config file (fingerprint_secret, made
on first use, mode 0600), /etc/machine-id (or the host name), your user name
and the profile: other users cannot work it out, and the machine id itself is
never sent. If you lose the config file, the default changes and `register`
creates a new client, unless you pass the old --fingerprint. Registering a
profile again at its own server uses the fingerprint saved in the profile (it
may have been changed by `pigeonhole rotate --fingerprint`).

A 429 (the server limits registrations per address) or a 503 with Retry-After
is retried after the wait the server asks for, up to --retries times.

Plain http:// is refused unless the host is loopback (localhost, 127.0.0.0/8,
::1): the personal key travels in the answer. --insecure-http allows it, and
the profile remembers that for its URL.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct RegisterArgs {
    /// Name shown to operators (at most 100 characters)
    #[arg(long)]
    pub name: Option<String>,

    /// Fingerprint to register with (8–256 characters). Anyone who knows it can
    /// recover the credentials: use a secret, high-entropy value
    /// [default: derived from a secret in the config file, this machine, user
    /// and profile]
    #[arg(long)]
    pub fingerprint: Option<String>,

    /// Print the credentials as JSON on stdout (they are secret)
    #[arg(long)]
    pub show_credentials: bool,

    /// Retries after a 429 or a 503 with Retry-After (waiting as asked)
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,
}

pub async fn run(ctx: &Ctx, args: RegisterArgs) -> Result<u8, CliError> {
    let path = ctx.config_path()?.to_path_buf();
    let existing = ctx.find_profile()?;
    let url = ctx
        .url
        .clone()
        .or_else(|| existing.as_ref().map(|p| p.url.clone()))
        .ok_or_else(|| {
            CliError::Usage(
                "register needs the server URL: pass --url URL or set PIGEONHOLE_URL".into(),
            )
        })?;

    // The same profile at its own server: it is the same client, so its
    // saved fingerprint (which `rotate --fingerprint` may have changed).
    let same_server = existing.as_ref().filter(
        |p| matches!((normalize_url(&p.url), normalize_url(&url)), (Ok(a), Ok(b)) if a == b),
    );
    if let Some(p) = same_server {
        if p.pending_fingerprint.is_some() && args.fingerprint.is_none() {
            return Err(CliError::Usage(format!(
                "an earlier `pigeonhole rotate` of profile {:?} got no answer from the server; \
                 run `pigeonhole{} rotate` first: it checks whether the server rotated and saves \
                 the credentials either way",
                ctx.profile,
                if ctx.profile == "default" {
                    String::new()
                } else {
                    format!(" --profile {}", ctx.profile)
                }
            )));
        }
    }
    let fingerprint = match (args.fingerprint, same_server) {
        (Some(fp), _) => fp,
        (None, Some(p)) => p.fingerprint.clone(),
        (None, None) => {
            let no_machine = || {
                CliError::Usage(
                    "cannot derive a fingerprint (no /etc/machine-id and no host name): \
                     pass --fingerprint"
                        .into(),
                )
            };
            // Check first, so a hopeless run does not create the secret.
            if !fingerprint::can_derive() {
                return Err(no_machine());
            }
            let secret = config::fingerprint_secret(&path)?;
            fingerprint::default_for(&ctx.profile, &secret).ok_or_else(no_machine)?
        }
    };
    check_fingerprint(&fingerprint, "--fingerprint")?;
    if let Some(name) = &args.name {
        let n = name.chars().count();
        if n > MAX_NAME_CHARS {
            return Err(CliError::Usage(format!(
                "--name must be at most {MAX_NAME_CHARS} characters (got {n})"
            )));
        }
    }

    let allowed = existing
        .as_ref()
        .is_some_and(|p| profile_allows_http(p, &url));
    let api = ctx.api(&url, allowed)?;
    // Registering is idempotent per fingerprint, so a retry is harmless; it
    // is retried only when the server says when (rate limit, brief outage).
    let retry = Retry::new(args.retries).only_when_asked();
    let (credentials, created) = retry
        .run(
            || api.register(&fingerprint, args.name.as_deref(), None),
            |e, wait, attempt| {
                eprintln!(
                    "warning: register failed ({e}); retrying in {} ({attempt}/{})",
                    seconds(wait),
                    args.retries
                );
            },
        )
        .await?;
    if Key::from_base64(&credentials.personal_token).is_none() {
        return Err(CliError::Failed(
            "the server returned a personal_token that is not base64 of 32 bytes".into(),
        ));
    }

    // Keep listen's cursor when this is the same client on the same server.
    let cursor = existing
        .as_ref()
        .filter(|p| p.credentials.client_id == credentials.client_id && p.url == api.base())
        .map_or(0, |p| p.cursor);
    let client_id = credentials.client_id.clone();
    let profile = Profile {
        url: api.base().to_string(),
        credentials: credentials.clone(),
        fingerprint,
        name: args.name,
        cursor,
        // Reaching here over plain http to another host needed the consent.
        insecure_http: insecure_http_host(api.base()).is_some(),
        pending_fingerprint: None,
    };
    config::update(&path, |c| c.profiles.insert(ctx.profile.clone(), profile))?;

    let summary = [
        if created {
            format!("Registered new client {client_id} at {}.", api.base())
        } else {
            format!(
                "This fingerprint was already registered: client {client_id} at {} \
                 (same credentials as before).",
                api.base()
            )
        },
        format!(
            "Credentials saved to {} (profile {:?}, mode 0600).",
            path.display(),
            ctx.profile
        ),
    ];
    if args.show_credentials {
        for line in summary {
            eprintln!("{line}");
        }
        let shown = serde_json::to_string_pretty(&credentials).expect("credentials serialize");
        print_line(&shown)?;
    } else {
        for line in summary {
            print_line(&line)?;
        }
    }
    Ok(EXIT_OK)
}
