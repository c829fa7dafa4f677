//! Choosing the accelerator, and the host facts the choice depends on.
//!
//! KVM is used only when `/dev/kvm` opens read-write **and** `/proc/cpuinfo` shows hardware
//! virtualisation (`vmx` or `svm`): a nested, software-paged `/dev/kvm` without them exists
//! on some hosts and cannot boot a stock Linux kernel. Everything else runs under TCG.
//! `PITWALL_ACCEL=kvm|tcg` overrides the detection.

use std::path::Path;

use crate::Accel;

/// Environment variable that overrides [`detect_accel`].
pub const ACCEL_ENV: &str = "PITWALL_ACCEL";

/// KVM when it is usable on this host, else TCG (see the module doc); logs the choice.
pub fn detect_accel() -> Accel {
    if let Ok(v) = std::env::var(ACCEL_ENV) {
        match v.to_ascii_lowercase().as_str() {
            "kvm" => return logged(Accel::Kvm, "PITWALL_ACCEL"),
            "tcg" => return logged(Accel::Tcg, "PITWALL_ACCEL"),
            "" | "auto" => {}
            other => {
                tracing::warn!(value = %other, "ignoring PITWALL_ACCEL: expected kvm, tcg or auto")
            }
        }
    }
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let accel = accel_from(kvm_usable, &cpuinfo);
    let why = match (accel, kvm_usable) {
        (Accel::Kvm, _) => "/dev/kvm usable and the CPU has vmx/svm",
        (_, false) => "/dev/kvm missing or not accessible",
        (_, true) => "/dev/kvm exists but the CPU shows no vmx/svm (nested, software-paged KVM)",
    };
    logged(accel, why)
}

fn logged(accel: Accel, why: &str) -> Accel {
    tracing::info!(accel = ?accel, reason = why, "accelerator chosen");
    accel
}

/// The pure decision: KVM needs a usable `/dev/kvm` and `vmx`/`svm` among the CPU flags.
pub fn accel_from(kvm_usable: bool, cpuinfo: &str) -> Accel {
    let hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if kvm_usable && hw_virt {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// The host's TSC frequency in kHz (for `tsc_early_khz=` under TCG): sysfs where the kernel
/// exports it, else `cpu MHz` of `/proc/cpuinfo`.
pub fn host_tsc_khz() -> Option<u64> {
    let sysfs = Path::new("/sys/devices/system/cpu/cpu0/tsc_freq_khz");
    if let Some(khz) = std::fs::read_to_string(sysfs)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Some(khz);
    }
    tsc_khz_from_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// `cpu MHz : 2000.000` → 2 000 000.
pub fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("cpu MHz"))
        .filter_map(|l| l.split_once(':'))
        .find_map(|(_, v)| v.trim().parse::<f64>().ok())
        .filter(|mhz| *mhz > 0.0)
        .map(|mhz| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NESTED: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu MHz\t\t: 2000.000\n\
        flags\t\t: fpu vme de pse tsc msr pae hypervisor lahf_lm\n";
    const VMX: &str = "processor\t: 0\ncpu MHz\t\t: 2893.204\nflags\t\t: fpu vme vmx ept\n";
    const SVM: &str = "processor\t: 0\nflags\t\t: fpu svm npt\n";

    #[test]
    fn kvm_needs_both_the_device_and_hardware_virtualisation() {
        assert_eq!(accel_from(true, VMX), Accel::Kvm);
        assert_eq!(accel_from(true, SVM), Accel::Kvm);
        assert_eq!(accel_from(true, NESTED), Accel::Tcg);
        assert_eq!(accel_from(false, VMX), Accel::Tcg);
    }

    #[test]
    fn a_flag_must_match_whole() {
        assert_eq!(accel_from(true, "flags\t: vmxe svmx\n"), Accel::Tcg);
    }

    #[test]
    fn tsc_khz_comes_from_cpu_mhz() {
        assert_eq!(tsc_khz_from_cpuinfo(NESTED), Some(2_000_000));
        assert_eq!(tsc_khz_from_cpuinfo(VMX), Some(2_893_204));
        assert_eq!(tsc_khz_from_cpuinfo(SVM), None);
    }
}
