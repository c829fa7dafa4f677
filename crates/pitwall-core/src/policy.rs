//! Resource policies, as in Albatross: how many VMs, vCPUs, MiB of memory and of disk a
//! principal may hold at once, and which hosts and networks its VMs may use.
//!
//! Policies nest. Every VM is *charged* to a path of policy holders, root first: a user or
//! group (`/user:alice/`), then zero or more delegations below it
//! (`/user:alice/d:<id>/d:<id>/`). A VM counts towards the usage of every prefix of its path,
//! so a delegated share is used out of its parent's, and a create is admitted only when the
//! policy of every holder on the path admits the new total ([`Policy::admits`]). A delegated
//! policy must lie within its parent's ([`Policy::check_within`]), and that is checked again
//! along the whole chain on every use, so lowering a parent's policy narrows its delegations at
//! once.
//!
//! `None` in a limit means "no limit"; `None` for hosts or networks means "any".

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::VmSpec;

/// What a principal may hold at once. A stopped VM still holds its reservation (so starting
/// it again never fails on a quota); a VM stops counting once it is DELETED.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_mib: Option<u64>,
    /// Networks (host bridges) VMs may attach to; `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<BTreeSet<String>>,
    /// Hosts VMs may be placed on; `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<BTreeSet<String>>,
}

/// Resources held: by existing VMs, or asked for by a new one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub vms: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

impl Usage {
    /// What one VM of this spec holds.
    pub fn of(spec: &VmSpec) -> Self {
        Self {
            vms: 1,
            vcpus: u64::from(spec.vcpus),
            memory_mib: u64::from(spec.memory_mib),
            disk_mib: u64::from(spec.disk_mib),
        }
    }

    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            vms: self.vms.saturating_add(other.vms),
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            disk_mib: self.disk_mib.saturating_add(other.disk_mib),
        }
    }
}

/// A delegated policy reaches beyond its parent's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the delegated policy exceeds its parent's: {}", .excess.join("; "))]
pub struct ExceedsParent {
    /// One entry per limit, e.g. `max_vms 10 > parent's 5`.
    pub excess: Vec<String>,
}

/// A create would take a holder beyond its policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .excess.join("; "))]
pub struct OverQuota {
    /// One entry per limit, e.g. `6 VMs > max_vms 5 (5 in use)`.
    pub excess: Vec<String>,
}

fn fmt_limit(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_string(), |v| v.to_string())
}

fn fmt_set(v: &Option<BTreeSet<String>>) -> String {
    match v {
        None => "any".to_string(),
        Some(s) if s.is_empty() => "none".to_string(),
        Some(s) => s.iter().cloned().collect::<Vec<_>>().join(","),
    }
}

impl Policy {
    /// No limit on anything.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// `Ok` when every limit of `self` is within `parent`'s: a number at most the parent's (and
    /// present when the parent's is), a host or network list that is a subset of the parent's
    /// (and present when the parent's is).
    pub fn check_within(&self, parent: &Policy) -> Result<(), ExceedsParent> {
        let mut excess = Vec::new();
        let nums = [
            ("max_vms", self.max_vms, parent.max_vms),
            ("max_vcpus", self.max_vcpus, parent.max_vcpus),
            ("max_memory_mib", self.max_memory_mib, parent.max_memory_mib),
            ("max_disk_mib", self.max_disk_mib, parent.max_disk_mib),
        ];
        for (field, mine, theirs) in nums {
            if let Some(p) = theirs {
                if mine.is_none_or(|m| m > p) {
                    excess.push(format!("{field} {} > parent's {p}", fmt_limit(mine)));
                }
            }
        }
        let sets = [
            ("hosts", &self.hosts, &parent.hosts),
            ("networks", &self.networks, &parent.networks),
        ];
        for (field, mine, theirs) in sets {
            if let Some(p) = theirs {
                let ok = mine.as_ref().is_some_and(|m| m.is_subset(p));
                if !ok {
                    excess.push(format!(
                        "{field} {} not within parent's {}",
                        fmt_set(mine),
                        fmt_set(theirs)
                    ));
                }
            }
        }
        if excess.is_empty() {
            Ok(())
        } else {
            Err(ExceedsParent { excess })
        }
    }

