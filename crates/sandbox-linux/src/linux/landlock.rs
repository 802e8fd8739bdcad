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
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, Scope,
};
use sandbox_core::{Ceiling, LandlockStatus, NetworkPolicy, Policy, RunError};

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

/// The `landlock` crate's view of a kernel ABI number.
fn abi_of(kernel_abi: u32) -> ABI {
    ABI::from(i32::try_from(kernel_abi).unwrap_or(i32::MAX))
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

/// Opens `path` with `O_PATH` and `flags` for a rule granting `access` (file rights only for
/// a file).
fn open_grant(
    path: &Path,
    access: BitFlags<AccessFs>,
    abi: ABI,
    flags: libc::c_int,
) -> std::io::Result<Grant> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC | flags)
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
    let abi = abi_of(kernel_abi);
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let wanted: Vec<Wanted> = profile::SYSTEM_READ_PATHS
        .iter()
        .map(|p| (p, read))
        .chain(profile::SYSTEM_WRITE_PATHS.iter().map(|p| (p, all)))
        .filter_map(|(path, access)| {
            let path = std::fs::canonicalize(path).ok()?;
            let is_dir = path.is_dir();
            Some(Wanted {
                path,
                access,
                is_dir,
            })
        })
        .collect();
    let grants = without_covered(&wanted)
        .filter_map(|(path, access)| open_grant(path, access, abi, 0).ok())
        .collect();
    let fresh = Arc::new(SystemGrants {
        opened: Instant::now(),
        abi: kernel_abi,
        grants,
    });
    *CACHE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&fresh));
    fresh
}

/// The paths of `wanted` (canonical, with their access) that another entry does not already
/// cover: a rule on a directory grants its access to everything beneath it, so `/bin` (a link
/// to `/usr/bin` on a merged-`/usr` host) or `/usr/share/zoneinfo` next to `/usr` would only
/// add rules that change nothing. Of equal paths with equal access the first stays.
fn without_covered(wanted: &[Wanted]) -> impl Iterator<Item = (&Path, BitFlags<AccessFs>)> {
    wanted.iter().enumerate().filter_map(|(i, w)| {
        let covered = wanted.iter().enumerate().any(|(j, other)| {
            j != i
                && other.access.contains(w.access)
                && if w.path == other.path {
                    other.access != w.access || j < i
                } else {
                    other.is_dir && w.path.starts_with(&other.path)
                }
        });
        (!covered).then_some((w.path.as_path(), w.access))
    })
}

/// A system path to grant, resolved to its canonical form.
struct Wanted {
    path: PathBuf,
    access: BitFlags<AccessFs>,
    is_dir: bool,
}

/// A ruleset with every right of `kernel_abi` handled and no rule yet: everything denied.
fn empty_ruleset(kernel_abi: u32) -> Result<RulesetCreated, RunError> {
    let abi = abi_of(kernel_abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(setup_error)?;
    if kernel_abi >= ABI_NET {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(setup_error)?;
    }
    if kernel_abi >= ABI_SCOPE {
        ruleset = ruleset
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(setup_error)?;
    }
    ruleset.create().map_err(setup_error)
}

/// An empty ruleset plus the system grants, and when their descriptors were opened.
fn with_system_grants(kernel_abi: u32) -> Result<(RulesetCreated, Instant), RunError> {
    let system = system_grants(kernel_abi);
    let mut created = empty_ruleset(kernel_abi)?;
    for (file, access) in &system.grants {
        created = created
            .add_rule(PathBeneath::new(file, *access))
            .map_err(setup_error)?;
    }
    Ok((created, system.opened))
}

/// Rulesets holding the system grants that the filler thread keeps ready. Each holds one
/// descriptor, which every clone copies; ten measured faster than six, by waking the filler
/// half as often.
const PREPARED_READY: usize = 10;

/// The filler is woken once this few rulesets are left. Waking a sleeping thread costs the
/// run that does it about as much as building a ruleset, so the filler tops up a batch
/// every few runs rather than one ruleset after each.
const PREPARED_LOW_WATER: usize = 2;

/// A ruleset with the system grants, made ahead of the run that takes it.
struct Prepared {
    ruleset: RulesetCreated,
    /// When its system descriptors were opened; it expires with them.
    opened: Instant,
    abi: u32,
}

/// The ready rulesets, and the filler thread's wake-up (`None` if it could not start).
struct PreparedPool {
    ready: Mutex<Vec<Prepared>>,
    wake: Option<std::sync::mpsc::Sender<u32>>,
}

fn prepared_pool() -> &'static PreparedPool {
    static POOL: OnceLock<PreparedPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (wake, requests) = std::sync::mpsc::channel::<u32>();
        let started = std::thread::Builder::new()
            .name("cordon-landlock-prep".to_owned())
            .spawn(move || {
                // Under load the runs build their own rulesets and this thread would only
                // compete with them; SCHED_IDLE runs it only on a CPU that has nothing else to
                // do. Refused (a seccomp profile of the host, say), it stays a normal thread.
                let idle = libc::sched_param { sched_priority: 0 };
                // SAFETY: sched_setscheduler on pid 0 changes only the calling thread's policy
                // and reads the parameter struct, which lives across the call.
                let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) };
                while let Ok(mut abi) = requests.recv() {
                    // Requests that queued up meanwhile ask for the same thing.
                    while let Ok(newer) = requests.try_recv() {
                        abi = newer;
                    }
                    fill(abi);
                }
            });
        PreparedPool {
            ready: Mutex::new(Vec::new()),
            wake: started.is_ok().then_some(wake),
        }
    })
}

