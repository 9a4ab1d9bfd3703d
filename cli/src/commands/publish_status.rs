//! `pigeonhole status PUBLISH_ID`: how far a publish got (admin), and what
//! `pigeonhole publish --wait` shows while it waits.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::{print_line, Ctx};
use crate::api::{Api, PublishStatus, RecipientStatus};
use crate::error::{CliError, EXIT_OK};
use crate::retry::{seconds, Retry};
use crate::status::{json_for_terminal, printable};

const EXAMPLES: &str = "\
Examples:
  export PIGEONHOLE_ADMIN_TOKEN=dev-admin-token
  pigeonhole status 9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b
  pigeonhole status 9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b --recipients
  pigeonhole status 9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b --json | jq .acknowledged

Counts, of the publish's recipients: delivered (their inbox holds or held the
message, acknowledged ones included), acknowledged (their cursor passed it
before it expired), expired (their copy expired unacknowledged), unknown (ids
that named no client), pending (the fan-out has not reached them yet). The
number of recipients is `?` while a tag or --all audience is still being
counted. State: queued (nothing settled yet), delivering, or done (the fan-out
reached every recipient).

--recipients also lists every recipient (CLIENT ID, MESSAGE ID, STATUS),
walking all pages; with --json they are in \"recipient_status\".
A publish's status is kept 15 days; an unknown or older id is
`error: not_found: …` (exit 1).
The server is --url, else $PIGEONHOLE_URL, else the profile's URL.";

/// The first wait between status reads of `publish --wait`.
pub const WAIT_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between status reads of `publish --wait`.
pub const WAIT_MAX: Duration = Duration::from_secs(5);
/// Recipients per request while listing them (the API's maximum).
pub const RECIPIENTS_PAGE: u32 = 1000;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct StatusArgs {
    /// The publish id (a UUID, as `pigeonhole publish` prints it)
    #[arg(value_name = "PUBLISH_ID")]
    pub publish_id: String,

    /// Also list every recipient: client id, message id and status
    #[arg(long)]
    pub recipients: bool,

    /// Print the status as JSON (with --recipients, every recipient in
    /// "recipient_status")
    #[arg(long)]
    pub json: bool,

    /// Admin token
    #[arg(long, env = "PIGEONHOLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    /// Retries of a read after a network error, 5xx or 429
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,

    /// Recipients per request while paging (testing)
    #[arg(long, hide = true, default_value_t = RECIPIENTS_PAGE,
          value_parser = clap::value_parser!(u32).range(1..=RECIPIENTS_PAGE as i64))]
    pub page_size: u32,
}

/// The counts of one publish, or of several added up (a `--to` list of
/// more than 10000 ids is several publishes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// `None` while an audience is still being enumerated.
    pub recipients: Option<u64>,
    pub delivered: u64,
    pub acknowledged: u64,
    pub expired: u64,
    pub unknown: u64,
    pub pending: u64,
    /// `queued`, `delivering` or `done` (of them all).
    pub state: String,
}

impl From<&PublishStatus> for Progress {
    fn from(s: &PublishStatus) -> Progress {
        Progress {
            recipients: s.recipients,
            delivered: s.delivered,
            acknowledged: s.acknowledged,
            expired: s.expired,
            unknown: s.unknown,
            pending: s.pending,
            state: s.state.clone(),
        }
    }
}

impl Progress {
    /// The counts of several publishes added up. The number of recipients
    /// is known once it is known for each; the state is `done` when every
    /// one is done, `queued` when every one is queued, else `delivering`.
    pub fn sum<'a>(statuses: impl IntoIterator<Item = &'a PublishStatus>) -> Progress {
        let mut total = Progress {
            recipients: Some(0),
            delivered: 0,
            acknowledged: 0,
            expired: 0,
            unknown: 0,
            pending: 0,
            state: String::new(),
        };
        let (mut count, mut done, mut queued) = (0, 0, 0);
        for s in statuses {
            count += 1;
            total.recipients = total.recipients.zip(s.recipients).map(|(a, b)| a + b);
            total.delivered += s.delivered;
            total.acknowledged += s.acknowledged;
            total.expired += s.expired;
            total.unknown += s.unknown;
            total.pending += s.pending;
            done += usize::from(s.state == "done");
            queued += usize::from(s.state == "queued");
        }
        total.state = if count == 0 {
            total.recipients = None;
            "waiting".into()
        } else if done == count {
            "done".into()
        } else if queued == count {
            "queued".into()
        } else {
            "delivering".into()
        };
        total
    }

    /// What is still missing, in words, for the message of a timed-out
    /// `--wait`.
    pub fn missing(&self) -> String {
        let Some(n) = self.recipients else {
            return format!(
                "the audience is still being enumerated ({} delivered so far)",
                self.delivered
            );
        };
        let unacknowledged =
            n.saturating_sub(self.acknowledged + self.expired + self.unknown + self.pending);
        let mut parts = Vec::new();
        if self.pending > 0 {
            parts.push(format!("{} not reached by the fan-out yet", self.pending));
        }
        if unacknowledged > 0 {
            parts.push(format!("{unacknowledged} delivered but not acknowledged"));
        }
        if parts.is_empty() {
            parts.push(format!("the state is {}", printable(&self.state)));
        }
        format!(
            "of {n} recipient{}, {}",
            if n == 1 { "" } else { "s" },
            parts.join(", ")
        )
    }
}

