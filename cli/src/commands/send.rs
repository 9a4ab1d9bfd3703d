//! `pigeonhole send`: encrypt one message under the personal key and send it,
//! retrying with the identical body so the server stores it once.

use std::time::Duration;

use clap::Args;

use super::{check_type, parse_payload, print_line, profile_key, Ctx};
use crate::api::Api;
use crate::error::{CliError, EXIT_OK};
use crate::message::seal_send;

const EXAMPLES: &str = "\
Examples:
  pigeonhole send --type reply --payload '{\"text\": \"hi server\"}'
  echo '[1, 2, 3]' | pigeonhole send --type numbers --payload -

Prints the message id. Network errors and 5xx are retried with exactly the
same body (same nonce), which the server recognises, so a message is never
stored twice.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct SendArgs {
    /// Message type (1–64 characters)
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,

    /// Payload: any JSON value, or `-` to read it from stdin
    #[arg(long, value_name = "JSON")]
    pub payload: String,

    /// Retries after a network error or 5xx
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,
}

/// Wait before retry `attempt` (1-based): 1, 2, 4, 8 … s, at most 10 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs((1u64 << attempt.saturating_sub(1).min(4)).min(10))
}

pub async fn run(ctx: &Ctx, args: SendArgs) -> Result<u8, CliError> {
    check_type(&args.kind)?;
    let payload = parse_payload(&args.payload)?;
    let profile = ctx.profile()?;
    let key = profile_key(&profile)?;
    let api = Api::new(&ctx.url_for(&profile))?;
    let creds = &profile.credentials;

    // Sealed once: every retry sends these same bytes.
    let body = seal_send(&key, &creds.client_id, &args.kind, &payload);
    let mut attempt = 0;
    loop {
        match api.send(creds, &body).await {
            Ok((id, _)) => {
                print_line(&id.to_string())?;
                return Ok(EXIT_OK);
            }
            Err(e) if e.is_retryable() && attempt < args.retries => {
                attempt += 1;
                let wait = retry_delay(attempt);
                eprintln!(
                    "warning: send failed ({e}); retrying the same message in {} s ({attempt}/{})",
                    wait.as_secs(),
                    args.retries
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn retry_delays_double_up_to_ten_seconds() {
        let secs: Vec<u64> = (1..=7).map(|a| super::retry_delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10, 10]);
    }
}
