//! The macOS sandbox: Seatbelt profiles applied by `/usr/bin/sandbox-exec`, rlimits, and the
//! process supervision shared with the Linux backend (`sandbox_core::supervise`).
//!
//! - [`profile`] is the policy-as-data module (the base profile, the system read set) and
//!   [`render_profile`] generates the SBPL text and its `-D` parameters from a
//!   [`sandbox_core::Policy`]. It is portable: compiled and tested on every host, and printed
//!   by `cordon profile --platform macos`. No path is ever spliced into the profile text.
//! - [`candidates`] returns the macOS backends for [`sandbox_core::Manager::new`] (empty on
//!   other operating systems); [`manager`] does both steps.
//! - [`denials`] reads Seatbelt's denials from the unified log (`log stream`) into a run's
//!   violations; it only works on macOS and is not exercised by the tests on Linux.
//!
//! # Backends and technologies
//!
//! The Seatbelt backend (reported as `sandbox-exec`) serves the kernel tier of the
//! configuration, [`sandbox_core::Technology::Landlock`], which `auto` picks first; it is
//! available when `/usr/bin/sandbox-exec` exists. Without it `auto` falls back to `soft`
//! (rlimits only) with the same loud warning as on Linux. The Seatbelt backend never reports
//! `kernel_enforced`, because macOS has no syscall filter: a policy with
//! `require_kernel_enforcement` is refused on macOS.
//!
//! # What is enforced, and what is not
//!
//! Enforced by Seatbelt: file reads, writes and exec limited to the allow-lists; network
//! none, or TCP to and from the policy's ports on localhost only; signals and process
//! information within the sandbox; a short list of sysctls and mach services. Enforced by
//! rlimits: CPU time, file size, open files, no core dumps. Not available on macOS: syscall
//! filtering, `no_new_privs`, an address-space limit (macOS ignores `RLIMIT_AS`), bounding
//! the process count (`RLIMIT_NPROC` counts every process of the uid), and a parent-death
//! signal. The process group is killed when the main child exits or the timeout fires;
//! a process that calls `setsid` escapes that kill.
//!
//! # Portability
//!
//! The runner is Unix code: it is compiled on macOS, and on any Unix host with the
//! `test-stand-in` feature, which only the crate's own tests turn on, so that the tests run
//! it on Linux against a stand-in `sandbox-exec`. The profile generator and the log parser
//! are compiled everywhere.

pub mod denials;
pub mod profile;
#[cfg(any(target_os = "macos", all(unix, feature = "test-stand-in")))]
mod runner;

use std::path::PathBuf;
use std::sync::Arc;

pub use profile::{Profile, render_profile};
#[cfg(any(target_os = "macos", all(unix, feature = "test-stand-in")))]
pub use runner::{SEATBELT_BACKEND, sandbox_exec_args};
use sandbox_core::{Manager, ManagerConfig, ManagerError, Sandbox};

/// The one `sandbox-exec` the backend runs, always by absolute path.
pub const SANDBOX_EXEC: &str = "/usr/bin/sandbox-exec";

/// Settings of the macOS backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DarwinConfig {
    /// Where per-run work directories are created.
    pub work_root: PathBuf,
    /// Read Seatbelt denials from `log stream` into each run's violations (adds
    /// [`denials::LOG_GRACE`] to every run).
    pub collect_denials: bool,
}

impl Default for DarwinConfig {
    /// Work directories under `$TMPDIR/cordon-runs`, denials collected.
    fn default() -> Self {
        DarwinConfig {
            work_root: std::env::temp_dir().join("cordon-runs"),
            collect_denials: true,
        }
    }
}

/// The macOS backends, strongest first: Seatbelt (`sandbox-exec`), `soft`, `none`. Empty on
/// other operating systems.
pub fn candidates(config: &DarwinConfig) -> Vec<Arc<dyn Sandbox>> {
    #[cfg(target_os = "macos")]
    {
        let log = config
            .collect_denials
            .then(|| PathBuf::from(denials::LOG_PROGRAM));
        backends(config, PathBuf::from(SANDBOX_EXEC), log)
    }
    #[cfg(not(target_os = "macos"))]
    {
        let _ = config;
        Vec::new()
    }
}

/// The macOS backends with a stand-in `sandbox-exec` (and optionally a stand-in `log`), on
/// any Unix host. For the crate's tests only: the feature that enables it is turned on by
/// the crate's own dev-dependency, never by the server.
#[cfg(all(unix, feature = "test-stand-in"))]
pub fn candidates_with_stand_in(
    config: &DarwinConfig,
    sandbox_exec: PathBuf,
    log: Option<PathBuf>,
) -> Vec<Arc<dyn Sandbox>> {
    backends(config, sandbox_exec, log)
}

#[cfg(any(target_os = "macos", all(unix, feature = "test-stand-in")))]
fn backends(
    config: &DarwinConfig,
    sandbox_exec: PathBuf,
    log: Option<PathBuf>,
) -> Vec<Arc<dyn Sandbox>> {
    use runner::{DarwinSandbox, Mode};
    [Mode::Seatbelt { sandbox_exec, log }, Mode::Soft, Mode::None]
        .into_iter()
        .map(|mode| Arc::new(DarwinSandbox::new(mode, config)) as Arc<dyn Sandbox>)
        .collect()
}

/// Builds a [`Manager`] over the macOS backends.
pub fn manager(config: &DarwinConfig, manager: ManagerConfig) -> Result<Manager, ManagerError> {
    Manager::new(manager, candidates(config))
}
