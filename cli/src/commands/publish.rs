//! `pigeonhole publish`: the admin's fan-out of one message to many clients.

use std::path::PathBuf;

use clap::Args;
use pigeonhole::domain::{ClientId, MAX_RECIPIENTS};

use super::{check_type, parse_payload, print_line, Ctx};
use crate::error::{CliError, EXIT_OK};
use crate::retry::{seconds, Retry};

const EXAMPLES: &str = "\
Examples:
  export PIGEONHOLE_ADMIN_TOKEN=dev-admin-token
  pigeonhole publish --to 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --type greeting --payload '{\"text\": \"hello\"}'
  pigeonhole publish --to-file recipients.txt --type notice --payload '\"maintenance at 22:00\"'
  pigeonhole publish --to-file staff.txt --type notice --payload '\"fire drill\"' --idempotency-key drill-2026-11-25

--to-file takes one client id per line; blank lines and `#` comments are
ignored (`-` reads stdin). Lists over 10000 ids are sent as several publishes.

Each publish carries an Idempotency-Key (a fresh UUID unless you pass
--idempotency-key), and network errors, 5xx and 429 are retried with the same
key, so every recipient gets the message once. Retries wait about 1, 2, 4, 8 s
(with jitter), or the server's Retry-After. Rerunning the command without
--idempotency-key publishes again; with the same key and the same message (for
24 hours) it publishes nothing new and prints the original receipt. With more
than 10000 recipients, batch n uses the key KEY-n.
The server is --url, else $PIGEONHOLE_URL, else the profile's URL.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct PublishArgs {
    /// Recipient client ids
    #[arg(long = "to", value_name = "ID", num_args = 1..)]
    pub to: Vec<String>,

    /// File with one recipient id per line (`-` for stdin)
    #[arg(long, value_name = "FILE")]
    pub to_file: Option<PathBuf>,

    /// Message type (1–64 characters)
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,

    /// Payload: any JSON value, or `-` to read it from stdin
    #[arg(long, value_name = "JSON")]
    pub payload: String,

    /// Admin token
    #[arg(long, env = "PIGEONHOLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    /// Print each receipt as JSON: {"publish_id", "recipients"}
    #[arg(long)]
    pub json: bool,

    /// Idempotency-Key for this publish (1–255 visible ASCII characters)
    /// [default: a fresh UUID]. Reuse it to retry from another process.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// Retries after a network error, 5xx or 429 (same Idempotency-Key)
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,
}

/// The longest `Idempotency-Key` the server accepts.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The API's rule: 1–255 visible ASCII characters (0x21–0x7E).
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// One key per batch: the given key for a single batch, `KEY-n` (1-based)
/// when there are several, so a rerun with the same key and the same list
/// forms the same batches under the same keys. Without a key, a fresh UUID
/// per batch.
pub fn batch_keys(given: Option<&str>, batches: usize) -> Result<Vec<String>, CliError> {
    let keys: Vec<String> = match given {
        None => (0..batches)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect(),
        Some(key) if batches == 1 => vec![key.to_string()],
        Some(key) => (1..=batches).map(|n| format!("{key}-{n}")).collect(),
    };
    if !keys.iter().all(|k| valid_idempotency_key(k)) {
        return Err(CliError::Usage(format!(
            "--idempotency-key must be 1 to {} visible ASCII characters (no spaces or \
             control characters){}",
            if batches > 1 {
                MAX_IDEMPOTENCY_KEY_LEN - format!("-{batches}").len()
            } else {
                MAX_IDEMPOTENCY_KEY_LEN
            },
            if batches > 1 {
                format!(", leaving room for the batch suffix -{batches}")
            } else {
                String::new()
            },
        )));
    }
    Ok(keys)
}

/// Parses a recipients file: one id per line, `#` starts a comment.
pub fn parse_recipients(text: &str, origin: &str) -> Result<Vec<String>, CliError> {
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        ids.push(parse_id(entry).ok_or_else(|| {
            CliError::Usage(format!(
                "{origin} line {}: {entry:?} is not a client id (UUID)",
                n + 1
            ))
        })?);
    }
    Ok(ids)
}

fn parse_id(text: &str) -> Option<String> {
    ClientId::parse(text).map(|id| id.to_string())
}

/// Keeps the first occurrence of each id, in order.
pub fn dedup(ids: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

fn read_file(path: &PathBuf) -> Result<String, CliError> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| CliError::Failed(format!("cannot read recipients from stdin: {e}")))?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Failed(format!("{}: {e}", path.display())))
    }
}

