//! The per-user profiles file.
//!
//! Location: `$PIGEONHOLE_CONFIG` (or `--config`) if set, else
//! `$XDG_CONFIG_HOME/pigeonhole/config.json`, else
//! `~/.config/pigeonhole/config.json`. It holds secrets, so every write
//! creates a fresh file with mode 0600 (set by `open(2)`, never widened) and
//! renames it over the old one; a crash mid-write leaves the old file intact.
//!
//! Besides the profiles it holds `fingerprint_secret`: 32 random bytes, made
//! the first time a default fingerprint is needed, that keep the default
//! fingerprint out of reach of anyone who cannot read this file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::Credentials;

/// Mode of the config file: read and write for its owner only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of a config directory the CLI has to create.
const DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot find a config location: set PIGEONHOLE_CONFIG or HOME")]
    NoLocation,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid config file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path}: fingerprint_secret is not base64 of {FINGERPRINT_SECRET_BYTES} bytes; \
         restore it from a backup, or delete it to make a new one (the default \
         fingerprint then changes, so `register` creates a new client)"
    )]
    BadFingerprintSecret { path: PathBuf },
}

/// Length of the random secret mixed into the default fingerprint.
pub const FINGERPRINT_SECRET_BYTES: usize = 32;

#[derive(Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigFile {
    /// Base64 of [`FINGERPRINT_SECRET_BYTES`] random bytes, mixed into the
    /// default fingerprint (see [`fingerprint_secret`]). Absent until first
    /// needed; every update keeps it, since it is part of the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_secret: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

impl std::fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFile")
            .field(
                "fingerprint_secret",
                &self.fingerprint_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("profiles", &self.profiles)
            .finish()
    }
}

impl ConfigFile {
    /// The decoded secret; `None` when absent, `Some(Err)` when malformed.
    fn decoded_fingerprint_secret(&self) -> Option<Result<Vec<u8>, ()>> {
        self.fingerprint_secret.as_deref().map(|text| {
            pigeonhole::crypto::decode_base64(text.trim())
                .filter(|bytes| bytes.len() == FINGERPRINT_SECRET_BYTES)
                .ok_or(())
        })
    }
}

/// One registration: where, who, and how far `listen` got.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    /// Server base URL, without `/api/v1`.
    pub url: String,
    #[serde(flatten)]
    pub credentials: Credentials,
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The last acknowledged message id (0: nothing yet).
    #[serde(default)]
    pub cursor: u64,
    /// Registered with `--insecure-http`: plain `http://` to this profile's
    /// own `url` is allowed although its host is not loopback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
    /// The fingerprint a `rotate` in progress registers the client under
    /// (the current one when it keeps it), saved before the request so that
    /// a rotation whose answer was lost can be completed: the next `rotate`
    /// finds it, checks whether the old token still works, and if not gets
    /// the new credentials by registering with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_fingerprint: Option<String>,
}

/// Where the config file lives, from the given environment lookup.
pub fn locate(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(path) = non_empty("PIGEONHOLE_CONFIG") {
        return Some(PathBuf::from(path));
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(dir) = non_empty("XDG_CONFIG_HOME").map(PathBuf::from) {
        if dir.is_absolute() {
            return Some(dir.join("pigeonhole").join("config.json"));
        }
    }
    non_empty("HOME").map(|home| {
        PathBuf::from(home)
            .join(".config")
            .join("pigeonhole")
            .join("config.json")
    })
}

/// Where the config file lives for this process.
pub fn default_path() -> Option<PathBuf> {
    locate(|name| std::env::var_os(name))
}

/// Reads the file; a missing file is an empty config.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(source) => {
            return Err(ConfigError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// True when group or others can read or write the file.
pub fn too_open(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o077 != 0)
        .unwrap_or(false)
}

/// Writes the whole file atomically with mode 0600.
pub fn save(path: &Path, config: &ConfigFile) -> Result<(), ConfigError> {
    let io_err = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io_err)?;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.json".into());
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut text = serde_json::to_string_pretty(config).expect("config serializes");
    text.push('\n');
    let write = || -> std::io::Result<()> {
        // A leftover from a crashed run of this same pid would make
        // create_new fail; it holds nothing worth keeping.
        let _ = std::fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(e)
    })
}

/// Loads, changes and saves the file. Re-reading right before writing keeps
/// other profiles' concurrent changes.
pub fn update<T>(path: &Path, change: impl FnOnce(&mut ConfigFile) -> T) -> Result<T, ConfigError> {
    let mut config = load(path)?;
    let out = change(&mut config);
    save(path, &config)?;
    Ok(out)
}

