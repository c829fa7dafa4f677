//! Stored logins: one file per user, `$XDG_CONFIG_HOME/pitwall/credentials.json` (else
//! `~/.config/pitwall/credentials.json`), holding for each API base URL the access token,
//! the refresh token, when the access token expires and how to refresh it.
//!
//! The file is secret: its directory is created 0700, the file is written 0600 and
//! atomically (a temporary file in the same directory, renamed over it), and a file that
//! group or others can read is refused rather than used.
//!
//! Which token a command sends ([`plan`]) is a pure function of `PITWALL_TOKEN`, the stored
//! login and the time, so that it is tested without clocks or files.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::endpoint::EnvVars;

/// The credentials file's name, in the same directory as `config.toml`.
pub const FILE_NAME: &str = "credentials.json";

/// A token expiring within this many seconds is refreshed before a command (when it can be).
pub const REFRESH_AHEAD_SECS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "credentials file {path} can be read by others (mode {mode:o}); \
         protect it with `chmod 600 {path}` (or remove it and log in again)"
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {path} is not valid: {why}; remove it and run `pitwall login`")]
    Malformed { path: PathBuf, why: String },
    #[error("cannot write credentials file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nowhere to store credentials: set HOME or XDG_CONFIG_HOME")]
    NoHome,
}

/// The whole file: logins keyed by API base URL (see [`api_key`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub apis: BTreeMap<String, StoredLogin>,
}

/// One API's login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredLogin {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When `access_token` expires, Unix seconds; `None` when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub refresh: RefreshWith,
}

/// How a login's refresh token is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RefreshWith {
    /// It cannot be: a token given with `pitwall login --token`.
    None,
    /// `POST /v1/auth/refresh` of the API itself (built-in issuer).
    Builtin,
    /// The `refresh_token` grant at an external issuer's token endpoint.
    Oauth {
        token_endpoint: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
    },
}

/// What to send with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No token at all.
    Anonymous,
    /// This token (from `PITWALL_TOKEN`, or a stored one still good).
    Use(String),
    /// The stored token expires soon (or has): refresh it first.
    Refresh(StoredLogin),
    /// The stored token has expired and cannot be refreshed.
    Expired,
}

/// `PITWALL_TOKEN` wins; else a stored token that expires within [`REFRESH_AHEAD_SECS`] is
/// refreshed when there is a refresh token, used as it is while it has not expired, and
/// refused once it has.
pub fn plan(env_token: Option<&str>, stored: Option<&StoredLogin>, now: i64) -> Plan {
    if let Some(t) = env_token {
        return Plan::Use(t.to_owned());
    }
    let Some(login) = stored else {
        return Plan::Anonymous;
    };
    let Some(expires_at) = login.expires_at else {
        return Plan::Use(login.access_token.clone());
    };
    let can_refresh = login.refresh_token.is_some() && login.refresh != RefreshWith::None;
    if expires_at - now <= REFRESH_AHEAD_SECS && can_refresh {
        Plan::Refresh(login.clone())
    } else if expires_at <= now {
        Plan::Expired
    } else {
        Plan::Use(login.access_token.clone())
    }
}

/// The key of an API in the file: its URL, parsed and without trailing slashes, so that
/// `http://h:7070` and `http://h:7070/` are the same API.
pub fn api_key(api: &str) -> String {
    let normal = url::Url::parse(api)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| api.to_owned());
    normal.trim_end_matches('/').to_owned()
}

/// `$XDG_CONFIG_HOME/pitwall/credentials.json`, else `$HOME/.config/pitwall/credentials.json`.
pub fn default_path(env: &EnvVars) -> Option<PathBuf> {
    let base = env
        .xdg_config_home
        .clone()
        .or_else(|| env.home.as_ref().map(|h| h.join(".config")))?;
    Some(base.join("pitwall").join(FILE_NAME))
}

