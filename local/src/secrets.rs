//! Secrets for a local server that was started without them.
//!
//! A new user should be able to run the server with no set-up, yet the
//! master key must stay the same across restarts (it unwraps every stored
//! key). So missing secrets are generated once, kept in
//! `<data-dir>/secrets.json` readable only by the owner, and reused.
//!
//! The file is replaced atomically (a private temporary file, fsynced, then
//! renamed over it), so a crash never leaves it half-written: losing the
//! master key would make every stored key unreadable. The server refuses a
//! file that others could read or replace, or that belongs to someone else.

use pigeonhole::crypto::{random_bytes, Key};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "secrets.json";
const NAMES: [&str; 3] = ["ADMIN_TOKEN", "OPERATOR_TOKENS", "MASTER_KEY"];
/// The secrets a user needs to try the server, and how they are called when
/// printed.
const TOKENS: [(&str, &str); 2] = [
    ("ADMIN_TOKEN", "admin token"),
    ("OPERATOR_TOKENS", "operator token"),
];

#[derive(Default, Serialize, Deserialize)]
struct SecretsFile {
    #[serde(flatten)]
    values: BTreeMap<String, String>,
}

/// Where a secret comes from on this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The environment; the file's value, if any, is not used.
    Env,
    /// The secrets file, written by an earlier start.
    File,
    /// Generated on this start (and saved in the file).
    Generated,
}

pub struct LocalSecrets {
    path: PathBuf,
    values: BTreeMap<String, String>,
    sources: BTreeMap<&'static str, Source>,
}

fn random_name() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<12>())
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
        Self::load_or_create_with(data_dir, from_env)
    }

    /// [`Self::load_or_create`] with `in_env` saying which secrets the
    /// environment sets.
    fn load_or_create_with(
        data_dir: &Path,
        in_env: impl Fn(&str) -> bool,
    ) -> Result<LocalSecrets, String> {
        let path = data_dir.join(FILE_NAME);
        let mut values = match read_private(&path)? {
            Some(text) => {
                serde_json::from_str::<SecretsFile>(&text)
                    .map_err(|e| format!("{} is not valid: {e}", path.display()))?
                    .values
            }
            None => BTreeMap::new(),
        };
        let mut sources = BTreeMap::new();
        for name in NAMES {
            let source = if in_env(name) {
                Source::Env
            } else if values.contains_key(name) {
                Source::File
            } else {
                let value = match name {
                    "MASTER_KEY" => Key::random().to_base64(),
                    _ => token(),
                };
                values.insert(name.to_string(), value);
                Source::Generated
            };
            sources.insert(name, source);
        }
        if sources.values().any(|s| *s == Source::Generated) {
            write_private(
                &path,
                &serde_json::to_string_pretty(&SecretsFile {
                    values: values.clone(),
                })
                .map_err(|e| e.to_string())?,
            )?;
        }
        Ok(LocalSecrets {
            path,
            values,
            sources,
        })
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    /// Prints [`Self::announcement`]. Goes to stdout, not the log: log lines
    /// never carry secrets.
    pub fn announce(&self) {
        for line in self.announcement() {
            println!("{line}");
        }
    }

    /// What a user needs to know to try the server: the tokens generated on
    /// this start, and otherwise only where the kept ones are, so that
    /// their values do not end up in every start's output (terminal
    /// scrollback, service logs). Nothing about secrets from the
    /// environment.
    fn announcement(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut kept = Vec::new();
        for (name, label) in TOKENS {
            match (self.sources.get(name), self.values.get(name)) {
                (Some(Source::Generated), Some(value)) => lines.push(format!("{label}: {value}")),
                (Some(Source::File), Some(_)) => kept.push(label),
                _ => {}
            }
        }
        let path = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        if !lines.is_empty() {
            lines.push(format!(
                "(kept in {}; later starts print only this path)",
                path.display()
            ));
        }
        if !kept.is_empty() {
            lines.push(format!(
                "{} kept in {} (printed only on the start that generated {})",
                kept.join(" and "),
                path.display(),
                if kept.len() == 1 { "it" } else { "them" }
            ));
        }
        lines
    }
}

/// The secrets file's contents, `None` when there is none. Refuses a file
/// that is not private to the user running the server: it is checked on
/// the opened file, so it cannot be swapped between the check and the read.
fn read_private(path: &Path) -> Result<Option<String>, String> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    #[cfg(unix)]
    check_private(path, &meta)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Some(text))
}

/// The secrets file must belong to the user running the server and be
/// neither readable nor writable by anyone else: a token others can read
/// is anyone's token, and a master key others can replace lets them decide
/// the keys new clients get.
#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let owner = own_uid(dir)?;
    if meta.uid() != owner {
        return Err(format!(
            "{path} belongs to user id {}, not to the user running the server (user id {owner}); \
             start the server as its owner, or make it yours with `chown {owner} {path}` \
             and private with `chmod 600 {path}`",
            meta.uid(),
            path = path.display(),
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{path} holds the server's secrets but its mode {mode:03o} gives access to group or others; \
             make it private with `chmod 600 {path}` (and, if anyone else could read it, replace \
             the tokens in it)",
            path = path.display(),
        ));
    }
    Ok(())
}

