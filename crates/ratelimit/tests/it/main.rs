//! The crate's one integration-test binary.

mod algorithms;
mod memory;
mod policy;
mod redis;
