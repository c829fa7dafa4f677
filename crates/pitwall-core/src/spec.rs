//! What a user asks for: the VM spec, with the bounds every size must fall in.

use serde::{Deserialize, Serialize};

use crate::{ImageRef, VmName};

/// Bounds of a VM's sizes. Values outside them are refused at the API with a message that
/// names the bound; a host may refuse more when it lacks the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub vcpus: (u32, u32),
    pub memory_mib: (u32, u32),
    pub disk_mib: (u32, u32),
}

pub const LIMITS: Limits = Limits {
    vcpus: (1, 64),
    memory_mib: (64, 131_072),
    disk_mib: (16, 1_048_576),
};

pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 256;
pub const DEFAULT_DISK_MIB: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {problem}")]
    Run {
        field: &'static str,
        problem: String,
    },
    #[error("{field} = {value} is out of range: give a whole number from {min} to {max}{unit}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u32,
        max: u32,
        unit: &'static str,
    },
}

/// The user's request for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: VmName,
    pub image: ImageRef,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Size of the VM's own writable disk (overlaid on the shared read-only image).
    pub disk_mib: u32,
    /// What the user changed of the image's run configuration; empty: the image's own.
    #[serde(default, skip_serializing_if = "RunOverrides::is_empty")]
    pub run: RunOverrides,
}

/// Changes to an image's run configuration (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`,
/// `User`) given at create time, with `docker run`'s rules: see [`RunOverrides::resolve`].
/// `None` keeps the image's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries added to the image's environment; a key the image sets too is
    /// replaced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The processes the VM's init supervises. Empty: one, `main`, running the program above
    /// with restart policy `never` (the VM stops when it ends).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
}

/// When the guest's init starts a service again after it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never: once it ended, it stays ended.
    #[default]
    Never,
    /// When it exits non-zero or is killed by a signal (with backoff).
    OnFailure,
    /// Whenever it ends (with backoff).
    Always,
}

impl RestartPolicy {
    pub const ALL: [RestartPolicy; 3] = [Self::Never, Self::OnFailure, Self::Always];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::OnFailure => "on-failure",
            Self::Always => "always",
        }
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("restart policy {s:?} is not one of never, on-failure, always"))
    }
}

/// One process the VM's init supervises (powerunit's services): the first declared one is
/// the VM's main process — the VM stops (with its exit code) when it has ended for good.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSpec {
    /// `[a-z0-9][a-z0-9_-]*`, at most 32 bytes, unique in the VM: names its log
    /// (`/var/log/pitwall/NAME.log` in the guest) and its console lines.
    pub name: String,
    /// The program and its arguments; empty: the VM's program (the image's Entrypoint and
    /// Cmd, after the overrides).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `KEY=value` entries added to the VM's environment for this service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Absolute; absent: the VM's working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// NAME, UID or UID:GID; absent: the VM's user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub restart: RestartPolicy,
}

/// Most services one VM may declare.
pub const MAX_SERVICES: usize = 16;

/// A service as the guest gets it: the VM's run configuration filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedService {
    pub name: String,
    pub argv: Vec<String>,
    /// Added to the VM's environment.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub restart: RestartPolicy,
}

impl ServiceSpec {
    /// Filled in from the VM's run configuration `run`; `None` when the service names no
    /// command and the VM has none either.
    pub fn resolve(&self, run: &RunConfig) -> Option<ResolvedService> {
        let argv = if self.command.is_empty() {
            run.argv.clone()
        } else {
            self.command.clone()
        };
        (!argv.is_empty()).then(|| ResolvedService {
            name: self.name.clone(),
            argv,
            env: self.env.clone(),
            working_dir: self
                .working_dir
                .clone()
                .unwrap_or_else(|| run.working_dir.clone()),
            user: self.user.clone().unwrap_or_else(|| run.user.clone()),
            restart: self.restart,
        })
    }
}

fn valid_service_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// The run configuration a VM gets: its image's, with the overrides applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// Entrypoint followed by Cmd.
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// Most bytes the overrides of one VM may hold, all strings together (they travel in the
/// VM's config disk and in every command to its host).
pub const MAX_RUN_OVERRIDE_BYTES: usize = 64 * 1024;

