//! Pitwall's images on a host: import of an OCI image layout (directory or tar) or a
//! `docker save` archive, safe application of layers into a root tree, and the read-only
//! ext4 base image built from it, cached by manifest digest.
//!
//! This code reads hostile input: no archive entry may write outside the root it is applied
//! to. What it must not do: boot anything, talk to the bus or the store.
#![forbid(unsafe_code)]
