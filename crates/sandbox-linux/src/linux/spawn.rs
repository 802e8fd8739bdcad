//! Clone and exec with every restriction applied in between.
//!
//! Why a hand-rolled `clone` instead of `std::process::Command::pre_exec`: the order of the
//! steps matters and std fixes part of it. The child must join its cgroup while still root,
//! then change uid, then set `PR_SET_PDEATHSIG` (a uid change clears it), then
//! `no_new_privs` and Landlock, and `Command` switches uid before `pre_exec` runs. Owning the
//! whole sequence also lets a failure name the exact step.
//!
//! Why `clone(CLONE_VM | CLONE_VFORK)` instead of `fork`: copying the page tables of a large
//! multi-threaded server, and the copy-on-write faults that follow in the parent, cost more
//! than everything else the child does. Like `posix_spawn`, the child borrows the parent's
//! memory on a stack of its own while the calling thread is suspended until `execve` (or
//! `_exit`) releases it. The child therefore never writes to memory the parent uses, except
//! `errno`, which the suspended thread does not read. All signals are blocked across the
//! `clone` and every disposition is reset to the default in the child before it unblocks
//! them, so no handler of the server ever runs on the shared memory. No pidfd is made here:
//! a short program has usually exited by the time its supervision starts and is reaped at
//! once, so the supervisor opens one (`pidfd_open`) only for a child still running. The child
//! stays unreaped until the supervisor reaps it, so its pid cannot be reused in between.
//!
//! Why spawner threads: installing a seccomp filter costs the kernel a copy, a check, a
//! translation and a JIT compilation of the program, per process, and dropping the
//! capability bounding set costs one credential change per capability. Both belong to a
//! thread and are inherited by every child that thread clones, for free. So each seccomp
//! variant (network mode, unix sockets) gets a small pool of long-lived spawner threads that
//! drop their bounding set (when the server is root) and install the variant's filter on
//! themselves once, and every child is cloned by one of them: it starts with both already
//! in force, before it runs a single instruction of its own. Capabilities belong to a thread
//! too: the spawner threads give up their inheritable set, which takes the ambient set with
//! it, and, when the server is not root, their permitted and effective sets, so no child
//! starts with a capability of the server (a root server's children lose theirs when they
//! change uid), at no cost per run. The spawner threads do nothing but clone, read the
//! child's setup outcome and reply; they keep every signal blocked and never exit, which also
//! gives `PR_SET_PDEATHSIG` (tied to the thread that cloned) a parent that lives as long as
//! the server. When the process group must be locked (no cgroup), the
//! child cannot inherit the `setpgid` rule, because it calls `setpgid` itself: it installs
//! that small second filter after doing so. On the development machine this took a run of
//! `/bin/true` from 2.4 ms to 1.1 ms, and it keeps the async runtime's threads free while
//! children set themselves up.
//!
//! Fork safety: the server is multi-threaded, so between `clone` and `execve` the child may
//! only make async-signal-safe calls. Everything that allocates is done before the clone, in
//! [`ChildPlan`]: C strings for the program, argv, envp and cwd and their pointer arrays, the
//! rlimit table, the `sock_fprog` header of the already compiled process group lock filter, the
//! Landlock ruleset descriptor, the cgroup descriptor, the descriptor limit for the
//! close-on-exec fallback. The job owns every descriptor the plan names, and the run's
//! cgroup, so a caller that gives up waiting (a cancelled run) cannot close one under the
//! child or see its cgroup pooled while a child may still join it. The child comes back as a
//! [`LinuxChild`], which kills the run and reaps the child if it is dropped unsupervised,
//! whether by the spawner (the run is gone) or in the reply (the run went before reading it).
//! The child then runs only raw system calls (`libc` wrappers that do nothing but the call,
//! or `syscall` directly where the glibc wrapper does more: set*id synchronize threads,
//! `write` and `fcntl` are cancellation points) and `execve`. A failed step is stored in
//! the plan as (step, errno), in the memory the child shares with the suspended spawner
//! thread, and the child exits with 127. The thread resumes only once the child has exited or
//! its `execve` has passed the point of no return, so it then reads either the failure or
//! nothing, with no pipe, no extra system call and no second wake-up (as `posix_spawn` does).

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use sandbox_core::supervise::ChildPipes;
use sandbox_core::{Limits, RunError};
use tokio::sync::oneshot;