/// The credentials file at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The store in its default place for this environment.
    pub fn for_env(env: &EnvVars) -> Result<Self, CredentialsError> {
        default_path(env)
            .map(Self::new)
            .ok_or(CredentialsError::NoHome)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's contents; empty when there is no file. Refuses a file group or others can
    /// read.
    pub fn load(&self) -> Result<Credentials, CredentialsError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::default()),
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CredentialsError::Insecure {
                path: self.path.clone(),
                mode,
            });
        }
        let text = std::fs::read(&self.path).map_err(|source| CredentialsError::Read {
            path: self.path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| CredentialsError::Malformed {
            path: self.path.clone(),
            why: e.to_string(),
        })
    }

    /// Replace the file with `creds`: directory made 0700 if missing, file 0600, written to
    /// a temporary file in the same directory and renamed over the old one.
    pub fn save(&self, creds: &Credentials) -> Result<(), CredentialsError> {
        let write_err = |source| CredentialsError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(write_err)?;
        }
        let json = serde_json::to_vec_pretty(creds).map_err(|e| write_err(e.into()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".credentials.")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(write_err)?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
        tmp.write_all(&json).map_err(write_err)?;
        tmp.write_all(b"\n").map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist(&self.path).map_err(|e| write_err(e.error))?;
        Ok(())
    }

    /// The login stored for `api`.
    pub fn get(&self, api: &str) -> Result<Option<StoredLogin>, CredentialsError> {
        Ok(self.load()?.apis.remove(&api_key(api)))
    }

    /// Store `login` for `api`, keeping the other APIs' logins.
    pub fn put(&self, api: &str, login: StoredLogin) -> Result<(), CredentialsError> {
        let mut creds = self.load()?;
        creds.apis.insert(api_key(api), login);
        self.save(&creds)
    }

    /// Forget the login for `api`; false when there was none.
    pub fn remove(&self, api: &str) -> Result<bool, CredentialsError> {
        let mut creds = self.load()?;
        if creds.apis.remove(&api_key(api)).is_none() {
            return Ok(false);
        }
        self.save(&creds)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(token: &str, expires_at: Option<i64>, refresh: bool) -> StoredLogin {
        StoredLogin {
            access_token: token.into(),
            refresh_token: refresh.then(|| "r".to_owned()),
            expires_at,
            refresh: if refresh {
                RefreshWith::Builtin
            } else {
                RefreshWith::None
            },
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_file_is_0600_in_a_new_0700_directory() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path().join("cfg/pitwall/credentials.json"));
        store
            .put("http://a:1", login("t", Some(100), false))
            .unwrap();
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(&d.path().join("cfg/pitwall")), 0o700);
    }

    #[test]
    fn saving_replaces_the_file_by_rename_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path().join("credentials.json"));
        store.put("http://a:1", login("one", None, false)).unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = inode(store.path());
        store.put("http://a:1", login("two", None, false)).unwrap();
        assert_ne!(inode(store.path()), before, "written in place, not renamed");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["credentials.json"]);
        assert_eq!(
            store.get("http://a:1").unwrap().unwrap().access_token,
            "two"
        );
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_chmod_to_run() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path().join("credentials.json"));
        store.put("http://a:1", login("t", None, false)).unwrap();
        for m in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(m)).unwrap();
            let e = store.get("http://a:1").unwrap_err();
            assert!(matches!(e, CredentialsError::Insecure { .. }), "{e:?}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn a_missing_file_holds_no_login() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path().join("credentials.json"));
        assert_eq!(store.get("http://a:1").unwrap(), None);
        assert!(!store.remove("http://a:1").unwrap());
    }

    #[test]
    fn logins_are_keyed_by_api_url() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path().join("credentials.json"));
        store.put("http://a:1", login("ta", None, false)).unwrap();
        store.put("https://b:2/", login("tb", None, false)).unwrap();
        assert_eq!(
            store.get("http://a:1/").unwrap().unwrap().access_token,
            "ta"
        );
        assert_eq!(
            store.get("https://b:2").unwrap().unwrap().access_token,
            "tb"
        );
        assert_eq!(store.get("http://b:2").unwrap(), None);
        assert!(store.remove("http://a:1").unwrap());
        assert_eq!(store.get("http://a:1").unwrap(), None);
        assert!(
            store.get("https://b:2").unwrap().is_some(),
            "the other login stays"
        );
    }

    #[test]
    fn the_file_sits_beside_the_config_file() {
        let env = EnvVars {
            home: Some("/home/ada".into()),
            ..Default::default()
        };
        assert_eq!(
            default_path(&env).unwrap(),
            PathBuf::from("/home/ada/.config/pitwall/credentials.json")
        );
        let env = EnvVars {
            xdg_config_home: Some("/x".into()),
            ..env
        };
        assert_eq!(
            default_path(&env).unwrap(),
            PathBuf::from("/x/pitwall/credentials.json")
        );
        assert_eq!(default_path(&EnvVars::default()), None);
    }

    #[test]
    fn pitwall_token_wins_over_a_stored_login() {
        let stored = login("stored", Some(1000), true);
        assert_eq!(plan(Some("env"), Some(&stored), 0), Plan::Use("env".into()));
        // even over an expired one
        assert_eq!(
            plan(Some("env"), Some(&stored), 5000),
            Plan::Use("env".into())
        );
        assert_eq!(plan(None, None, 0), Plan::Anonymous);
    }

    #[test]
    fn a_token_is_refreshed_within_a_minute_of_expiry() {
        let stored = login("t", Some(1000), true);
        assert_eq!(plan(None, Some(&stored), 939), Plan::Use("t".into()));
        assert_eq!(
            plan(None, Some(&stored), 940),
            Plan::Refresh(stored.clone())
        );
        assert_eq!(
            plan(None, Some(&stored), 2000),
            Plan::Refresh(stored.clone())
        );
    }

    #[test]
    fn a_token_without_refresh_is_used_until_it_expires() {
        let stored = login("t", Some(1000), false);
        assert_eq!(plan(None, Some(&stored), 990), Plan::Use("t".into()));
        assert_eq!(plan(None, Some(&stored), 1000), Plan::Expired);
        let unknown = login("t", None, false);
        assert_eq!(plan(None, Some(&unknown), 1 << 40), Plan::Use("t".into()));
    }
}
