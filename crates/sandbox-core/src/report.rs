//! What the kernel actually enforced, per run and per host.

use std::collections::BTreeMap;

/// Landlock's own verdict on a ruleset, mirroring rust-landlock's `RulesetStatus`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LandlockStatus {
    /// Every requested Landlock restriction is enforced.
    FullyEnforced,
    /// Some requested restrictions are enforced (an older ABI lacks the rest).
    PartiallyEnforced,
    /// Landlock was not applied.
    #[default]
    NotEnforced,
}

impl LandlockStatus {
    /// The proto spelling: `fully_enforced`, `partially_enforced` or `not_enforced`.
    pub fn as_str(self) -> &'static str {
        match self {
            LandlockStatus::FullyEnforced => "fully_enforced",
            LandlockStatus::PartiallyEnforced => "partially_enforced",
            LandlockStatus::NotEnforced => "not_enforced",
        }
    }
}

/// What keeps a fork bomb inside the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Containment {
    /// A per-run pids cgroup: bounded process count, and the whole tree is killed through it.
    Cgroup,
    /// A dedicated unprivileged uid with `RLIMIT_NPROC`.
    Uid,
    /// `RLIMIT_NPROC` on the server's own uid (shared with the server's other processes).
    Rlimit,
    /// Nothing.
    #[default]
    None,
}

impl Containment {
    /// The proto spelling: `cgroup`, `uid`, `rlimit` or the empty string.
    pub fn as_str(self) -> &'static str {
        match self {
            Containment::Cgroup => "cgroup",
            Containment::Uid => "uid",
            Containment::Rlimit => "rlimit",
            Containment::None => "",
        }
    }
}

/// Which layers were enforced for one run (the proto `Enforcement` message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnforcementReport {
    /// The backend that ran the command: `landlock`, `seccomp`, `soft`, `none`, ...
    pub backend: &'static str,
    /// `linux`, `macos`, ...
    pub platform: &'static str,
    /// Landlock ABI in effect, 0 when Landlock was not applied.
    pub landlock_abi: u32,
    /// Landlock's verdict.
    pub landlock_status: LandlockStatus,
    /// File system access is restricted by the kernel.
    pub filesystem: bool,
    /// TCP ports are restricted by the kernel.
    pub network_ports: bool,
    /// Abstract unix sockets and signals are scoped to the run.
    pub ipc_scoping: bool,
    /// The seccomp deny list is installed.
    pub seccomp: bool,
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// The child holds no capabilities.
    pub capabilities_dropped: bool,
    /// Resource rlimits are set as hard limits.
    pub rlimits: bool,
    /// What contains a fork bomb.
    pub process_containment: Containment,
    /// The uid the child ran as.
    pub uid: u32,
    /// Layers that were asked for but could not be applied on this host.
    pub missing: Vec<String>,
    /// True when both file system and syscall restrictions were enforced by the kernel.
    pub kernel_enforced: bool,
}

/// What a backend enforces on this host (the proto `Capabilities` message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `linux`, `macos`, ...
    pub platform: &'static str,
    /// The backend's name.
    pub backend: &'static str,
    /// The Landlock ABI the backend uses, 0 without Landlock.
    pub landlock_abi: u32,
    /// Whether the backend installs a seccomp filter.
    pub seccomp: bool,
    /// Layer name to a sentence saying what it enforces on this host.
    pub layers: BTreeMap<String, String>,
    /// True when file system and syscall restrictions are kernel-enforced.
    pub kernel_enforced: bool,
    /// What contains a fork bomb.
    pub process_containment: Containment,
}