impl RunOverrides {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Checks what a user gave: no NUL anywhere (the guest passes these to `execve`), env
    /// entries of the form `KEY=value` with a non-empty key, and at most
    /// [`MAX_RUN_OVERRIDE_BYTES`] in all.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |field, problem: String| Err(SpecError::Run { field, problem });
        let mut total = 0usize;
        let lists = [
            ("entrypoint", self.entrypoint.as_deref().unwrap_or_default()),
            ("cmd", self.cmd.as_deref().unwrap_or_default()),
            ("env", &self.env[..]),
        ];
        for (field, list) in lists {
            for (i, v) in list.iter().enumerate() {
                total += v.len() + 1;
                if v.contains('\0') {
                    return err(field, format!("entry {} contains a NUL byte", i + 1));
                }
            }
        }
        for (field, v) in [("working_dir", &self.working_dir), ("user", &self.user)] {
            if let Some(v) = v {
                total += v.len();
                if v.contains('\0') || v.contains('\n') {
                    return err(field, "contains a NUL byte or a newline".into());
                }
            }
        }
        if let Some(wd) = &self.working_dir {
            if !wd.is_empty() && !wd.starts_with('/') {
                return err(
                    "working_dir",
                    format!("{wd:?} is not absolute: give a path starting with /"),
                );
            }
        }
        if self
            .entrypoint
            .as_ref()
            .is_some_and(|e| e.first().is_some_and(String::is_empty))
        {
            return err("entrypoint", "the program (first entry) is empty".into());
        }
        check_env("env", &self.env)?;
        total += self.validate_services()?;
        if total > MAX_RUN_OVERRIDE_BYTES {
            return err(
                "run overrides",
                format!(
                    "{total} bytes in all, more than the {MAX_RUN_OVERRIDE_BYTES} allowed: \
                     put large configuration in the image or on the VM's disk"
                ),
            );
        }
        Ok(())
    }

    /// Checks the declared services (see [`ServiceSpec`]); the bytes they hold.
    fn validate_services(&self) -> Result<usize, SpecError> {
        let err = |problem: String| {
            Err(SpecError::Run {
                field: "services",
                problem,
            })
        };
        if self.services.len() > MAX_SERVICES {
            return err(format!(
                "{} declared, at most {MAX_SERVICES} allowed",
                self.services.len()
            ));
        }
        let mut total = 0usize;
        for (i, svc) in self.services.iter().enumerate() {
            let n = &svc.name;
            if !valid_service_name(n) {
                return err(format!(
                    "name {n:?} is not a service name: 1 to 32 of a-z, 0-9, '_' and '-', starting with a letter or digit"
                ));
            }
            if self.services[..i].iter().any(|o| &o.name == n) {
                return err(format!(
                    "{n:?} is declared twice: give each service its own name"
                ));
            }
            if svc.command.first().is_some_and(String::is_empty) {
                return err(format!(
                    "{n}: the program (first entry of command) is empty"
                ));
            }
            for v in svc.command.iter().chain(&svc.env) {
                total += v.len() + 1;
                if v.contains('\0') {
                    return err(format!("{n}: an entry contains a NUL byte"));
                }
            }
            if let Some(problem) = env_problem(&svc.env) {
                return err(format!("{n}: env {problem}"));
            }
            for v in [&svc.working_dir, &svc.user].into_iter().flatten() {
                total += v.len();
                if v.contains('\0') || v.contains('\n') {
                    return err(format!(
                        "{n}: working_dir or user contains a NUL byte or a newline"
                    ));
                }
            }
            if let Some(wd) = &svc.working_dir {
                if !wd.starts_with('/') {
                    return err(format!(
                        "{n}: working_dir {wd:?} is not absolute: give a path starting with /"
                    ));
                }
            }
        }
        Ok(total)
    }

    /// The run configuration of a VM whose image has the given values, as `docker run` does
    /// it: an overridden entrypoint drops the image's `Cmd` (the override's `cmd`, if any,
    /// takes its place); an overridden `cmd` alone keeps the image's entrypoint; env entries
    /// replace the image's entries of the same key, in place, and new keys are appended;
    /// `working_dir` and `user` replace the image's.
    pub fn resolve(
        &self,
        entrypoint: &[String],
        cmd: &[String],
        env: &[String],
        working_dir: &str,
        user: &str,
    ) -> RunConfig {
        let (entrypoint, cmd): (&[String], &[String]) = match (&self.entrypoint, &self.cmd) {
            (Some(e), Some(c)) => (e, c),
            (Some(e), None) => (e, &[]),
            (None, Some(c)) => (entrypoint, c),
            (None, None) => (entrypoint, cmd),
        };
        let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
        let mut merged: Vec<String> = env.to_vec();
        for e in &self.env {
            let k = key(e);
            match merged.iter_mut().find(|m| key(m) == k) {
                Some(slot) => *slot = e.clone(),
                None => merged.push(e.clone()),
            }
        }
        RunConfig {
            argv: entrypoint.iter().chain(cmd).cloned().collect(),
            env: merged,
            working_dir: self
                .working_dir
                .as_deref()
                .unwrap_or(working_dir)
                .to_string(),
            user: self.user.as_deref().unwrap_or(user).to_string(),
        }
    }
}