/// The user id that owns the files this process creates in `dir`: its
/// effective user id, or what a network file system maps it to. std has
/// no `geteuid`, and reading the owner of a file created here needs no
/// `unsafe` nor a libc dependency; it is also the right comparison on a
/// file system that squashes ids (the secrets file was created the same
/// way).
#[cfg(unix)]
fn own_uid(dir: &Path) -> Result<u32, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let probe = dir.join(format!(".owner-probe.{}", random_name()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(|e| {
            format!(
                "cannot create a file in {} to check who owns {FILE_NAME}: {e}",
                dir.display()
            )
        })?;
    let uid = file.metadata().map(|m| m.uid());
    drop(file);
    let _ = std::fs::remove_file(&probe);
    uid.map_err(|e| format!("cannot read {}: {e}", probe.display()))
}

/// Replaces `path` atomically with `contents`, readable by the owner only:
/// a temporary file in the same directory, created exclusively with mode
/// 0600, is written, fsynced and renamed over `path`, then the directory
/// is fsynced so the rename itself survives a crash. Readers see the old
/// file or the new one, never a mix or an empty one.
fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| FILE_NAME.to_string());
    let tmp = dir.join(format!(".{name}.{}.tmp", random_name()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let written = (|| {
        // Exactly 0600 whatever the umask.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        File::open(dir)?.sync_all()?;
        Ok::<_, std::io::Error>(())
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system's temporary directory, removed
    /// when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(format!("pigeonhole-local-test-{}", random_name()));
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn tokens_are_printed_only_on_the_start_that_generates_them() {
        let dir = TempDir::new();
        let first = LocalSecrets::load_or_create_with(&dir.0, |_| false).unwrap();
        let admin = first.get("ADMIN_TOKEN").unwrap();
        let operator = first.get("OPERATOR_TOKENS").unwrap();
        let lines = first.announcement();
        assert_eq!(lines[0], format!("admin token: {admin}"));
        assert_eq!(lines[1], format!("operator token: {operator}"));
        assert!(lines[2].contains(&dir.0.join(FILE_NAME).display().to_string()));

        let second = LocalSecrets::load_or_create_with(&dir.0, |_| false).unwrap();
        assert_eq!(second.get("ADMIN_TOKEN").unwrap(), admin);
        assert_eq!(second.get("MASTER_KEY"), first.get("MASTER_KEY"));
        let lines = second.announcement();
        let text = lines.join("\n");
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            !text.contains(&admin) && !text.contains(&operator),
            "{text}"
        );
        assert!(
            text.contains("admin token and operator token kept in")
                && text.contains(&dir.0.join(FILE_NAME).display().to_string()),
            "{text}"
        );
    }

    #[test]
    fn secrets_from_the_environment_are_not_announced() {
        let dir = TempDir::new();
        let s = LocalSecrets::load_or_create_with(&dir.0, |n| n == "ADMIN_TOKEN").unwrap();
        assert_eq!(s.get("ADMIN_TOKEN"), None);
        let lines = s.announcement();
        assert!(lines[0].starts_with("operator token: "), "{lines:?}");
        assert!(!lines.join("\n").contains("admin"), "{lines:?}");
        // Only what is in the environment: nothing to write or announce.
        let s = LocalSecrets::load_or_create_with(&dir.0, |_| true).unwrap();
        assert!(s.announcement().is_empty());
    }

    #[test]
    fn the_file_is_written_atomically_and_private() {
        let dir = TempDir::new();
        let path = dir.0.join(FILE_NAME);
        write_private(&path, "{\"A\":\"1\"}").unwrap();
        assert_eq!(mode(&path), 0o600);
        write_private(&path, "{\"A\":\"2\"}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"A\":\"2\"}");
        assert_eq!(mode(&path), 0o600);
        // No temporary file (nor ownership probe) is left behind.
        LocalSecrets::load_or_create_with(&dir.0, |_| false).unwrap();
        assert_eq!(entries(&dir.0), vec![FILE_NAME.to_string()]);
    }

    #[test]
    fn a_file_others_can_read_or_write_is_refused() {
        let dir = TempDir::new();
        LocalSecrets::load_or_create_with(&dir.0, |_| false).unwrap();
        let path = dir.0.join(FILE_NAME);
        for bad in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = LocalSecrets::load_or_create_with(&dir.0, |_| false)
                .err()
                .unwrap_or_else(|| panic!("mode {bad:o} accepted"));
            assert!(
                err.contains(&format!("chmod 600 {}", path.display())),
                "{err}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        LocalSecrets::load_or_create_with(&dir.0, |_| false).unwrap();
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let dir = TempDir::new();
        LocalSecrets::load_or_create_with(&dir.0, |_| false).unwrap();
        let path = dir.0.join(FILE_NAME);
        let me = std::fs::metadata(&path).unwrap().uid();
        assert_eq!(own_uid(&dir.0).unwrap(), me);
        // Only root can give a file away; elsewhere the check above is all
        // that can be tested.
        if me != 0 {
            return;
        }
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let err = LocalSecrets::load_or_create_with(&dir.0, |_| false)
            .err()
            .expect("a file of user 65534 accepted");
        assert!(
            err.contains("belongs to user id 65534") && err.contains("chown 0 "),
            "{err}"
        );
    }
}
