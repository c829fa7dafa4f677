//! Image references in the docker/OCI form `[registry/]repository[:tag][@sha256:hex]`.
//!
//! Parsing follows the grammar of the OCI distribution spec (the one `docker` uses): path
//! components of lower-case alphanumerics joined by `.`, `_`, `__` or `-`; tags of up to 128
//! characters `[A-Za-z0-9_][A-Za-z0-9._-]*`; digests `sha256:` + 64 hex digits. A reference with
//! neither tag nor digest means tag `latest`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("image reference is empty: give NAME[:TAG], e.g. busybox:latest")]
    Empty,
    #[error("image reference {0:?} is longer than 255 characters")]
    TooLong(String),
    #[error(
        "image reference {reference:?}: repository component {component:?} is not allowed; use lower-case letters, digits and single '.', '_' or '-' between them"
    )]
    BadComponent {
        reference: String,
        component: String,
    },
    #[error(
        "image reference {reference:?}: tag {tag:?} is not allowed; a tag is 1-128 characters of A-Z a-z 0-9 _ . - and does not start with '.' or '-'"
    )]
    BadTag { reference: String, tag: String },
    #[error(
        "image reference {reference:?}: digest {digest:?} is not allowed; use sha256: followed by 64 lower-case hex digits"
    )]
    BadDigest { reference: String, digest: String },
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    /// Registry host (with port), when the first component names one.
    pub registry: Option<String>,
    /// Repository path, e.g. `library/busybox` or `demo/hello`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Content digest `sha256:…`, when pinned.
    pub digest: Option<String>,
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
        return false;
    }
    let last = b[b.len() - 1];
    if !last.is_ascii_lowercase() && !last.is_ascii_digit() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // a separator run
        let start = i;
        while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self, ImageRefError> {
        if s.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if s.len() > 255 {
            return Err(ImageRefError::TooLong(s.to_string()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    return Err(ImageRefError::BadDigest {
                        reference: s.to_string(),
                        digest: d.to_string(),
                    });
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(ImageRefError::BadTag {
                        reference: s.to_string(),
                        tag: tag.to_string(),
                    });
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let mut parts: Vec<&str> = path.split('/').collect();
        let registry = if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            Some(parts.remove(0).to_string())
        } else {
            None
        };
        for p in &parts {
            if !valid_component(p) {
                return Err(ImageRefError::BadComponent {
                    reference: s.to_string(),
                    component: (*p).to_string(),
                });
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".into())
        } else {
            tag
        };
        Ok(Self {
            registry,
            repository: parts.join("/"),
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for ImageRef {
    type Error = ImageRefError;
    fn try_from(s: String) -> Result<Self, ImageRefError> {
        Self::parse(&s)
    }
}

impl From<ImageRef> for String {
    fn from(r: ImageRef) -> String {
        r.to_string()
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, ImageRefError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_name_means_latest() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "busybox:latest");
        assert_eq!(r.registry, None);
    }

    #[test]
    fn registry_with_port_and_tag() {
        let r = ImageRef::parse("127.0.0.1:5000/demo/hello:1.0").unwrap();
        assert_eq!(r.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.repository, "demo/hello");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.to_string(), "127.0.0.1:5000/demo/hello:1.0");
    }

    #[test]
    fn digest_pinned() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("demo/x@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
    }

    #[test]
    fn refuses_bad_forms() {
        assert_eq!(ImageRef::parse(""), Err(ImageRefError::Empty));
        assert!(matches!(
            ImageRef::parse("Busybox"),
            Err(ImageRefError::BadComponent { .. })
        ));
        assert!(matches!(
            ImageRef::parse("a..b"),
            Err(ImageRefError::BadComponent { .. })
        ));
        assert!(matches!(
            ImageRef::parse("a/../b"),
            Err(ImageRefError::BadComponent { .. })
        ));
        assert!(matches!(
            ImageRef::parse("busybox:"),
            Err(ImageRefError::BadTag { .. })
        ));
        assert!(matches!(
            ImageRef::parse("busybox:-x"),
            Err(ImageRefError::BadTag { .. })
        ));
        assert!(matches!(
            ImageRef::parse("busybox@sha256:12"),
            Err(ImageRefError::BadDigest { .. })
        ));
        assert!(matches!(
            ImageRef::parse(&"a".repeat(300)),
            Err(ImageRefError::TooLong(_))
        ));
    }
}
