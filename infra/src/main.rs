//! `pigeonhole-infra`: creates the tables and queues of `template.yaml` on an
//! endpoint, then prints (or writes) the environment the service reads.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
Usage: pigeonhole-infra [OPTIONS]

Creates the DynamoDB tables and SQS queues declared in template.yaml on any
endpoint (AWS, LocalStack, moto). Running it again is safe. Then prints the
environment the service reads (CLIENTS_TABLE=... FANOUT_QUEUE_URL=...
INBOUND_QUEUE_URL=...).

Options:
  --template FILE      the SAM template [default: template.yaml]
  --prefix PREFIX      prefix of every table and queue name [default: pigeonhole-]
  --endpoint-url URL   the endpoint to call [default: $AWS_ENDPOINT_URL, else AWS]
  --region REGION      [default: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1]
  --env-file FILE      write the environment to FILE instead of printing it
  -h, --help           show this

Credentials come from the usual AWS sources (for an emulator, set
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to anything).";

struct Args {
    template: PathBuf,
    prefix: String,
    endpoint_url: Option<String>,
    region: Option<String>,
    env_file: Option<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        template: PathBuf::from("template.yaml"),
        prefix: "pigeonhole-".into(),
        endpoint_url: None,
        region: None,
        env_file: None,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--template" => parsed.template = value()?.into(),
            "--prefix" => parsed.prefix = value()?,
            "--endpoint-url" => parsed.endpoint_url = Some(value()?),
            "--region" => parsed.region = Some(value()?),
            "--env-file" => parsed.env_file = Some(value()?.into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(parsed))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pigeonhole-infra: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // An explicit region keeps the SDK from asking EC2 instance metadata.
    let region = args
        .region
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(pigeonhole::aws::https_client())
        .region(aws_config::Region::new(region));
    // Without the flag the SDK reads AWS_ENDPOINT_URL itself.
    if let Some(url) = &args.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;

    let provisioned = match pigeonhole_infra::provision(&sdk, &args.template, &args.prefix).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pigeonhole-infra: {e}");
            return ExitCode::FAILURE;
        }
    };
    for line in &provisioned.log {
        eprintln!("pigeonhole-infra: {line}");
    }
    let text: String = provisioned
        .env_lines()
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    match &args.env_file {
        Some(path) => {
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("pigeonhole-infra: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("pigeonhole-infra: wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_flags_in_both_forms() {
        let args = parse(&[
            "--template",
            "t.yaml",
            "--prefix=dev-",
            "--endpoint-url",
            "http://127.0.0.1:5000",
            "--env-file=out.env",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(args.template, PathBuf::from("t.yaml"));
        assert_eq!(args.prefix, "dev-");
        assert_eq!(args.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(args.env_file, Some(PathBuf::from("out.env")));
        assert_eq!(args.region, None);

        let defaults = parse(&[]).unwrap().unwrap();
        assert_eq!(defaults.template, PathBuf::from("template.yaml"));
        assert_eq!(defaults.prefix, "pigeonhole-");
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--prefix"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
