//! Pitwall's REST API v1: the JSON types every client and the server share, and [`Client`],
//! a typed HTTP client used by the CLI, the tests and the benchmarks.
//!
//! Types here are plain data (strings for names, states and times) so that clients need not
//! link the server's domain crates; the server converts from `pitwall-core`.
#![forbid(unsafe_code)]

pub mod cert;
mod client;
mod types;

pub use client::{root_cause, Client, ClientBuilder, ClientError, QuotaOf};
pub use types::*;
