//! Fork and exec with every restriction applied in between.
//!
//! Why a hand-rolled `fork` instead of `std::process::Command::pre_exec`: the order of the
//! steps matters and std fixes part of it. The child must join its cgroup and drop the
//! capability bounding set while still root, then change uid, then set
//! `PR_SET_PDEATHSIG` (a uid change clears it), then `no_new_privs`, Landlock and seccomp, and
//! `Command` switches uid before `pre_exec` runs. Owning the whole sequence also lets a
//! failure name the exact step.
//!
//! Fork safety: the server is multi-threaded, so between `fork` and `execve` the child may
//! only make async-signal-safe calls. Everything that allocates is done before the fork, in
//! [`ChildPlan`]: C strings for the program, argv, envp and cwd and their pointer arrays, the
//! rlimit table, the `sock_fprog` headers of the already compiled seccomp programs, the
//! Landlock ruleset descriptor, the cgroup descriptor. The child then runs only raw system
//! calls (`libc` wrappers that do nothing but the call, or `syscall` directly for
//! set*id, whose glibc wrappers synchronize threads) and `execve`. A failure is written to a
//! close-on-exec pipe as (step, errno) and the child exits with 127; a successful `execve`
//! closes the pipe, which the parent sees as end of file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sandbox_core::supervise::ChildPipes;
use sandbox_core::{Limits, RunError};

use super::seccomp::Program;

/// The steps of the child, named in errors.
const STAGES: &[&str] = &[
    "signal mask",
    "cgroup join",
    "setpgid",
    "stdio",
    "close_range",
    "setrlimit",
    "capability bounding set",
    "setgroups",
    "setresgid",
    "setresuid",
    "chdir",
    "pdeathsig",
    "no_new_privs",
    "landlock_restrict_self",
    "seccomp",
    "execve",
];
const STAGE_EXEC: u32 = 15;

/// What the child applies, described by the caller.
#[derive(Debug)]
pub(crate) struct SpawnSpec<'a> {
    pub(crate) program: &'a Path,
    pub(crate) argv: &'a [String],
    pub(crate) env: &'a [(String, String)],
    pub(crate) cwd: &'a Path,
    /// rlimits to set as hard limits; `None` sets none.
    pub(crate) limits: Option<&'a Limits>,
    /// Also set `RLIMIT_NPROC` (when no cgroup bounds the processes).
    pub(crate) nproc: bool,
    /// Switch to this uid and gid (the server is root).
    pub(crate) credentials: Option<(u32, u32)>,
    /// Drop the capability bounding set up to this capability number (needs root).
    pub(crate) drop_bounding_set: Option<u32>,
    pub(crate) no_new_privs: bool,
    pub(crate) cgroup_procs: Option<BorrowedFd<'a>>,
    pub(crate) landlock: Option<BorrowedFd<'a>>,
    pub(crate) seccomp: &'a [Program],
}

/// A child that has successfully called `execve`.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: libc::pid_t,
    pub(crate) pidfd: OwnedFd,
    pub(crate) pipes: ChildPipes,
}

/// Everything the child touches, prepared before the fork.
struct ChildPlan {
    program: CString,
    // The pointer arrays point into these; they must live as long as the plan.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    credentials: Option<(u32, u32)>,
    drop_bounding_set: Option<u32>,
    no_new_privs: bool,
    cgroup_procs: RawFd,
    landlock: RawFd,
    fprogs: Vec<libc::sock_fprog>,
    parent_pid: libc::pid_t,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    empty_mask: libc::sigset_t,
}

fn cstring(bytes: &[u8]) -> Result<CString, RunError> {
    CString::new(bytes).map_err(|e| RunError::Io {
        what: "preparing the command",
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })
}

fn os_error(what: &'static str) -> RunError {
    RunError::Io {
        what,
        source: io::Error::last_os_error(),
    }
}

/// A close-on-exec pipe whose ends are never 0, 1 or 2, so that the child's `dup2` onto the
/// standard descriptors cannot clobber another end.
fn pipe() -> Result<(OwnedFd, OwnedFd), RunError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("creating a pipe"));
    }
    let lift = |fd: RawFd| -> Result<OwnedFd, RunError> {
        // SAFETY: fd was just returned by pipe2 and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if fd > 2 {
            return Ok(owned);
        }
        // SAFETY: F_DUPFD_CLOEXEC duplicates a valid descriptor; no memory is involved.
        let high = unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if high < 0 {
            return Err(os_error("creating a pipe"));
        }
        // SAFETY: high is a fresh descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(high) })
    };
    Ok((lift(fds[0])?, lift(fds[1])?))
}

fn rlimit(value: u64) -> libc::rlimit {
    libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    }
}

