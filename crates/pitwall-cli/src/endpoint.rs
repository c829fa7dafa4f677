//! Which API endpoint to talk to: the `--api` flag, else `PITWALL_API`, else `api` in the
//! config file, else [`DEFAULT_API`].
//!
//! The environment is passed in as [`EnvVars`] rather than read here, so that resolution is a
//! pure function of its inputs (and tests never touch the process environment). The config
//! file is read only when neither the flag nor the variable is given.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where `pitwalld all` listens unless told otherwise.
pub const DEFAULT_API: &str = "http://127.0.0.1:7070";

/// The environment variables resolution depends on; empty values count as unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvVars {
    /// `PITWALL_API`
    pub api: Option<String>,
    /// `PITWALL_CONFIG`
    pub config: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`
    pub xdg_config_home: Option<PathBuf>,
    /// `HOME`
    pub home: Option<PathBuf>,
    /// `PITWALL_TOKEN`: the bearer token to send, over any stored one.
    pub token: Option<String>,
}

impl EnvVars {
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            api: var("PITWALL_API").map(|v| v.to_string_lossy().into_owned()),
            config: var("PITWALL_CONFIG").map(PathBuf::from),
            xdg_config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
            token: var("PITWALL_TOKEN").map(|v| v.to_string_lossy().trim().to_owned()),
        }
    }
}

/// Where the endpoint came from, so errors can say what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    ConfigFile(PathBuf),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("the --api flag"),
            Source::Env => f.write_str("PITWALL_API"),
            Source::ConfigFile(p) => write!(f, "the config file {}", p.display()),
            Source::Default => f.write_str("the built-in default"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub source: Source,
}

/// The config file: `api = "http://HOST:PORT"`, and for an https endpoint with a client
/// certificate `cert`, `key` and `ca` (PEM files).
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub api: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// TLS files for an https endpoint: client certificate (chain), its key, extra trusted CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Each flag given wins over the config file's key of the same name; the config file is
    /// read only when some flag is missing.
    pub fn resolve(flags: TlsFiles, env: &EnvVars) -> Result<TlsFiles, ConfigError> {
        if flags.cert.is_some() && flags.key.is_some() && flags.ca.is_some() {
            return Ok(flags);
        }
        let file = match config_path(env) {
            Some(path) => read_config(&path, env.config.is_some())?,
            None => ConfigFile::default(),
        };
        Ok(TlsFiles {
            cert: flags.cert.or(file.cert),
            key: flags.key.or(file.key),
            ca: flags.ca.or(file.ca),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {path} named by PITWALL_CONFIG does not exist; create it or unset PITWALL_CONFIG"
    )]
    Missing { path: PathBuf },
    #[error("cannot read config file {path}: {source}; fix it or point PITWALL_CONFIG elsewhere")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "config file {path} is not valid{at}: {why}; it takes the settings api (e.g. \
         api = \"{DEFAULT_API}\"), cert, key and ca"
    )]
    Malformed {
        path: PathBuf,
        at: String,
        why: String,
    },
}

/// The config file to read: `$PITWALL_CONFIG`, else `$XDG_CONFIG_HOME/pitwall/config.toml`,
/// else `$HOME/.config/pitwall/config.toml`. `None` without any of these variables.
pub fn config_path(env: &EnvVars) -> Option<PathBuf> {
    if let Some(p) = &env.config {
        return Some(p.clone());
    }
    let base = env
        .xdg_config_home
        .clone()
        .or_else(|| env.home.as_ref().map(|h| h.join(".config")))?;
    Some(base.join("pitwall").join("config.toml"))
}

/// Resolve the endpoint from the `--api` flag and the environment.
pub fn resolve(flag: Option<&str>, env: &EnvVars) -> Result<Endpoint, ConfigError> {
    if let Some(url) = flag {
        return Ok(Endpoint {
            url: url.to_owned(),
            source: Source::Flag,
        });
    }
    if let Some(url) = &env.api {
        return Ok(Endpoint {
            url: url.clone(),
            source: Source::Env,
        });
    }
    if let Some(path) = config_path(env) {
        if let Some(url) = read_config(&path, env.config.is_some())?.api {
            return Ok(Endpoint {
                url,
                source: Source::ConfigFile(path),
            });
        }
    }
    Ok(Endpoint {
        url: DEFAULT_API.to_owned(),
        source: Source::Default,
    })
}

/// Read and parse a config file. A missing file is an empty config unless the user named it
/// explicitly (`PITWALL_CONFIG`).
pub fn read_config(path: &Path, explicit: bool) -> Result<ConfigFile, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(ConfigFile::default())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::Missing {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at line {}", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        ConfigError::Malformed {
            path: path.to_owned(),
            at,
            why: e.message().to_owned(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Self {
            Dir(tempfile::tempdir().unwrap())
        }
        /// Write `text` to `rel` under this directory, creating parents.
        fn file(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.0.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        }
        fn path(&self) -> PathBuf {
            self.0.path().to_owned()
        }
    }

    #[test]
    fn the_flag_wins_over_everything() {
        let d = Dir::new();
        let cfg = d.file("c.toml", "api = \"http://from-file:1\"");
        let env = EnvVars {
            api: Some("http://from-env:1".into()),
            config: Some(cfg),
            ..Default::default()
        };
        let e = resolve(Some("http://from-flag:1"), &env).unwrap();
        assert_eq!(
            e,
            Endpoint {
                url: "http://from-flag:1".into(),
                source: Source::Flag
            }
        );
    }

    #[test]
    fn the_flag_wins_even_over_a_broken_config_file() {
        let d = Dir::new();
        let env = EnvVars {
            config: Some(d.file("c.toml", "api = ")),
            ..Default::default()
        };
        assert_eq!(
            resolve(Some("http://x:1"), &env).unwrap().source,
            Source::Flag
        );
    }

    #[test]
    fn pitwall_api_wins_over_the_config_file() {
        let d = Dir::new();
        let env = EnvVars {
            api: Some("http://from-env:1".into()),
            config: Some(d.file("c.toml", "api = \"http://from-file:1\"")),
            ..Default::default()
        };
        assert_eq!(resolve(None, &env).unwrap().url, "http://from-env:1");
    }

    #[test]
    fn pitwall_config_names_the_config_file() {
        let d = Dir::new();
        let cfg = d.file("elsewhere.toml", "api = \"http://from-file:1\"");
        // a file in the XDG location too, which must lose
        d.file("xdg/pitwall/config.toml", "api = \"http://from-xdg:1\"");
        let env = EnvVars {
            config: Some(cfg.clone()),
            xdg_config_home: Some(d.path().join("xdg")),
            ..Default::default()
        };
        let e = resolve(None, &env).unwrap();
        assert_eq!(
            e,
            Endpoint {
                url: "http://from-file:1".into(),
                source: Source::ConfigFile(cfg)
            }
        );
    }

    #[test]
    fn xdg_config_home_wins_over_home() {
        let d = Dir::new();
        d.file("xdg/pitwall/config.toml", "api = \"http://from-xdg:1\"");
        d.file(
            "home/.config/pitwall/config.toml",
            "api = \"http://from-home:1\"",
        );
        let env = EnvVars {
            xdg_config_home: Some(d.path().join("xdg")),
            home: Some(d.path().join("home")),
            ..Default::default()
        };
        assert_eq!(resolve(None, &env).unwrap().url, "http://from-xdg:1");
    }

    #[test]
    fn home_dot_config_is_the_last_place_looked() {
        let d = Dir::new();
        let cfg = d.file(
            "home/.config/pitwall/config.toml",
            "api = \"http://from-home:1\"",
        );
        let env = EnvVars {
            home: Some(d.path().join("home")),
            ..Default::default()
        };
        assert_eq!(resolve(None, &env).unwrap().source, Source::ConfigFile(cfg));
    }

    #[test]
    fn without_flag_env_or_file_the_default_is_used() {
        let d = Dir::new();
        let env = EnvVars {
            home: Some(d.path()),
            ..Default::default()
        };
        assert_eq!(
            resolve(None, &env).unwrap(),
            Endpoint {
                url: DEFAULT_API.into(),
                source: Source::Default
            }
        );
        assert_eq!(
            resolve(None, &EnvVars::default()).unwrap().source,
            Source::Default
        );
    }

    #[test]
    fn a_config_file_without_api_falls_through_to_the_default() {
        let d = Dir::new();
        let env = EnvVars {
            config: Some(d.file("c.toml", "# nothing yet\n")),
            ..Default::default()
        };
        assert_eq!(resolve(None, &env).unwrap().source, Source::Default);
    }

    #[test]
    fn a_malformed_config_file_is_named_with_the_line_at_fault() {
        let d = Dir::new();
        let cfg = d.file("c.toml", "# comment\napi = http://x\n");
        let env = EnvVars {
            config: Some(cfg.clone()),
            ..Default::default()
        };
        let e = resolve(None, &env).unwrap_err().to_string();
        assert!(e.contains(&cfg.display().to_string()), "{e}");
        assert!(e.contains("at line 2"), "{e}");
        assert!(e.contains("api = \"http://127.0.0.1:7070\""), "{e}");
    }

    #[test]
    fn unknown_keys_in_the_config_file_are_refused() {
        let d = Dir::new();
        let env = EnvVars {
            config: Some(d.file("c.toml", "apii = \"http://x:1\"")),
            ..Default::default()
        };
        let e = resolve(None, &env).unwrap_err().to_string();
        assert!(e.contains("unknown field `apii`"), "{e}");
    }

    #[test]
    fn tls_flags_win_over_the_config_file_one_by_one() {
        let d = Dir::new();
        let env = EnvVars {
            config: Some(d.file(
                "c.toml",
                "cert = \"/f/c.pem\"\nkey = \"/f/k.pem\"\nca = \"/f/ca.pem\"\n",
            )),
            ..Default::default()
        };
        let flags = TlsFiles {
            cert: Some("/flag/c.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            TlsFiles::resolve(flags, &env).unwrap(),
            TlsFiles {
                cert: Some("/flag/c.pem".into()),
                key: Some("/f/k.pem".into()),
                ca: Some("/f/ca.pem".into()),
            }
        );
    }

    #[test]
    fn a_missing_file_named_by_pitwall_config_is_an_error() {
        let d = Dir::new();
        let env = EnvVars {
            config: Some(d.path().join("nope.toml")),
            ..Default::default()
        };
        let e = resolve(None, &env).unwrap_err();
        assert!(matches!(e, ConfigError::Missing { .. }), "{e:?}");
        assert!(e.to_string().contains("unset PITWALL_CONFIG"));
    }
}
