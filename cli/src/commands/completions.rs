//! `pigeonhole completions <shell>`: a completion script on stdout.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::cli::Cli;
use crate::error::{CliError, EXIT_OK};

const EXAMPLES: &str = "\
Examples:
  pigeonhole completions bash > ~/.local/share/bash-completion/completions/pigeonhole
  pigeonhole completions zsh > \"${fpath[1]}/_pigeonhole\"
  pigeonhole completions fish > ~/.config/fish/completions/pigeonhole.fish";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct CompletionsArgs {
    /// Shell to generate the script for
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: CompletionsArgs) -> Result<u8, CliError> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut Cli::command(), "pigeonhole", &mut out);
    std::io::Write::flush(&mut out).map_err(CliError::Output)?;
    Ok(EXIT_OK)
}
