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
        })
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
}
