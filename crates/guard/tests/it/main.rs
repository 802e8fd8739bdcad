//! Integration tests for the guard checks: one table per check, each with benign inputs and
//! bypass attempts.

mod command;
mod path;
mod scan;
mod url;