pub async fn run(ctx: &Ctx, args: PublishArgs) -> Result<u8, CliError> {
    check_type(&args.kind)?;
    let payload = parse_payload(&args.payload)?;
    let mut ids = Vec::new();
    for (i, raw) in args.to.iter().enumerate() {
        // `--to a,b` is accepted too.
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            ids.push(parse_id(part).ok_or_else(|| {
                CliError::Usage(format!(
                    "--to #{}: {part:?} is not a client id (UUID)",
                    i + 1
                ))
            })?);
        }
    }
    if let Some(path) = &args.to_file {
        let text = read_file(path)?;
        ids.extend(parse_recipients(&text, &path.display().to_string())?);
    }
    let ids = dedup(ids);
    if ids.is_empty() {
        return Err(CliError::Usage(
            "no recipients: give --to ID... or --to-file FILE".into(),
        ));
    }
    if args.admin_token.trim().is_empty() {
        return Err(CliError::Usage("the admin token is empty".into()));
    }

    let api = ctx.server_api()?;
    let batches: Vec<&[String]> = ids.chunks(MAX_RECIPIENTS).collect();
    let keys = batch_keys(args.idempotency_key.as_deref(), batches.len())?;
    let retry = Retry::new(args.retries);
    for (i, (batch, key)) in batches.iter().zip(&keys).enumerate() {
        let result = retry
            .run(
                || {
                    api.publish(
                        &args.admin_token,
                        Some(key.as_str()),
                        batch,
                        &args.kind,
                        &payload,
                    )
                },
                |e, wait, attempt| {
                    eprintln!(
                        "warning: publish failed ({e}); retrying with the same Idempotency-Key in {} ({attempt}/{})",
                        seconds(wait),
                        args.retries
                    );
                },
            )
            .await;
        let receipt = match result {
            Ok(receipt) => receipt,
            Err(e) => {
                if i > 0 {
                    eprintln!(
                        "note: {i} of {} batches were published before this error",
                        batches.len()
                    );
                }
                // It may have gone through. A rerun under the same key
                // completes it without publishing anything twice (the
                // batches before this one were acknowledged already).
                let rerun_key = match &args.idempotency_key {
                    Some(given) => Some(given.as_str()),
                    None if batches.len() == 1 => Some(key.as_str()),
                    None => None,
                };
                if let (true, Some(rerun_key)) = (e.is_retryable(), rerun_key) {
                    eprintln!(
                        "note: to retry without publishing twice, rerun the same command \
                         with --idempotency-key {rerun_key}"
                    );
                }
                return Err(e.into());
            }
        };
        if args.json {
            print_line(&serde_json::to_string(&receipt).expect("receipt serializes"))?;
        } else {
            print_line(&format!(
                "published {} to {} recipient{}",
                receipt.publish_id,
                receipt.recipients,
                if receipt.recipients == 1 { "" } else { "s" }
            ))?;
        }
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13";
    const B: &str = "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b";

    #[test]
    fn recipient_files_skip_blanks_and_comments() {
        let text = format!("# staff\n{A}\n\n   {}  # shouty\n{B}\n", A.to_uppercase());
        let ids = parse_recipients(&text, "r.txt").unwrap();
        assert_eq!(ids, [A, A, B]);
        assert_eq!(dedup(ids), [A, B]);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_up_to_255() {
        assert!(valid_idempotency_key("a"));
        assert!(valid_idempotency_key("!~"));
        assert!(valid_idempotency_key(&"k".repeat(255)));
        for bad in ["", "has space", "tab\t", "caf\u{e9}", "nl\n", "\x7f"] {
            assert!(!valid_idempotency_key(bad), "{bad:?}");
        }
        assert!(!valid_idempotency_key(&"k".repeat(256)));
    }

    #[test]
    fn one_key_per_batch() {
        let fresh = batch_keys(None, 3).unwrap();
        assert_eq!(fresh.len(), 3);
        for k in &fresh {
            assert!(uuid::Uuid::parse_str(k).is_ok(), "{k}");
        }
        assert_ne!(fresh[0], fresh[1]);
        assert_ne!(batch_keys(None, 1).unwrap(), batch_keys(None, 1).unwrap());
        assert_eq!(batch_keys(Some("job-7"), 1).unwrap(), ["job-7"]);
        assert_eq!(
            batch_keys(Some("job-7"), 2).unwrap(),
            ["job-7-1", "job-7-2"]
        );
        let err = batch_keys(Some("a b"), 1).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)), "{err}");
        // Room for the suffix is needed too.
        assert!(batch_keys(Some(&"k".repeat(255)), 1).is_ok());
        assert!(batch_keys(Some(&"k".repeat(254)), 2).is_err());
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = parse_recipients(&format!("{A}\nnot-an-id\n"), "r.txt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "r.txt line 2: \"not-an-id\" is not a client id (UUID)"
        );
    }
}