/// What is wrong with an environment list, if anything: each entry must be `KEY=value`
/// with a non-empty key.
fn env_problem(env: &[String]) -> Option<String> {
    env.iter()
        .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        .map(|e| format!("{e:?} is not KEY=value: give each variable as KEY=value"))
}

fn check_env(field: &'static str, env: &[String]) -> Result<(), SpecError> {
    match env_problem(env) {
        Some(problem) => Err(SpecError::Run { field, problem }),
        None => Ok(()),
    }
}

fn check(
    field: &'static str,
    value: u64,
    (min, max): (u32, u32),
    unit: &'static str,
) -> Result<u32, SpecError> {
    if value < u64::from(min) || value > u64::from(max) {
        return Err(SpecError::OutOfRange {
            field,
            value,
            min,
            max,
            unit,
        });
    }
    // in range, so it fits
    Ok(value as u32)
}

impl VmSpec {
    /// Build a spec from raw sizes (as they arrive from JSON, possibly huge), applying defaults
    /// for the ones not given and checking each against [`LIMITS`].
    pub fn new(
        name: VmName,
        image: ImageRef,
        vcpus: Option<u64>,
        memory_mib: Option<u64>,
        disk_mib: Option<u64>,
    ) -> Result<Self, SpecError> {
        Ok(Self {
            name,
            image,
            vcpus: check(
                "vcpus",
                vcpus.unwrap_or(DEFAULT_VCPUS.into()),
                LIMITS.vcpus,
                "",
            )?,
            memory_mib: check(
                "memory_mib",
                memory_mib.unwrap_or(DEFAULT_MEMORY_MIB.into()),
                LIMITS.memory_mib,
                " MiB",
            )?,
            disk_mib: check(
                "disk_mib",
                disk_mib.unwrap_or(DEFAULT_DISK_MIB.into()),
                LIMITS.disk_mib,
                " MiB",
            )?,
            run: RunOverrides::default(),
        })
    }

    /// The spec with these run overrides, checked by [`RunOverrides::validate`].
    pub fn with_run(mut self, run: RunOverrides) -> Result<Self, SpecError> {
        run.validate()?;
        self.run = run;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Option<u64>, m: Option<u64>, d: Option<u64>) -> Result<VmSpec, SpecError> {
        VmSpec::new(
            VmName::parse("a").unwrap(),
            ImageRef::parse("x").unwrap(),
            v,
            m,
            d,
        )
    }

    #[test]
    fn defaults_apply() {
        let s = spec(None, None, None).unwrap();
        assert_eq!((s.vcpus, s.memory_mib, s.disk_mib), (1, 256, 1024));
    }

    #[test]
    fn zero_and_absurd_sizes_are_refused() {
        assert!(matches!(
            spec(Some(0), None, None),
            Err(SpecError::OutOfRange { field: "vcpus", .. })
        ));
        assert!(matches!(
            spec(None, Some(0), None),
            Err(SpecError::OutOfRange {
                field: "memory_mib",
                ..
            })
        ));
        assert!(matches!(
            spec(None, Some(u64::MAX), None),
            Err(SpecError::OutOfRange {
                field: "memory_mib",
                ..
            })
        ));
        assert!(matches!(
            spec(None, None, Some(1 << 40)),
            Err(SpecError::OutOfRange {
                field: "disk_mib",
                ..
            })
        ));
        let msg = spec(Some(1000), None, None).unwrap_err().to_string();
        assert!(msg.contains("from 1 to 64"), "{msg}");
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn resolve(o: &RunOverrides) -> RunConfig {
        o.resolve(
            &strings(&["/entry"]),
            &strings(&["arg"]),
            &strings(&["PATH=/bin", "A=1"]),
            "/app",
            "web",
        )
    }

    #[test]
    fn no_overrides_is_the_image_config() {
        let r = resolve(&RunOverrides::default());
        assert_eq!(r.argv, strings(&["/entry", "arg"]));
        assert_eq!(r.env, strings(&["PATH=/bin", "A=1"]));
        assert_eq!((r.working_dir.as_str(), r.user.as_str()), ("/app", "web"));
    }

    #[test]
    fn overrides_follow_docker_run() {
        let entry_only = RunOverrides {
            entrypoint: Some(strings(&["/bin/sh"])),
            ..Default::default()
        };
        assert_eq!(
            resolve(&entry_only).argv,
            strings(&["/bin/sh"]),
            "entrypoint drops Cmd"
        );
        let cmd_only = RunOverrides {
            cmd: Some(strings(&["other", "x"])),
            ..Default::default()
        };
        assert_eq!(resolve(&cmd_only).argv, strings(&["/entry", "other", "x"]));
        let both = RunOverrides {
            entrypoint: Some(strings(&["/bin/sh"])),
            cmd: Some(strings(&["-c", "true"])),
            env: strings(&["A=2", "B=3"]),
            working_dir: Some("/".into()),
            user: Some("0:0".into()),
            services: vec![],
        };
        let r = resolve(&both);
        assert_eq!(r.argv, strings(&["/bin/sh", "-c", "true"]));
        assert_eq!(r.env, strings(&["PATH=/bin", "A=2", "B=3"]));
        assert_eq!((r.working_dir.as_str(), r.user.as_str()), ("/", "0:0"));
        let cleared = RunOverrides {
            entrypoint: Some(vec![]),
            cmd: Some(strings(&["/bin/true"])),
            ..Default::default()
        };
        assert_eq!(resolve(&cleared).argv, strings(&["/bin/true"]));
    }

    #[test]
    fn bad_overrides_are_refused_with_what_to_do() {
        let bad = [
            RunOverrides {
                env: strings(&["NOEQUALS"]),
                ..Default::default()
            },
            RunOverrides {
                env: strings(&["=v"]),
                ..Default::default()
            },
            RunOverrides {
                cmd: Some(strings(&["a\0b"])),
                ..Default::default()
            },
            RunOverrides {
                working_dir: Some("relative".into()),
                ..Default::default()
            },
            RunOverrides {
                entrypoint: Some(strings(&[""])),
                ..Default::default()
            },
            RunOverrides {
                cmd: Some(vec!["x".repeat(70_000)]),
                ..Default::default()
            },
        ];
        for o in bad {
            let e = o.validate().expect_err("refused");
            assert!(matches!(e, SpecError::Run { .. }), "{e}");
        }
        let e = RunOverrides {
            env: strings(&["NOEQUALS"]),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("KEY=value"), "{e}");
    }

    #[test]
    fn a_spec_without_overrides_serialises_as_before() {
        let s = spec(None, None, None).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("run").is_none(), "{json}");
        let back: VmSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    fn svc(name: &str, command: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            command: strings(command),
            ..Default::default()
        }
    }

