//! The parent's handle on a cloned child, from the moment its spawner thread has cloned it.
//!
//! A [`LinuxChild`] owns the child's pid and the run's cgroup, and whoever holds it is
//! responsible for the run's processes: the spawner thread, the reply on its way to the run,
//! then the run's supervisor. Dropping it before the child was reaped (a cancelled run, or a
//! reply that its run will never read) kills every process of the run and reaps the child,
//! wherever that happens, so no child is left running unsupervised or unreaped. The reap of
//! a child that has not died yet is handed to one reaper thread, so an async runtime thread
//! never waits for it; the run's cgroup goes with it, so it returns to the pool only once
//! the child's pid has left it.

use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use sandbox_core::supervise::{ExitInfo, ProcessControl};
use tokio::io::unix::AsyncFd;

use super::cgroup::RunCgroup;

/// The parent's handle on a running child.
#[derive(Debug)]
pub(crate) struct LinuxChild {
    pid: libc::pid_t,
    /// Set by the one [`ProcessControl::wait_exit`] a child gets.
    waited: AtomicBool,
    cgroup: Option<RunCgroup>,
    reaped: AtomicBool,
}

impl LinuxChild {
    /// Takes charge of `pid`, an unreaped child of this process that leads its own process
    /// group, whose run's processes are all in `cgroup` when there is one.
    pub(crate) fn new(pid: libc::pid_t, cgroup: Option<RunCgroup>) -> Self {
        LinuxChild {
            pid,
            waited: AtomicBool::new(false),
            cgroup,
            reaped: AtomicBool::new(false),
        }
    }

    /// Whether the child has exited, without reaping it.
    fn has_exited(&self) -> io::Result<bool> {
        // SAFETY: siginfo_t is plain data that waitid fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let id = libc::id_t::try_from(self.pid).map_err(io::Error::other)?;
        // SAFETY: pid is our unreaped child and info a valid siginfo_t; WNOWAIT leaves the
        // child to be reaped later.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                id,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: waitid filled info; si_pid is 0 when no child has changed state.
        Ok(unsafe { info.si_pid() } != 0)
    }

    /// Kills the run's process group, then reaps the exited child. Without a cgroup the
    /// group is how the rest of the run dies, and its id is the child's pid: killed while the
    /// exited child still holds that pid, the signal cannot reach a process that took the
    /// number after the reap.
    fn kill_group_and_reap(&self) -> io::Result<ExitInfo> {
        // SAFETY: kill has no memory effects; the exited, unreaped child still holds the pid
        // and so the process group id.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        self.try_reap(libc::WNOHANG)?
            .ok_or_else(|| io::Error::other("the exited child could not be reaped"))
    }

    /// A pidfd for the child, to wait for its exit in the runtime's poller. The child is not
    /// reaped yet and only this handle reaps it, so the pid still names it.
    fn open_pidfd(&self) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: pidfd_open returned a fresh close-on-exec descriptor that nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Reaps the child if it has exited; `None` if it is still running.
    fn try_reap(&self, flags: libc::c_int) -> io::Result<Option<ExitInfo>> {
        let mut status = 0;
        // SAFETY: rusage is plain data that wait4 fills.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our unreaped child; status and usage are valid pointers.
        let r = unsafe { libc::wait4(self.pid, &mut status, flags, &mut usage) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Ok(None);
        }
        self.reaped.store(true, Ordering::SeqCst);
        let micros = |t: libc::timeval| {
            u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
        };
        let exited = libc::WIFEXITED(status);
        Ok(Some(ExitInfo {
            exit_code: exited.then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            user_cpu_us: micros(usage.ru_utime),
            sys_cpu_us: micros(usage.ru_stime),
            max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        }))
    }
}

