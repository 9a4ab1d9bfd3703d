//! `pigeonhole publish`: the admin's fan-out of one message to many clients,
//! and with `--wait` the wait until every recipient has it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args};
use pigeonhole::domain::{valid_tag, ClientId, MAX_AUDIENCE_TAGS, MAX_RECIPIENTS, MAX_TTL_SECS};

use super::publish_status::{
    final_line, progress_line, status_json, Progress, WAIT_FIRST, WAIT_MAX,
};
use super::{check_type, ctrl_c, parse_payload, print_line, Ctx};
use crate::api::{publish_body, Api, Audience, PublishReceipt, PublishStatus};
use crate::error::{CliError, EXIT_OK};
use crate::retry::{seconds, Retry};
use crate::status::{printable, StatusLine};

const EXAMPLES: &str = "\
Examples:
  export PIGEONHOLE_ADMIN_TOKEN=dev-admin-token
  pigeonhole publish --to 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --type greeting --payload '{\"text\": \"hello\"}'
  pigeonhole publish --to-file recipients.txt --type notice --payload '\"maintenance at 22:00\"'
  pigeonhole publish --to-tag eu door-sensors --type alarm --payload '\"door open\"' --ttl 300 --wait
  pigeonhole publish --all --type notice --payload '\"new firmware\"' --wait --timeout 3600 --json
  pigeonhole publish --to-file staff.txt --type notice --payload '\"fire drill\"' --idempotency-key drill-2026-11-25

Audience: exactly one of --to ID... / --to-file FILE (which may be combined),
--to-tag TAG... (every client carrying any of the tags, 1 to 10) or --all
(every client registered when the server accepts the publish). --to-file takes
one client id per line; blank lines and `#` comments are ignored (`-` reads
stdin). Lists over 10000 ids are sent as several publishes.

--ttl SECS (1 to 2592000, 30 days): a recipient that has not acknowledged the
message that long after the publish never gets it.

--wait: after the publish, follow its delivery status (every 1 s, then 2, 4, up
to 5 s) until the fan-out is done and every recipient that got the message has
acknowledged it (or its copy expired), or --timeout SECS (default 300) passes:
then the exit code is 1. On a terminal a progress line counts
`delivered 37/50 · acknowledged 12/50 · expired 0 · unknown 1 · pending 12`
(`?` while a tag or --all audience is still being counted); at the end one line
is printed, or with --json the final status as JSON. `pigeonhole status ID`
shows the same later.

Each publish carries an Idempotency-Key (a fresh UUID unless you pass
--idempotency-key), and network errors, 5xx and 429 are retried with the same
key, so every recipient gets the message once. Retries wait about 1, 2, 4, 8 s
(with jitter), or the server's Retry-After. Rerunning the command without
--idempotency-key publishes again; with the same key and the same message (for
24 hours) it publishes nothing new and prints the original receipt. With more
than 10000 recipients, batch n uses the key KEY-n.
The server is --url, else $PIGEONHOLE_URL, else the profile's URL.";

/// The default of `--timeout`.
pub const DEFAULT_WAIT_SECS: u64 = 300;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
#[command(group(
    ArgGroup::new("audience")
        .args(["to", "to_file", "to_tag", "all"])
        .required(true)
        .multiple(true)
))]
pub struct PublishArgs {
    /// Recipient client ids
    #[arg(long = "to", value_name = "ID", num_args = 1..)]
    pub to: Vec<String>,

    /// File with one recipient id per line (`-` for stdin)
    #[arg(long, value_name = "FILE")]
    pub to_file: Option<PathBuf>,

