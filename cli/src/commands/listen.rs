//! `pigeonhole listen`: the short-poll loop. Poll, verify and decrypt, print,
//! ack, save the cursor, wait as the backoff schedule says, repeat.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use pigeonhole::crypto::Key;
use pigeonhole::domain::{DEFAULT_POLL_LIMIT, MAX_POLL_LIMIT};
use serde::Serialize;
use serde_json::Value;

use super::{ctrl_c, follow_outcome, print_line, profile_key, Ctx};
use crate::api::{Api, Credentials, Delivered, Poll, PollPage};
use crate::backoff::{jitter_unit, Backoff, PollOutcome};
use crate::config;
use crate::error::{CliError, EXIT_NO_MESSAGES, EXIT_OK};
use crate::message::{open_delivered, Plain};
use crate::retry::seconds;
use crate::status::{printable, StatusLine};

const EXAMPLES: &str = "\
Examples:
  pigeonhole listen
  pigeonhole listen --json | jq .payload
  pigeonhole listen --once --json; echo \"exit $?\"

Output: `[created_at] type: payload` per message, or with --json one object per
line: {\"id\", \"type\", \"created_at\", \"payload\"}. Each message's aad is checked
against its envelope and it is decrypted before it is printed; the page is
acked (its next_cursor) after it is printed, and the cursor is saved to the
profile, so a restart continues where it left off. A message that fails
verification is reported on stderr and skipped. Messages that expired (publish
--ttl) are never delivered: a page may skip their ids, or hold no message at
all, and its next_cursor is acked all the same.

If the server refuses the token (401) because `pigeonhole rotate` gave this
profile new credentials meanwhile, the loop reads them from the config file and
goes on with them.

Schedule: 3 s, then +3 s after each empty poll up to 30 s, back to 3 s after a
message; each wait is multiplied by a random factor in [0.9, 1.1] (jitter), so
clients started together do not poll in lockstep. Retry-After is honoured on
429 and 503 (the server is briefly unavailable) and never shortened; network
errors and other 5xx back off the same way. Ctrl-C stops (exit 0).

Exit codes: 0 messages came (or stopped with Ctrl-C), 1 error, 3 with --once:
nothing new.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ListenArgs {
    /// One JSON object per line: {"id", "type", "created_at", "payload"}
    #[arg(long)]
    pub json: bool,

    /// Poll once and exit: 0 when messages came, 3 when there were none
    #[arg(long)]
    pub once: bool,

    /// Messages per poll
    #[arg(long, default_value_t = DEFAULT_POLL_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..=MAX_POLL_LIMIT as i64))]
    pub limit: u32,

    /// First step of the schedule in milliseconds (testing)
    #[arg(long, hide = true, default_value_t = 3000)]
    pub interval_base_ms: u64,
}

/// One line of `--json` output.
#[derive(Serialize)]
struct JsonLine<'a> {
    id: u64,
    #[serde(rename = "type")]
    kind: &'a str,
    created_at: &'a str,
    payload: &'a Value,
}

/// How a message is printed.
pub fn render(msg: &Delivered, plain: &Plain, json: bool) -> String {
    if json {
        serde_json::to_string(&JsonLine {
            id: msg.id,
            kind: &plain.kind,
            created_at: &msg.created_at,
            payload: &plain.payload,
        })
        .expect("JSON values serialize")
    } else {
        format!(
            "[{}] {}: {}",
            printable(&msg.created_at),
            printable(&plain.kind),
            printable(&plain.payload.to_string())
        )
    }
}

struct Listener {
    api: Api,
    creds: Credentials,
    key: Key,
    json: bool,
    limit: u32,
    config_path: PathBuf,
    profile: String,
    /// The highest message id handled (printed or rejected).
    cursor: u64,
    /// What the server last confirmed.
    acked: u64,
    /// What the profile file holds.
    saved: u64,
    status: StatusLine,
}

/// What handling one page did.
struct Handled {
    printed: usize,
    rejected: usize,
    /// The page moved the cursor (past messages, or past expired ids only).
    moved: bool,
}

impl Listener {
    fn poll_cursor(&self) -> Option<u64> {
        // 0 means "never acked here": let the server start from its own cursor.
        (self.cursor > 0).then_some(self.cursor)
    }