/// Forks, applies `spec` in the child and executes the program.
pub(crate) fn spawn(spec: &SpawnSpec<'_>) -> Result<Spawned, RunError> {
    let program = cstring(spec.program.as_os_str().as_bytes())?;
    let argv = spec
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let env = spec
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let mut rlimits = Vec::new();
    if let Some(l) = spec.limits {
        // CPU: SIGXCPU at the limit, SIGKILL one second later.
        let cpu_s = l.cpu_time_ms.div_ceil(1000);
        rlimits.push((
            libc::RLIMIT_CPU,
            libc::rlimit {
                rlim_cur: cpu_s,
                rlim_max: cpu_s + 1,
            },
        ));
        rlimits.push((libc::RLIMIT_AS, rlimit(l.memory_bytes)));
        rlimits.push((libc::RLIMIT_FSIZE, rlimit(l.max_file_size_bytes)));
        rlimits.push((libc::RLIMIT_NOFILE, rlimit(l.max_open_files)));
        rlimits.push((libc::RLIMIT_CORE, rlimit(0)));
        if spec.nproc {
            rlimits.push((libc::RLIMIT_NPROC, rlimit(l.max_processes)));
        }
    }
    let fprogs = spec
        .seccomp
        .iter()
        .map(|p| libc::sock_fprog {
            len: u16::try_from(p.len()).unwrap_or(u16::MAX),
            filter: p.as_ptr().cast_mut(),
        })
        .collect();

    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (report_r, report_w) = pipe()?;

    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: empty_mask is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut empty_mask) };

    let argv_ptrs = ptrs(&argv);
    let env_ptrs = ptrs(&env);
    let plan = ChildPlan {
        program,
        _argv: argv,
        argv_ptrs,
        _env: env,
        env_ptrs,
        cwd: cstring(spec.cwd.as_os_str().as_bytes())?,
        rlimits,
        credentials: spec.credentials,
        drop_bounding_set: spec.drop_bounding_set,
        no_new_privs: spec.no_new_privs,
        cgroup_procs: spec.cgroup_procs.map_or(-1, |fd| fd.as_raw_fd()),
        landlock: spec.landlock.map_or(-1, |fd| fd.as_raw_fd()),
        fprogs,
        // SAFETY: getpid has no preconditions.
        parent_pid: unsafe { libc::getpid() },
        stdin: stdin_r.as_raw_fd(),
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
        empty_mask,
    };

    // SAFETY: the child branch only calls `child`, which performs async-signal-safe system
    // calls on memory prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_error("fork"));
    }
    if pid == 0 {
        // SAFETY: we are the child of a fork; `plan` is a valid copy of the parent's memory.
        unsafe { child(&plan) }
    }

    drop((stdin_r, stdout_w, stderr_w, report_w));
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: the buffer slice is valid for the requested length.
        let n = unsafe {
            libc::read(
                report_r.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        if n == 0 {
            break;
        }
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        got += n.unsigned_abs();
    }
    if got > 0 {
        // The child failed before execve and exits; reap it so no zombie is left.
        let mut status = 0;
        // SAFETY: pid is our child; status is a valid int.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let stage = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        let source = io::Error::from_raw_os_error(errno);
        if stage == STAGE_EXEC {
            return Err(RunError::Exec {
                program: spec.program.to_owned(),
                source,
            });
        }
        return Err(RunError::Setup {
            stage: STAGES.get(stage as usize).copied().unwrap_or("unknown"),
            source,
        });
    }

    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the child
    // is not reaped yet, so the pid cannot have been reused.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let error = os_error("pidfd_open");
        // SAFETY: pid is our child; killing and reaping it leaves nothing behind.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(error);
    }
    // SAFETY: pidfd_open returned a fresh descriptor that nobody else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    Ok(Spawned {
        pid,
        pidfd,
        pipes: ChildPipes {
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
        },
    })
}

/// Reports a failed step to the parent and exits. Async-signal-safe.
///
/// # Safety
/// Only to be called in the forked child.
unsafe fn fail(plan: &ChildPlan, stage: u32) -> ! {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write and _exit are async-signal-safe; msg is valid for 8 bytes.
    unsafe {
        libc::write(plan.report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The child between fork and exec. Only async-signal-safe system calls, no allocation.
///
/// # Safety
/// Only to be called in the forked child, with a plan prepared by [`spawn`].
unsafe fn child(plan: &ChildPlan) -> ! {
    // SAFETY: every call below is a raw system call on descriptors and memory prepared
    // before the fork and still valid in the child's copy of the address space; nothing
    // allocates or takes a lock.
    unsafe {
        if libc::sigprocmask(libc::SIG_SETMASK, &plan.empty_mask, std::ptr::null_mut()) != 0 {
            fail(plan, 0);
        }
        // Rust ignores SIGPIPE in the server; ignored dispositions survive execve.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        if plan.cgroup_procs >= 0 && libc::write(plan.cgroup_procs, b"0".as_ptr().cast(), 1) != 1 {
            fail(plan, 1);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(plan, 2);
        }
        for (fd, target) in [(plan.stdin, 0), (plan.stdout, 1), (plan.stderr, 2)] {
            if libc::dup2(fd, target) != target {
                fail(plan, 3);
            }
        }
        // Any descriptor another thread opened without close-on-exec must not leak.
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0
            && *libc::__errno_location() != libc::ENOSYS
        {
            fail(plan, 4);
        }
        for (resource, limit) in &plan.rlimits {
            if libc::setrlimit(*resource, limit) != 0 {
                fail(plan, 5);
            }
        }
        if let Some(last) = plan.drop_bounding_set {
            for cap in 0..=last {
                if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    fail(plan, 6);
                }
            }
        }
        if let Some((uid, gid)) = plan.credentials {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
                fail(plan, 7);
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail(plan, 8);
            }
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail(plan, 9);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(plan, 10);
        }
        // Set after the uid change, which clears it. If the parent died before this point,
        // the signal will never come: exit now.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(plan, 11);
        }
        if libc::getppid() != plan.parent_pid {
            libc::_exit(127);
        }
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(plan, 12);
        }
        if plan.landlock >= 0
            && libc::syscall(libc::SYS_landlock_restrict_self, plan.landlock, 0u32) != 0
        {
            fail(plan, 13);
        }
        for fprog in &plan.fprogs {
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                fprog as *const libc::sock_fprog,
            ) != 0
            {
                fail(plan, 14);
            }
        }
        libc::execve(
            plan.program.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.env_ptrs.as_ptr(),
        );
        fail(plan, STAGE_EXEC)
    }
}
