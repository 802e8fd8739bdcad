//! Integration tests of the audit log; one binary, one module per concern.

mod chain;
mod common;
mod concurrency;
mod durability;
mod journal;
mod query;
mod segments;
mod tamper;