use super::cgroup::RunCgroup;
use super::child::LinuxChild;
use super::seccomp::{self, Program, Variant};

/// The steps of the child, named in errors.
const STAGES: &[&str] = &[
    "signal dispositions",
    "cgroup join",
    "setpgid",
    "stdio",
    "close_range",
    "setrlimit",
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
const STAGE_EXEC: u32 = 14;

/// What the child applies, described by the caller.
#[derive(Debug)]
pub(crate) struct SpawnSpec<'a> {
    pub(crate) program: &'a Path,
    pub(crate) argv: &'a [String],
    pub(crate) env: &'a [(String, String)],
    pub(crate) cwd: &'a Path,
    /// The run has input for the child; without any, its standard input is `/dev/null`.
    pub(crate) stdin: bool,
    /// rlimits to set as hard limits; `None` sets none.
    pub(crate) limits: Option<&'a Limits>,
    /// Also bound the run's processes with `RLIMIT_NPROC` (when no cgroup bounds them).
    pub(crate) nproc: bool,
    /// Switch to this uid and gid (the server is root).
    pub(crate) credentials: Option<(u32, u32)>,
    /// Drop the capability bounding set up to this capability number (needs root). The
    /// spawner thread drops it once for all its children; without it the spawner thread
    /// drops its permitted set instead.
    pub(crate) drop_bounding_set: Option<u32>,
    pub(crate) no_new_privs: bool,
    /// The run's cgroup, which the child joins. It travels with the job and comes back with
    /// the child, so it is never pooled while a child may still join it.
    pub(crate) cgroup: Option<RunCgroup>,
    /// The Landlock ruleset, handed to the child's plan, which keeps it open until the child
    /// has used it.
    pub(crate) landlock: Option<OwnedFd>,
    /// The seccomp filter the child starts under; `None` for no filter.
    pub(crate) seccomp: Option<Variant>,
}

/// A child that has successfully called `execve`; dropping it kills the run.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) child: LinuxChild,
    pub(crate) pipes: ChildPipes,
}

/// Everything the child touches, prepared before the clone.
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
    no_new_privs: bool,
    cgroup_procs: RawFd,
    landlock: RawFd,
    /// Where the close-on-exec fallback stops when `close_range` is unusable: the soft
    /// `RLIMIT_NOFILE`, at or above which no descriptor can be opened (one opened before a
    /// program lowered its limit would escape; the server never lowers it). `None` while
    /// `close_range` works.
    fd_limit: Option<libc::c_int>,
    /// The process group lock the child installs itself when there is no cgroup; the
    /// variant's main filter comes with the spawner thread.
    lock_filter: Option<libc::sock_fprog>,
    _lock_program: Option<Arc<Program>>,
    parent_pid: libc::pid_t,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// The failed step and its errno, stored by the child; [`NO_FAILURE`] while none failed.
    failure: AtomicU64,
    empty_mask: libc::sigset_t,
    default_action: libc::sigaction,
    /// The descriptors behind the raw numbers above, closed when the plan is dropped, but
    /// for the cgroup's, which the job holds with the cgroup.
    _owned: Vec<OwnedFd>,
}

// SAFETY: `argv_ptrs` and `env_ptrs` point into heap buffers that only the plan owns (`_argv`,
// `_env`); `lock_filter` points into the `Program` behind `_lock_program`, an `Arc` shared
// with the per-variant cache, whose instructions nobody modifies. None of them moves when the
// plan does, and nothing writes through the pointers, so another thread may use them.
unsafe impl Send for ChildPlan {}

/// The parent's ends of the child's pipes.
struct ParentEnds {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// One spawn request for a spawner thread.
struct Job {
    plan: ChildPlan,
    parent: ParentEnds,
    program: PathBuf,
    /// The run's cgroup, whose `cgroup.procs` descriptor the plan names.
    cgroup: Option<RunCgroup>,
    reply: oneshot::Sender<Result<Spawned, RunError>>,
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

/// A descriptor numbered above 2: `fd` itself, or a close-on-exec duplicate of it.
fn above_stdio(fd: OwnedFd, what: &'static str) -> Result<OwnedFd, RunError> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates a valid descriptor; no memory is involved.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if high < 0 {
        return Err(os_error(what));
    }
    // SAFETY: high is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// `/dev/null` opened for reading once, close-on-exec and above 2: the standard input of
/// every child that gets no input. It reads end of file at once, like the empty pipe it
/// replaces, for two system calls and two descriptors less per run.
fn dev_null() -> Result<BorrowedFd<'static>, RunError> {
    static DEV_NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_fd());
    }
    let file = std::fs::File::open("/dev/null").map_err(|source| RunError::Io {
        what: "opening /dev/null",
        source,
    })?;
    let fd = above_stdio(OwnedFd::from(file), "opening /dev/null")?;
    Ok(DEV_NULL.get_or_init(|| fd).as_fd())
}

