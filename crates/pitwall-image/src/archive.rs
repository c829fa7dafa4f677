//! Random access to the files of an image source: an OCI layout or `docker save` tree as a
//! directory, or the same as a tar archive (optionally gzip- or zstd-compressed).
//!
//! A tar archive is indexed once (member name → offset and length; with a seeking reader, so
//! layer data is not read) and members are then read in place, which avoids copying a
//! multi-gigabyte archive to disk. A compressed archive cannot be seeked in, so it is first
//! decompressed into the import's work directory. Member names are normalised lexically and
//! `..` never leaves the archive; symlinks and hard links between members (old `docker save`
//! links duplicate `layer.tar`s) are resolved by name inside the archive, never on disk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::error::{ImageError, IoContext};

/// Largest JSON document (index, manifest, config) read into memory. The OCI distribution
/// spec caps manifests at 4 MiB; configs of real images are far smaller.
pub const MAX_DOCUMENT_BYTES: u64 = 8 << 20;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];

/// Compression of a stream, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else if head.starts_with(XZ_MAGIC) {
        Compression::Xz
    } else {
        Compression::None
    }
}

#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

enum Kind {
    Dir(PathBuf),
    Tar {
        file: PathBuf,
        members: HashMap<String, Member>,
    },
}

/// An opened image source.
pub struct Source {
    path: PathBuf,
    kind: Kind,
}