    async fn handle(&mut self, page: PollPage) -> Result<Handled, CliError> {
        let before = self.cursor;
        let mut handled = Handled {
            printed: 0,
            rejected: 0,
            moved: false,
        };
        for msg in &page.messages {
            if msg.id <= self.cursor {
                continue; // already handled
            }
            match open_delivered(&self.key, &self.creds.client_id, msg) {
                Ok(plain) => {
                    self.status.clear();
                    print_line(&render(msg, &plain, self.json))?;
                    handled.printed += 1;
                }
                Err(e) => {
                    self.status
                        .note(&format!("warning: message {} rejected: {e}", msg.id));
                    handled.rejected += 1;
                }
            }
            self.cursor = msg.id;
        }
        // Everything the page covered is handled: move on to its
        // next_cursor, which is past any expired ids it skipped (and is all
        // a page whose messages all expired has).
        self.cursor = self.cursor.max(page.reach());
        handled.moved = self.cursor > before;
        self.ack().await?;
        Ok(handled)
    }

    /// Acks `cursor` and saves the result. A retryable failure only warns: the
    /// ack is tried again before the next poll.
    async fn ack(&mut self) -> Result<(), CliError> {
        if self.cursor <= self.acked {
            return Ok(());
        }
        let mut result = self.api.ack(&self.creds, self.cursor).await;
        if matches!(&result, Err(e) if e.status() == Some(401)) && self.reload_rotated().await {
            result = self.api.ack(&self.creds, self.cursor).await;
        }
        match result {
            Ok(server_cursor) => {
                self.acked = server_cursor.max(self.cursor);
                self.cursor = self.acked;
                self.save_cursor();
                Ok(())
            }
            Err(e) if e.is_retryable() => {
                self.status.note(&format!(
                    "warning: ack of {} failed ({e}); trying again before the next poll",
                    self.cursor
                ));
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// After a 401: when the profile now holds other credentials of the same
    /// client (`pigeonhole rotate` ran), switches to them and returns true.
    /// While a rotation is in progress (the profile has a pending
    /// fingerprint) it waits a few seconds for the new credentials.
    async fn reload_rotated(&mut self) -> bool {
        for _ in 0..20 {
            let Ok(mut file) = config::load(&self.config_path) else {
                return false;
            };
            let Some(p) = file.profiles.remove(&self.profile) else {
                return false;
            };
            if p.credentials.client_id != self.creds.client_id {
                return false;
            }
            if p.credentials.api_token != self.creds.api_token {
                let Some(key) = Key::from_base64(&p.credentials.personal_token) else {
                    return false;
                };
                self.creds = p.credentials;
                self.key = key;
                self.status.note(
                    "note: the server refused the old token: the credentials were rotated; \
                     going on with the new ones from the config file",
                );
                return true;
            }
            if p.pending_fingerprint.is_none() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    fn save_cursor(&mut self) {
        if self.acked == self.saved {
            return;
        }
        let (profile, client_id, cursor) = (&self.profile, &self.creds.client_id, self.acked);
        let result = config::update(&self.config_path, |c| {
            if let Some(p) = c.profiles.get_mut(profile) {
                if p.credentials.client_id == *client_id {
                    p.cursor = cursor;
                }
            }
        });
        match result {
            Ok(()) => self.saved = cursor,
            Err(e) => self
                .status
                .note(&format!("warning: cannot save the cursor: {e}")),
        }
    }

    async fn once(&mut self) -> Result<u8, CliError> {
        match self
            .api
            .poll(&self.creds, self.poll_cursor(), self.limit)
            .await?
        {
            Poll::Empty => Ok(EXIT_NO_MESSAGES),
            Poll::Page(page) => {
                let handled = self.handle(page).await?;
                if self.cursor > self.acked {
                    // `--once` has no next poll to retry the ack before.
                    self.api.ack(&self.creds, self.cursor).await?;
                }
                if handled.printed == 0 && handled.rejected > 0 {
                    return Err(CliError::Failed(format!(
                        "{} message(s) failed verification",
                        handled.rejected
                    )));
                }
                if handled.printed == 0 {
                    // Only expired ids: acked, but nothing new to show.
                    return Ok(EXIT_NO_MESSAGES);
                }
                Ok(EXIT_OK)
            }
        }
    }

    async fn forever(&mut self, mut backoff: Backoff) -> Result<u8, CliError> {
        loop {
            self.ack().await?;
            self.status.show("polling…");
            let result = self
                .api
                .poll(&self.creds, self.poll_cursor(), self.limit)
                .await;
            if matches!(&result, Err(e) if e.status() == Some(401)) && self.reload_rotated().await {
                continue;
            }
            let (outcome, problem) = match result {
                Ok(Poll::Empty) => (PollOutcome::Empty, None),
                Ok(Poll::Page(page)) => {
                    let count = page.messages.len();
                    let handled = self.handle(page).await?;
                    if count == 0 && !handled.moved {
                        // No message and no progress: nothing new.
                        (PollOutcome::Empty, None)
                    } else {
                        // A page of expired ids only may have more behind
                        // it: poll again at once, like after a full page.
                        let full_page = count >= self.limit as usize || count == 0;
                        (PollOutcome::Messages { full_page }, None)
                    }
                }
                // 429, or 503 `unavailable` with Retry-After: wait as asked;
                // the cursor stays where it is.
                Err(e) => follow_outcome(e, "poll")?,
            };
            let interval = backoff.current();
            let delay = backoff.next_wait(outcome, jitter_unit());
            if let Some(problem) = problem {
                self.status
                    .note(&format!("{problem}; next poll in {}", seconds(delay)));
            }
            self.wait(delay, interval).await;
        }
    }

    /// Sleeps `delay`, counting down in the status line on a terminal.
    async fn wait(&mut self, delay: Duration, interval: Duration) {
        let cursor = self.cursor;
        self.status
            .countdown(delay, |whole| {
                format!(
                    "next poll in {whole} s (interval {}) · cursor {cursor} · Ctrl-C to stop",
                    seconds(interval)
                )
            })
            .await;
    }
}

pub async fn run(ctx: &Ctx, args: ListenArgs) -> Result<u8, CliError> {
    let profile = ctx.profile()?;
    let key = profile_key(&profile)?;
    let api = ctx.profile_api(&profile)?;
    let mut listener = Listener {
        api,
        key,
        json: args.json,
        limit: args.limit,
        config_path: ctx.config_path()?.to_path_buf(),
        profile: ctx.profile.clone(),
        cursor: profile.cursor,
        acked: profile.cursor,
        saved: profile.cursor,
        creds: profile.credentials,
        status: StatusLine::stderr(),
    };
    let backoff = Backoff::with_step(Duration::from_millis(args.interval_base_ms));
    let work = async {
        if args.once {
            listener.once().await
        } else {
            listener.forever(backoff).await
        }
    };
    tokio::select! {
        result = work => return result,
        () = ctrl_c() => {}
    }
    // Ctrl-C may land between printing a message and acking it: ack what
    // was printed and save the cursor before exiting, so a restart does not
    // print it again. Bounded, since the server may be what the user is
    // giving up on.
    let _ = tokio::time::timeout(Duration::from_secs(5), listener.ack()).await;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg() -> Delivered {
        serde_json::from_value(json!({
            "id": 7, "type": "greeting", "ciphertext": "", "nonce": "", "tag": "",
            "aad": null, "created_at": "2026-11-25T12:00:00.000Z"
        }))
        .unwrap()
    }

    #[test]
    fn human_and_json_lines() {
        let plain = Plain {
            kind: "greeting".into(),
            payload: json!({"text": "hi"}),
        };
        assert_eq!(
            render(&msg(), &plain, false),
            "[2026-11-25T12:00:00.000Z] greeting: {\"text\":\"hi\"}"
        );
        let line: Value = serde_json::from_str(&render(&msg(), &plain, true)).unwrap();
        assert_eq!(
            line,
            json!({"id": 7, "type": "greeting", "created_at": "2026-11-25T12:00:00.000Z",
                   "payload": {"text": "hi"}})
        );
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        let plain = Plain {
            kind: "x\x1b[2J".into(),
            payload: json!("a\u{1b}b"),
        };
        let line = render(&msg(), &plain, false);
        assert!(!line.contains('\x1b'), "{line:?}");
        // serde_json leaves C1 controls and format characters raw in strings.
        let plain = Plain {
            kind: "note".into(),
            payload: json!("a\u{9b}2J\u{202e}b"),
        };
        let line = render(&msg(), &plain, false);
        assert!(
            line.ends_with("] note: \"a\\u{9b}2J\\u{202e}b\""),
            "{line:?}"
        );
    }
}
