//! `pigeonhole inbox CLIENT_ID`: the admin reads what a client sent
//! (`GET /clients/{client_id}/sent`), oldest first, page after page until
//! the server answers 204; with `--follow` it then keeps polling on the
//! short-poll schedule.

use std::time::Duration;

use clap::Args;
use pigeonhole::domain::{ClientId, MAX_POLL_LIMIT};

use super::{ctrl_c, follow_outcome, print_line, Ctx};
use crate::api::{Api, ApiError, Sent, SentMessage, SentPage};
use crate::backoff::{Backoff, PollOutcome};
use crate::error::{CliError, EXIT_OK};
use crate::retry::{seconds, Retry};
use crate::status::{json_for_terminal, printable, StatusLine};

const EXAMPLES: &str = "\
Examples:
  export PIGEONHOLE_ADMIN_TOKEN=dev-admin-token
  pigeonhole inbox 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13
  pigeonhole inbox 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --after 41 --json | jq .payload
  pigeonhole inbox 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --follow

Prints every message the client sent after id N (--after, default 0), oldest
first: `[created_at] #id type: payload`, or with --json one object per line:
{\"id\", \"type\", \"payload\", \"aad\", \"created_at\"}. The server decrypts them
(they are stored sealed under its own key); control and format characters are
shown escaped. Nothing is acknowledged or saved: remember the last id you read
and pass it as --after next time. `pigeonhole clients` shows each client's
newest sent id (SENT).

Without --follow it pages until nothing newer is left, then exits 0. A network
error, 5xx or 429 is retried (--retries, waiting the server's Retry-After when
it sends one). With --follow it then polls for new messages: 3 s, then +3 s
after each empty read up to 30 s, back to 3 s after messages; Retry-After is
honoured on 429 and 503, network errors and other 5xx back off the same way.
Ctrl-C stops it (exit 0) and says which --after resumes.

An unknown client is `error: not_found: …` (exit 1).
The server is --url, else $PIGEONHOLE_URL, else the profile's URL.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct InboxArgs {
    /// The client id (a UUID, as `pigeonhole clients` shows)
    #[arg(value_name = "CLIENT_ID")]
    pub client_id: String,

    /// Only messages with an id above N (the last one you read)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after: u64,

    /// After the last page, keep polling for new messages until Ctrl-C
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// One JSON object per line: {"id", "type", "payload", "aad", "created_at"}
    #[arg(long)]
    pub json: bool,

    /// Messages per request (1–500) [default: the server's, 100]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_POLL_LIMIT as i64))]
    pub limit: Option<u32>,

    /// Admin token
    #[arg(long, env = "PIGEONHOLE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    /// Retries of a request after a network error, 5xx or 429 (without
    /// --follow; --follow never gives up on those)
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,

    /// First step of the --follow schedule in milliseconds (testing)
    #[arg(long, hide = true, default_value_t = 3000)]
    pub interval_base_ms: u64,
}

/// How a message is printed. The payload is compact JSON; everything from
/// the server is escaped for the terminal (the client chose type and
/// payload, so they may hold anything).
pub fn render(m: &SentMessage, json: bool) -> String {
    if json {
        json_for_terminal(&serde_json::to_string(m).expect("JSON values serialize"))
    } else {
        format!(
            "[{}] #{} {}: {}",
            printable(&m.created_at),
            m.id,
            printable(&m.kind),
            printable(&m.payload.to_string())
        )
    }
}

struct Reader {
    api: Api,
    admin_token: String,
    client_id: String,
    limit: Option<u32>,
    json: bool,
    /// The id of the last message printed (or `--after`).
    after: u64,
    printed: u64,
    status: StatusLine,
}

impl Reader {
    fn print(&mut self, page: SentPage) -> Result<(), CliError> {
        self.status.clear();
        for m in &page.messages {
            print_line(&render(m, self.json))?;
            self.printed += 1;
            self.after = m.id;
        }
        // `SentPage::check` made sure this is the last id.
        self.after = page.next_after;
        Ok(())
    }

