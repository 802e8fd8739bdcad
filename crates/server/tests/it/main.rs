//! Integration tests of the `cordon` binary, driven by real clients.

mod foundation;
mod harness;
