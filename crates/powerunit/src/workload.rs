//! How a process of the guest is resolved and started — a service ([`crate::services`]), or
//! an agent exec ([`crate::exec`]): against the new root (`PATH` search, user and group from
//! its `/etc/passwd` and `/etc/group`, parsed here because a static binary cannot use glibc's
//! NSS), its environment, its working directory, in its own session (process group). The
//! callers set its stdio.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pitwall_proto::v1::GuestConfig;

use crate::err;
use crate::error::Result;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to start the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The resolved executable (a path in the guest's root).
    pub program: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// One line of `/etc/passwd` (also the SSH server's login users).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

fn group_gid(group_text: &str, name: &str) -> Option<u32> {
    group_text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// `(uid, gid, home)` for a `GuestConfig.user` of `""`, `"uid[:gid]"` or `"name[:group]"`.
fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32, Option<String>)> {
    let users = parse_passwd(passwd);
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = if u.is_empty() {
        users.iter().find(|e| e.uid == 0)
    } else if let Ok(uid) = u.parse::<u32>() {
        users.iter().find(|e| e.uid == uid)
    } else {
        Some(
            users
                .iter()
                .find(|e| e.name == u)
                .ok_or_else(|| err!("user {u:?} not found in the image's /etc/passwd"))?,
        )
    };
    let uid = match u.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map(|e| e.uid).unwrap_or(0),
    };
    let gid = match g {
        None | Some("") => entry.map(|e| e.gid).unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_gid(group, g)
                .ok_or_else(|| err!("group {g:?} not found in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid, entry.map(|e| e.home.clone())))
}

fn in_root(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolve `cfg` against the filesystem at `root` (`/` in the guest).
pub fn resolve(cfg: &GuestConfig, root: &Path, hostname: &str) -> Result<Spec> {
    let Some(argv0) = cfg.argv.first() else {
        return Err(err!(
            "nothing to run: the config's argv is empty (the image has no Entrypoint or Cmd \
             and none was given when the VM was created)"
        ));
    };
    let passwd =
        std::fs::read_to_string(in_root(root, Path::new("/etc/passwd"))).unwrap_or_default();
    let group = std::fs::read_to_string(in_root(root, Path::new("/etc/group"))).unwrap_or_default();
    let (uid, gid, home) = resolve_user(&cfg.user, &passwd, &group)?;

    let mut env: Vec<(String, String)> = cfg
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    let mut default = |k: &str, v: String| {
        if !env.iter().any(|(ek, _)| ek == k) {
            env.push((k.to_string(), v));
        }
    };
    default("PATH", DEFAULT_PATH.to_string());
    default("HOME", home.unwrap_or_else(|| "/".to_string()));
    default("HOSTNAME", hostname.to_string());
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();

    let cwd = PathBuf::from(if cfg.working_dir.is_empty() {
        "/"
    } else {
        &cfg.working_dir
    });
    let program = if argv0.contains('/') {
        let p = cwd.join(argv0);
        if !is_executable(&in_root(root, &p)) {
            return Err(err!(
                "cannot execute {argv0:?}: no executable file at {}",
                p.display()
            ));
        }
        p
    } else {
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(argv0))
            .find(|p| is_executable(&in_root(root, p)))
            .ok_or_else(|| {
                err!("cannot execute {argv0:?}: executable file not found in PATH {path_var}")
            })?
    };
    Ok(Spec {
        program,
        argv: cfg.argv.clone(),
        env,
        cwd,
        uid,
        gid,
    })
}

/// The command for `spec`, in a new session (its own process group), without its stdio:
/// the caller sets those, spawns, and hands the pid to the reaper.
pub fn command(spec: &Spec) -> Command {
    let _ = std::fs::create_dir_all(&spec.cwd);
    let mut cmd = Command::new(&spec.program);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .uid(spec.uid)
        .gid(spec.gid);
    new_session(&mut cmd);
    cmd
}

/// `base` (KEY=VALUE pairs) with `extra` after it: a key of `extra` replaces the same key
/// of `base`.
pub fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let key = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_string();
    let mut env: Vec<String> = base.to_vec();
    for kv in extra {
        let k = key(kv);
        env.retain(|e| key(e) != k);
        env.push(kv.clone());
    }
    env
}

#[allow(unsafe_code)]
fn new_session(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // which is async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\n";

    #[test]
    fn later_env_entries_replace_earlier_keys() {
        let base = ["PATH=/bin".to_string(), "A=1".to_string()];
        let extra = ["A=2".to_string(), "B".to_string()];
        assert_eq!(merge_env(&base, &extra), ["PATH=/bin", "A=2", "B"]);
    }

    #[test]
    fn empty_user_is_root_with_its_home() {
        assert_eq!(
            resolve_user("", PASSWD, GROUP).unwrap(),
            (0, 0, Some("/root".into()))
        );
    }

    #[test]
    fn a_user_name_takes_uid_gid_and_home_from_passwd() {
        assert_eq!(
            resolve_user("www", PASSWD, GROUP).unwrap(),
            (33, 34, Some("/var/www".into()))
        );
    }

    #[test]
    fn numeric_uid_and_group_name_are_resolved() {
        assert_eq!(
            resolve_user("1000:staff", PASSWD, GROUP).unwrap(),
            (1000, 50, None)
        );
        assert_eq!(
            resolve_user("33", PASSWD, GROUP).unwrap(),
            (33, 34, Some("/var/www".into()))
        );
        assert_eq!(resolve_user("5:7", "", "").unwrap(), (5, 7, None));
    }

    #[test]
    fn an_unknown_user_name_is_an_error() {
        let e = resolve_user("nobody", PASSWD, GROUP).unwrap_err();
        assert!(e.0.contains("\"nobody\""), "{e}");
    }

    fn root_with_sh() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        let sh = root.path().join("bin/sh");
        std::fs::write(&sh, "").unwrap();
        std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).unwrap();
        root
    }

    #[test]
    fn a_bare_program_name_is_searched_in_the_default_path() {
        let root = root_with_sh();
        let cfg = GuestConfig {
            argv: vec!["sh".into(), "-c".into(), "true".into()],
            ..Default::default()
        };
        let spec = resolve(&cfg, root.path(), "h").unwrap();
        assert_eq!(spec.program, Path::new("/bin/sh"));
        assert_eq!(spec.argv, ["sh", "-c", "true"]);
        assert!(spec.env.contains(&("PATH".into(), DEFAULT_PATH.into())));
        assert!(spec.env.contains(&("HOSTNAME".into(), "h".into())));
        assert_eq!(spec.cwd, Path::new("/"));
    }

    #[test]
    fn the_configs_path_is_used_for_the_search() {
        let root = root_with_sh();
        let cfg = GuestConfig {
            argv: vec!["sh".into()],
            env: vec!["PATH=/usr/bin".into()],
            ..Default::default()
        };
        let e = resolve(&cfg, root.path(), "h").unwrap_err();
        assert!(e.0.contains("not found in PATH /usr/bin"), "{e}");
    }

    #[test]
    fn empty_argv_is_a_clear_error() {
        let root = root_with_sh();
        let e = resolve(&GuestConfig::default(), root.path(), "h").unwrap_err();
        assert!(e.0.contains("argv is empty"), "{e}");
    }

    #[test]
    fn a_missing_absolute_program_is_a_clear_error() {
        let root = root_with_sh();
        let cfg = GuestConfig {
            argv: vec!["/app/server".into()],
            ..Default::default()
        };
        let e = resolve(&cfg, root.path(), "h").unwrap_err();
        assert!(e.0.contains("cannot execute \"/app/server\""), "{e}");
    }
}
