//! The command line: global options and the list of subcommands. Each
//! subcommand's own options live with its implementation in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{
    clients, completions, inbox, listen, profiles, publish, register, rotate, send, simulate,
};

const ABOUT: &str = "Client, admin, operator and load-test tool for Pigeonhole, the \
end-to-end-encrypted short-poll messaging service.";

const AFTER_HELP: &str = "\
Examples:
  pigeonhole register --url http://127.0.0.1:8080 --name laptop
  pigeonhole listen
  pigeonhole send --type reply --payload '{\"text\": \"hi\"}'
  pigeonhole rotate
  pigeonhole inbox 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --follow   (admin)

Plain http:// is only used for loopback (localhost, 127.0.0.0/8, ::1): tokens
and keys would otherwise cross the network unencrypted. --insecure-http (or
PIGEONHOLE_INSECURE_HTTP=1) allows it; a profile registered with it remembers
that for its own URL.

Exit codes:
  0  success (listen --once: messages came)
  1  error: from the server (printed as `error: <code>: <message>`), the network,
     the config file or the input
  2  bad command-line usage
  3  listen --once: nothing new

Config file: $PIGEONHOLE_CONFIG, else $XDG_CONFIG_HOME/pigeonhole/config.json,
else ~/.config/pigeonhole/config.json (mode 0600; it holds your credentials).";

#[derive(Debug, Parser)]
#[command(name = "pigeonhole", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Profile in the config file (one registration each)
    #[arg(
        long,
        global = true,
        env = "PIGEONHOLE_PROFILE",
        default_value = "default"
    )]
    pub profile: String,

    /// Server base URL, e.g. http://127.0.0.1:8080 [default: the profile's URL]
    #[arg(long, global = true, env = "PIGEONHOLE_URL")]
    pub url: Option<String>,

    /// Config file [default: ~/.config/pigeonhole/config.json, see `pigeonhole --help`]
    #[arg(long, global = true, env = "PIGEONHOLE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Allow plain http:// to a host that is not loopback (the API token and
    /// personal key then cross the network unencrypted)
    #[arg(
        long,
        global = true,
        env = "PIGEONHOLE_INSECURE_HTTP",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub insecure_http: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register this machine and save its credentials to the config file
    Register(register::RegisterArgs),
    /// Poll for messages with the 3 → 30 s backoff, decrypt, print and ack them
    Listen(listen::ListenArgs),
    /// Encrypt a message and send it to the server
    Send(send::SendArgs),
    /// Get a new api_token and personal key (and optionally fingerprint) for this profile
    Rotate(rotate::RotateArgs),
    /// Publish a message to clients (admin)
    Publish(publish::PublishArgs),
    /// Read the messages a client sent, oldest first; --follow for new ones (admin)
    Inbox(inbox::InboxArgs),
    /// List the registered clients with their status, or delete one (operator)
    Clients(clients::ClientsArgs),
    /// Register N clients and poll with all of them at once (load test)
    Simulate(simulate::SimulateArgs),
    /// Show the saved profiles (tokens hidden)
    Profiles(profiles::ProfilesArgs),
    /// Print a shell completion script
    Completions(completions::CompletionsArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_has_an_example() {
        let cmd = Cli::command();
        let nested = cmd.get_subcommands().flat_map(|s| s.get_subcommands());
        for sub in cmd.get_subcommands().chain(nested) {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("pigeonhole "),
                "`{}` has no example in its --help",
                sub.get_name()
            );
        }
    }

    #[test]
    fn insecure_http_is_a_global_flag_and_an_environment_variable() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.insecure_http);
        assert!(!parse(&["pigeonhole", "profiles"]).unwrap());
        assert!(parse(&["pigeonhole", "--insecure-http", "profiles"]).unwrap());
        assert!(parse(&["pigeonhole", "register", "--insecure-http"]).unwrap());
        assert!(parse(&["pigeonhole", "rotate", "--insecure-http"]).unwrap());
    }

    #[test]
    fn inbox_takes_a_client_id_and_the_admin_token() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let cli = parse(&[
            "pigeonhole",
            "inbox",
            "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13",
            "--admin-token",
            "t",
            "--after",
            "2",
            "--follow",
            "--json",
        ])
        .unwrap();
        match cli.command {
            Command::Inbox(i) => {
                assert_eq!(i.client_id, "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13");
                assert_eq!((i.after, i.follow, i.json, i.limit), (2, true, true, None));
                assert_eq!(i.admin_token, "t");
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["pigeonhole", "inbox", "x", "--admin-token", "t"]).unwrap();
        assert!(matches!(cli.command, Command::Inbox(ref i) if i.after == 0 && !i.follow));
        assert!(parse(&["pigeonhole", "inbox", "--admin-token", "t"]).is_err());
        for limit in ["0", "501"] {
            assert!(
                parse(&[
                    "pigeonhole",
                    "inbox",
                    "x",
                    "--admin-token",
                    "t",
                    "--limit",
                    limit
                ])
                .is_err(),
                "{limit}"
            );
        }
    }

    #[test]
    fn clients_lists_or_deletes() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let cli = parse(&["pigeonhole", "clients", "--operator-token", "t", "--json"]).unwrap();
        assert!(
            matches!(cli.command, Command::Clients(ref c) if c.action.is_none() && c.list.json)
        );
        let cli = parse(&[
            "pigeonhole",
            "clients",
            "delete",
            "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13",
            "--operator-token",
            "t",
            "--yes",
        ])
        .unwrap();
        match cli.command {
            Command::Clients(c) => match c.action {
                Some(clients::ClientsAction::Delete(d)) => {
                    assert!(d.yes);
                    assert_eq!(d.id, "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13");
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let cli = parse(&["pigeonhole", "rotate", "--new-fingerprint"]).unwrap();
        assert!(matches!(cli.command, Command::Rotate(ref r) if r.new_fingerprint));
        assert!(parse(&[
            "pigeonhole",
            "rotate",
            "--new-fingerprint",
            "--fingerprint",
            "abcdefgh"
        ])
        .is_err());
    }
}
