//! `pigeonhole clients`: the operator's table of every registered client,
//! `pigeonhole clients tag ID TAG...` to set a client's tags, and
//! `pigeonhole clients delete ID` to revoke one.

use std::cmp::Ordering;
use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand, ValueEnum};
use pigeonhole::domain::{valid_tag, ClientId, MAX_LIST_LIMIT, MAX_TAGS};
use time::OffsetDateTime;

use super::{print_line, Ctx};
use crate::api::{Api, ClientInfo, ClientTags};
use crate::error::{CliError, EXIT_OK};
use crate::status::{json_for_terminal, printable};
use crate::timefmt::last_seen;

const EXAMPLES: &str = "\
Examples:
  export PIGEONHOLE_OPERATOR_TOKEN=dev-operator-token
  pigeonhole clients
  pigeonhole clients --status online --sort name
  pigeonhole clients --json | jq 'length'
  pigeonhole clients --tag eu
  pigeonhole clients tag 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 eu door-sensors
  pigeonhole clients delete 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13

All pages are fetched. --tag TAG lists only the clients carrying that tag (the
server filters). Sort orders: `status` (default) puts online clients first,
then orders by name (clients without a name last), then by id; `name` orders by
name, then id; `created` orders oldest first.
--json prints one JSON array of {id, name, created_at, last_seen_at, status,
sent_head, tags}. SENT (sent_head) is the id of the newest message the client
sent (0: none); `pigeonhole inbox ID` reads them (admin). TAGS are the
client's tags (`-`: none); `pigeonhole publish --to-tag TAG` reaches them.
Control and format characters in names (escape sequences, bidi overrides,
zero-width characters) are shown escaped, e.g. \\u{1b}, in the table and in
--json.";

const DELETE_EXAMPLES: &str = "\
Examples:
  export PIGEONHOLE_OPERATOR_TOKEN=dev-operator-token
  pigeonhole clients delete 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13
  pigeonhole clients delete 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --yes

Deletes the client: its token is refused from then on, and its record, inbox,
sent messages and fingerprint are removed (the fingerprint would register a new
client). It cannot be undone. On a terminal it names the client and asks first;
without a terminal (scripts) it needs --yes. An unknown or already deleted id
is an error: `error: not_found: …`, exit 1.";

#[derive(Debug, Args)]
#[command(
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct ClientsArgs {
    #[command(subcommand)]
    pub action: Option<ClientsAction>,

    #[command(flatten)]
    pub list: ListArgs,
}

const TAG_EXAMPLES: &str = "\
Examples:
  export PIGEONHOLE_OPERATOR_TOKEN=dev-operator-token
  pigeonhole clients tag 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 eu door-sensors
  pigeonhole clients tag 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13          # no tags: clears them

Replaces the client's tags with the ones given (0 to 20; each 1 to 64
characters of a-z 0-9 _ . -; `a,b` is accepted too, duplicates are folded) and
prints the set the server stored, sorted. `pigeonhole clients --tag eu` lists
the clients carrying a tag, and `pigeonhole publish --to-tag eu` reaches them.
An unknown or deleted client is `error: not_found: …`, exit 1.";

#[derive(Debug, Subcommand)]
pub enum ClientsAction {
    /// Set a client's tags, replacing the ones it has (operator)
    Tag(TagArgs),
    /// Delete a client: revoke its token, remove its data (operator)
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
#[command(after_help = TAG_EXAMPLES)]
pub struct TagArgs {
    /// The client id (a UUID)
    #[arg(value_name = "ID")]
    pub id: String,

    /// The client's new tags; none clears them
    #[arg(value_name = "TAG")]
    pub tags: Vec<String>,

    /// Operator token
    #[arg(long, env = "PIGEONHOLE_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: String,

    /// Print the answer as JSON: {"id", "tags"}
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = DELETE_EXAMPLES)]
pub struct DeleteArgs {
    /// The client id (a UUID)
    #[arg(value_name = "ID")]
    pub id: String,

    /// Operator token
    #[arg(long, env = "PIGEONHOLE_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: String,

    /// Delete without asking
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Online,
    Offline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    Status,
    Name,
    Created,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Operator token
    #[arg(long, env = "PIGEONHOLE_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,

    /// Only clients with this status
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,

    /// Only clients carrying this tag (filtered by the server)
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// Sort order
    #[arg(long, value_enum, default_value_t = SortBy::Status)]
    pub sort: SortBy,