    /// Every page until the server answers 204; each request retried as
    /// `retry` says.
    async fn read_to_the_end(&mut self, retry: Retry) -> Result<u8, CliError> {
        loop {
            let (api, token, id, after, limit) = (
                &self.api,
                self.admin_token.as_str(),
                self.client_id.as_str(),
                self.after,
                self.limit,
            );
            let result = retry
                .run(
                    || api.sent_page(token, id, after, limit),
                    |e, wait, attempt| {
                        eprintln!(
                            "warning: reading after {after} failed ({e}); retrying in {} ({attempt}/{})",
                            seconds(wait),
                            retry.retries
                        );
                    },
                )
                .await?;
            match result {
                Sent::Empty => return Ok(EXIT_OK),
                Sent::Page(page) => self.print(page)?,
            }
        }
    }

    /// Reads on for ever: at once while pages come, else on the backoff
    /// schedule. Only errors retrying cannot help (401, 404, …) end it.
    async fn follow(&mut self, mut backoff: Backoff) -> Result<u8, CliError> {
        loop {
            self.status.show("reading…");
            let result = self
                .api
                .sent_page(&self.admin_token, &self.client_id, self.after, self.limit)
                .await;
            let (outcome, problem) = match result {
                Ok(Sent::Empty) => (PollOutcome::Empty, None),
                // Page on at once until the server says there is no more (a
                // page is bounded by bytes too, so a short one says nothing);
                // the next empty read then waits the first step again.
                Ok(Sent::Page(page)) => {
                    self.print(page)?;
                    (PollOutcome::Messages { full_page: true }, None)
                }
                Err(e) => problem_of(e)?,
            };
            let interval = backoff.current();
            let delay = backoff.next_delay(outcome);
            if let Some(problem) = problem {
                self.status
                    .note(&format!("{problem}; next read in {}", seconds(delay)));
            }
            let after = self.after;
            self.status
                .countdown(delay, |whole| {
                    format!(
                        "next read in {whole} s (interval {}) · after {after} · Ctrl-C to stop",
                        seconds(interval)
                    )
                })
                .await;
        }
    }
}

/// What a failed read means for `--follow` (see [`follow_outcome`]).
fn problem_of(e: ApiError) -> Result<(PollOutcome, Option<String>), CliError> {
    follow_outcome(e, "read")
}

/// The client id argument as the API spells it (lower-case UUID).
pub fn parse_client_id(text: &str) -> Result<String, CliError> {
    ClientId::parse(text.trim())
        .map(|id| id.to_string())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{:?} is not a client id (a UUID, as `pigeonhole clients` shows)",
                printable(text)
            ))
        })
}