/// Puts the parent's end of a pipe in non-blocking mode, for the async supervisor. The
/// child's end is a separate open file, so it stays blocking, as programs expect of their
/// standard streams.
fn set_nonblocking(fd: &OwnedFd) -> Result<(), RunError> {
    // SAFETY: F_SETFL sets the status flags of a valid descriptor; no memory is involved. A
    // pipe end has no status flag but its access mode, which F_SETFL leaves alone.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(os_error("making a pipe non-blocking"));
    }
    Ok(())
}

/// The server's pid, asked once: glibc no longer caches it, and every plan names it.
fn server_pid() -> libc::pid_t {
    static PID: OnceLock<libc::pid_t> = OnceLock::new();
    // SAFETY: getpid has no preconditions.
    *PID.get_or_init(|| unsafe { libc::getpid() })
}

/// A close-on-exec pipe whose ends are never 0, 1 or 2, so that the child's `dup2` onto the
/// standard descriptors cannot clobber another end.
fn pipe() -> Result<(OwnedFd, OwnedFd), RunError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("creating a pipe"));
    }
    let lift = |fd: RawFd| {
        // SAFETY: fd was just returned by pipe2 and is owned by nobody else.
        above_stdio(unsafe { OwnedFd::from_raw_fd(fd) }, "creating a pipe")
    };
    Ok((lift(fds[0])?, lift(fds[1])?))
}

fn rlimit(value: u64) -> libc::rlimit {
    libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    }
}

/// Clones a child on a spawner thread of the spec's seccomp variant, applies `spec` in it
/// and executes the program.
pub(crate) async fn spawn(spec: SpawnSpec<'_>) -> Result<Spawned, RunError> {
    // The pool first: its threads, started by the first run of a variant, count against
    // the process limit computed below.
    let queue = pool(ThreadSetup {
        bounding_set: spec.drop_bounding_set,
        seccomp: spec.seccomp,
    })?;
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
            let tasks = match spec.credentials {
                Some(_) => l.max_processes,
                None => nproc_beyond_own_threads(l.max_processes),
            };
            rlimits.push((libc::RLIMIT_NPROC, rlimit(tasks)));
        }
    }
    let lock = spec
        .seccomp
        .filter(|v| v.lock_process_group)
        .map(|_| seccomp::process_group_lock())
        .transpose()
        .map_err(|e| RunError::Io {
            what: "compiling the seccomp filter",
            source: io::Error::other(e),
        })?;
    let lock_filter = lock.as_ref().map(|p| libc::sock_fprog {
        len: u16::try_from(p.len()).unwrap_or(u16::MAX),
        filter: p.as_ptr().cast_mut(),
    });
    let cgroup_procs = spec
        .cgroup
        .as_ref()
        .and_then(RunCgroup::procs_fd)
        .map_or(-1, |fd| fd.as_raw_fd());
    let landlock = spec.landlock;
    let fd_limit = if close_range_works() {
        None
    } else {
        Some(descriptor_limit()?)
    };

    let (stdin_r, stdin_w) = if spec.stdin {
        let (read, write) = pipe()?;
        (Some(read), Some(write))
    } else {
        (None, None)
    };
    let stdin_fd = match &stdin_r {
        Some(read) => read.as_raw_fd(),
        None => dev_null()?.as_raw_fd(),
    };
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    for parent_end in [stdin_w.as_ref(), Some(&stdout_r), Some(&stderr_r)]
        .into_iter()
        .flatten()
    {
        set_nonblocking(parent_end)?;
    }

    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: empty_mask is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut empty_mask) };
    // SAFETY: sigaction is plain data; all zeroes with SIG_DFL (0) is the default action.
    let mut default_action: libc::sigaction = unsafe { std::mem::zeroed() };
    default_action.sa_sigaction = libc::SIG_DFL;

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
        no_new_privs: spec.no_new_privs,
        cgroup_procs,
        landlock: landlock.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        fd_limit,
        lock_filter,
        _lock_program: lock,
        parent_pid: server_pid(),
        stdin: stdin_fd,
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        failure: AtomicU64::new(NO_FAILURE),
        empty_mask,
        default_action,
        _owned: [stdin_r, Some(stdout_w), Some(stderr_w), landlock]
            .into_iter()
            .flatten()
            .collect(),
    };
    let (reply, answer) = oneshot::channel();
    let job = Job {
        plan,
        parent: ParentEnds {
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
        },
        program: spec.program.to_owned(),
        cgroup: spec.cgroup,
        reply,
    };
    if !queue.push(job) {
        return Err(RunError::Io {
            what: "handing the child to a spawner thread",
            source: io::Error::other("the spawner threads are gone"),
        });
    }
    answer.await.map_err(|_| RunError::Io {
        what: "waiting for the spawner thread",
        source: io::Error::other("the spawner thread is gone"),
    })?
}

