//! A private, size-limited tmpfs for the per-run work directories.
//!
//! The server's process moves into a mount namespace of its own and mounts a tmpfs on the work
//! root there. Runs inherit the namespace, so their work directories live in memory, bounded in
//! total by the tmpfs size: a run that writes without end fills that tmpfs, not the disk that
//! holds the server's data directory and audit log. Nothing outside the server sees the mount,
//! and it disappears with the server, so a crash leaves no mount behind.
//!
//! Mount namespaces belong to threads: `unshare(CLONE_NEWNS)` moves only the calling thread, and
//! threads started later inherit its namespace. So this runs before the process starts any
//! thread, and refuses when it has more than one.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Why the private tmpfs could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum WorkFsError {
    #[error("the process already runs {0} threads; the mount namespace must be unshared first")]
    Threads(usize),
    #[error("work root {0} is not a valid path")]
    Path(String),
    #[error("{step}: {source}")]
    System {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

fn thread_count() -> Result<usize, WorkFsError> {
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|source| WorkFsError::System {
        step: "listing /proc/self/task",
        source,
    })?;
    Ok(tasks.count())
}

fn check(step: &'static str, status: libc::c_int) -> Result<(), WorkFsError> {
    if status == 0 {
        Ok(())
    } else {
        Err(WorkFsError::System {
            step,
            source: io::Error::last_os_error(),
        })
    }
}

/// Moves the (single-threaded) process into a mount namespace of its own, where mounts of the
/// host still appear but its own do not leak out, and mounts a tmpfs of `size_bytes` on `path`,
/// `nosuid` and `nodev`, owned by root, mode 0711 (runs may enter their own directories, not
/// list the others).
pub fn mount_private_tmpfs(path: &Path, size_bytes: u64) -> Result<(), WorkFsError> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(WorkFsError::Threads(threads));
    }
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| WorkFsError::Path(path.display().to_string()))?;
    let options = CString::new(format!("size={size_bytes},mode=0711"))
        .map_err(|_| WorkFsError::Path(path.display().to_string()))?;
    // SAFETY: unshare takes only flags.
    check("unshare(CLONE_NEWNS)", unsafe {
        libc::unshare(libc::CLONE_NEWNS)
    })?;
    // SAFETY: every pointer is a valid NUL-terminated string or null, as mount allows for a
    // propagation change.
    check("making / a slave mount", unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    })?;
    // SAFETY: source, target, type and options are valid NUL-terminated strings.
    check("mounting the tmpfs", unsafe {
        libc::mount(
            c"cordon-work".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    })?;
    Ok(())
}