/// `delivered 37/50 · acknowledged 12/50 · expired 0 · unknown 1 · pending 12`,
/// with `?` for the number of recipients while it is not known yet.
pub fn progress_line(p: &Progress) -> String {
    let of = p
        .recipients
        .map_or_else(|| "?".to_string(), |n| n.to_string());
    format!(
        "delivered {}/{of} · acknowledged {}/{of} · expired {} · unknown {} · pending {}",
        p.delivered, p.acknowledged, p.expired, p.unknown, p.pending
    )
}

/// `publish <id> done: delivered 2/2 · …`: the one line `publish --wait`
/// ends with.
pub fn final_line(s: &PublishStatus) -> String {
    format!(
        "publish {} {}: {}",
        printable(&s.publish_id),
        printable(&s.state),
        progress_line(&Progress::from(s))
    )
}

/// The status as one line of JSON, safe for a terminal.
pub fn status_json(s: &PublishStatus) -> String {
    json_for_terminal(&serde_json::to_string(s).expect("a status serializes"))
}

/// The audience in words: `3 listed client ids`, `the clients tagged eu,
/// door-sensors`, `every client`.
pub fn audience_text(audience: &Value) -> String {
    if let Some(n) = audience.get("to_client_ids").and_then(Value::as_u64) {
        return format!("{n} listed client id{}", if n == 1 { "" } else { "s" });
    }
    if let Some(tags) = audience.get("to_tags").and_then(Value::as_array) {
        let tags: Vec<String> = tags
            .iter()
            .map(|t| printable(t.as_str().unwrap_or_default()))
            .collect();
        return format!("the clients tagged {}", tags.join(", "));
    }
    if audience.get("to_all") == Some(&Value::Bool(true)) {
        return "every client".into();
    }
    printable(&audience.to_string())
}

/// The status as text, one field per line, ending with the counts.
pub fn status_lines(s: &PublishStatus) -> Vec<String> {
    vec![
        format!("publish   {}", printable(&s.publish_id)),
        format!("type      {}", printable(&s.kind)),
        format!("created   {}", printable(&s.created_at)),
        format!("audience  {}", audience_text(&s.audience)),
        format!(
            "expires   {}",
            s.expires_at.as_deref().map_or("never".into(), printable)
        ),
        format!("state     {}", printable(&s.state)),
        progress_line(&Progress::from(s)),
    ]
}

