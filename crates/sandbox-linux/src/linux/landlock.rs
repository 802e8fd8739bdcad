//! Builds the Landlock ruleset of a run, in the parent, before the clone.
//!
//! The ruleset is created with the crate `landlock` using the ABI the kernel reports (so
//! every handled right is one the kernel knows, and `HardRequirement` turns any mismatch into
//! an error instead of a silent downgrade), then turned into a plain file descriptor. The
//! child only calls `landlock_restrict_self(fd, 0)`: rust-landlock's own `restrict_self`
//! builds a status struct and may allocate an error, which is not allowed between clone and
//! exec.
//!
//! Opening the two dozen system paths was most of the cost of a ruleset, so their `O_PATH`
//! descriptors are kept and reopened once they are [`SYSTEM_REFRESH`] old. A rule attaches to
//! the inode the descriptor names, so a system file replaced by a rename in the meantime
//! (a package upgrade rewriting `/etc/ld.so.cache`) is denied, never wrongly granted, until
//! the next refresh: staleness can only narrow the grant.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
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

/// How long the descriptors of the system paths are reused before they are reopened.
pub(crate) const SYSTEM_REFRESH: Duration = Duration::from_secs(1);

/// A path opened for a rule, with the access it gets (narrowed to file rights for a file).
type Grant = (File, BitFlags<AccessFs>);

/// The system part of every ruleset, opened at one moment.
struct SystemGrants {
    opened: Instant,
    abi: u32,
    grants: Vec<Grant>,
}

/// Opens `path` with `O_PATH` for a rule granting `access` (file rights only for a file).
fn open_grant(path: &Path, access: BitFlags<AccessFs>, abi: ABI) -> std::io::Result<Grant> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)?;
    let access = if file.metadata()?.is_dir() {
        access
    } else {
        access & AccessFs::from_file(abi)
    };
    Ok((file, access))
}

/// The system grants, reopened when older than [`SYSTEM_REFRESH`]. Paths missing on the host
/// are skipped.
fn system_grants(kernel_abi: u32) -> Arc<SystemGrants> {
    static CACHE: Mutex<Option<Arc<SystemGrants>>> = Mutex::new(None);
    if let Some(cached) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        && cached.abi == kernel_abi
        && cached.opened.elapsed() < SYSTEM_REFRESH
    {
        return Arc::clone(cached);
    }
    let abi = ABI::from(i32::try_from(kernel_abi).unwrap_or(i32::MAX));
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let grants = profile::SYSTEM_READ_PATHS
        .iter()
        .map(|p| (p, read))
        .chain(profile::SYSTEM_WRITE_PATHS.iter().map(|p| (p, all)))
        .filter_map(|(path, access)| open_grant(Path::new(path), access, abi).ok())
        .collect();
    let fresh = Arc::new(SystemGrants {
        opened: Instant::now(),
        abi: kernel_abi,
        grants,
    });
    *CACHE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&fresh));
    fresh
}

/// Builds the ruleset for `policy` plus the run's work directory.
pub(crate) fn build(policy: &Policy, work_dir: &Path, kernel_abi: u32) -> Result<Built, RunError> {
    let abi = ABI::from(i32::try_from(kernel_abi).unwrap_or(i32::MAX));
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let network_ports = kernel_abi >= ABI_NET;
    let ipc_scoping = kernel_abi >= ABI_SCOPE;

    // Open the requested paths first: a missing one fails the run before any ruleset exists.
    let requested = |path: &Path, access| {
        open_grant(path, access, abi).map_err(|source| RunError::PathUnavailable {
            path: path.to_owned(),
            source,
        })
    };
    let mut grants = Vec::new();
    for p in policy.read_paths() {
        grants.push(requested(p, read)?);
    }
    for p in policy.write_paths() {
        grants.push(requested(p, all)?);
    }
    grants.push(requested(work_dir, all)?);
    let system = policy.system_paths().then(|| system_grants(kernel_abi));

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
    let system_grants = system.iter().flat_map(|s| s.grants.iter());
    for (file, access) in system_grants.chain(grants.iter()) {
        created = created
            .add_rule(PathBeneath::new(file, *access))
            .map_err(setup_error)?;
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
