//! `pigeonhole rotate`: new credentials (api_token and personal key, and
//! optionally a new fingerprint) for this profile's client, saved to the
//! config file.
//!
//! The config file is written before the request (the fingerprint the
//! client will have afterwards, as `pending_fingerprint`) and after it (the
//! new credentials), each time atomically. So when the answer is lost the
//! rotation can still be completed: if the old token is refused, the server
//! did rotate, and registering with the pending fingerprint returns the new
//! credentials.

use std::path::Path;

use clap::Args;
use pigeonhole::crypto::Key;

use super::{check_fingerprint, print_line, Ctx};
use crate::api::{Api, ApiError, Credentials};
use crate::config::{self, Profile};
use crate::error::{CliError, EXIT_OK};
use crate::fingerprint;

const EXAMPLES: &str = "\
Examples:
  pigeonhole rotate
  pigeonhole rotate --new-fingerprint
  pigeonhole --profile work rotate --show-credentials | jq -r .api_token

Asks the server for a new api_token and personal key for this profile's client
and saves them to the config file (atomically, mode 0600). From then on the old
token is refused (401 unauthorized): rotate when a device or a copy of the
config file may have leaked. Nothing is lost: the client id and the cursor stay
the same, and messages not yet acknowledged are delivered readable with the new
key. A running `pigeonhole listen` of this profile picks the new credentials up
from the config file when the server refuses its old token.

Registering again with the fingerprint returns the new credentials, so anyone
who knows the fingerprint can get them. If it may have leaked too, replace it:
--new-fingerprint makes a random one, --fingerprint FP sets yours (8–256
characters). The profile keeps the new one, and the old one no longer finds
this client.

If the answer is lost (network error, 5xx), rotate checks whether the old token
still works. If it does not, the server rotated, and the new credentials are
fetched by registering with the fingerprint. If even the check fails, the
profile remembers the rotation and the next `pigeonhole rotate` completes it.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct RotateArgs {
    /// Also replace the fingerprint with this one (8–256 characters; keep it
    /// secret)
    #[arg(long, value_name = "FP", conflicts_with = "new_fingerprint")]
    pub fingerprint: Option<String>,

    /// Also replace the fingerprint with a new random one (saved in the
    /// profile)
    #[arg(long)]
    pub new_fingerprint: bool,

    /// Print the new credentials as JSON on stdout (they are secret)
    #[arg(long)]
    pub show_credentials: bool,
}

/// What a check after a lost answer found.
enum Settled {
    /// The old token still works: nothing was rotated.
    Unchanged,
    /// The server had rotated: these are the new credentials.
    Rotated(Credentials),
}

pub async fn run(ctx: &Ctx, args: RotateArgs) -> Result<u8, CliError> {
    let path = ctx.config_path()?.to_path_buf();
    let profile = ctx.profile()?;
    if let Some(fp) = &args.fingerprint {
        check_fingerprint(fp, "--fingerprint")?;
    }
    let api = ctx.profile_api(&profile)?;

    // An earlier rotation that got no answer is finished first.
    if let Some(pending) = profile.pending_fingerprint.clone() {
        match settle(&api, &profile, &pending).await {
            Ok(Settled::Rotated(creds)) => {
                let done = save_rotated(&path, ctx, &profile, creds, &pending)?;
                return report(ctx, &api, &path, &profile, &done, &pending, &args, true);
            }
            Ok(Settled::Unchanged) => set_pending(&path, ctx, &profile, None)?,
            Err(e) => {
                return Err(CliError::Failed(format!(
                    "an earlier rotate of this profile got no answer, and whether the server \
                     rotated cannot be checked now ({e}); run `pigeonhole rotate` again later"
                )))
            }
        }
    }

    let new_fingerprint = match (args.fingerprint.clone(), args.new_fingerprint) {
        (Some(fp), _) => Some(fp),
        (None, true) => Some(fingerprint::random_secret()),
        (None, false) => None,
    };
    let target = new_fingerprint
        .clone()
        .unwrap_or_else(|| profile.fingerprint.clone());
    // Saved before the server is asked; this also proves the config file
    // can be written before anything changes on the server.
    set_pending(&path, ctx, &profile, Some(&target))?;

    let creds = match api
        .rotate(&profile.credentials, new_fingerprint.as_deref())
        .await
    {
        Ok(creds) => creds,
        Err(e) if e.outcome_unknown() => {
            eprintln!("warning: rotate: {e}; checking whether the server rotated");
            match settle(&api, &profile, &target).await {
                Ok(Settled::Rotated(creds)) => creds,
                Ok(Settled::Unchanged) => {
                    set_pending(&path, ctx, &profile, None)?;
                    return Err(CliError::Failed(format!(
                        "rotate: {e}; nothing was changed (the old credentials still work)"
                    )));
                }
                Err(check) => {
                    return Err(CliError::Failed(format!(
                        "rotate: {e}; whether the server rotated cannot be checked ({check}). \
                         The profile remembers this rotation: run `pigeonhole rotate` again \
                         to complete it"
                    )))
                }
            }
        }
        Err(e) => {
            set_pending(&path, ctx, &profile, None)?;
            return Err(e.into());
        }
    };
    let done = save_rotated(&path, ctx, &profile, creds, &target)?;
    report(ctx, &api, &path, &profile, &done, &target, &args, false)
}