    /// Every client carrying any of these tags (1–10)
    #[arg(long = "to-tag", value_name = "TAG", num_args = 1..,
          conflicts_with_all = ["to", "to_file", "all"])]
    pub to_tag: Vec<String>,

    /// Every client registered when the server accepts the publish
    #[arg(long, conflicts_with_all = ["to", "to_file", "to_tag"])]
    pub all: bool,

    /// Seconds a recipient has to acknowledge the message before it expires
    /// (1–2592000)
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS))]
    pub ttl: Option<u64>,

    /// Follow the delivery status until every recipient has acknowledged
    /// the message (or its copy expired)
    #[arg(long)]
    pub wait: bool,

    /// With --wait: give up (exit 1) after this many seconds [default: 300]
    #[arg(long, value_name = "SECS", requires = "wait",
          value_parser = clap::value_parser!(u64).range(1..=86_400 * 30))]
    pub timeout: Option<u64>,

    /// Message type (1–64 characters)
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,

    /// Payload: any JSON value, or `-` to read it from stdin
    #[arg(long, value_name = "JSON")]
    pub payload: String,

    /// Admin token
    #[arg(long, env = "PIGEONHOLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    /// Print each receipt as JSON: {"publish_id", "recipients"}; with
    /// --wait the final status instead
    #[arg(long)]
    pub json: bool,

    /// Idempotency-Key for this publish (1–255 visible ASCII characters)
    /// [default: a fresh UUID]. Reuse it to retry from another process.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// Retries after a network error, 5xx or 429 (same Idempotency-Key)
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,

    /// First wait between status reads with --wait, in milliseconds (testing)
    #[arg(long, hide = true, default_value_t = WAIT_FIRST.as_millis() as u64)]
    pub wait_base_ms: u64,
}

/// Who the command publishes to, once the arguments are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Distinct client ids, in the order given.
    Ids(Vec<String>),
    /// Distinct, valid tags, in the order given.
    Tags(Vec<String>),
    All,
}

/// Checks `--to-tag` values (`a,b` is accepted too): each 1 to 64
/// characters of `a-z 0-9 _ . -`, 1 to 10 distinct ones.
pub fn parse_tags(raw: &[String]) -> Result<Vec<String>, CliError> {
    let mut tags: Vec<String> = Vec::new();
    for part in raw.iter().flat_map(|r| r.split(',')).map(str::trim) {
        if part.is_empty() {
            continue;
        }
        if !valid_tag(part) {
            return Err(CliError::Usage(format!(
                "--to-tag {:?} is not a tag: 1 to 64 characters of a-z 0-9 _ . -",
                printable(part)
            )));
        }
        if !tags.iter().any(|t| t == part) {
            tags.push(part.to_string());
        }
    }
    if tags.is_empty() {
        return Err(CliError::Usage("--to-tag needs at least one tag".into()));
    }
    if tags.len() > MAX_AUDIENCE_TAGS {
        return Err(CliError::Usage(format!(
            "--to-tag takes at most {MAX_AUDIENCE_TAGS} tags (got {})",
            tags.len()
        )));
    }
    Ok(tags)
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

/// The audience of the command line: `--to`/`--to-file`, `--to-tag` or
/// `--all` (clap has made sure it is exactly one of these).
fn target(args: &PublishArgs) -> Result<Target, CliError> {
    if args.all {
        return Ok(Target::All);
    }
    if !args.to_tag.is_empty() {
        return Ok(Target::Tags(parse_tags(&args.to_tag)?));
    }
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
            "no recipients: give --to ID..., --to-file FILE, --to-tag TAG... or --all".into(),
        ));
    }
    Ok(Target::Ids(ids))
}

/// The receipt as a line of text.
pub fn receipt_line(receipt: &PublishReceipt, target: &Target) -> String {
    let id = printable(&receipt.publish_id);
    match (receipt.recipients, target) {
        (Some(n), _) => format!(
            "published {id} to {n} recipient{}",
            if n == 1 { "" } else { "s" }
        ),
        (None, Target::Tags(tags)) => format!(
            "published {id} to the clients tagged {} (counted as the fan-out goes: \
             pigeonhole status {id})",
            tags.join(", ")
        ),
        (None, _) => format!(
            "published {id} to every client (counted as the fan-out goes: pigeonhole status {id})"
        ),
    }
}