pub async fn run(ctx: &Ctx, args: InboxArgs) -> Result<u8, CliError> {
    let client_id = parse_client_id(&args.client_id)?;
    if args.admin_token.trim().is_empty() {
        return Err(CliError::Usage("the admin token is empty".into()));
    }
    let api = ctx.server_api()?;
    let mut reader = Reader {
        api,
        admin_token: args.admin_token.trim().to_string(),
        client_id,
        limit: args.limit,
        json: args.json,
        after: args.after,
        printed: 0,
        status: StatusLine::stderr(),
    };
    let result = if args.follow {
        let backoff = Backoff::with_step(Duration::from_millis(args.interval_base_ms));
        let stopped = tokio::select! {
            result = reader.follow(backoff) => Some(result),
            () = ctrl_c() => None,
        };
        match stopped {
            Some(result) => result,
            None => {
                reader.status.note(&format!(
                    "stopped after id {0} ({1} message{2} read); to go on from here: --after {0}",
                    reader.after,
                    reader.printed,
                    if reader.printed == 1 { "" } else { "s" }
                ));
                Ok(EXIT_OK)
            }
        }
    } else {
        reader.read_to_the_end(Retry::new(args.retries)).await
    };
    if result.is_err() && reader.printed > 0 {
        reader.status.note(&format!(
            "note: read up to id {0}; rerun with --after {0} to go on from there",
            reader.after
        ));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn msg(payload: Value) -> SentMessage {
        serde_json::from_value(json!({
            "id": 3, "type": "reply", "payload": payload,
            "aad": {"client_id": "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13", "n": 1},
            "created_at": "2026-11-25T12:00:00.000Z"
        }))
        .unwrap()
    }

    #[test]
    fn human_and_json_lines() {
        let m = msg(json!({"text": "hi", "n": [1, 2]}));
        assert_eq!(
            render(&m, false),
            "[2026-11-25T12:00:00.000Z] #3 reply: {\"n\":[1,2],\"text\":\"hi\"}"
        );
        let line: Value = serde_json::from_str(&render(&m, true)).unwrap();
        assert_eq!(
            line,
            json!({"id": 3, "type": "reply", "payload": {"text": "hi", "n": [1, 2]},
                   "aad": {"client_id": "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13", "n": 1},
                   "created_at": "2026-11-25T12:00:00.000Z"})
        );
        // A message sent without aad.
        let bare: SentMessage = serde_json::from_value(json!({
            "id": 1, "type": "t", "payload": null, "aad": null,
            "created_at": "2026-11-25T12:00:00.000Z"
        }))
        .unwrap();
        assert_eq!(bare.aad, Value::Null);
        assert!(render(&bare, false).ends_with("#1 t: null"));
    }

    #[test]
    fn control_and_format_characters_are_escaped_in_both_forms() {
        let mut m = msg(json!("a\u{1b}[2J\u{9b}31m\u{202e}b\u{200b}"));
        m.kind = "ty\u{7}pe\u{2066}".into();
        for json in [false, true] {
            let line = render(&m, json);
            assert!(
                line.chars().all(|c| !crate::status::unprintable(c)),
                "{json}: {line:?}"
            );
            assert!(!line.contains('\n'), "one line: {line:?}");
        }
        assert!(
            render(&m, false)
                .contains("#3 ty\\u{7}pe\\u{2066}: \"a\\u001b[2J\\u{9b}31m\\u{202e}b\\u{200b}\""),
            "{}",
            render(&m, false)
        );
        // --json stays the same value.
        let back: Value = serde_json::from_str(&render(&m, true)).unwrap();
        assert_eq!(back["payload"], m.payload);
        assert_eq!(back["type"], json!(m.kind));
    }

    #[test]
    fn client_ids_are_uuids_in_lower_case() {
        assert_eq!(
            parse_client_id(" 3F2B8C1E-5D4A-4E7B-9C61-0A8D2F7E4B13 ").unwrap(),
            "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13"
        );
        let err = parse_client_id("laptop\u{1b}").unwrap_err();
        assert!(matches!(err, CliError::Usage(_)), "exit 2: {err:?}");
        assert!(err.to_string().contains("not a client id"), "{err}");
        assert!(!err.to_string().contains('\u{1b}'), "{err}");
    }

    #[test]
    fn follow_waits_on_429_and_503_backs_off_on_5xx_and_stops_on_the_rest() {
        let server = |status, retry_after| ApiError::Server {
            status,
            code: "x".into(),
            message: "m".into(),
            retry_after,
        };
        let (outcome, problem) = problem_of(server(429, Some(7))).unwrap();
        assert_eq!(
            outcome,
            PollOutcome::RetryAfter {
                wait: Duration::from_secs(7)
            }
        );
        assert!(problem.unwrap().starts_with("rate limited"));
        let (outcome, problem) = problem_of(server(503, Some(2))).unwrap();
        assert_eq!(
            outcome,
            PollOutcome::RetryAfter {
                wait: Duration::from_secs(2)
            }
        );
        assert!(problem.unwrap().contains("unavailable"));
        for e in [
            server(502, None),
            server(503, None),
            ApiError::Network("reset".into()),
        ] {
            assert_eq!(problem_of(e).unwrap().0, PollOutcome::Failed);
        }
        for status in [401, 404, 422] {
            assert!(problem_of(server(status, None)).is_err(), "{status}");
        }
        assert!(problem_of(ApiError::Protocol("bad page".into())).is_err());
    }
}
