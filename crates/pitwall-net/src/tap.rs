//! Persistent TAP devices through the TUN driver's ioctls (`/dev/net/tun`): `TUNSETIFF`
//! creates (or attaches to) the device, `TUNSETPERSIST` keeps it after our file descriptor
//! closes, `TUNSETOWNER` lets an unprivileged VMM open it. The VMM opens it again by name.
//!
//! Written by hand: the kernel refuses to create TUN/TAP devices over rtnetlink, and the
//! TUN crates of the field keep the device only while they hold it open.

use std::fs::OpenOptions;
use std::mem::size_of;
use std::os::fd::AsRawFd as _;

use nix::libc;

use crate::config::check_ifname;
use crate::NetError;

const TUN_DEVICE: &str = "/dev/net/tun";

// <linux/if_tun.h>: TUNSETIFF _IOW('T', 202, int), TUNSETPERSIST _IOW('T', 203, int),
// TUNSETOWNER _IOW('T', 204, int). TUNSETIFF takes a `struct ifreq *`, the others an int.
nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tun_set_persist,
    nix::request_code_write!(b'T', 203, size_of::<libc::c_int>())
);
nix::ioctl_write_int_bad!(
    tun_set_owner,
    nix::request_code_write!(b'T', 204, size_of::<libc::c_int>())
);

fn tap_err(name: &str, what: &'static str, source: nix::Error) -> NetError {
    if source == nix::Error::EPERM || source == nix::Error::EACCES {
        return NetError::Permission {
            what,
            name: name.to_string(),
        };
    }
    NetError::Tap {
        name: name.to_string(),
        what,
        source,
    }
}

/// Opens `/dev/net/tun` and binds the descriptor to TAP `name`, creating the device if it
/// does not exist: what a VMM does to use the TAP (tests use it to play one). Fails with
/// "busy" while another process holds the TAP open.
pub fn open_tap(name: &str) -> Result<std::fs::File, NetError> {
    check_ifname("TAP", name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => NetError::Permission {
                what: "open /dev/net/tun for TAP",
                name: name.to_string(),
            },
            _ => NetError::io(
                "open (is the tun module loaded? modprobe tun)",
                TUN_DEVICE,
                e,
            ),
        })?;
    // SAFETY: ifreq is plain old data for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: the descriptor is open on /dev/net/tun, and `req` is a valid, NUL-terminated
    // (name at most 15 bytes, checked above) ifreq that outlives the call.
    unsafe { tun_set_iff(file.as_raw_fd(), &req) }.map_err(|e| match e {
        nix::Error::EINVAL => NetError::Link {
            what: "open TAP",
            name: name.to_string(),
            why: format!("{e}: a device of that name exists and is not a TAP; delete it"),
        },
        nix::Error::EBUSY => NetError::Link {
            what: "open TAP",
            name: name.to_string(),
            why: format!("{e}: another process (a running VMM?) holds it open"),
        },
        e => tap_err(name, "create TAP (TUNSETIFF)", e),
    })?;
    Ok(file)
}

/// Creates persistent TAP `name` (with `IFF_NO_PI | IFF_VNET_HDR`), owned by `owner` if
/// given. An existing TAP of that name is reused.
pub fn create_persistent_tap(name: &str, owner: Option<u32>) -> Result<(), NetError> {
    let file = open_tap(name)?;
    if let Some(uid) = owner {
        // SAFETY: plain integer argument on an open TUN descriptor.
        unsafe { tun_set_owner(file.as_raw_fd(), uid as libc::c_int) }
            .map_err(|e| tap_err(name, "set TAP owner (TUNSETOWNER)", e))?;
    }
    // SAFETY: plain integer argument on an open TUN descriptor.
    unsafe { tun_set_persist(file.as_raw_fd(), 1) }
        .map_err(|e| tap_err(name, "make TAP persistent (TUNSETPERSIST)", e))?;
    Ok(())
}

/// Makes TAP `name` non-persistent, so it disappears when our descriptor closes. The usual
/// removal is [`crate::link::Netlink::delete_link`]; this is for kernels that refuse it.
pub fn remove_persistent_tap(name: &str) -> Result<(), NetError> {
    let file = open_tap(name)?;
    // SAFETY: plain integer argument on an open TUN descriptor.
    unsafe { tun_set_persist(file.as_raw_fd(), 0) }
        .map_err(|e| tap_err(name, "clear TAP persistence (TUNSETPERSIST)", e))?;
    Ok(())
}