/// The per-user secret for the default fingerprint, made (32 random bytes)
/// and saved the first time it is needed, then returned unchanged.
pub fn fingerprint_secret(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bad = || ConfigError::BadFingerprintSecret {
        path: path.to_path_buf(),
    };
    if let Some(found) = load(path)?.decoded_fingerprint_secret() {
        return found.map_err(|()| bad());
    }
    update(path, |c| {
        if c.fingerprint_secret.is_none() {
            let bytes = pigeonhole::crypto::random_bytes::<FINGERPRINT_SECRET_BYTES>();
            c.fingerprint_secret = Some(pigeonhole::crypto::encode_base64(&bytes));
        }
    })?;
    // Read it back: if another process made one at the same moment and its
    // save landed last, this one uses that secret too.
    load(path)?
        .decoded_fingerprint_secret()
        .ok_or_else(bad)?
        .map_err(|()| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(cursor: u64) -> Profile {
        Profile {
            url: "http://127.0.0.1:8080".into(),
            credentials: Credentials {
                client_id: "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13".into(),
                api_token: "pht_secret".into(),
                personal_token: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
            },
            fingerprint: "a".repeat(64),
            name: Some("laptop".into()),
            cursor,
            insecure_http: false,
            pending_fingerprint: None,
        }
    }

    #[test]
    fn round_trips_and_is_created_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("nested")
            .join("pigeonhole")
            .join("config.json");
        assert_eq!(load(&path).unwrap(), ConfigFile::default());

        let mut config = ConfigFile::default();
        config.profiles.insert("default".into(), profile(0));
        config.profiles.insert("work".into(), profile(7));
        save(&path, &config).unwrap();

        assert_eq!(load(&path).unwrap(), config);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!too_open(&path));
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        // No temporary file is left behind.
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn rewriting_a_too_open_file_tightens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{\"profiles\":{}}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(too_open(&path));
        update(&path, |c| c.profiles.insert("default".into(), profile(3))).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&path).unwrap().profiles["default"].cursor, 3);
    }

    #[test]
    fn update_keeps_other_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        update(&path, |c| c.profiles.insert("a".into(), profile(1))).unwrap();
        update(&path, |c| c.profiles.insert("b".into(), profile(2))).unwrap();
        update(&path, |c| c.profiles.get_mut("a").unwrap().cursor = 9).unwrap();
        let c = load(&path).unwrap();
        assert_eq!((c.profiles["a"].cursor, c.profiles["b"].cursor), (9, 2));
    }

    #[test]
    fn optional_fields_are_left_out_until_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        update(&path, |c| c.profiles.insert("default".into(), profile(2))).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("insecure_http"), "{text}");
        assert!(!text.contains("pending_fingerprint"), "{text}");
        update(&path, |c| {
            let p = c.profiles.get_mut("default").unwrap();
            p.insecure_http = true;
            p.pending_fingerprint = Some("b".repeat(64));
        })
        .unwrap();
        let p = &load(&path).unwrap().profiles["default"];
        assert!(p.insecure_http);
        assert_eq!(
            p.pending_fingerprint.as_deref(),
            Some("b".repeat(64).as_str())
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid config file"), "{err}");
    }

    #[test]
    fn location_follows_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            locate(env(&[
                ("PIGEONHOLE_CONFIG", "/x/c.json"),
                ("HOME", "/home/u")
            ])),
            Some(PathBuf::from("/x/c.json"))
        );
        assert_eq!(
            locate(env(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")])),
            Some(PathBuf::from("/xdg/pigeonhole/config.json"))
        );
        assert_eq!(
            locate(env(&[("XDG_CONFIG_HOME", "relative"), ("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.config/pigeonhole/config.json"))
        );
        assert_eq!(locate(env(&[("PIGEONHOLE_CONFIG", "")])), None);
    }

    #[test]
    fn debug_output_hides_the_tokens() {
        let shown = format!("{:?}", profile(0));
        assert!(!shown.contains("pht_secret"), "{shown}");
        assert!(!shown.contains("AAECAwQF"), "{shown}");
        let file = ConfigFile {
            fingerprint_secret: Some("c2VjcmV0LXNlY3JldC1zZWNyZXQ=".into()),
            profiles: BTreeMap::new(),
        };
        let shown = format!("{file:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }

    #[test]
    fn fingerprint_secret_is_made_once_and_survives_other_updates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pigeonhole").join("config.json");
        let secret = fingerprint_secret(&path).unwrap();
        assert_eq!(secret.len(), FINGERPRINT_SECRET_BYTES);
        assert_ne!(secret, vec![0u8; FINGERPRINT_SECRET_BYTES]);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fingerprint_secret(&path).unwrap(), secret);

        // Registering, listening (cursor saves) and the like keep it.
        update(&path, |c| c.profiles.insert("default".into(), profile(0))).unwrap();
        update(&path, |c| c.profiles.get_mut("default").unwrap().cursor = 5).unwrap();
        update(&path, |c| c.profiles.insert("work".into(), profile(1))).unwrap();
        assert_eq!(fingerprint_secret(&path).unwrap(), secret);
        let stored = load(&path).unwrap();
        assert_eq!(
            stored.fingerprint_secret,
            Some(pigeonhole::crypto::encode_base64(&secret))
        );
        assert_eq!(stored.profiles.len(), 2);

        // Another user's file gets another secret.
        let other = dir.path().join("other.json");
        assert_ne!(fingerprint_secret(&other).unwrap(), secret);
    }

    #[test]
    fn fingerprint_secret_is_added_to_an_existing_file_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // A file from before the secret existed keeps its profiles.
        std::fs::write(
            &path,
            serde_json::json!({"profiles": {"default": profile(4)}}).to_string(),
        )
        .unwrap();
        let secret = fingerprint_secret(&path).unwrap();
        assert_eq!(load(&path).unwrap().profiles["default"], profile(4));
        assert_eq!(fingerprint_secret(&path).unwrap(), secret);

        // A damaged secret is an error, not silently a new fingerprint.
        update(&path, |c| c.fingerprint_secret = Some("c2hvcnQ=".into())).unwrap();
        let err = fingerprint_secret(&path).unwrap_err().to_string();
        assert!(err.contains("fingerprint_secret"), "{err}");
        assert_eq!(
            load(&path).unwrap().fingerprint_secret.as_deref(),
            Some("c2hvcnQ=")
        );
    }
}
