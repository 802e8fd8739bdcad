//! Builds the Landlock ruleset of a run, in the parent, before the fork.
//!
//! The ruleset is created with the crate `landlock` using the ABI the kernel reports (so
//! every handled right is one the kernel knows, and `HardRequirement` turns any mismatch into
//! an error instead of a silent downgrade), then turned into a plain file descriptor. The
//! child only calls `landlock_restrict_self(fd, 0)`: rust-landlock's own `restrict_self`
//! builds a status struct and may allocate an error, which is not allowed between fork and
//! exec.

use std::os::fd::OwnedFd;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
};
use sandbox_core::{LandlockStatus, NetworkPolicy, Policy, RunError};

use crate::profile;

/// The first ABI with TCP port rules.
pub(crate) const ABI_NET: u32 = 4;
/// The first ABI with scoping of abstract unix sockets and signals.
pub(crate) const ABI_SCOPE: u32 = 6;

/// The Landlock ABI of the running kernel, 0 when Landlock is unavailable.
pub(crate) fn kernel_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the syscall only
    // returns the ABI number (or -1); it reads and writes no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(abi).unwrap_or(0)
}

/// A ruleset ready to be enforced by the child.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) fd: OwnedFd,
    pub(crate) status: LandlockStatus,
    pub(crate) network_ports: bool,
    pub(crate) ipc_scoping: bool,
}

fn setup_error(error: impl std::error::Error + Send + Sync + 'static) -> RunError {
    RunError::Io {
        what: "building the landlock ruleset",
        source: std::io::Error::other(error),
    }
}

/// Builds the ruleset for `policy` plus the run's work directory.
pub(crate) fn build(policy: &Policy, work_dir: &Path, kernel_abi: u32) -> Result<Built, RunError> {
    let abi = ABI::from(i32::try_from(kernel_abi).unwrap_or(i32::MAX));
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let network_ports = kernel_abi >= ABI_NET;
    let ipc_scoping = kernel_abi >= ABI_SCOPE;

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)
        .map_err(setup_error)?;
    if network_ports {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(setup_error)?;
    }
    if ipc_scoping {
        ruleset = ruleset
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(setup_error)?;
    }
    let mut created = ruleset.create().map_err(setup_error)?;

    let mut rules: Vec<PathBeneath<PathFd>> = Vec::new();
    let mut grant = |path: &Path, access: BitFlags<AccessFs>, required: bool| {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            Err(_) if !required => return Ok(()),
            Err(e) => {
                return Err(RunError::PathUnavailable {
                    path: path.to_owned(),
                    source: std::io::Error::other(e),
                });
            }
        };
        let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
        let access = if is_dir {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        rules.push(PathBeneath::new(fd, access));
        Ok(())
    };
    if policy.system_paths() {
        for p in profile::SYSTEM_READ_PATHS {
            grant(Path::new(p), read, false)?;
        }
        for p in profile::SYSTEM_WRITE_PATHS {
            grant(Path::new(p), all, false)?;
        }
    }
    for p in policy.read_paths() {
        grant(p, read, true)?;
    }
    for p in policy.write_paths() {
        grant(p, all, true)?;
    }
    grant(work_dir, all, true)?;
    for rule in rules {
        created = created.add_rule(rule).map_err(setup_error)?;
    }

    if network_ports
        && let NetworkPolicy::Tcp {
            connect_ports,
            bind_ports,
        } = policy.network()
    {
        for &port in connect_ports {
            created = created
                .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
                .map_err(setup_error)?;
        }
        for &port in bind_ports {
            created = created
                .add_rule(NetPort::new(port, AccessNet::BindTcp))
                .map_err(setup_error)?;
        }
    }
    let fd: Option<OwnedFd> = created.into();
    let fd = fd.ok_or_else(|| RunError::Io {
        what: "building the landlock ruleset",
        source: std::io::Error::other("landlock returned no ruleset descriptor"),
    })?;
    let status = if network_ports && ipc_scoping {
        LandlockStatus::FullyEnforced
    } else {
        LandlockStatus::PartiallyEnforced
    };
    Ok(Built {
        fd,
        status,
        network_ports,
        ipc_scoping,
    })
}
