//! The crate's error type.

use std::path::PathBuf;

/// What failed in host networking, on what, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network config: {0}")]
    Config(String),
    #[error("{what} {name}: permission denied: host networking needs root or CAP_NET_ADMIN")]
    Permission { what: &'static str, name: String },
    #[error("netlink: {what} {name}: {source}")]
    Netlink {
        what: &'static str,
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what} {name}: {why}")]
    Link {
        what: &'static str,
        name: String,
        why: String,
    },
    #[error("TAP {name}: {what}: {source}")]
    Tap {
        name: String,
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("IP pool {pool} is exhausted ({size} addresses, all allocated): delete VMs or configure a larger pool")]
    PoolExhausted { pool: String, size: u32 },
    #[error("IPAM state {path}: {why}")]
    IpamState { path: PathBuf, why: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source} (install nftables: apt-get install nftables)")]
    NftMissing {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nft rejected the ruleset for table {table}: {stderr}")]
    Nft { table: String, stderr: String },
}

impl NetError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NetError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// A netlink failure; "permission denied" becomes [`NetError::Permission`].
    pub(crate) fn netlink(what: &'static str, name: &str, source: rtnetlink::Error) -> Self {
        if let rtnetlink::Error::NetlinkError(msg) = &source {
            if msg.to_io().kind() == std::io::ErrorKind::PermissionDenied {
                return NetError::Permission {
                    what,
                    name: name.to_string(),
                };
            }
        }
        NetError::Netlink {
            what,
            name: name.to_string(),
            source,
        }
    }
}