    /// Print a JSON array instead of the table
    #[arg(long)]
    pub json: bool,

    /// Clients per request while paging (testing)
    #[arg(long, hide = true, default_value_t = MAX_LIST_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..=MAX_LIST_LIMIT as i64))]
    pub page_size: u32,
}

fn by_name(a: &ClientInfo, b: &ClientInfo) -> Ordering {
    match (&a.name, &b.name) {
        (Some(x), Some(y)) => x.to_lowercase().cmp(&y.to_lowercase()).then(x.cmp(y)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

pub fn filter_and_sort(
    mut clients: Vec<ClientInfo>,
    status: Option<StatusFilter>,
    sort: SortBy,
) -> Vec<ClientInfo> {
    if let Some(wanted) = status {
        let wanted = match wanted {
            StatusFilter::Online => "online",
            StatusFilter::Offline => "offline",
        };
        clients.retain(|c| c.status == wanted);
    }
    match sort {
        // The server lists in its store's own order, so sort here: the
        // fixed-width RFC 3339 timestamps order correctly as text.
        SortBy::Created => clients.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        }),
        SortBy::Name => clients.sort_by(|a, b| by_name(a, b).then_with(|| a.id.cmp(&b.id))),
        SortBy::Status => clients.sort_by(|a, b| {
            (b.status == "online")
                .cmp(&(a.status == "online"))
                .then_with(|| by_name(a, b))
                .then_with(|| a.id.cmp(&b.id))
        }),
    }
    clients
}

const NAME_WIDTH: usize = 40;

fn shown_name(name: Option<&str>) -> String {
    match name {
        None => "-".into(),
        Some(n) => {
            let n = printable(n);
            if n.chars().count() > NAME_WIDTH {
                let cut: String = n.chars().take(NAME_WIDTH - 1).collect();
                format!("{cut}…")
            } else {
                n
            }
        }
    }
}

/// A client's tags as a table cell: comma-separated, `-` for none (or
/// from a server that does not report them), escaped for the terminal.
pub fn shown_tags(tags: Option<&[String]>) -> String {
    match tags {
        Some(tags) if !tags.is_empty() => printable(&tags.join(",")),
        _ => "-".into(),
    }
}

/// The table, header first. Names are cleaned of control characters (anyone
/// can register a name) and shortened. SENT is the client's newest sent id
/// (`sent_head`: `pigeonhole inbox ID --after N` reads what came after N),
/// `-` from a server that does not report it. TAGS come last, in full.
pub fn table(clients: &[ClientInfo], now: OffsetDateTime) -> Vec<String> {
    let rows: Vec<[String; 6]> = clients
        .iter()
        .map(|c| {
            [
                printable(&c.id),
                shown_name(c.name.as_deref()),
                printable(&c.status),
                c.sent_head.map_or_else(|| "-".into(), |n| n.to_string()),
                last_seen(c.last_seen_at.as_deref(), now),
                shown_tags(c.tags.as_deref()),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "STATUS", "SENT", "LAST SEEN", "TAGS"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    std::iter::once(header)
        .chain(rows)
        .map(|row| {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = w - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            line
        })
        .collect()
}

pub async fn run(ctx: &Ctx, args: ClientsArgs) -> Result<u8, CliError> {
    match args.action {
        Some(ClientsAction::Tag(tag)) => run_tag(ctx, tag).await,
        Some(ClientsAction::Delete(delete)) => run_delete(ctx, delete).await,
        None => run_list(ctx, args.list).await,
    }
}

/// The API's rule for one tag, as a usage error naming `what`.
fn check_tag(tag: &str, what: &str) -> Result<(), CliError> {
    if valid_tag(tag) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{what} {:?} is not a tag: 1 to 64 characters of a-z 0-9 _ . -",
            printable(tag)
        )))
    }
}

