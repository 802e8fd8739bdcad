//! Integration tests of the `cordon` binary, driven by real clients.

mod audit;
mod ca;
mod foundation;
mod harness;
mod profile;
mod ratelimit;
mod sandbox;