    /// `Ok` when `used + add` fits every numeric limit.
    pub fn admits(&self, used: Usage, add: Usage) -> Result<(), OverQuota> {
        let after = used.plus(add);
        let mut excess = Vec::new();
        let checks = [
            ("VMs", "max_vms", after.vms, used.vms, self.max_vms),
            (
                "vCPUs",
                "max_vcpus",
                after.vcpus,
                used.vcpus,
                self.max_vcpus,
            ),
            (
                "MiB of memory",
                "max_memory_mib",
                after.memory_mib,
                used.memory_mib,
                self.max_memory_mib,
            ),
            (
                "MiB of disk",
                "max_disk_mib",
                after.disk_mib,
                used.disk_mib,
                self.max_disk_mib,
            ),
        ];
        for (what, field, total, in_use, limit) in checks {
            if let Some(limit) = limit {
                if total > limit {
                    excess.push(format!(
                        "{total} {what} > {field} {limit} ({in_use} in use)"
                    ));
                }
            }
        }
        if excess.is_empty() {
            Ok(())
        } else {
            Err(OverQuota { excess })
        }
    }

    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts.as_ref().is_none_or(|h| h.contains(host))
    }

    pub fn allows_network(&self, network: &str) -> bool {
        self.networks.as_ref().is_none_or(|n| n.contains(network))
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max_vms={} max_vcpus={} max_memory_mib={} max_disk_mib={} hosts={} networks={}",
            fmt_limit(self.max_vms),
            fmt_limit(self.max_vcpus),
            fmt_limit(self.max_memory_mib),
            fmt_limit(self.max_disk_mib),
            fmt_set(&self.hosts),
            fmt_set(&self.networks)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> Option<BTreeSet<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    fn vms(n: u64) -> Policy {
        Policy {
            max_vms: Some(n),
            ..Policy::default()
        }
    }

    #[test]
    fn anything_is_within_unlimited() {
        assert!(vms(3).check_within(&Policy::unlimited()).is_ok());
        assert!(Policy::unlimited()
            .check_within(&Policy::unlimited())
            .is_ok());
    }

    #[test]
    fn a_larger_or_missing_limit_exceeds_the_parent() {
        let e = vms(6).check_within(&vms(5)).unwrap_err();
        assert_eq!(e.excess, vec!["max_vms 6 > parent's 5".to_string()]);
        let e = Policy::unlimited().check_within(&vms(5)).unwrap_err();
        assert_eq!(e.excess, vec!["max_vms unlimited > parent's 5".to_string()]);
        assert!(vms(5).check_within(&vms(5)).is_ok());
    }

    #[test]
    fn host_lists_must_be_subsets() {
        let parent = Policy {
            hosts: set(&["a", "b"]),
            ..Policy::default()
        };
        let ok = Policy {
            hosts: set(&["a"]),
            ..Policy::default()
        };
        let wider = Policy {
            hosts: set(&["a", "c"]),
            ..Policy::default()
        };
        assert!(ok.check_within(&parent).is_ok());
        let e = wider.check_within(&parent).unwrap_err();
        assert!(e.excess[0].contains("hosts a,c"), "{e}");
        assert!(Policy::unlimited().check_within(&parent).is_err());
    }

    #[test]
    fn admits_up_to_the_limit_and_names_what_is_exceeded() {
        let p = Policy {
            max_vms: Some(2),
            max_memory_mib: Some(1024),
            ..Policy::default()
        };
        let one = Usage {
            vms: 1,
            vcpus: 1,
            memory_mib: 512,
            disk_mib: 10,
        };
        assert!(p.admits(Usage::default(), one).is_ok());
        assert!(p.admits(one, one).is_ok());
        let e = p.admits(one.plus(one), one).unwrap_err();
        assert_eq!(
            e.excess,
            vec![
                "3 VMs > max_vms 2 (2 in use)".to_string(),
                "1536 MiB of memory > max_memory_mib 1024 (1024 in use)".to_string()
            ]
        );
    }

    #[test]
    fn hosts_and_networks_default_to_any() {
        let p = Policy::unlimited();
        assert!(p.allows_host("h1") && p.allows_network("fcbr0"));
        let p = Policy {
            hosts: set(&["h1"]),
            networks: set(&[]),
            ..Policy::default()
        };
        assert!(p.allows_host("h1") && !p.allows_host("h2"));
        assert!(!p.allows_network("fcbr0"));
    }

    #[test]
    fn policy_json_rejects_unknown_fields_and_omits_unlimited() {
        assert!(serde_json::from_str::<Policy>(r#"{"max_vm": 1}"#).is_err());
        assert_eq!(serde_json::to_string(&vms(3)).unwrap(), r#"{"max_vms":3}"#);
    }
}
