//! Exit codes scripts can rely on, the one function that maps errors to them, and the hint
//! line printed under an error.

use std::fmt;

use pitwall_api::ClientError;

use crate::commands::image::ImportError;
use crate::commands::login::LoginError;
use crate::commands::vm::WaitError;
use crate::credentials::CredentialsError;
use crate::endpoint::{config_path, Endpoint, EnvVars};
use crate::oauth::OauthError;
use crate::session::SessionError;

/// The process exit status; see `pitwall --help` and docs/cli.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// Any error not listed below.
    Failure = 1,
    /// Bad flags or arguments (clap exits with this itself).
    Usage = 2,
    NotFound = 3,
    Conflict = 4,
    Timeout = 5,
    Unreachable = 6,
    VmFailed = 7,
    Invalid = 8,
    /// Not logged in, login expired, or the token was refused (HTTP 401).
    Unauthenticated = 9,
    /// Forbidden, or over quota (HTTP 403).
    Forbidden = 10,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Map an error to its exit status: the first error in the chain that says something decides.
pub fn exit_code(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::Api { code, status, .. } => match code.as_str() {
                    "unauthenticated" => Exit::Unauthenticated,
                    "forbidden" | "quota_exceeded" => Exit::Forbidden,
                    _ if *status == 401 => Exit::Unauthenticated,
                    _ if *status == 403 => Exit::Forbidden,
                    "not_found" => Exit::NotFound,
                    "already_exists" | "conflict" | "image_in_use" => Exit::Conflict,
                    "timeout" => Exit::Timeout,
                    "vm_failed" => Exit::VmFailed,
                    "invalid_argument" | "invalid_image" => Exit::Invalid,
                    _ => Exit::Failure,
                },
                ClientError::Connect { .. } => Exit::Unreachable,
                ClientError::Timeout { .. } => Exit::Timeout,
                ClientError::Decode { status: 401, .. } => Exit::Unauthenticated,
                ClientError::Decode { status: 403, .. } => Exit::Forbidden,
                _ => Exit::Failure,
            };
        }
        if cause.downcast_ref::<SessionError>().is_some() {
            return Exit::Unauthenticated;
        }
        if let Some(e) = cause.downcast_ref::<OauthError>() {
            return match e {
                OauthError::Denied(_) | OauthError::CodeExpired | OauthError::RefreshRefused(_) => {
                    Exit::Unauthenticated
                }
                _ => Exit::Failure,
            };
        }
        if let Some(e) = cause.downcast_ref::<LoginError>() {
            return match e {
                LoginError::Empty { .. } | LoginError::NoTerminal { .. } => Exit::Usage,
                _ => Exit::Failure,
            };
        }
        if cause.downcast_ref::<CredentialsError>().is_some() {
            return Exit::Failure;
        }
        if let Some(e) = cause.downcast_ref::<ImportError>() {
            return match e {
                ImportError::PathNotFound { .. } => Exit::NotFound,
                ImportError::NotAnOciLayout { .. } => Exit::Invalid,
                _ => Exit::Failure,
            };
        }
        if let Some(e) = cause.downcast_ref::<WaitError>() {
            return match e {
                WaitError::Failed { .. } => Exit::VmFailed,
                WaitError::Unexpected { .. } => Exit::Failure,
            };
        }
    }
    Exit::Failure
}

/// A failed command: the error, and a line saying what to do about it when we know better
/// than the error itself.
#[derive(Debug)]
pub struct Failure {
    pub error: anyhow::Error,
    pub hint: Option<String>,
}

impl Failure {
    pub fn exit(&self) -> Exit {
        exit_code(&self.error)
    }

    /// The process exit status: a remote command's own (`pitwall ssh`), else [`Self::exit`].
    pub fn status(&self) -> u8 {
        match self.error.downcast_ref::<RemoteExit>() {
            Some(r) => r.0,
            None => self.exit().code(),
        }
    }

    /// Nothing to print: a remote command's non-zero exit is not pitwall's error.
    pub fn is_silent(&self) -> bool {
        self.error.downcast_ref::<RemoteExit>().is_some()
    }
}

/// A remote command (`pitwall ssh VM -- CMD`) ended with this non-zero status; `pitwall`
/// exits with it, as OpenSSH's client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteExit(pub u8);

impl fmt::Display for RemoteExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the remote command exited with status {}", self.0)
    }
}

impl std::error::Error for RemoteExit {}

/// `error: ...` and, when there is one, `hint: ...`; each on its own line.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {:#}", self.error)?;
        if let Some(h) = &self.hint {
            writeln!(f, "hint: {h}")?;
        }
        Ok(())
    }
}

