//! Input and output checks for agent tools.
//!
//! Four independent checks, each a pure function of its input (plus, for URLs, an injectable DNS
//! resolver):
//!
//! - [`check_path`] resolves a path the way the kernel would (symlinks of the existing prefix,
//!   `..` applied to the resolved parent) and checks it against allowed roots.
//! - [`UrlChecker`] refuses URLs that could reach internal services (SSRF): loopback, private,
//!   link-local and other non-public addresses in every spelling, and hosts whose DNS answers
//!   contain any such address.
//! - [`check_command`] and [`check_argv`] flag dangerous shell commands. They are advisory: the
//!   sandbox is the enforcement.
//! - [`scan_text`] finds prompt-injection attempts in tool output and returns a redacted copy;
//!   it lists at most [`MAX_FINDINGS`] findings, and says when it left some out.
//!
//! Every finding carries a [`Category`] whose [`Category::as_str`] is a stable snake_case string
//! that callers may pass through to clients.

#![forbid(unsafe_code)]

mod command;
mod finding;
mod path;
mod scan;
mod ssrf;

pub use command::{CommandVerdict, check_argv, check_command};
pub use finding::{Category, Finding};
pub use path::{PathError, PathVerdict, check_path};
pub use scan::{MAX_FINDINGS, ScanReport, scan_text};
pub use ssrf::{
    DEFAULT_SCHEMES, ForbiddenAddress, Resolve, SystemResolver, UrlChecker, UrlRefusal, UrlVerdict,
    classify_ip,
};
