//! The command line: global options and the list of subcommands. Each
//! subcommand's own options live with its implementation in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{clients, completions, listen, profiles, publish, register, send, simulate};

const ABOUT: &str = "Client, admin, operator and load-test tool for Pigeonhole, the \
end-to-end-encrypted short-poll messaging service.";

const AFTER_HELP: &str = "\
Examples:
  pigeonhole register --url http://127.0.0.1:8080 --name laptop
  pigeonhole listen
  pigeonhole send --type reply --payload '{\"text\": \"hi\"}'

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
    /// Publish a message to clients (admin)
    Publish(publish::PublishArgs),
    /// List the registered clients with their status (operator)
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
        for sub in Cli::command().get_subcommands() {
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
}