pub async fn run(ctx: &Ctx, args: PublishArgs) -> Result<u8, CliError> {
    check_type(&args.kind)?;
    let payload = parse_payload(&args.payload)?;
    let target = target(&args)?;
    if args.admin_token.trim().is_empty() {
        return Err(CliError::Usage("the admin token is empty".into()));
    }

    let api = ctx.server_api()?;
    let bodies: Vec<serde_json::Value> = match &target {
        Target::Ids(ids) => ids
            .chunks(MAX_RECIPIENTS)
            .map(|batch| publish_body(Audience::Clients(batch), &args.kind, &payload, args.ttl))
            .collect(),
        Target::Tags(tags) => vec![publish_body(
            Audience::Tags(tags),
            &args.kind,
            &payload,
            args.ttl,
        )],
        Target::All => vec![publish_body(Audience::All, &args.kind, &payload, args.ttl)],
    };
    let keys = batch_keys(args.idempotency_key.as_deref(), bodies.len())?;
    let retry = Retry::new(args.retries);
    let mut published = Vec::new();
    for (i, (body, key)) in bodies.iter().zip(&keys).enumerate() {
        let result = retry
            .run(
                || api.publish(&args.admin_token, Some(key.as_str()), body),
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
                        bodies.len()
                    );
                }
                // It may have gone through. A rerun under the same key
                // completes it without publishing anything twice (the
                // batches before this one were acknowledged already).
                let rerun_key = match &args.idempotency_key {
                    Some(given) => Some(given.as_str()),
                    None if bodies.len() == 1 => Some(key.as_str()),
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
        if args.wait {
            // The receipt goes to stderr: stdout is for the final status.
            if !args.json {
                eprintln!("{}", receipt_line(&receipt, &target));
            }
        } else if args.json {
            print_line(&serde_json::to_string(&receipt).expect("receipt serializes"))?;
        } else {
            print_line(&receipt_line(&receipt, &target))?;
        }
        published.push(receipt.publish_id);
    }
    if !args.wait {
        return Ok(EXIT_OK);
    }
    let timeout = Duration::from_secs(args.timeout.unwrap_or(DEFAULT_WAIT_SECS));
    let first = Duration::from_millis(args.wait_base_ms);
    wait_for(
        &api,
        &args.admin_token,
        &published,
        timeout,
        first,
        args.json,
    )
    .await
}

/// The waits between status reads of `--wait`: `first`, doubling, at most
/// five times `first` (1, 2, 4, 5, 5 … s by default).
#[derive(Debug, Clone)]
pub struct WaitSchedule {
    delay: Duration,
    max: Duration,
}

impl WaitSchedule {
    pub fn new(first: Duration) -> WaitSchedule {
        let first = first.max(Duration::from_millis(1));
        WaitSchedule {
            delay: first,
            max: first * (WAIT_MAX.as_millis() / WAIT_FIRST.as_millis()) as u32,
        }
    }
}

impl Iterator for WaitSchedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        Some(wait)
    }
}