impl PreparedPool {
    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<Prepared>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes a ready ruleset with the system grants of `kernel_abi`, and asks the filler thread
/// for more once few are left. Creating a ruleset and adding its system rules was a sixth of
/// a sandboxed run of `/bin/true`; made ahead, on a thread that is otherwise idle, it leaves
/// the run's path.
/// `None` when none is ready (a burst of runs, or the first run after an idle second): the
/// caller builds one itself, with the same rules.
fn take_prepared(kernel_abi: u32) -> Option<RulesetCreated> {
    let pool = prepared_pool();
    let (taken, left) = {
        let mut ready = pool.ready();
        ready.retain(|p| p.abi == kernel_abi && p.opened.elapsed() < SYSTEM_REFRESH);
        (ready.pop(), ready.len())
    };
    if left <= PREPARED_LOW_WATER
        && let Some(wake) = &pool.wake
    {
        // A filler that has stopped leaves every run to build its own ruleset.
        let _ = wake.send(kernel_abi);
    }
    taken.map(|p| p.ruleset)
}

/// Tops the pool up to [`PREPARED_READY`] rulesets for `kernel_abi`.
fn fill(kernel_abi: u32) {
    let pool = prepared_pool();
    while pool.ready().len() < PREPARED_READY {
        let Ok((ruleset, opened)) = with_system_grants(kernel_abi) else {
            // The run that builds its own ruleset reports the error.
            return;
        };
        pool.ready().push(Prepared {
            ruleset,
            opened,
            abi: kernel_abi,
        });
    }
}

/// The error of a granted path that cannot be opened.
fn unavailable(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    |source| RunError::PathUnavailable {
        path: path.to_owned(),
        source,
    }
}

/// The run's working directory, as [`build`] grants it.
pub(crate) enum WorkGrant<'a> {
    /// A fresh directory the server made for this run under its work root.
    Fresh(&'a Path),
    /// The `cwd` the client asked for, which the ceiling must admit.
    Requested(&'a Path),
}

/// Builds the ruleset for `policy` plus the run's work directory.
///
/// Every path the client named is opened here, once, and the path of what was opened (not
/// the name the client gave) is checked against `ceiling`: a rule attaches to the opened
/// inode, so a directory swapped for a symlink after the manager checked the name is refused
/// instead of granting the symlink's target. The fresh work directory is opened without
/// following a symlink, for the same reason.
pub(crate) fn build(
    policy: &Policy,
    work: WorkGrant<'_>,
    ceiling: &Ceiling,
    kernel_abi: u32,
) -> Result<Built, RunError> {
    let abi = abi_of(kernel_abi);
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let network_ports = kernel_abi >= ABI_NET;
    let ipc_scoping = kernel_abi >= ABI_SCOPE;

    // Open the requested paths first: a missing one fails the run before any ruleset exists.
    let requested = |field: &'static str, path: &Path, access, write: bool| {
        let grant = open_grant(path, access, abi, 0).map_err(unavailable(path))?;
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", grant.0.as_raw_fd())).map_err(
            |source| RunError::Io {
                what: "reading the path of an opened grant from /proc/self/fd",
                source,
            },
        )?;
        ceiling.check_opened(field, path, &opened, write)?;
        Ok::<_, RunError>(grant)
    };
    let mut grants = Vec::new();
    for p in policy.read_paths() {
        grants.push(requested("read_paths", p, read, false)?);
    }
    for p in policy.write_paths() {
        grants.push(requested("write_paths", p, all, true)?);
    }
    grants.push(match work {
        WorkGrant::Requested(cwd) => requested("cwd", cwd, all, true)?,
        WorkGrant::Fresh(dir) => open_grant(dir, all, abi, libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .map_err(unavailable(dir))?,
    });
    let mut created = if policy.system_paths() {
        match take_prepared(kernel_abi) {
            Some(prepared) => prepared,
            None => with_system_grants(kernel_abi)?.0,
        }
    } else {
        empty_ruleset(kernel_abi)?
    };
    for (file, access) in &grants {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(path: &str, access: BitFlags<AccessFs>, is_dir: bool) -> Wanted {
        Wanted {
            path: PathBuf::from(path),
            access,
            is_dir,
        }
    }

    #[test]
    fn a_path_beneath_a_granted_directory_adds_no_rule() {
        let read = AccessFs::from_read(ABI::V5);
        let all = AccessFs::from_all(ABI::V5);
        let list = [
            wanted("/usr", read, true),
            wanted("/usr/bin", read, true),
            wanted("/usr/share/zoneinfo", read, true),
            wanted("/usr", read, true),
            wanted("/etc/ld.so.cache", read, false),
            wanted("/etc/ld.so.cache/x", read, false),
            wanted("/usrlocal", read, true),
            wanted("/dev/null", all, false),
            wanted("/dev/null", read, false),
            wanted("/var/lib", all, true),
            wanted("/var", read, true),
        ];
        let kept: Vec<(&Path, BitFlags<AccessFs>)> = without_covered(&list).collect();
        assert_eq!(
            kept,
            vec![
                (Path::new("/usr"), read),
                (Path::new("/etc/ld.so.cache"), read),
                // A file covers nothing beneath it, and a sibling sharing a prefix is not beneath.
                (Path::new("/etc/ld.so.cache/x"), read),
                (Path::new("/usrlocal"), read),
                (Path::new("/dev/null"), all),
                // Wider access than the enclosing directory's must stay.
                (Path::new("/var/lib"), all),
                (Path::new("/var"), read),
            ]
        );
    }
}