/// The recipients as an aligned table: CLIENT ID, MESSAGE ID (`-` while
/// there is none), STATUS.
pub fn recipients_table(rows: &[RecipientStatus]) -> Vec<String> {
    let cells: Vec<[String; 3]> = rows
        .iter()
        .map(|r| {
            [
                printable(&r.client_id),
                r.message_id.map_or_else(|| "-".into(), |id| id.to_string()),
                printable(&r.status),
            ]
        })
        .collect();
    let header = ["CLIENT ID", "MESSAGE ID", "STATUS"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    std::iter::once(header)
        .chain(cells)
        .map(|row| {
            format!(
                "{:w0$}  {:w1$}  {}",
                row[0],
                row[1],
                row[2],
                w0 = widths[0],
                w1 = widths[1]
            )
        })
        .collect()
}

/// One status read, retried after a network error, 5xx or 429 (reading
/// changes nothing).
pub async fn fetch_with_retries(
    api: &Api,
    admin_token: &str,
    publish_id: &str,
    recipients: Option<(u32, Option<&str>)>,
    retries: u32,
) -> Result<PublishStatus, CliError> {
    Retry::new(retries)
        .run(
            || api.publish_status(admin_token, publish_id, recipients),
            |e, wait, attempt| {
                eprintln!(
                    "warning: reading the status failed ({e}); retrying in {} ({attempt}/{retries})",
                    seconds(wait)
                );
            },
        )
        .await
        .map_err(CliError::from)
}

/// The status with every recipient, walking all pages. The flag is false
/// when the list stopped short because the audience is still being
/// enumerated (more recipients may follow).
async fn with_all_recipients(
    api: &Api,
    args: &StatusArgs,
    publish_id: &str,
) -> Result<(PublishStatus, bool), CliError> {
    let fetch = |token: Option<String>| async move {
        fetch_with_retries(
            api,
            &args.admin_token,
            publish_id,
            Some((args.page_size, token.as_deref())),
            args.retries,
        )
        .await
    };
    let mut status = fetch(None).await?;
    let mut rows = status.recipient_status.take().unwrap_or_default();
    let mut token = status.next_page_token.take();
    let mut complete = true;
    while let Some(current) = token {
        let page = fetch(Some(current.clone())).await?;
        let got = page.recipient_status.unwrap_or_default();
        let repeated = page.next_page_token.as_ref() == Some(&current);
        if repeated && !got.is_empty() {
            return Err(CliError::Api(crate::api::ApiError::Protocol(
                "the server repeated a page token".into(),
            )));
        }
        rows.extend(got);
        if repeated {
            // At the end of what is enumerated so far.
            complete = false;
            break;
        }
        token = page.next_page_token;
    }
    status.recipient_status = Some(rows);
    Ok((status, complete))
}

pub async fn run(ctx: &Ctx, args: StatusArgs) -> Result<u8, CliError> {
    let publish_id = uuid::Uuid::parse_str(args.publish_id.trim())
        .map_err(|_| {
            CliError::Usage(format!(
                "{:?} is not a publish id (a UUID, as `pigeonhole publish` prints it)",
                printable(&args.publish_id)
            ))
        })?
        .to_string();
    if args.admin_token.trim().is_empty() {
        return Err(CliError::Usage("the admin token is empty".into()));
    }
    let api = ctx.server_api()?;
    let (status, complete) = if args.recipients {
        with_all_recipients(&api, &args, &publish_id).await?
    } else {
        let status =
            fetch_with_retries(&api, &args.admin_token, &publish_id, None, args.retries).await?;
        (status, true)
    };
    if !complete {
        eprintln!(
            "note: the audience is still being enumerated: more recipients may follow \
             (run the command again later)"
        );
    }
    if args.json {
        let pretty = serde_json::to_string_pretty(&status).expect("a status serializes");
        print_line(&json_for_terminal(&pretty))?;
        return Ok(EXIT_OK);
    }
    for line in status_lines(&status) {
        print_line(&line)?;
    }
    if let Some(rows) = &status.recipient_status {
        print_line("")?;
        for line in recipients_table(rows) {
            print_line(&line)?;
        }
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: Value) -> PublishStatus {
        serde_json::from_value(v).unwrap()
    }

    fn sample(recipients: Value, counts: [u64; 5], state: &str) -> PublishStatus {
        let [delivered, acknowledged, expired, unknown, pending] = counts;
        status(json!({
            "publish_id": "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b", "type": "greeting",
            "created_at": "2026-11-25T23:49:50.123Z", "audience": {"to_tags": ["eu"]},
            "expires_at": null, "recipients": recipients, "delivered": delivered,
            "acknowledged": acknowledged, "expired": expired, "unknown": unknown,
            "pending": pending, "state": state
        }))
    }

    #[test]
    fn the_progress_line_counts_of_the_recipients() {
        let s = sample(json!(50), [37, 12, 0, 1, 12], "delivering");
        assert_eq!(
            progress_line(&Progress::from(&s)),
            "delivered 37/50 · acknowledged 12/50 · expired 0 · unknown 1 · pending 12"
        );
        let s = sample(Value::Null, [3, 1, 0, 0, 0], "delivering");
        assert_eq!(
            progress_line(&Progress::from(&s)),
            "delivered 3/? · acknowledged 1/? · expired 0 · unknown 0 · pending 0",
            "recipients are `?` while the audience is being counted"
        );
        assert_eq!(
            final_line(&sample(json!(2), [2, 2, 0, 0, 0], "done")),
            "publish 9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b done: \
             delivered 2/2 · acknowledged 2/2 · expired 0 · unknown 0 · pending 0"
        );
    }

    #[test]
    fn a_publish_is_finished_when_done_and_nothing_waits_for_an_ack() {
        assert!(sample(json!(3), [2, 2, 0, 1, 0], "done").finished());
        // An expired copy settles a recipient, whether or not `delivered`
        // counts it.
        assert!(sample(json!(3), [2, 2, 1, 0, 0], "done").finished());
        assert!(sample(json!(3), [3, 2, 1, 0, 0], "done").finished());
        assert!(!sample(json!(3), [3, 2, 0, 0, 0], "done").finished());
        assert!(!sample(json!(3), [2, 2, 0, 0, 1], "delivering").finished());
        assert!(!sample(Value::Null, [2, 2, 0, 0, 0], "delivering").finished());
        assert!(!sample(json!(0), [0, 0, 0, 0, 0], "queued").finished());
        assert!(sample(json!(0), [0, 0, 0, 0, 0], "done").finished());
        assert_eq!(
            sample(json!(5), [4, 1, 0, 0, 1], "delivering").unacknowledged(),
            Some(3)
        );
    }

    #[test]
    fn several_publishes_add_up() {
        let a = sample(json!(10000), [10000, 9000, 0, 0, 0], "done");
        let b = sample(json!(5), [3, 0, 0, 1, 1], "delivering");
        let p = Progress::sum([&a, &b]);
        assert_eq!(p.recipients, Some(10005));
        assert_eq!(
            (p.delivered, p.acknowledged, p.unknown, p.pending),
            (10003, 9000, 1, 1)
        );
        assert_eq!(p.state, "delivering");
        assert_eq!(Progress::sum([&a, &a]).state, "done");
        let q = sample(json!(1), [0, 0, 0, 0, 1], "queued");
        assert_eq!(Progress::sum([&q, &q]).state, "queued");
        let open = sample(Value::Null, [1, 0, 0, 0, 0], "delivering");
        assert_eq!(Progress::sum([&a, &open]).recipients, None);
        assert_eq!(Progress::sum([]).recipients, None);
    }

    #[test]
    fn what_is_missing_is_said_in_words() {
        let p = Progress::from(&sample(json!(50), [37, 12, 0, 1, 12], "delivering"));
        assert_eq!(
            p.missing(),
            "of 50 recipients, 12 not reached by the fan-out yet, 25 delivered but not acknowledged"
        );
        let p = Progress::from(&sample(Value::Null, [7, 0, 0, 0, 0], "delivering"));
        assert!(
            p.missing().contains("still being enumerated (7 delivered"),
            "{}",
            p.missing()
        );
    }

    #[test]
    fn audiences_read_as_words() {
        assert_eq!(
            audience_text(&json!({"to_client_ids": 3})),
            "3 listed client ids"
        );
        assert_eq!(
            audience_text(&json!({"to_client_ids": 1})),
            "1 listed client id"
        );
        assert_eq!(
            audience_text(&json!({"to_tags": ["eu", "door-sensors"]})),
            "the clients tagged eu, door-sensors"
        );
        assert_eq!(audience_text(&json!({"to_all": true})), "every client");
        assert!(!audience_text(&json!({"to_tags": ["e\u{1b}[2J"]})).contains('\u{1b}'));
    }

    #[test]
    fn the_status_reads_as_text_and_json() {
        let mut s = sample(json!(2), [2, 1, 0, 0, 0], "done");
        s.kind = "alarm\u{1b}[2J".into();
        s.expires_at = Some("2026-11-25T23:54:50.123Z".into());
        let lines = status_lines(&s);
        assert_eq!(lines[0], "publish   9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b");
        assert_eq!(lines[1], "type      alarm\\u{1b}[2J");
        assert_eq!(lines[3], "audience  the clients tagged eu");
        assert_eq!(lines[4], "expires   2026-11-25T23:54:50.123Z");
        assert_eq!(lines[5], "state     done");
        assert!(lines[6].starts_with("delivered 2/2 · acknowledged 1/2"));
        let line = status_json(&s);
        assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line:?}");
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["type"], json!("alarm\u{1b}[2J"));
        assert_eq!(back["recipients"], json!(2));
        assert!(back.get("recipient_status").is_none());
    }

    #[test]
    fn the_recipients_table_is_aligned_and_escaped() {
        let rows: Vec<RecipientStatus> = serde_json::from_value(json!([
            {"client_id": "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13", "message_id": 12, "status": "acknowledged"},
            {"client_id": "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b", "message_id": null, "status": "pending"},
            {"client_id": "x\u{1b}]0;t\u{7}", "message_id": null, "status": "unknown"}
        ]))
        .unwrap();
        let lines = recipients_table(&rows);
        assert_eq!(
            lines[0],
            "CLIENT ID                             MESSAGE ID  STATUS"
        );
        assert_eq!(
            lines[1],
            "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13  12          acknowledged"
        );
        assert_eq!(
            lines[2],
            "9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b  -           pending"
        );
        assert!(
            lines[3].chars().all(|c| !crate::status::unprintable(c)),
            "{:?}",
            lines[3]
        );
    }
}
