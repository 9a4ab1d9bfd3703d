//! `pigeonhole profiles`: what the config file holds, without the secrets.

use clap::Args;

use super::{print_line, Ctx};
use crate::config;
use crate::error::{CliError, EXIT_OK};

const EXAMPLES: &str = "\
Examples:
  pigeonhole profiles
  pigeonhole profiles --json | jq -r '.[] | select(.profile == \"default\") | .client_id'";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ProfilesArgs {
    /// Print a JSON array of {profile, url, client_id, name, cursor}
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, args: ProfilesArgs) -> Result<u8, CliError> {
    let path = ctx.config_path()?;
    let file = config::load(path)?;
    if args.json {
        let list: Vec<serde_json::Value> = file
            .profiles
            .iter()
            .map(|(name, p)| {
                serde_json::json!({
                    "profile": name,
                    "url": p.url,
                    "client_id": p.credentials.client_id,
                    "name": p.name,
                    "cursor": p.cursor,
                })
            })
            .collect();
        print_line(&serde_json::to_string_pretty(&list).expect("profiles serialize"))?;
        return Ok(EXIT_OK);
    }
    if file.profiles.is_empty() {
        print_line(&format!(
            "no profiles in {}: run `pigeonhole register --url URL`",
            path.display()
        ))?;
        return Ok(EXIT_OK);
    }
    print_line(&format!("{}:", path.display()))?;
    for (name, p) in &file.profiles {
        let marker = if *name == ctx.profile { "*" } else { " " };
        print_line(&format!(
            "{marker} {name}: client {} at {} (cursor {})",
            p.credentials.client_id, p.url, p.cursor
        ))?;
    }
    Ok(EXIT_OK)
}