/// The tags of `clients tag`: `a,b` split, each checked, duplicates
/// folded, at most 20. An empty list clears the client's tags.
pub fn parse_client_tags(raw: &[String]) -> Result<Vec<String>, CliError> {
    let mut tags: Vec<String> = Vec::new();
    for part in raw.iter().flat_map(|r| r.split(',')).map(str::trim) {
        if part.is_empty() {
            continue;
        }
        check_tag(part, "tag")?;
        if !tags.iter().any(|t| t == part) {
            tags.push(part.to_string());
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(CliError::Usage(format!(
            "a client carries at most {MAX_TAGS} tags (got {})",
            tags.len()
        )));
    }
    Ok(tags)
}

/// What `clients tag` prints.
pub fn tags_line(reply: &ClientTags) -> String {
    if reply.tags.is_empty() {
        format!("Client {} has no tags.", printable(&reply.id))
    } else {
        format!(
            "Client {} tags: {}",
            printable(&reply.id),
            printable(&reply.tags.join(", "))
        )
    }
}

async fn run_tag(ctx: &Ctx, args: TagArgs) -> Result<u8, CliError> {
    if args.operator_token.trim().is_empty() {
        return Err(CliError::Usage("the operator token is empty".into()));
    }
    let id = parse_client_id(&args.id)?;
    let tags = parse_client_tags(&args.tags)?;
    let api = ctx.server_api()?;
    let reply = api.set_tags(&args.operator_token, &id, &tags).await?;
    if args.json {
        let json = serde_json::to_string(&reply).expect("tags serialize");
        print_line(&json_for_terminal(&json))?;
    } else {
        print_line(&tags_line(&reply))?;
    }
    Ok(EXIT_OK)
}

/// A client id argument, in the API's lowercase form.
fn parse_client_id(raw: &str) -> Result<String, CliError> {
    ClientId::parse(raw.trim())
        .map(|id| id.to_string())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{:?} is not a client id (a UUID, as `pigeonhole clients` shows)",
                printable(raw)
            ))
        })
}

async fn run_list(ctx: &Ctx, args: ListArgs) -> Result<u8, CliError> {
    // Optional for clap (a required argument here would be required next to
    // `delete` too), so checked here.
    let token =
        match args.operator_token.as_deref().map(str::trim) {
            None => return Err(CliError::Usage(
                "no operator token: pass --operator-token TOKEN or set PIGEONHOLE_OPERATOR_TOKEN"
                    .into(),
            )),
            Some("") => return Err(CliError::Usage("the operator token is empty".into())),
            Some(token) => token.to_string(),
        };
    if let Some(tag) = &args.tag {
        check_tag(tag, "--tag")?;
    }
    let api = ctx.server_api()?;
    let all = api
        .all_clients(&token, args.page_size, args.tag.as_deref())
        .await?;
    let total = all.len();
    let clients = filter_and_sort(all, args.status, args.sort);
    if args.json {
        let json = serde_json::to_string_pretty(&clients).expect("clients serialize");
        print_line(&json_for_terminal(&json))?;
        return Ok(EXIT_OK);
    }
    for line in table(&clients, OffsetDateTime::now_utc()) {
        print_line(&line)?;
    }
    let online = clients.iter().filter(|c| c.status == "online").count();
    let noun = match &args.tag {
        Some(tag) => format!("clients tagged {tag}"),
        None => "clients".into(),
    };
    let shown = if clients.len() == total {
        format!("{total} {noun}, {online} online")
    } else {
        format!("{} of {total} {noun} shown, {online} online", clients.len())
    };
    print_line(&shown)?;
    Ok(EXIT_OK)
}

/// The first page holding client `id`, walked page by page (stops early).
async fn find_client(
    api: &Api,
    operator_token: &str,
    id: &str,
) -> Result<Option<ClientInfo>, CliError> {
    let mut token: Option<String> = None;
    loop {
        let page = api
            .clients_page(operator_token, MAX_LIST_LIMIT, token.as_deref(), None)
            .await?;
        if let Some(found) = page.clients.into_iter().find(|c| c.id == id) {
            return Ok(Some(found));
        }
        match page.next_page_token {
            Some(next) if Some(&next) != token.as_ref() => token = Some(next),
            _ => return Ok(None),
        }
    }
}

/// The confirmation question, naming the client (cleaned for the terminal).
pub fn delete_question(id: &str, client: Option<&ClientInfo>, now: OffsetDateTime) -> String {
    let who = match client {
        Some(c) => format!(
            "client {} {} ({}, last seen {})",
            printable(id),
            match &c.name {
                Some(name) => format!("\"{}\"", printable(name)),
                None => "(no name)".into(),
            },
            printable(&c.status),
            last_seen(c.last_seen_at.as_deref(), now)
        ),
        None => format!("client {} (not in the listing)", printable(id)),
    };
    format!(
        "Delete {who}? Its token stops working and its messages and fingerprint are removed; \
         this cannot be undone. [y/N] "
    )
}

/// True for an answer that means yes.
pub fn confirmed(answer: &str) -> bool {
    matches!(answer.trim().to_lowercase().as_str(), "y" | "yes")
}