/// What a spawner thread applies to itself, once, for all the children it clones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ThreadSetup {
    /// Drop the capability bounding set up to this capability number: the server is root,
    /// and the thread keeps its permitted and effective sets for the children, which need
    /// them to join their cgroup and change uid. `None`: drop every capability.
    bounding_set: Option<u32>,
    /// Install this seccomp variant's filter (`None`: no filter).
    seccomp: Option<Variant>,
}

/// The spawner pool of `setup`; the pools start on first use.
fn pool(setup: ThreadSetup) -> Result<Arc<JobQueue>, RunError> {
    static POOLS: OnceLock<Mutex<HashMap<ThreadSetup, Arc<JobQueue>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(queue) = pools.get(&setup) {
        return Ok(Arc::clone(queue));
    }
    let queue = start_pool(setup).map_err(|source| RunError::Io {
        what: "starting a spawner thread",
        source,
    })?;
    pools.insert(setup, Arc::clone(&queue));
    Ok(queue)
}

/// The `RLIMIT_NPROC` that lets a child that keeps the server's uid start `max_processes`
/// tasks: the kernel counts every task of the uid, and the server's own threads (runtime
/// workers, spawner pools) would use up a small limit before the run forks once, so the
/// threads of this moment are added. Other tasks of the uid (other runs) still share the
/// limit, as the report's `rlimit` containment says. Clamped to the hard limit, which an
/// unprivileged child cannot raise.
fn nproc_beyond_own_threads(max_processes: u64) -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Field 20, num_threads, counted from the state, which follows the parenthesized name.
    let threads: u64 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17))
        .and_then(|threads| threads.parse().ok())
        .unwrap_or(0);
    // SAFETY: rlimit is plain data that getrlimit fills.
    let mut current: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit writes only the struct it is given, which outlives the call.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut current) } == 0 {
        current.rlim_max
    } else {
        libc::RLIM_INFINITY
    };
    max_processes.saturating_add(threads).min(hard)
}

/// The jobs of one spawner pool.
///
/// Idle spawner threads sleep on `ready`, and each job wakes exactly one of them. None of
/// them spins or yields while it waits: on a machine with few CPUs, a waiting thread that
/// keeps yielding sits in the run queue of the CPU where a child is setting itself up or
/// running, and takes turns with it.
struct JobQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Spawner threads still serving the queue; none left refuses new jobs.
    threads: usize,
}