/// After an answer was lost: polls once with the old credentials. If they
/// still work nothing was rotated; if they are refused, registering with
/// `fingerprint` returns the new credentials (the same client).
async fn settle(api: &Api, profile: &Profile, fingerprint: &str) -> Result<Settled, CliError> {
    let cursor = (profile.cursor > 0).then_some(profile.cursor);
    match api.poll(&profile.credentials, cursor, 1).await {
        Ok(_) => Ok(Settled::Unchanged),
        Err(ApiError::Server { status: 401, .. }) => {
            let (creds, created) = api
                .register(fingerprint, profile.name.as_deref(), None)
                .await?;
            if created || creds.client_id != profile.credentials.client_id {
                return Err(CliError::Failed(format!(
                    "the old token is refused, but the fingerprint no longer finds client {} \
                     (it registered client {} instead, which was not saved): was the client \
                     deleted by an operator?",
                    profile.credentials.client_id, creds.client_id
                )));
            }
            Ok(Settled::Rotated(creds))
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets (or clears) the profile's `pending_fingerprint`, if the profile
/// still belongs to the same client.
fn set_pending(
    path: &Path,
    ctx: &Ctx,
    profile: &Profile,
    pending: Option<&str>,
) -> Result<(), CliError> {
    let client_id = &profile.credentials.client_id;
    config::update(path, |c| {
        if let Some(p) = c.profiles.get_mut(&ctx.profile) {
            if p.credentials.client_id == *client_id {
                p.pending_fingerprint = pending.map(str::to_string);
            }
        }
    })?;
    Ok(())
}

/// Checks the new credentials and saves them, with `fingerprint`, to the
/// profile; the cursor and everything else stay.
fn save_rotated(
    path: &Path,
    ctx: &Ctx,
    profile: &Profile,
    creds: Credentials,
    fingerprint: &str,
) -> Result<Credentials, CliError> {
    let client_id = profile.credentials.client_id.clone();
    if creds.client_id != client_id {
        return Err(CliError::Failed(format!(
            "the server rotated client {} instead of {client_id}; nothing was saved",
            creds.client_id
        )));
    }
    if Key::from_base64(&creds.personal_token).is_none() {
        return Err(CliError::Failed(
            "the server returned a personal_token that is not base64 of 32 bytes".into(),
        ));
    }
    let saved = config::update(path, |c| match c.profiles.get_mut(&ctx.profile) {
        Some(p) if p.credentials.client_id == client_id => {
            p.credentials = creds.clone();
            p.fingerprint = fingerprint.to_string();
            p.pending_fingerprint = None;
            true
        }
        _ => false,
    });
    match saved {
        Ok(true) => Ok(creds),
        Ok(false) => Err(CliError::Failed(format!(
            "the server rotated the credentials of client {client_id}, but profile {:?} was \
             replaced meanwhile, so they were not saved; register with the fingerprint to get \
             them",
            ctx.profile
        ))),
        Err(e) => Err(CliError::Failed(format!(
            "the server rotated the credentials, but they cannot be saved ({e}); once the \
             config file can be written, run `pigeonhole rotate` again to fetch them"
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    ctx: &Ctx,
    api: &Api,
    path: &Path,
    before: &Profile,
    creds: &Credentials,
    fingerprint: &str,
    args: &RotateArgs,
    earlier: bool,
) -> Result<u8, CliError> {
    let mut summary = vec![
        format!(
            "{} the credentials of client {} at {}: the new api_token and personal key are \
             saved to {} (profile {:?}).",
            if earlier {
                "Completed an earlier rotation of"
            } else {
                "Rotated"
            },
            creds.client_id,
            api.base(),
            path.display(),
            ctx.profile
        ),
        "The old token no longer works; messages not yet acknowledged are delivered under \
         the new key."
            .to_string(),
    ];
    if fingerprint != before.fingerprint {
        summary.push(
            "The fingerprint was replaced too (it is kept in the profile); the old one no \
             longer finds this client."
                .into(),
        );
    }
    if earlier && (args.fingerprint.is_some() || args.new_fingerprint) {
        summary.push(
            "The fingerprint options of this run were not used: run `pigeonhole rotate` again \
             to rotate once more with them."
                .into(),
        );
    }
    if args.show_credentials {
        for line in summary {
            eprintln!("{line}");
        }
        print_line(&serde_json::to_string_pretty(creds).expect("credentials serialize"))?;
    } else {
        for line in summary {
            print_line(&line)?;
        }
    }
    Ok(EXIT_OK)
}
