//! The read-only base image's format: EROFS (the default, [`crate::erofs`]) or ext4
//! ([`crate::ext4`]). The guest tells them apart by their superblocks and mounts either; both
//! carry the volume label [`crate::BASE_LABEL`]. Images already in a cache keep the format
//! they were built with (`image.json` records it; records from before it was recorded are
//! ext4).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::{erofs, ext4};

/// The volume label of every base image, whatever its format; the guest finds its base disk
/// by it.
pub const BASE_LABEL: &str = "pw-base";

/// The filesystem of built base images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseFormat {
    /// Read-only EROFS, uncompressed, by `mkfs.erofs` (erofs-utils).
    #[default]
    Erofs,
    /// ext4 without a journal, by `mkfs.ext4 -d` (e2fsprogs).
    Ext4,
}

impl BaseFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BaseFormat::Erofs => "erofs",
            BaseFormat::Ext4 => "ext4",
        }
    }

    /// The base image's file name in its image directory.
    pub fn file_name(self) -> &'static str {
        match self {
            BaseFormat::Erofs => "rootfs.erofs",
            BaseFormat::Ext4 => "rootfs.ext4",
        }
    }

    /// How records written before the format was recorded were built.
    pub(crate) fn legacy() -> Self {
        BaseFormat::Ext4
    }
}

impl fmt::Display for BaseFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BaseFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "erofs" => Ok(BaseFormat::Erofs),
            "ext4" => Ok(BaseFormat::Ext4),
            other => Err(format!(
                "unknown base image format {other:?}: use \"erofs\" or \"ext4\""
            )),
        }
    }
}

/// Builds base images of one format with one `mkfs`.
#[derive(Debug, Clone)]
pub(crate) struct BaseBuilder {
    pub format: BaseFormat,
    pub mkfs: PathBuf,
}

impl BaseBuilder {
    /// Builds `out` from the tree at `root`; returns its size in bytes.
    pub fn build(&self, root: &Path, out: &Path) -> Result<u64, ImageError> {
        match self.format {
            BaseFormat::Erofs => erofs::build(&self.mkfs, root, out),
            BaseFormat::Ext4 => ext4::build(&self.mkfs, root, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_print_and_serialize_alike() {
        for f in [BaseFormat::Erofs, BaseFormat::Ext4] {
            assert_eq!(f.as_str().parse::<BaseFormat>(), Ok(f));
            assert_eq!(serde_json::to_string(&f).expect("json"), format!("\"{f}\""));
        }
        let e = "squashfs".parse::<BaseFormat>().expect_err("unknown");
        assert!(e.contains("\"erofs\" or \"ext4\""), "{e}");
    }
}
