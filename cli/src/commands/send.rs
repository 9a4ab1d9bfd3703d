//! `pigeonhole send`: encrypt one message under the personal key and send it,
//! retrying with the identical body so the server stores it once.

use clap::Args;

use super::{check_type, parse_payload, print_line, profile_key, Ctx};
use crate::error::{CliError, EXIT_OK};
use crate::message::seal_send;
use crate::retry::{seconds, Retry};

const EXAMPLES: &str = "\
Examples:
  pigeonhole send --type reply --payload '{\"text\": \"hi server\"}'
  echo '[1, 2, 3]' | pigeonhole send --type numbers --payload -

Prints the message id. Network errors, 5xx and 429 are retried with exactly
the same body (same nonce), which the server recognises, so a message is never
stored twice. Retries wait about 1, 2, 4, 8 s (with jitter), or the server's
Retry-After when it sends one (503 unavailable, 429).";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct SendArgs {
    /// Message type (1–64 characters)
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,

    /// Payload: any JSON value, or `-` to read it from stdin
    #[arg(long, value_name = "JSON")]
    pub payload: String,

    /// Retries after a network error, 5xx or 429
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,
}

pub async fn run(ctx: &Ctx, args: SendArgs) -> Result<u8, CliError> {
    check_type(&args.kind)?;
    let payload = parse_payload(&args.payload)?;
    let profile = ctx.profile()?;
    let key = profile_key(&profile)?;
    let api = ctx.profile_api(&profile)?;
    let creds = &profile.credentials;

    // Sealed once: every retry sends these same bytes.
    let body = seal_send(&key, &creds.client_id, &args.kind, &payload);
    let retry = Retry::new(args.retries);
    let (id, _) = retry
        .run(
            || api.send(creds, &body),
            |e, wait, attempt| {
                eprintln!(
                    "warning: send failed ({e}); retrying the same message in {} ({attempt}/{})",
                    seconds(wait),
                    args.retries
                );
            },
        )
        .await?;
    print_line(&id.to_string())?;
    Ok(EXIT_OK)
}
