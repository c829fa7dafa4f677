//! VM names: DNS labels, so a name can become a hostname and part of an overlay identity.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest VM name, as for a DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// Why a VM name was refused; each message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("VM name is empty: give 1 to 63 characters of a-z, 0-9 and '-'")]
    Empty,
    #[error("VM name {0:?} is longer than 63 characters: shorten it")]
    TooLong(String),
    #[error(
        "VM name {name:?} has {found:?} at position {pos}: use only lower-case letters a-z, digits 0-9 and '-'"
    )]
    BadChar {
        name: String,
        found: char,
        pos: usize,
    },
    #[error("VM name {0:?} must start with a letter a-z")]
    BadStart(String),
    #[error("VM name {0:?} must not end with '-'")]
    BadEnd(String),
}

/// A validated VM name: 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter and
/// not ending with `-` (a DNS label that is never mistaken for a number or an id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.to_string()));
        }
        for (pos, c) in s.chars().enumerate() {
            if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                return Err(NameError::BadChar {
                    name: s.to_string(),
                    found: c,
                    pos,
                });
            }
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(NameError::BadStart(s.to_string()));
        }
        if s.ends_with('-') {
            return Err(NameError::BadEnd(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for VmName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse(&s)
    }
}

impl From<VmName> for String {
    fn from(n: VmName) -> String {
        n.0
    }
}

impl std::str::FromStr for VmName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web-1", "db0", &"a".repeat(63)] {
            assert_eq!(VmName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_each_bad_form_with_its_reason() {
        assert_eq!(VmName::parse(""), Err(NameError::Empty));
        assert!(matches!(
            VmName::parse(&"a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        assert!(matches!(
            VmName::parse("Web"),
            Err(NameError::BadChar { pos: 0, .. })
        ));
        assert!(matches!(
            VmName::parse("a_b"),
            Err(NameError::BadChar { found: '_', .. })
        ));
        assert!(matches!(
            VmName::parse("a/b"),
            Err(NameError::BadChar { .. })
        ));
        assert!(matches!(VmName::parse("1abc"), Err(NameError::BadStart(_))));
        assert!(matches!(VmName::parse("-abc"), Err(NameError::BadStart(_))));
        assert!(matches!(VmName::parse("abc-"), Err(NameError::BadEnd(_))));
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<VmName>("\"ok-name\"").is_ok());
        assert!(serde_json::from_str::<VmName>("\"Bad Name\"").is_err());
    }
}
