//! Secrets for a local server that was started without them.
//!
//! A new user should be able to run the server with no set-up, yet the
//! master key must stay the same across restarts (it unwraps every stored
//! key). So missing secrets are generated once, kept in
//! `<data-dir>/secrets.json` readable only by the owner, and reused.

use pigeonhole::crypto::{random_bytes, Key};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "secrets.json";
const NAMES: [&str; 3] = ["ADMIN_TOKEN", "OPERATOR_TOKENS", "MASTER_KEY"];

#[derive(Default, Serialize, Deserialize)]
struct SecretsFile {
    #[serde(flatten)]
    values: BTreeMap<String, String>,
}

pub struct LocalSecrets {
    values: BTreeMap<String, String>,
}

fn token() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<24>())
}

fn from_env(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

impl LocalSecrets {
    /// Reads the secrets file, generating (and saving) any secret that is
    /// neither in the file nor in the environment.
    pub fn load_or_create(data_dir: &Path) -> Result<LocalSecrets, String> {
        let path = data_dir.join(FILE_NAME);
        let mut values = match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str::<SecretsFile>(&text)
                    .map_err(|e| format!("{} is not valid: {e}", path.display()))?
                    .values
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut changed = false;
        for name in NAMES {
            if from_env(name) || values.contains_key(name) {
                continue;
            }
            let value = match name {
                "MASTER_KEY" => Key::random().to_base64(),
                _ => token(),
            };
            values.insert(name.to_string(), value);
            changed = true;
        }
        if changed {
            write_private(
                &path,
                &serde_json::to_string_pretty(&SecretsFile {
                    values: values.clone(),
                })
                .map_err(|e| e.to_string())?,
            )?;
        }
        Ok(LocalSecrets { values })
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    /// Prints the tokens a user needs to try the server, for those that came
    /// from the secrets file rather than the environment. Goes to stdout,
    /// not the log: log lines never carry secrets.
    pub fn announce_generated(&self) {
        for (name, label) in [
            ("ADMIN_TOKEN", "admin token"),
            ("OPERATOR_TOKENS", "operator token"),
        ] {
            if !from_env(name) {
                if let Some(value) = self.values.get(name) {
                    println!("{label}: {value}");
                }
            }
        }
    }
}

fn write_private(path: &PathBuf, contents: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
    file.write_all(contents.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
