//! powerunit's error: a message that says what failed and on what, printed on the console
//! and reported to the host as `GuestStatus.error`. A plain string on purpose: every error
//! of PID 1 ends in the same place (report, power off), nothing matches on its kind.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach what was being done to any displayable error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

/// Build an [`Error`] from format arguments.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::error::Error(format!($($arg)*))
    };
}