async fn run_delete(ctx: &Ctx, args: DeleteArgs) -> Result<u8, CliError> {
    if args.operator_token.trim().is_empty() {
        return Err(CliError::Usage("the operator token is empty".into()));
    }
    let id = parse_client_id(&args.id)?;
    let api = ctx.server_api()?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(format!(
                "refusing to delete client {id} without confirmation: stdin is not a terminal, \
                 so nobody can be asked; pass --yes to delete it"
            )));
        }
        let client = find_client(&api, &args.operator_token, &id).await?;
        let question = delete_question(&id, client.as_ref(), OffsetDateTime::now_utc());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{question}");
        let _ = err.flush();
        drop(err);
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| CliError::Failed(format!("cannot read the answer: {e}")))?;
        if !confirmed(&answer) {
            return Err(CliError::Failed(format!(
                "not deleted: client {id} is unchanged"
            )));
        }
    }
    api.delete_client(&args.operator_token, &id).await?;
    print_line(&format!("Deleted client {id}."))?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::parse;

    fn client(id: &str, name: Option<&str>, status: &str, seen: Option<&str>) -> ClientInfo {
        ClientInfo {
            id: id.into(),
            name: name.map(String::from),
            created_at: "2026-11-25T23:00:00.000Z".into(),
            last_seen_at: seen.map(String::from),
            status: status.into(),
            sent_head: Some(0),
            tags: Some(Vec::new()),
        }
    }

    fn sample() -> Vec<ClientInfo> {
        vec![
            client(
                "c",
                Some("zeta"),
                "online",
                Some("2026-11-25T23:50:00.000Z"),
            ),
            client("a", None, "offline", None),
            client(
                "b",
                Some("Alpha"),
                "offline",
                Some("2026-11-25T20:00:00.000Z"),
            ),
            client(
                "d",
                Some("alpha"),
                "online",
                Some("2026-11-25T23:51:59.000Z"),
            ),
            client("e", None, "online", Some("2026-11-25T23:51:00.000Z")),
        ]
    }

    fn ids(c: &[ClientInfo]) -> Vec<&str> {
        c.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn sort_orders() {
        assert_eq!(
            ids(&filter_and_sort(sample(), None, SortBy::Status)),
            ["d", "c", "e", "b", "a"]
        );
        assert_eq!(
            ids(&filter_and_sort(sample(), None, SortBy::Name)),
            ["b", "d", "c", "a", "e"]
        );
        let mut by_age = sample();
        for (c, ms) in by_age.iter_mut().zip(["004", "002", "001", "003", "000"]) {
            c.created_at = format!("2026-11-25T23:00:00.{ms}Z");
        }
        assert_eq!(
            ids(&filter_and_sort(by_age, None, SortBy::Created)),
            ["e", "b", "a", "d", "c"]
        );
    }

    #[test]
    fn status_filter() {
        let online = filter_and_sort(sample(), Some(StatusFilter::Online), SortBy::Status);
        assert_eq!(ids(&online), ["d", "c", "e"]);
        let offline = filter_and_sort(sample(), Some(StatusFilter::Offline), SortBy::Status);
        assert_eq!(ids(&offline), ["b", "a"]);
    }

    #[test]
    fn table_is_aligned_and_readable() {
        let now = parse("2026-11-25T23:52:10.000Z").unwrap();
        let mut rows = sample();
        rows[1].name = Some("evil\x1b[2Jname".into());
        rows[2].sent_head = None; // an older server
        rows[2].tags = None;
        rows[3].sent_head = Some(12);
        rows[3].tags = Some(vec!["door-sensors".into(), "eu".into()]);
        let lines = table(&filter_and_sort(rows, None, SortBy::Status), now);
        assert_eq!(
            lines[0],
            "ID  NAME               STATUS   SENT  LAST SEEN  TAGS"
        );
        assert_eq!(
            lines[1],
            "d   alpha              online   12    11 s ago   door-sensors,eu"
        );
        assert_eq!(
            lines[2],
            "c   zeta               online   0     2 min ago  -"
        );
        assert_eq!(
            lines[3],
            "e   -                  online   0     1 min ago  -"
        );
        assert_eq!(
            lines[4],
            "b   Alpha              offline  -     3 h ago    -"
        );
        assert_eq!(
            lines[5],
            "a   evil\\u{1b}[2Jname  offline  0     never      -"
        );
    }

    #[test]
    fn tags_are_checked_folded_and_shown_escaped() {
        let given = |tags: &[&str]| {
            parse_client_tags(&tags.iter().map(|t| t.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            given(&["eu", "door-sensors,eu", " v1.2_x "]).unwrap(),
            ["eu", "door-sensors", "v1.2_x"]
        );
        assert!(given(&[]).unwrap().is_empty(), "no tags clears them");
        for bad in ["EU", "a b", "caf\u{e9}", "x\u{1b}[2J", &"t".repeat(65)] {
            let err = given(&[bad]).unwrap_err();
            assert!(matches!(err, CliError::Usage(_)), "{bad:?}");
            assert!(
                err.to_string()
                    .chars()
                    .all(|c| !crate::status::unprintable(c)),
                "{err}"
            );
        }
        let many: Vec<String> = (0..21).map(|n| format!("t{n}")).collect();
        assert!(parse_client_tags(&many).is_err());
        assert_eq!(parse_client_tags(&many[..20]).unwrap().len(), 20);

        let reply = ClientTags {
            id: "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13".into(),
            tags: vec!["door-sensors".into(), "eu".into()],
        };
        assert_eq!(
            tags_line(&reply),
            "Client 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 tags: door-sensors, eu"
        );
        let none = ClientTags {
            tags: Vec::new(),
            ..reply
        };
        assert_eq!(
            tags_line(&none),
            "Client 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 has no tags."
        );
        // Tags come from the server: escaped like names.
        assert_eq!(
            shown_tags(Some(&["e\u{1b}[2J".to_string(), "\u{202e}x".to_string()])),
            "e\\u{1b}[2J,\\u{202e}x"
        );
        assert_eq!(shown_tags(None), "-");
        assert_eq!(shown_tags(Some(&[])), "-");
    }

    #[test]
    fn control_and_format_characters_in_names_are_shown_escaped() {
        let now = parse("2026-11-25T23:52:10.000Z").unwrap();
        let names = [
            "csi\u{9b}2J",             // C1 control: CSI
            "bell\x07\r\n",            // C0 controls
            "gpj.exe\u{202e}",         // right-to-left override
            "iso\u{2066}late\u{2069}", // bidi isolates
            "zero\u{200b}width\u{200d}",
            "bom\u{feff}\u{ad}",
            "tag\u{e0041}",
        ];
        let rows: Vec<ClientInfo> = names
            .iter()
            .enumerate()
            .map(|(i, n)| client(&format!("id{i}"), Some(n), "offline", None))
            .collect();
        let lines = table(&rows, now);
        for line in &lines {
            assert!(
                line.chars().all(|c| !crate::status::unprintable(c)),
                "{line:?}"
            );
        }
        assert!(
            lines.iter().any(|l| l.contains("gpj.exe\\u{202e}")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("csi\\u{9b}2J")),
            "{lines:?}"
        );
        // Ids and statuses come from the server too.
        let odd = client("x\u{1b}]0;t\x07", Some("n"), "on\u{202e}line", None);
        for line in table(&[odd], now) {
            assert!(
                line.chars().all(|c| !crate::status::unprintable(c)),
                "{line:?}"
            );
        }
    }

    #[test]
    fn the_delete_question_names_the_client_safely() {
        let now = parse("2026-11-25T23:52:10.000Z").unwrap();
        let id = "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13";
        let c = client(
            id,
            Some("lap\u{1b}[2Jtop\u{202e}"),
            "online",
            Some("2026-11-25T23:50:00.000Z"),
        );
        let q = delete_question(id, Some(&c), now);
        assert!(q.starts_with(&format!("Delete client {id} \"lap")), "{q}");
        assert!(q.contains("online, last seen 2 min ago"), "{q}");
        assert!(
            q.contains("cannot be undone") && q.ends_with("[y/N] "),
            "{q}"
        );
        assert!(q.chars().all(|c| !crate::status::unprintable(c)), "{q:?}");
        let q = delete_question(id, None, now);
        assert!(q.contains("not in the listing"), "{q}");
        for yes in ["y", "Y", "yes", " YES\n"] {
            assert!(confirmed(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yess", "delete"] {
            assert!(!confirmed(no), "{no:?}");
        }
    }

    #[test]
    fn long_names_are_shortened() {
        let long = "n".repeat(100);
        let shown = shown_name(Some(&long));
        assert_eq!(shown.chars().count(), NAME_WIDTH);
        assert!(shown.ends_with('…'));
    }
}
