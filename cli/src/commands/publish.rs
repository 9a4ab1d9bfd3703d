//! `pigeonhole publish`: the admin's fan-out of one message to many clients.

use std::path::PathBuf;

use clap::Args;
use pigeonhole::domain::{ClientId, MAX_RECIPIENTS};

use super::{check_type, parse_payload, print_line, Ctx};
use crate::api::Api;
use crate::error::{CliError, EXIT_OK};

const EXAMPLES: &str = "\
Examples:
  export PIGEONHOLE_ADMIN_TOKEN=dev-admin-token
  pigeonhole publish --to 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --type greeting --payload '{\"text\": \"hello\"}'
  pigeonhole publish --to-file recipients.txt --type notice --payload '\"maintenance at 22:00\"'

--to-file takes one client id per line; blank lines and `#` comments are
ignored (`-` reads stdin). Lists over 10000 ids are sent as several publishes.
Publish has no idempotency key, so it is not retried: rerunning it publishes
again. The server is --url, else $PIGEONHOLE_URL, else the profile's URL.";

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

    let api = Api::new(&ctx.server_url()?)?;
    let batches: Vec<&[String]> = ids.chunks(MAX_RECIPIENTS).collect();
    for (i, batch) in batches.iter().enumerate() {
        let receipt = api
            .publish(&args.admin_token, batch, &args.kind, &payload)
            .await
            .inspect_err(|_| {
                if i > 0 {
                    eprintln!(
                        "note: {i} of {} batches were published before this error",
                        batches.len()
                    );
                }
            })?;
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
    fn a_bad_line_is_named() {
        let err = parse_recipients(&format!("{A}\nnot-an-id\n"), "r.txt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "r.txt line 2: \"not-an-id\" is not a client id (UUID)"
        );
    }
}