    #[test]
    fn services_are_checked_and_each_bad_one_named() {
        let with = |services: Vec<ServiceSpec>| RunOverrides {
            services,
            ..Default::default()
        };
        let ok = with(vec![
            svc("web", &["/usr/bin/web", "--port", "80"]),
            ServiceSpec {
                restart: RestartPolicy::Always,
                working_dir: Some("/srv".into()),
                env: strings(&["A=1"]),
                ..svc("main", &[])
            },
        ]);
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            (with(vec![svc("Web", &["x"])]), "not a service name"),
            (with(vec![svc("", &["x"])]), "not a service name"),
            (
                with(vec![svc(&"a".repeat(33), &["x"])]),
                "not a service name",
            ),
            (
                with(vec![svc("a", &["x"]), svc("a", &["y"])]),
                "declared twice",
            ),
            (with(vec![svc("a", &["", "y"])]), "program"),
            (
                with(vec![ServiceSpec {
                    env: strings(&["=1"]),
                    ..svc("a", &["x"])
                }]),
                "a: env",
            ),
            (
                with(vec![ServiceSpec {
                    working_dir: Some("srv".into()),
                    ..svc("a", &["x"])
                }]),
                "not absolute",
            ),
            (
                with((0..17).map(|i| svc(&format!("s{i}"), &["x"])).collect()),
                "at most 16",
            ),
        ];
        for (o, expect) in cases {
            let e = o.validate().expect_err(expect).to_string();
            assert!(e.starts_with("services: ") && e.contains(expect), "{e}");
        }
    }

    #[test]
    fn a_service_without_command_runs_the_vms_program_and_inherits_its_settings() {
        let run = RunConfig {
            argv: strings(&["/bin/app", "serve"]),
            env: strings(&["A=1"]),
            working_dir: "/app".into(),
            user: "app".into(),
        };
        let main = ServiceSpec {
            restart: RestartPolicy::OnFailure,
            ..svc("main", &[])
        };
        assert_eq!(
            main.resolve(&run),
            Some(ResolvedService {
                name: "main".into(),
                argv: strings(&["/bin/app", "serve"]),
                env: vec![],
                working_dir: "/app".into(),
                user: "app".into(),
                restart: RestartPolicy::OnFailure,
            })
        );
        let own = ServiceSpec {
            user: Some("root".into()),
            ..svc("cron", &["/bin/cron"])
        };
        let r = own.resolve(&run).unwrap();
        assert_eq!((r.argv, r.user), (strings(&["/bin/cron"]), "root".into()));
        assert_eq!(main.resolve(&RunConfig::default()), None, "nothing to run");
    }

    #[test]
    fn restart_policies_read_and_write_as_kebab_case() {
        for p in RestartPolicy::ALL {
            assert_eq!(p.as_str().parse::<RestartPolicy>(), Ok(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert!("sometimes"
            .parse::<RestartPolicy>()
            .unwrap_err()
            .contains("never, on-failure, always"));
    }
}