/// Follows the status of `ids` until each is finished (see
/// [`PublishStatus::finished`]) or `timeout` passes.
async fn wait_for(
    api: &Api,
    admin_token: &str,
    ids: &[String],
    timeout: Duration,
    first: Duration,
    json: bool,
) -> Result<u8, CliError> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut line = StatusLine::stderr();
    let mut latest: Vec<Option<PublishStatus>> = vec![None; ids.len()];
    let mut schedule = WaitSchedule::new(first);
    let mut interrupt = std::pin::pin!(ctrl_c());
    loop {
        for (id, slot) in ids.iter().zip(latest.iter_mut()) {
            if slot.as_ref().is_some_and(PublishStatus::finished) {
                continue;
            }
            match api.publish_status(admin_token, id, None).await {
                Ok(status) => *slot = Some(status),
                // The publish went through; a failed read is tried again.
                Err(e) if e.is_retryable() => {
                    line.note(&format!("warning: reading the status of {id} failed: {e}"))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let finished = latest
            .iter()
            .all(|s| s.as_ref().is_some_and(PublishStatus::finished));
        let now = tokio::time::Instant::now();
        if finished || now >= deadline {
            line.clear();
            for status in latest.iter().flatten() {
                if json {
                    print_line(&status_json(status))?;
                } else {
                    print_line(&final_line(status))?;
                }
            }
            if finished {
                return Ok(EXIT_OK);
            }
            let progress = Progress::sum(latest.iter().flatten());
            return Err(CliError::Failed(format!(
                "timed out after {} waiting for {}: {}; the publish goes on \
                 (`pigeonhole status {}` shows where it stands)",
                seconds(timeout),
                if ids.len() == 1 {
                    "the publish"
                } else {
                    "the publishes"
                },
                progress.missing(),
                ids.join("`, `pigeonhole status "),
            )));
        }
        if line.enabled() {
            let progress = Progress::sum(latest.iter().flatten());
            let state = match progress.state.as_str() {
                "done" => "done, waiting for acknowledgements",
                other => other,
            };
            line.show(&format!(
                "{}: {} · {} s",
                printable(state),
                progress_line(&progress),
                now.duration_since(started).as_secs()
            ));
        }
        let wait = schedule
            .next()
            .unwrap_or(WAIT_MAX)
            .min(deadline.saturating_duration_since(now));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut interrupt => {
                line.clear();
                return Err(CliError::Failed(format!(
                    "stopped waiting; the publish goes on (`pigeonhole status {}` shows where it stands)",
                    ids.join("`, `pigeonhole status ")
                )));
            }
        }
    }
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
    fn tags_are_checked_and_folded() {
        let given =
            |raw: &[&str]| parse_tags(&raw.iter().map(|t| t.to_string()).collect::<Vec<_>>());
        assert_eq!(
            given(&["eu,door-sensors", "eu", " v1.2_x "]).unwrap(),
            ["eu", "door-sensors", "v1.2_x"]
        );
        for bad in [
            "EU",
            "door sensors",
            "caf\u{e9}",
            "x\u{1b}[2J",
            &"t".repeat(65),
        ] {
            let err = given(&[bad]).unwrap_err();
            assert!(matches!(err, CliError::Usage(_)), "{bad:?}");
            assert!(err.to_string().contains("a-z 0-9 _ . -"), "{err}");
            assert!(!err.to_string().contains('\u{1b}'), "{err}");
        }
        assert!(given(&[","]).is_err(), "no tag at all");
        let eleven: Vec<String> = (0..11).map(|n| format!("t{n}")).collect();
        let err = parse_tags(&eleven).unwrap_err();
        assert!(err.to_string().contains("at most 10"), "{err}");
        assert_eq!(parse_tags(&eleven[..10]).unwrap().len(), 10);
    }

    #[test]
    fn receipts_read_as_text() {
        let receipt = |n| PublishReceipt {
            publish_id: "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b".into(),
            recipients: n,
        };
        let ids = Target::Ids(vec![A.into()]);
        assert_eq!(
            receipt_line(&receipt(Some(1)), &ids),
            "published 9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b to 1 recipient"
        );
        assert_eq!(
            receipt_line(&receipt(Some(2)), &ids),
            "published 9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b to 2 recipients"
        );
        let tags = Target::Tags(vec!["eu".into(), "door-sensors".into()]);
        let line = receipt_line(&receipt(None), &tags);
        assert!(
            line.starts_with(
                "published 9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b to the clients tagged eu, door-sensors"
            ),
            "{line}"
        );
        assert!(line.contains("pigeonhole status 9b7e4a10"), "{line}");
        let line = receipt_line(&receipt(None), &Target::All);
        assert!(line.contains(" to every client "), "{line}");
    }

    #[test]
    fn status_reads_back_off_from_one_second_to_five() {
        let secs: Vec<u64> = WaitSchedule::new(WAIT_FIRST)
            .take(7)
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(secs, [1, 2, 4, 5, 5, 5, 5]);
        let ms: Vec<u128> = WaitSchedule::new(Duration::from_millis(100))
            .take(5)
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 400, 500, 500], "the same shape, scaled");
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
