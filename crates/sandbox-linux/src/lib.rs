//! The Linux sandbox: Landlock, seccomp-bpf, privilege dropping, rlimits and a per-run pids
//! cgroup, applied between `clone` and `execve`.
//!
//! - [`profile`] is the policy-as-data module (system read set, seccomp deny list) and
//!   [`render_linux_profile`] prints it; both compile on every host.
//! - [`mount_private_tmpfs`] gives the work directories a size-limited tmpfs that only the
//!   server and its runs see (Linux only).
//! - [`candidates`] returns the four Linux backends (`landlock`, `seccomp`, `soft`, `none`)
//!   for [`sandbox_core::Manager::new`]; [`manager`] does both steps.
//!
//! # Fork safety
//!
//! Everything that allocates is built in the parent before the child is cloned: the Landlock
//! ruleset (as a descriptor, with the crate `landlock`), the seccomp BPF program (with
//! `seccompiler` behind a binary-search dispatcher, cached per variant), every C string and
//! pointer array, the rlimit table. Children are cloned with `CLONE_VM | CLONE_VFORK` (like
//! `posix_spawn`) by long-lived spawner threads that carry the variant's seccomp filter, no
//! inheritable or ambient capability, and, when the server is root, an empty capability
//! bounding set (otherwise no permitted capability either), so that every child inherits
//! all of it. Between `clone` and `execve` the child makes only raw, async-signal-safe system
//! calls, in this order: reset every signal disposition and unblock signals, join the run's
//! pids cgroup, `setpgid(0, 0)`, install the pipes as stdin/stdout/stderr, mark every other
//! descriptor close-on-exec (`close_range`, or one by one up to `RLIMIT_NOFILE` where the
//! kernel or a seccomp profile refuses it), set hard rlimits, `setgroups`/`setresgid`/`setresuid` to the
//! unprivileged run uid (when the server is root), `chdir`, `PR_SET_PDEATHSIG(SIGKILL)` (after
//! the uid change, which clears it), `no_new_privs`, `landlock_restrict_self` on the prebuilt
//! ruleset (not rust-landlock's `restrict_self`, which may allocate), the process group lock
//! filter when there is no cgroup, `execve`. A failing step stores (step, errno) in the memory
//! it shares with the suspended parent thread and `_exit`s; the parent turns that into
//! [`sandbox_core::RunError::Setup`] or [`sandbox_core::RunError::Exec`].
//! `std::process::Command::pre_exec` was not used because std changes the uid before
//! `pre_exec` runs, too early for joining the cgroup.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that cloned exits. The spawner threads never
//! exit, so it fires exactly when the server process dies.
//!
//! # Containment
//!
//! As root, each run gets its own pids cgroup (`pids.max` = `max_processes`) and runs as the
//! configured unprivileged uid/gid (default 65534, never 0). The cgroup bounds a fork bomb
//! and lets the supervisor kill every process of the run, including `setsid`'d and
//! double-forked ones, as soon as the main child exits or the timeout fires. `RLIMIT_NPROC` is then not set,
//! because it counts every process of the uid across concurrent runs. Without root or without
//! a pids controller, `RLIMIT_NPROC` bounds processes, `setsid` and `setpgid` are denied by
//! seccomp so the process group holds the whole tree, and the report says `uid` or `rlimit`
//! instead of `cgroup`. Without root the run has the server's uid, so the limit is
//! `max_processes` plus the server's own threads at the time of the spawn, which the kernel
//! counts too; other tasks of that uid still share it.
#![cfg_attr(not(target_os = "linux"), forbid(unsafe_code))]

pub mod profile;

#[cfg(target_os = "linux")]
mod linux;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

#[cfg(target_os = "linux")]
pub use linux::work_fs::{WorkFsError, mount_private_tmpfs};
pub use profile::render_linux_profile;
use sandbox_core::{Manager, ManagerConfig, ManagerError, Sandbox};

/// Settings of the Linux backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxConfig {
    /// The uid children run as when the server is root. Never 0: a child that kept root's
    /// uid would own root's files, whatever capabilities it lost.
    pub run_uid: NonZeroU32,
    /// The gid children run as when the server is root. Never 0, for root's group's files.
    pub run_gid: NonZeroU32,
    /// Where per-run work directories are created.
    pub work_root: PathBuf,
    /// Use a per-run pids cgroup when the server is root and a pids controller is mounted.
    pub cgroup: bool,
}

impl Default for LinuxConfig {
    /// uid and gid 65534 (nobody), work directories under `$TMPDIR/cordon-runs`, cgroups on.
    fn default() -> Self {
        LinuxConfig {
            run_uid: NOBODY,
            run_gid: NOBODY,
            work_root: std::env::temp_dir().join("cordon-runs"),
            cgroup: true,
        }
    }
}

/// uid and gid 65534, `nobody` and `nogroup` on most distributions.
const NOBODY: NonZeroU32 = NonZeroU32::new(65534).expect("65534 is not 0");

/// The Linux backends, strongest first (empty on other operating systems).
pub fn candidates(config: &LinuxConfig) -> Vec<Arc<dyn Sandbox>> {
    #[cfg(target_os = "linux")]
    {
        linux::candidates(config)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = config;
        Vec::new()
    }
}

/// Builds a [`Manager`] over the Linux backends.
pub fn manager(config: &LinuxConfig, manager: ManagerConfig) -> Result<Manager, ManagerError> {
    Manager::new(manager, candidates(config))
}