/// What to do next, for the errors whose message cannot know it.
pub fn hint(
    err: &anyhow::Error,
    endpoint: Option<&Endpoint>,
    env: &EnvVars,
    vm: Option<&str>,
) -> Option<String> {
    let vm = vm.unwrap_or("NAME");
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::Connect { .. } | ClientError::BadUrl { .. } => {
                    let from = endpoint.map(|e| format!("the endpoint comes from {}; ", e.source));
                    let file = config_path(env)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "~/.config/pitwall/config.toml".into());
                    Some(format!(
                        "{}start pitwalld (`pitwalld all`), or point pitwall at it with \
                         --api http://HOST:PORT, PITWALL_API, or api = \"http://HOST:PORT\" in {file}",
                        from.unwrap_or_default()
                    ))
                }
                ClientError::Decode { .. } => endpoint
                    .map(|e| format!("is {} a Pitwall API? it comes from {}", e.url, e.source)),
                ClientError::Api { code, .. } if code == "unauthenticated" => Some(
                    "log in with `pitwall login` (or set PITWALL_TOKEN); `pitwall whoami` shows \
                     who you are logged in as"
                        .into(),
                ),
                ClientError::Api { code, .. } if code == "quota_exceeded" => Some(
                    "see what you use and may use with `pitwall quota show`; delete a VM or ask \
                     for a larger quota or a delegation (`pitwall delegate`)"
                        .into(),
                ),
                ClientError::Api { code, .. } if code == "forbidden" => {
                    Some("`pitwall whoami` shows who the API takes you for".into())
                }
                ClientError::Api { code, .. } if code == "timeout" => Some(format!(
                    "the VM keeps going; check it with `pitwall vm show {vm}`, or wait longer \
                     with `pitwall vm wait {vm} --timeout 5m`"
                )),
                ClientError::Api { code, .. } if code == "vm_failed" => Some(format!(
                    "see why with `pitwall vm show {vm}` and `pitwall vm console {vm}`"
                )),
                _ => None,
            };
        }
        if cause.downcast_ref::<WaitError>().is_some() {
            return Some(format!(
                "see why with `pitwall vm show {vm}` and `pitwall vm console {vm}`"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn api(code: &str) -> anyhow::Error {
        ClientError::Api {
            status: 400,
            code: code.into(),
            message: format!("{code} happened"),
        }
        .into()
    }

    #[test]
    fn api_error_codes_map_to_documented_exit_codes() {
        let cases = [
            ("not_found", 3),
            ("already_exists", 4),
            ("conflict", 4),
            ("timeout", 5),
            ("vm_failed", 7),
            ("invalid_argument", 8),
            ("invalid_image", 8),
            ("unauthenticated", 9),
            ("forbidden", 10),
            ("quota_exceeded", 10),
            ("unavailable", 1),
            ("internal", 1),
            ("something_new", 1),
        ];
        for (code, exit) in cases {
            assert_eq!(exit_code(&api(code)).code(), exit, "API code {code}");
        }
    }

    #[test]
    fn client_side_failures_map_to_documented_exit_codes() {
        let connect = ClientError::Connect {
            url: "http://x:1".into(),
            why: "refused".into(),
        };
        assert_eq!(exit_code(&connect.into()), Exit::Unreachable);
        let bad_url = ClientError::BadUrl {
            url: "x".into(),
            why: "no scheme".into(),
        };
        assert_eq!(exit_code(&bad_url.into()), Exit::Failure);
        let decode = ClientError::Decode {
            status: 200,
            why: "eof".into(),
        };
        assert_eq!(exit_code(&decode.into()), Exit::Failure);
    }

    #[test]
    fn local_failures_map_to_documented_exit_codes() {
        let missing = ImportError::PathNotFound {
            path: PathBuf::from("/nope"),
        };
        assert_eq!(exit_code(&missing.into()), Exit::NotFound);
        let not_layout = ImportError::NotAnOciLayout {
            path: PathBuf::from("/tmp"),
        };
        assert_eq!(exit_code(&not_layout.into()), Exit::Invalid);
        let failed = WaitError::Failed {
            vm: "web".into(),
            reason: None,
        };
        assert_eq!(exit_code(&failed.into()), Exit::VmFailed);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), Exit::Failure);
    }

    #[test]
    fn refused_and_expired_logins_exit_9() {
        let e: anyhow::Error = SessionError::Expired.into();
        assert_eq!(exit_code(&e).code(), 9);
        assert_eq!(exit_code(&OauthError::CodeExpired.into()).code(), 9);
        assert_eq!(exit_code(&OauthError::Denied(None).into()).code(), 9);
        let bare_401 = ClientError::Decode {
            status: 401,
            why: "Unauthorized".into(),
        };
        assert_eq!(exit_code(&bare_401.into()).code(), 9);
    }

    #[test]
    fn over_quota_hints_at_quota_show() {
        let e = api("quota_exceeded");
        let h = hint(&e, None, &EnvVars::default(), None).unwrap();
        assert!(h.contains("pitwall quota show"), "{h}");
        let h = hint(&api("unauthenticated"), None, &EnvVars::default(), None).unwrap();
        assert!(h.contains("pitwall login"), "{h}");
    }

    #[test]
    fn context_added_on_the_way_up_does_not_change_the_exit_code() {
        let e = api("timeout").context("VM web was created, but waiting for it failed");
        assert_eq!(exit_code(&e), Exit::Timeout);
    }

    #[test]
    fn an_unreachable_api_hints_where_the_endpoint_came_from() {
        let e = ClientError::Connect {
            url: "http://x:1".into(),
            why: "refused".into(),
        }
        .into();
        let endpoint = Endpoint {
            url: "http://x:1".into(),
            source: crate::endpoint::Source::Env,
        };
        let env = EnvVars {
            home: Some("/home/ada".into()),
            ..Default::default()
        };
        let h = hint(&e, Some(&endpoint), &env, None).unwrap();
        assert!(h.contains("comes from PITWALL_API"), "{h}");
        assert!(h.contains("--api http://HOST:PORT"), "{h}");
        assert!(h.contains("/home/ada/.config/pitwall/config.toml"), "{h}");
    }

    #[test]
    fn a_failure_prints_as_error_then_hint() {
        let f = Failure {
            error: api("not_found"),
            hint: Some("try again".into()),
        };
        assert_eq!(
            f.to_string(),
            "error: not_found happened\nhint: try again\n"
        );
        assert_eq!(f.exit(), Exit::NotFound);
    }
}
