//! The command line: global options and the list of subcommands. Each
//! subcommand's own options live with its implementation in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{
    clients, completions, inbox, listen, profiles, publish, publish_status, register, rotate, send,
    simulate,
};

const ABOUT: &str = "Client, admin, operator and load-test tool for Pigeonhole, the \
end-to-end-encrypted short-poll messaging service.";

const AFTER_HELP: &str = "\
Examples:
  pigeonhole register --url http://127.0.0.1:8080 --name laptop
  pigeonhole listen
  pigeonhole send --type reply --payload '{\"text\": \"hi\"}'
  pigeonhole rotate
  pigeonhole publish --to-tag eu --type alarm --payload '\"door open\"' --ttl 300 --wait   (admin)
  pigeonhole status 9b7e4a10-2c3d-4f5e-8a9b-0c1d2e3f4a5b --recipients   (admin)
  pigeonhole inbox 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 --follow   (admin)
  pigeonhole clients tag 3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13 eu door-sensors   (operator)

Plain http:// is only used for loopback (localhost, 127.0.0.0/8, ::1): tokens
and keys would otherwise cross the network unencrypted. --insecure-http (or
PIGEONHOLE_INSECURE_HTTP=1) allows it; a profile registered with it remembers
that for its own URL.

Exit codes:
  0  success (listen --once: messages came)
  1  error: from the server (printed as `error: <code>: <message>`), the network,
     the config file or the input; publish --wait: the timeout passed
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
    /// Publish a message to clients, a tag or everyone; --wait follows it (admin)
    Publish(publish::PublishArgs),
    /// Show how far a publish got: delivered, acknowledged, expired (admin)
    Status(publish_status::StatusArgs),
    /// Read the messages a client sent, oldest first; --follow for new ones (admin)
    Inbox(inbox::InboxArgs),
    /// List the registered clients with their status and tags, tag or delete one (operator)
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

    const ID: &str = "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13";

    fn publish(extra: &[&str]) -> Result<publish::PublishArgs, clap::Error> {
        let mut args = vec![
            "pigeonhole",
            "publish",
            "--type",
            "t",
            "--payload",
            "1",
            "--admin-token",
            "a",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).map(|cli| match cli.command {
            Command::Publish(p) => p,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn publish_names_exactly_one_audience() {
        let p = publish(&["--to", ID]).unwrap();
        assert_eq!(p.to, [ID]);
        assert!(p.to_tag.is_empty() && !p.all && p.ttl.is_none() && !p.wait);
        // --to and --to-file are one audience, and may be combined.
        assert!(publish(&["--to", ID, "--to-file", "r.txt"]).is_ok());
        let p = publish(&["--to-tag", "eu", "door-sensors"]).unwrap();
        assert_eq!(p.to_tag, ["eu", "door-sensors"]);
        assert!(publish(&["--all"]).unwrap().all);

        // None, or two of them: a usage error from clap (exit 2).
        for extra in [
            &[][..],
            &["--all", "--to", ID][..],
            &["--all", "--to-tag", "eu"][..],
            &["--to-tag", "eu", "--to", ID][..],
            &["--to-tag", "eu", "--to-file", "r.txt"][..],
            &["--all", "--to-file", "r.txt"][..],
        ] {
            let err = publish(extra).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{extra:?}: {err}");
        }
    }

    #[test]
    fn publish_ttl_and_wait_are_checked() {
        let p = publish(&["--all", "--ttl", "300", "--wait", "--timeout", "60"]).unwrap();
        assert_eq!((p.ttl, p.wait, p.timeout), (Some(300), true, Some(60)));
        assert_eq!(publish(&["--all", "--wait"]).unwrap().timeout, None);
        assert!(publish(&["--all", "--ttl", "2592000"]).is_ok());
        for bad in ["0", "2592001", "-1", "soon"] {
            assert!(publish(&["--all", "--ttl", bad]).is_err(), "--ttl {bad}");
        }
        // --timeout only means something with --wait.
        assert!(publish(&["--all", "--timeout", "60"]).is_err());
        assert!(publish(&["--all", "--wait", "--timeout", "0"]).is_err());
    }

    #[test]
    fn status_takes_a_publish_id() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let cli = parse(&[
            "pigeonhole",
            "status",
            ID,
            "--recipients",
            "--json",
            "--admin-token",
            "t",
        ])
        .unwrap();
        match cli.command {
            Command::Status(s) => {
                assert_eq!(s.publish_id, ID);
                assert!(s.recipients && s.json);
                assert_eq!(s.page_size, 1000);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["pigeonhole", "status", "--admin-token", "t"]).is_err());
    }

    #[test]
    fn clients_tags_a_client_or_filters_by_tag() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        let cli = parse(&[
            "pigeonhole",
            "clients",
            "tag",
            ID,
            "eu",
            "door-sensors",
            "--operator-token",
            "t",
        ])
        .unwrap();
        match cli.command {
            Command::Clients(c) => match c.action {
                Some(clients::ClientsAction::Tag(t)) => {
                    assert_eq!(t.id, ID);
                    assert_eq!(t.tags, ["eu", "door-sensors"]);
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // No tags: clears them.
        let cli = parse(&["pigeonhole", "clients", "tag", ID, "--operator-token", "t"]).unwrap();
        assert!(matches!(cli.command, Command::Clients(ref c)
            if matches!(c.action, Some(clients::ClientsAction::Tag(ref t)) if t.tags.is_empty())));
        let cli = parse(&[
            "pigeonhole",
            "clients",
            "--tag",
            "eu",
            "--operator-token",
            "t",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Clients(ref c)
            if c.action.is_none() && c.list.tag.as_deref() == Some("eu")));
    }
}
