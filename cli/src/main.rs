//! `pigeonhole`: the command-line client of Pigeonhole. This file only parses
//! the command line and dispatches; see `commands/` for each subcommand.

mod api;
mod backoff;
mod cli;
mod commands;
mod config;
mod error;
mod fingerprint;
mod message;
mod retry;
mod status;
mod timefmt;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use commands::Ctx;
use error::{CliError, EXIT_FAILURE};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Ctx::new(cli.profile, cli.url, cli.config, cli.insecure_http);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result: Result<u8, CliError> = runtime.block_on(async {
        match cli.command {
            Command::Register(args) => commands::register::run(&ctx, args).await,
            Command::Listen(args) => commands::listen::run(&ctx, args).await,
            Command::Send(args) => commands::send::run(&ctx, args).await,
            Command::Rotate(args) => commands::rotate::run(&ctx, args).await,
            Command::Publish(args) => commands::publish::run(&ctx, args).await,
            Command::Status(args) => commands::publish_status::run(&ctx, args).await,
            Command::Inbox(args) => commands::inbox::run(&ctx, args).await,
            Command::Clients(args) => commands::clients::run(&ctx, args).await,
            Command::Simulate(args) => commands::simulate::run(&ctx, args).await,
            Command::Profiles(args) => commands::profiles::run(&ctx, args).await,
            Command::Completions(args) => commands::completions::run(args),
        }
    });
    // Don't wait for stray blocking work (e.g. a stdin read) on the way out.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is_broken_pipe() => ExitCode::from(EXIT_FAILURE),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