impl Source {
    /// Opens `path`, a directory or a (compressed) tar. `work_dir` receives the decompressed
    /// copy of a compressed archive, of at most `max_decompressed` bytes; it must live as long
    /// as the `Source`.
    pub fn open(path: &Path, work_dir: &Path, max_decompressed: u64) -> Result<Self, ImageError> {
        let meta = std::fs::metadata(path).map_err(|source| ImageError::SourceUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(Self {
                path: path.to_path_buf(),
                kind: Kind::Dir(path.to_path_buf()),
            });
        }
        let mut f = File::open(path).map_err(|source| ImageError::SourceUnreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let mut head = [0u8; 6];
        let n = read_up_to(&mut f, &mut head).ctx("read", path)?;
        let file = match sniff(&head[..n]) {
            Compression::None => path.to_path_buf(),
            Compression::Xz => {
                return Err(ImageError::CorruptArchive {
                    path: path.to_path_buf(),
                    detail: "it is xz-compressed, which is not supported; decompress it (unxz) or use gzip/zstd".into(),
                })
            }
            c => {
                f.seek(SeekFrom::Start(0)).ctx("seek in", path)?;
                let out = work_dir.join("source.tar");
                decompress_to(path, f, c, &out, max_decompressed)?;
                out
            }
        };
        let members = index_tar(path, &file)?;
        Ok(Self {
            path: path.to_path_buf(),
            kind: Kind::Tar { file, members },
        })
    }

    /// "directory /x" or "archive /x.tar", for messages.
    pub fn describe(&self) -> String {
        match self.kind {
            Kind::Dir(_) => format!("directory {}", self.path.display()),
            Kind::Tar { .. } => format!("archive {}", self.path.display()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Dir(_) => "directory",
            Kind::Tar { .. } => "archive",
        }
    }

    /// Whether the source has a regular file called `name`.
    pub fn has(&self, name: &str) -> bool {
        match &self.kind {
            Kind::Dir(dir) => normalize(name).is_some_and(|n| dir.join(n).is_file()),
            Kind::Tar { members, .. } => resolve(members, name).is_some(),
        }
    }

    /// Opens member `name` for reading; returns the reader and the member's length.
    pub fn open_member(
        &self,
        name: &str,
        what: &'static str,
    ) -> Result<(Box<dyn Read + Send>, u64), ImageError> {
        let missing = || ImageError::MissingBlob {
            source_desc: self.describe(),
            what,
            name: name.to_string(),
        };
        match &self.kind {
            Kind::Dir(dir) => {
                let rel = normalize(name).ok_or_else(missing)?;
                let p = dir.join(rel);
                let f = match File::open(&p) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(ImageError::io("open", p, e)),
                };
                let meta = f.metadata().ctx("stat", &p)?;
                if !meta.is_file() {
                    return Err(missing());
                }
                Ok((Box::new(BufReader::with_capacity(256 << 10, f)), meta.len()))
            }
            Kind::Tar { file, members } => {
                let (offset, size) = resolve(members, name).ok_or_else(missing)?;
                let mut f = File::open(file).ctx("open", file)?;
                f.seek(SeekFrom::Start(offset)).ctx("seek in", file)?;
                Ok((
                    Box::new(BufReader::with_capacity(256 << 10, f.take(size))),
                    size,
                ))
            }
        }
    }

    /// Reads a small member (a JSON document) whole, refusing one over `MAX_DOCUMENT_BYTES`.
    pub fn read_document(&self, name: &str, what: &'static str) -> Result<Vec<u8>, ImageError> {
        let (r, size) = self.open_member(name, what)?;
        if size > MAX_DOCUMENT_BYTES {
            return Err(ImageError::BadDocument {
                what: format!("{what} {name}"),
                source_desc: self.describe(),
                detail: format!("it is {size} bytes, more than the {MAX_DOCUMENT_BYTES} allowed"),
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.take(MAX_DOCUMENT_BYTES + 1)
            .read_to_end(&mut buf)
            .ctx("read", self.path.join(name))?;
        Ok(buf)
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn decompress_to(
    src: &Path,
    f: File,
    c: Compression,
    out: &Path,
    max: u64,
) -> Result<(), ImageError> {
    let mut w = File::create(out).ctx("create", out)?;
    let r = BufReader::new(f);
    let decoder: io::Result<Box<dyn Read>> = match c {
        Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(r))),
        Compression::Zstd => {
            zstd::stream::read::Decoder::with_buffer(r).map(|d| Box::new(d) as Box<dyn Read>)
        }
        Compression::None | Compression::Xz => Ok(Box::new(r)),
    };
    let res =
        decoder.and_then(|inner| io::copy(&mut crate::rootfs::Capped { inner, left: max }, &mut w));
    res.map_err(|e| ImageError::CorruptArchive {
        path: src.to_path_buf(),
        detail: format!("decompressing it failed: {e}"),
    })?;
    w.sync_all().ctx("write", out)?;
    Ok(())
}

/// Lexically normalises a member name: strips leading `/` and `./`, drops `.` components, and
/// returns `None` for `..` or an empty name.
pub fn normalize(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Resolves a symlink target relative to the directory of `link`, inside the archive.
fn resolve_link_target(link: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut p: Vec<&str> = link.split('/').collect();
        p.pop();
        p
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            n => parts.push(n),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn resolve(members: &HashMap<String, Member>, name: &str) -> Option<(u64, u64)> {
    let mut name = normalize(name)?;
    for _ in 0..16 {
        match members.get(&name)? {
            Member::File { offset, size } => return Some((*offset, *size)),
            Member::Link(t) => name = t.clone(),
        }
    }
    None
}

fn index_tar(src: &Path, file: &Path) -> Result<HashMap<String, Member>, ImageError> {
    let corrupt = |detail: String| ImageError::CorruptArchive {
        path: src.to_path_buf(),
        detail,
    };
    let f = File::open(file).ctx("open", file)?;
    let len = f.metadata().ctx("stat", file)?.len();
    let mut archive = tar::Archive::new(f);
    let mut members = HashMap::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| corrupt(format!("it is not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| corrupt(format!("reading its tar headers failed: {e}")))?;
        let Ok(raw_name) = std::str::from_utf8(&entry.path_bytes()).map(str::to_string) else {
            continue;
        };
        let Some(name) = normalize(&raw_name) else {
            continue;
        };
        let ty = entry.header().entry_type();
        let offset = entry.raw_file_position();
        let size = entry.size();
        // Seeking past the end is not an error, so check that each member (with the padding
        // to its 512-byte block) is really there.
        if offset
            .checked_add(size.div_ceil(512) * 512)
            .is_none_or(|end| end > len)
        {
            return Err(corrupt(format!(
                "member {raw_name:?} ends past the end of the file ({len} bytes): it was cut short"
            )));
        }
        if ty.is_file() || ty.is_contiguous() {
            members.insert(name, Member::File { offset, size });
        } else if ty.is_symlink() || ty.is_hard_link() {
            let Some(target) = entry
                .link_name_bytes()
                .and_then(|t| std::str::from_utf8(&t).ok().map(str::to_string))
            else {
                continue;
            };
            let resolved = if ty.is_symlink() {
                resolve_link_target(&name, &target)
            } else {
                normalize(&target)
            };
            if let Some(t) = resolved {
                members.insert(name, Member::Link(t));
            }
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_never_leave_the_archive() {
        assert_eq!(
            normalize("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("/index.json").as_deref(), Some("index.json"));
        assert_eq!(normalize("a/../../etc/passwd"), None);
        assert_eq!(normalize("./"), None);
    }

    #[test]
    fn symlink_targets_resolve_inside_the_archive() {
        assert_eq!(
            resolve_link_target("abc/layer.tar", "../def/layer.tar").as_deref(),
            Some("def/layer.tar")
        );
        assert_eq!(resolve_link_target("abc/layer.tar", "../../x"), None);
        assert_eq!(resolve_link_target("a/l", "/b/c").as_deref(), Some("b/c"));
    }

    #[test]
    fn compression_is_told_by_magic_bytes() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"hello"), Compression::None);
    }
}