impl JobQueue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` for the next idle thread; false (and the job dropped) when no thread is
    /// left to take it.
    fn push(&self, job: Job) -> bool {
        let mut state = self.state();
        if state.threads == 0 {
            return false;
        }
        state.jobs.push_back(job);
        drop(state);
        self.ready.notify_one();
        true
    }

    /// The next job, waiting for one as long as it takes.
    fn pop(&self) -> Job {
        let mut state = self.state();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return job;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Counts a spawner thread out of its queue when it ends, which only a panic can make it do.
/// The last one to go fails the jobs still queued (their callers see their reply channel
/// closed) rather than leaving them to wait forever.
struct ThreadLeaves(Arc<JobQueue>);

impl Drop for ThreadLeaves {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.threads -= 1;
        if state.threads == 0 {
            state.jobs.clear();
        }
    }
}

/// Starts the spawner threads of one setup: one per CPU, since each is busy only while a
/// child sets itself up.
fn start_pool(setup: ThreadSetup) -> io::Result<Arc<JobQueue>> {
    let queue = Arc::new(JobQueue {
        state: Mutex::new(QueueState {
            jobs: VecDeque::new(),
            threads: 0,
        }),
        ready: Condvar::new(),
    });
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    for n in 0..threads {
        // Counted in before it starts: a thread that fails to start drops its count again.
        queue.state().threads += 1;
        let leaves = ThreadLeaves(Arc::clone(&queue));
        std::thread::Builder::new()
            .name(format!("cordon-spawner-{n}"))
            .spawn(move || spawner(setup, leaves))?;
    }
    Ok(queue)
}

/// The loop of a spawner thread: apply `setup` to this thread, then clone children for as
/// long as the server runs.
fn spawner(setup: ThreadSetup, queue: ThreadLeaves) -> ! {
    // Every signal stays blocked on this thread: a clone shares the parent's memory, so no
    // handler may run between clone and the child's reset of the dispositions.
    // SAFETY: sigset_t is plain data that sigfillset initializes; blocking signals of this
    // thread has no memory effects.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    // SCHED_BATCH, which every child inherits. A child's execve wakes this thread, which would
    // otherwise preempt the child on its CPU to hand the run back, delaying the program it
    // has just started; without wakeup preemption it hands the run back when that CPU is free,
    // or from another one. The programs themselves are batch work too: they never preempt the
    // server's threads when they wake, so a busy sandbox cannot make the server slow to
    // answer. Refused (a seccomp profile of the host, say), both stay normal.
    let batch = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on pid 0 changes only the calling thread's policy and reads
    // the parameter struct, which lives across the call.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &batch) };
    let ready = prepare_thread(setup);
    loop {
        let job = queue.0.pop();
        // A run cancelled while its job waited must not start its program at all: dropping
        // the job releases its descriptors and its cgroup, and no child ever exists.
        if job.reply.is_closed() {
            continue;
        }
        let result = match &ready {
            Ok(()) => clone_child(job.plan, job.parent, job.program, job.cgroup),
            Err((stage, errno)) => Err(RunError::Setup {
                stage,
                source: io::Error::from_raw_os_error(*errno),
            }),
        };
        // A run cancelled meanwhile no longer takes the reply: it comes back and is dropped
        // here, and the child with it, which kills the run's processes and reaps the child.
        drop(job.reply.send(result));
    }
}

/// Applies `setup` to the calling thread only: credentials and seccomp filters belong to a
/// thread, and its clones inherit them. The bounding set goes first (it needs
/// CAP_SETPCAP, which the drop itself does not remove from the effective set), then
/// `no_new_privs`, which the kernel requires before a thread without CAP_SYS_ADMIN may
/// install a filter, then the filter (no TSYNC). Returns the failed step and its errno.
fn prepare_thread(setup: ThreadSetup) -> Result<(), (&'static str, i32)> {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EPERM)
    };
    if let Some(last) = setup.bounding_set {
        for cap in 0..=last {
            // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointer.
            let status =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
            // EINVAL: a capability this kernel does not know, nothing to drop.
            if status != 0 && errno() != libc::EINVAL {
                return Err(("capability bounding set", errno()));
            }
        }
    }
    drop_capabilities(setup.bounding_set.is_some()).map_err(|e| ("capabilities", e))?;
    let Some(variant) = setup.seccomp else {
        return Ok(());
    };
    let program = seccomp::thread_program(variant).map_err(|_| ("seccomp", libc::EINVAL))?;
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| ("seccomp", libc::E2BIG))?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes no pointer.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(("no_new_privs", errno()));
    }
    // SAFETY: seccomp reads the program through fprog, which outlives the call.
    let status = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &raw const fprog,
        )
    };
    if status != 0 {
        return Err(("seccomp", errno()));
    }
    Ok(())
}

/// `struct __user_cap_header_struct` of capget and capset.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit word of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two [`CapData`] words, capabilities 0 to 63.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the calling thread's inheritable set and, unless `keep_permitted`, its permitted
/// and effective sets; returns the errno of a failure.
///
/// The kernel keeps the ambient set inside the permitted and inheritable sets, so this
/// empties the ambient set too: ambient capabilities (systemd's `AmbientCapabilities=` for a
/// service under `User=`) would otherwise pass execve to every child, `no_new_privs` or not.
/// An empty inheritable set also keeps a program's inheritable file capabilities from
/// granting anything. A thread may always lower its own sets, root or not.
fn drop_capabilities(keep_permitted: bool) -> Result<(), i32> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EPERM)
    };
    if keep_permitted {
        // SAFETY: capget reads the header and fills the two words of version 3, which
        // `data` holds; pid 0 is the calling thread.
        let status =
            unsafe { libc::syscall(libc::SYS_capget, &raw const header, data.as_mut_ptr()) };
        if status != 0 {
            return Err(errno());
        }
    }
    for word in &mut data {
        word.inheritable = 0;
    }
    // SAFETY: capset reads the header and the two words of version 3; pid 0 is the calling
    // thread, whose sets it only lowers.
    if unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Whether `close_range` can mark descriptors close-on-exec here (Linux 5.11 and later,
/// unless a seccomp profile of the host refuses it), asked once, on a range holding no
/// descriptor. Where it cannot, the child marks them one by one.
fn close_range_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    // SAFETY: close_range takes numbers only; the range lies above every descriptor.
    *WORKS.get_or_init(|| unsafe {
        libc::syscall(
            libc::SYS_close_range,
            u32::MAX,
            u32::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) == 0
    })
}

/// `CLOSE_RANGE_CLOEXEC`: mark the range close-on-exec rather than close it.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// The soft `RLIMIT_NOFILE`: open would refuse a descriptor at or above it.
fn descriptor_limit() -> Result<libc::c_int, RunError> {
    // SAFETY: rlimit is plain data that getrlimit fills.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: limit is a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(os_error("reading the descriptor limit"));
    }
    Ok(libc::c_int::try_from(limit.rlim_cur).unwrap_or(libc::c_int::MAX))
}

/// What [`ChildPlan::failure`] holds while no step of the child has failed.
const NO_FAILURE: u64 = u64::MAX;

/// Clones the child of `job` on this (spawner) thread; returns once it has executed the
/// program or failed to.
fn clone_child(
    plan: ChildPlan,
    parent: ParentEnds,
    program: PathBuf,
    cgroup: Option<RunCgroup>,
) -> Result<Spawned, RunError> {
    let stack = CHILD_STACK.with(|stack| match stack.get() {
        Some(stack) => Ok(stack.top()),
        None => {
            let new = ChildStack::new().map_err(|source| RunError::Io {
                what: "allocating the child stack",
                source,
            })?;
            let top = new.top();
            let _ = stack.set(new);
            Ok::<_, RunError>(top)
        }
    })?;
    // SAFETY: the child runs `child_main` on this thread's dedicated child stack and only
    // performs async-signal-safe system calls on `plan`, which outlives the call because
    // CLONE_VFORK suspends this thread until the child has called execve or _exit.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(&plan).cast_mut().cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    if pid < 0 {
        return Err(RunError::Io {
            what: "clone",
            source: clone_error,
        });
    }
    // CLONE_VFORK resumed this thread after the child's execve passed the point of no return
    // or after its _exit, so whatever it stored is there to read.
    let failure = plan.failure.load(Ordering::Acquire);
    drop(plan);
    if failure != NO_FAILURE {
        // The child failed before execve and has exited; reap it so no zombie is left.
        let mut status = 0;
        // SAFETY: pid is our child; status is a valid int.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let stage = u32::try_from(failure >> 32).unwrap_or(u32::MAX);
        let errno = i32::from_ne_bytes(
            u32::try_from(failure & 0xffff_ffff)
                .unwrap_or(0)
                .to_ne_bytes(),
        );
        let source = io::Error::from_raw_os_error(errno);
        if stage == STAGE_EXEC {
            return Err(RunError::Exec { program, source });
        }
        return Err(RunError::Setup {
            stage: STAGES.get(stage as usize).copied().unwrap_or("unknown"),
            source,
        });
    }

    Ok(Spawned {
        child: LinuxChild::new(pid, cgroup),
        pipes: ChildPipes {
            stdin: parent.stdin,
            stdout: parent.stdout,
            stderr: parent.stderr,
            nonblocking: true,
        },
    })
}

/// Reports a failed step to the parent and exits. Async-signal-safe.
///
/// # Safety
/// Only to be called in the cloned child.
unsafe fn fail(plan: &ChildPlan, stage: u32) -> ! {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    let errno = u32::from_ne_bytes(errno.to_ne_bytes());
    // An atomic store is a plain store of shared memory: async-signal-safe.
    plan.failure.store(
        (u64::from(stage) << 32) | u64::from(errno),
        Ordering::Release,
    );
    // SAFETY: _exit is async-signal-safe and ends the child.
    unsafe { libc::_exit(127) }
}

/// The entry point `clone` calls on the child stack; `arg` is the [`ChildPlan`].
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn` passes a pointer to its plan, which stays valid while this thread of
    // the child runs because the parent thread is suspended until execve or _exit.
    unsafe { child(&*arg.cast::<ChildPlan>()) }
}

