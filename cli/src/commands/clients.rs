//! `pigeonhole clients`: the operator's table of every registered client.

use std::cmp::Ordering;

use clap::{Args, ValueEnum};
use pigeonhole::domain::MAX_LIST_LIMIT;
use time::OffsetDateTime;

use super::{print_line, Ctx};
use crate::api::{Api, ClientInfo};
use crate::error::{CliError, EXIT_OK};
use crate::status::printable;
use crate::timefmt::last_seen;

const EXAMPLES: &str = "\
Examples:
  export PIGEONHOLE_OPERATOR_TOKEN=dev-operator-token
  pigeonhole clients
  pigeonhole clients --status online --sort name
  pigeonhole clients --json | jq 'length'

All pages are fetched. Sort orders: `status` (default) puts online clients
first, then orders by name (clients without a name last), then by id; `name`
orders by name, then id; `created` orders oldest first.
--json prints one JSON array of {id, name, created_at, last_seen_at, status}.";

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
#[command(after_help = EXAMPLES)]
pub struct ClientsArgs {
    /// Operator token
    #[arg(long, env = "PIGEONHOLE_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: String,

    /// Only clients with this status
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,

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

/// The table, header first. Names are cleaned of control characters (anyone
/// can register a name) and shortened.
pub fn table(clients: &[ClientInfo], now: OffsetDateTime) -> Vec<String> {
    let rows: Vec<[String; 4]> = clients
        .iter()
        .map(|c| {
            [
                printable(&c.id),
                shown_name(c.name.as_deref()),
                printable(&c.status),
                last_seen(c.last_seen_at.as_deref(), now),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "STATUS", "LAST SEEN"].map(String::from);
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
    if args.operator_token.trim().is_empty() {
        return Err(CliError::Usage("the operator token is empty".into()));
    }
    let api = Api::new(&ctx.server_url()?)?;
    let all = api
        .all_clients(&args.operator_token, args.page_size)
        .await?;
    let total = all.len();
    let clients = filter_and_sort(all, args.status, args.sort);
    if args.json {
        print_line(&serde_json::to_string_pretty(&clients).expect("clients serialize"))?;
        return Ok(EXIT_OK);
    }
    for line in table(&clients, OffsetDateTime::now_utc()) {
        print_line(&line)?;
    }
    let online = clients.iter().filter(|c| c.status == "online").count();
    let shown = if clients.len() == total {
        format!("{total} clients, {online} online")
    } else {
        format!(
            "{} of {total} clients shown, {online} online",
            clients.len()
        )
    };
    print_line(&shown)?;
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
        let lines = table(&filter_and_sort(rows, None, SortBy::Status), now);
        assert_eq!(lines[0], "ID  NAME          STATUS   LAST SEEN");
        assert_eq!(lines[1], "d   alpha         online   11 s ago");
        assert_eq!(lines[2], "c   zeta          online   2 min ago");
        assert_eq!(lines[3], "e   -             online   1 min ago");
        assert_eq!(lines[4], "b   Alpha         offline  3 h ago");
        assert_eq!(lines[5], "a   evil\u{FFFD}[2Jname  offline  never");
    }

    #[test]
    fn long_names_are_shortened() {
        let long = "n".repeat(100);
        let shown = shown_name(Some(&long));
        assert_eq!(shown.chars().count(), NAME_WIDTH);
        assert!(shown.ends_with('…'));
    }
}
