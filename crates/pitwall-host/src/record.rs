//! A VM as this host keeps it on disk: `vms/<id>/vm.json`, written atomically (temp file,
//! fsync, rename) before a command is acknowledged, so a restart of the host daemon resumes
//! every wish.

use std::io::Write;
use std::path::{Path, PathBuf};

use pitwall_core::{DesiredState, RunOverrides, VmState};
use serde::{Deserialize, Serialize};

use crate::{io_err, HostError};

/// What the VM is made of (from the command's spec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub owner: String,
    /// Changes to the image's run configuration; empty: the image's own.
    #[serde(default, skip_serializing_if = "RunOverrides::is_empty")]
    pub run: RunOverrides,
    /// The deployment's SSH CA public key the guest trusts (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ssh_ca_public_key: String,
    /// Public keys the guest accepts as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

impl From<&pitwall_proto::v1::VmSpec> for Spec {
    fn from(s: &pitwall_proto::v1::VmSpec) -> Self {
        Self {
            name: s.name.clone(),
            image: s.image.clone(),
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            disk_mib: s.disk_mib,
            owner: s.owner.clone(),
            run: s.run.as_ref().map(RunOverrides::from).unwrap_or_default(),
            ssh_ca_public_key: s.ssh_ca_public_key.clone(),
            ssh_authorized_keys: s.ssh_authorized_keys.clone(),
        }
    }
}

/// The control plane's latest wish for the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wish {
    pub desired: DesiredState,
    pub generation: u64,
    pub spec: Spec,
    /// How long the guest gets to shut down cleanly when this wish stops or deletes it,
    /// from the command's `timeout_ms`; 0 when the command gave none (the host's default).
    #[serde(default)]
    pub grace_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: uuid::Uuid,
    pub wish: Wish,
    /// The last state reported for this VM.
    pub state: VmState,
    pub reason: Option<String>,
    /// The wish generation at which the VM ended by itself or failed: the actor does not try
    /// that wish again (a newer generation, i.e. a new start, does).
    pub settled_generation: u64,
}

impl VmRecord {
    pub fn dir(vms_dir: &Path, id: uuid::Uuid) -> PathBuf {
        vms_dir.join(id.to_string())
    }

    fn file(dir: &Path) -> PathBuf {
        dir.join("vm.json")
    }

    /// Read the record in `dir`; `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<VmRecord>, HostError> {
        let f = Self::file(dir);
        let bytes = match std::fs::read(&f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(HostError::Io {
                    what: "cannot read",
                    path: f,
                    source: e,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| HostError::Record {
                path: f,
                why: e.to_string(),
            })
    }

    /// Write the record atomically into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<(), HostError> {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        let f = Self::file(dir);
        let tmp = dir.join("vm.json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|e| HostError::Record {
            path: f.clone(),
            why: e.to_string(),
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(io_err("cannot write", &tmp))?;
        file.write_all(&data)
            .map_err(io_err("cannot write", &tmp))?;
        file.sync_all().map_err(io_err("cannot sync", &tmp))?;
        std::fs::rename(&tmp, &f).map_err(io_err("cannot rename into place", &f))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_missing_is_none() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(VmRecord::load(d.path()).unwrap(), None);
        let rec = VmRecord {
            id: uuid::Uuid::new_v4(),
            wish: Wish {
                desired: DesiredState::Running,
                generation: 3,
                spec: Spec {
                    name: "a".into(),
                    image: "x:1".into(),
                    vcpus: 1,
                    memory_mib: 256,
                    disk_mib: 64,
                    owner: "admin".into(),
                    run: RunOverrides {
                        cmd: Some(vec!["/bin/sh".into()]),
                        env: vec!["A=1".into()],
                        ..Default::default()
                    },
                    ssh_ca_public_key: "ssh-ed25519 AAAA ca".into(),
                    ssh_authorized_keys: vec!["ssh-ed25519 BBBB me".into()],
                },
                grace_ms: 0,
            },
            state: VmState::Running,
            reason: None,
            settled_generation: 0,
        };
        rec.save(d.path()).unwrap();
        assert_eq!(VmRecord::load(d.path()).unwrap(), Some(rec));
        assert!(!d.path().join("vm.json.tmp").exists());
    }

    #[test]
    fn corrupt_record_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("vm.json"), b"{not json").unwrap();
        let e = VmRecord::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("vm.json"), "{e}");
    }
}
