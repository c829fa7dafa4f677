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
        for e in &self.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => {
                    return err(
                        "env",
                        format!("{e:?} is not KEY=value: give each variable as KEY=value"),
                    )
                }
            }
        }
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
}