/// The child between clone and exec. Only async-signal-safe system calls, no allocation.
///
/// # Safety
/// Only to be called in the cloned child, with a plan prepared by [`spawn`].
unsafe fn child(plan: &ChildPlan) -> ! {
    // SAFETY: every call below is a raw system call on descriptors and memory prepared
    // before the clone. The child reads the plan and writes only errno and, through `fail`,
    // the plan's atomic `failure`, which the suspended spawner thread reads once the child
    // has let it go; nothing allocates or takes a lock.
    unsafe {
        // Handlers of the server must never run here (they would touch its memory), and
        // ignored dispositions would survive execve (Rust ignores SIGPIPE): every signal goes
        // back to its default before the mask inherited from the parent, which blocks all,
        // is cleared. SIGKILL, SIGSTOP and the two signals glibc reserves refuse with EINVAL.
        for signal in 1..=64 {
            if libc::sigaction(signal, &plan.default_action, std::ptr::null_mut()) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                fail(plan, 0);
            }
        }
        if libc::sigprocmask(libc::SIG_SETMASK, &plan.empty_mask, std::ptr::null_mut()) != 0 {
            fail(plan, 0);
        }

        if plan.cgroup_procs >= 0
            && libc::syscall(libc::SYS_write, plan.cgroup_procs, b"0".as_ptr(), 1usize) != 1
        {
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
        // Any descriptor another thread opened without close-on-exec must not leak. Where
        // close_range cannot do it, every number up to the limit is marked one by one (EBADF:
        // nothing open there); where it should have, its failure fails the run.
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
            let Some(limit) = plan.fd_limit else {
                fail(plan, 4)
            };
            for fd in 3..limit {
                if libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFD, libc::FD_CLOEXEC) != 0
                    && *libc::__errno_location() != libc::EBADF
                {
                    fail(plan, 4);
                }
            }
        }
        for (resource, limit) in &plan.rlimits {
            if libc::setrlimit(*resource, limit) != 0 {
                fail(plan, 5);
            }
        }
        if let Some((uid, gid)) = plan.credentials {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
                fail(plan, 6);
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail(plan, 7);
            }
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail(plan, 8);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(plan, 9);
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
            fail(plan, 10);
        }
        if libc::getppid() != plan.parent_pid {
            libc::_exit(127);
        }
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(plan, 11);
        }
        if plan.landlock >= 0
            && libc::syscall(libc::SYS_landlock_restrict_self, plan.landlock, 0u32) != 0
        {
            fail(plan, 12);
        }
        if let Some(fprog) = &plan.lock_filter
            && libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                fprog as *const libc::sock_fprog,
            ) != 0
        {
            fail(plan, 13);
        }
        libc::execve(
            plan.program.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.env_ptrs.as_ptr(),
        );
        fail(plan, STAGE_EXEC)
    }
}

/// The stack a cloned child runs on until `execve`, one per spawning thread: the thread is
/// suspended while its child uses it (CLONE_VFORK), so one is never shared by two children.
/// The lowest page is a guard, so an overflow faults instead of writing into the heap.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

/// Enough for the child's few frames and the libc wrappers it calls.
const CHILD_STACK_BYTES: usize = 128 * 1024;

thread_local! {
    static CHILD_STACK: std::cell::OnceCell<ChildStack> = const { std::cell::OnceCell::new() };
}

impl ChildStack {
    fn new() -> io::Result<Self> {
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = CHILD_STACK_BYTES + page;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the first page lies inside the mapping just created.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The highest address: stacks grow down on every architecture Linux Cordon supports.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which clone uses as the initial stack
        // pointer and never dereferences.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `new` and no child uses it any more: a child
        // only runs while the owning thread is suspended in clone.
        unsafe { libc::munmap(self.base, self.len) };
    }
}
