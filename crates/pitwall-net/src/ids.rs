//! Names and MAC addresses derived from VM ids: deterministic, so a restarted host finds the
//! devices of its VMs again without any state.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::VmId;

/// Prefix of every Pitwall TAP device.
pub const TAP_PREFIX: &str = "pw";

fn digest(vm_id: VmId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"pitwall-net/");
    h.update(vm_id.as_bytes());
    h.finalize().into()
}

/// The VM's TAP device name: `pw` + 12 hex digits of a hash of the id (14 bytes, under
/// the kernel's 15). Hashing (rather than taking digits of the id) keeps names distinct for
/// v7 UUIDs, whose leading digits are a timestamp.
pub fn tap_name(vm_id: VmId) -> String {
    let d = digest(vm_id);
    let mut name = String::from(TAP_PREFIX);
    for b in &d[..6] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The VM's MAC address: `02:` (locally administered, unicast) + 5 bytes of a hash of the id.
pub fn mac_address(vm_id: VmId) -> MacAddr {
    let d = digest(vm_id);
    MacAddr([0x02, d[6], d[7], d[8], d[9], d[10]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_name_is_deterministic_short_and_distinct() {
        let a = VmId::from_u128(1);
        let b = VmId::from_u128(2);
        assert_eq!(tap_name(a), tap_name(a));
        assert_ne!(tap_name(a), tap_name(b));
        assert_eq!(tap_name(a).len(), 14);
        assert!(tap_name(a).starts_with("pw"));
        assert!(tap_name(a)[2..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn mac_is_locally_administered_unicast_and_deterministic() {
        let a = VmId::from_u128(7);
        let mac = mac_address(a);
        assert_eq!(mac, mac_address(a));
        assert_eq!(mac.0[0] & 0x01, 0, "unicast");
        assert_eq!(mac.0[0] & 0x02, 0x02, "locally administered");
        assert_ne!(mac, mac_address(VmId::from_u128(8)));
        assert_eq!(mac.to_string().len(), 17);
    }
}