impl ProcessControl for LinuxChild {
    fn wait_exit(&self) -> Pin<Box<dyn Future<Output = io::Result<ExitInfo>> + Send + '_>> {
        Box::pin(async move {
            if self.waited.swap(true, Ordering::SeqCst) {
                return Err(io::Error::other("the child is already being waited for"));
            }
            // A short program has often exited before its supervision starts; it is reaped at
            // once, without a pidfd or the runtime's poller, which would wake a runtime thread
            // only to report the exit found here.
            if self.cgroup.is_some() {
                if let Some(exit) = self.try_reap(libc::WNOHANG)? {
                    return Ok(exit);
                }
            } else if self.has_exited()? {
                return self.kill_group_and_reap();
            }
            let pidfd = self.open_pidfd()?;
            // SAFETY: the descriptor is owned by the AsyncFd and stays open as long as it.
            let pidfd = unsafe { AsyncFd::register(pidfd) }.map_err(io::Error::from)?;
            loop {
                let mut guard = pidfd.readable().await?;
                if self.has_exited()? {
                    break;
                }
                guard.clear_ready();
            }
            // Reaping wakes every poller of the pidfd, so it leaves the runtime's poller first:
            // otherwise each run would wake a runtime thread for nothing as it ends.
            drop(pidfd);
            if self.cgroup.is_none() {
                return self.kill_group_and_reap();
            }
            self.try_reap(libc::WNOHANG)?
                .ok_or_else(|| io::Error::other("the exited child could not be reaped"))
        })
    }

    fn kill_tree(&self) {
        // Every process of the run is born in its cgroup, so once the cgroup is empty there is
        // nothing left to signal. A cgroup that could not be emptied (or listed) still gets
        // the process group killed.
        if let Some(cgroup) = &self.cgroup
            && cgroup.kill_all()
        {
            return;
        }
        // A reaped child's group was killed just before the reap (`kill_group_and_reap`);
        // its number may now belong to another process.
        if self.reaped.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: kill has no memory effects. The process group id is the child's pid
        // (setpgid(0, 0) in the child), which the unreaped child still holds.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
            libc::kill(self.pid, libc::SIGKILL);
        }
    }

    fn violations(&self) -> Vec<String> {
        match &self.cgroup {
            Some(c) if c.limit_hits() > 0 => {
                vec![format!("process_limit ({} forks refused)", c.limit_hits())]
            }
            _ => Vec::new(),
        }
    }
}

impl Drop for LinuxChild {
    fn drop(&mut self) {
        if self.reaped.load(Ordering::SeqCst) {
            return;
        }
        // Nobody supervises the child any more: kill everything, then reap it. A SIGKILLed
        // process exits promptly, but not necessarily before we return.
        self.kill_tree();
        if let Ok(Some(_)) = self.try_reap(libc::WNOHANG) {
            return;
        }
        reap_later(Orphan {
            pid: self.pid,
            _cgroup: self.cgroup.take(),
        });
    }
}

/// A killed child that has not been reaped yet, with its run's cgroup.
struct Orphan {
    pid: libc::pid_t,
    /// Dropped (pooled or removed) once the child is reaped: until then its pid still counts
    /// in the cgroup's `pids.current`.
    _cgroup: Option<RunCgroup>,
}

impl Orphan {
    /// Reaps the child if it has exited; true when it is gone.
    fn reaped(&self, flags: libc::c_int) -> bool {
        // SAFETY: pid is our unreaped child; a null status pointer is allowed.
        let r = unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), flags) };
        // -1 (ECHILD) cannot happen for a child only this orphan reaps; if it did, there would
        // be nothing left to wait for.
        r != 0
    }
}

/// How often the reaper looks again at children that were still exiting.
const REAP_INTERVAL: Duration = Duration::from_millis(5);

/// Hands `orphan` to the reaper thread, started on first use. A reaper that could not be
/// started (no thread left for the moment) is tried again for the next orphan; this one is
/// waited for here, since it was sent SIGKILL.
fn reap_later(orphan: Orphan) {
    static REAPER: Mutex<Option<mpsc::Sender<Orphan>>> = Mutex::new(None);
    let mut reaper = REAPER.lock().unwrap_or_else(PoisonError::into_inner);
    if reaper.is_none() {
        let (send, receive) = mpsc::channel();
        let started = std::thread::Builder::new()
            .name("cordon-reaper".into())
            .spawn(move || reaper_loop(&receive));
        *reaper = started.ok().map(|_| send);
    }
    let orphan = match reaper.as_ref() {
        Some(send) => match send.send(orphan) {
            Ok(()) => return,
            Err(mpsc::SendError(orphan)) => {
                *reaper = None;
                orphan
            }
        },
        None => orphan,
    };
    drop(reaper);
    orphan.reaped(0);
}

/// The reaper thread: takes orphans and reaps each once it has exited. It waits for none in
/// particular (a process stuck in an uninterruptible sleep must not hold up the others) but
/// looks at all of them every [`REAP_INTERVAL`] while any is left.
fn reaper_loop(orphans: &mpsc::Receiver<Orphan>) {
    let mut pending: Vec<Orphan> = Vec::new();
    loop {
        let next = if pending.is_empty() {
            match orphans.recv() {
                Ok(orphan) => Some(orphan),
                // The sender lives in a static, so this does not happen.
                Err(mpsc::RecvError) => return,
            }
        } else {
            orphans.recv_timeout(REAP_INTERVAL).ok()
        };
        pending.extend(next);
        pending.retain(|orphan| !orphan.reaped(libc::WNOHANG));
    }
}
