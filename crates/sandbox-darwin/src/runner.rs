//! The runner: spawns the command (under `sandbox-exec` for the Seatbelt backend) and hands
//! it to sandbox-core's shared supervisor.
//!
//! This code is Unix-portable on purpose: it runs on macOS in production and on Linux in the
//! tests, against a stand-in `sandbox-exec`. The spawn uses `std::process::Command` (process
//! group, cleared environment, work directory, pipes) with a `pre_exec` hook that only sets
//! rlimits, which is async-signal-safe. Unlike the Linux backend there is no privilege or
//! Landlock step whose order std would get wrong, so hand-rolling `fork` is not needed.
//!
//! A waiter thread per run blocks in `waitid(WNOWAIT)` until the main child exits, kills the
//! child's process group while the exited child still holds its pid (so the group id cannot
//! have been reused), then reaps the child with `wait4` to get its resource usage. Reaping
//! and killing by pid are serialized by one lock, so a pid is never signalled after it was
//! reaped.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sandbox_core::supervise::{
    ChildPipes, ExitInfo, ProcessControl, WorkDir, child_environment, resolve_program, supervise,
};
use sandbox_core::{
    Capabilities, Ceiling, Containment, EnforcementReport, LandlockStatus, Limits, RunError,
    RunFuture, RunOptions, RunOutcome, RunRequest, Sandbox, Technology,
};
use tokio::sync::oneshot;

use crate::DarwinConfig;
use crate::denials::DenialLog;
use crate::profile::{self, Profile};

/// The backend name reported for the Seatbelt backend (the proto's spelling).
pub const SEATBELT_BACKEND: &str = "sandbox-exec";

/// What one backend applies.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Seatbelt through the `sandbox-exec` at this path, plus rlimits; denials read from the
    /// `log` program at the given path when set.
    Seatbelt {
        sandbox_exec: PathBuf,
        log: Option<PathBuf>,
    },
    /// rlimits only.
    Soft,
    /// Supervision only.
    None,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    config: DarwinConfig,
}

/// A macOS sandbox backend.
#[derive(Debug, Clone)]
pub(crate) struct DarwinSandbox {
    inner: Arc<Inner>,
}

impl DarwinSandbox {
    pub(crate) fn new(mode: Mode, config: &DarwinConfig) -> Self {
        DarwinSandbox {
            inner: Arc::new(Inner {
                mode,
                config: config.clone(),
            }),
        }
    }
}

/// The `sandbox-exec` arguments (after its own name) that run `program` with `args` under
/// `profile`: `-p TEXT`, one `-D NAME=VALUE` per parameter, then the program and its
/// arguments. The profile goes inline with `-p` rather than through a file with `-f`, so
/// there is no file to clean up and nothing on disk a run could swap before it is read.
/// `program` is absolute, so it can never be taken for an option.
pub fn sandbox_exec_args(profile: &Profile, program: &Path, args: &[String]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(3 + 2 * profile.params.len() + args.len());
    out.push("-p".into());
    out.push(profile.text.clone().into());
    for (name, value) in &profile.params {
        out.push("-D".into());
        out.push(format!("{name}={value}").into());
    }
    out.push(program.as_os_str().to_owned());
    out.extend(args.iter().map(OsString::from));
    out
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

impl Inner {
    fn seatbelt(&self) -> bool {
        matches!(self.mode, Mode::Seatbelt { .. })
    }

    fn rlimits(&self) -> bool {
        !matches!(self.mode, Mode::None)
    }

    fn backend(&self) -> &'static str {
        match self.mode {
            Mode::Seatbelt { .. } => SEATBELT_BACKEND,
            Mode::Soft => "soft",
            Mode::None => "none",
        }
    }

    fn report(&self) -> EnforcementReport {
        let seatbelt = self.seatbelt();
        let uid = euid();
        let mut report = EnforcementReport {
            backend: self.backend(),
            platform: "macos",
            landlock_abi: 0,
            landlock_status: LandlockStatus::NotEnforced,
            filesystem: seatbelt,
            // Seatbelt's port rules cover localhost only and are unverified by this
            // project's tests, so they are not claimed as kernel port rules.
            network_ports: false,
            ipc_scoping: seatbelt,
            seccomp: false,
            no_new_privs: false,
            capabilities_dropped: uid != 0,
            rlimits: self.rlimits(),
            process_containment: Containment::None,
            uid,
            missing: Vec::new(),
            // No syscall filter exists on macOS, so the kernel-enforced bar (file system
            // and syscalls) is never met.
            kernel_enforced: false,
        };
        let mut missing = Vec::new();
        for (ok, name) in [
            (report.filesystem, "filesystem"),
            (report.network_ports, "network_ports"),
            (report.ipc_scoping, "ipc_scoping"),
            (report.seccomp, "seccomp"),
            (report.no_new_privs, "no_new_privs"),
            (report.rlimits, "rlimits"),
            (false, "process_containment"),
        ] {
            if !ok {
                missing.push(name.to_owned());
            }
        }
        report.missing = missing;
        report
    }

    fn capabilities(&self) -> Capabilities {
        let seatbelt = self.seatbelt();
        let mut layers = BTreeMap::new();
        let mut layer = |name: &str, text: &str| {
            layers.insert(name.to_owned(), text.to_owned());
        };
        layer(
            "filesystem",
            if seatbelt {
                "seatbelt (sandbox-exec): deny by default; read and write allow-lists, exec only \
                 of readable paths"
            } else {
                "not enforced: paths are validated but the kernel does not restrict access"
            },
        );
        layer(
            "network",
            if seatbelt {
                "seatbelt: mode none denies every socket operation; mode tcp allows outbound to \
                 and binding of the policy's ports on localhost only; not reported as kernel port \
                 rules"
            } else {
                "not enforced"
            },
        );
        layer(
            "ipc_scoping",
            if seatbelt {
                "seatbelt: signals and process information within the sandbox; listed mach \
                 services only"
            } else {
                "not enforced"
            },
        );
        layer("seccomp", "not available on macOS: no syscall filtering");
        layer(
            "privileges",
            "no_new_privs does not exist on macOS; the child keeps the server's uid",
        );
        layer(
            "limits",
            if self.rlimits() {
                "hard rlimits: CPU time, file size, open files, core 0; address space is not \
                 enforced by macOS"
            } else {
                "not enforced (wall-clock timeout and output caps only)"
            },
        );
        layer(
            "process_containment",
            "process group killed; process count not bounded (RLIMIT_NPROC on macOS counts \
             every process of the uid)",
        );
        layer(
            "violations",
            match &self.mode {
                Mode::Seatbelt { log: Some(_), .. } => {
                    "seatbelt denials of the main process read from `log stream`"
                }
                _ => "not collected",
            },
        );
        Capabilities {
            platform: "macos",
            backend: self.backend(),
            landlock_abi: 0,
            seccomp: false,
            layers,
            kernel_enforced: false,
            process_containment: Containment::None,
        }
    }

    async fn run(
        self: Arc<Self>,
        request: RunRequest,
        options: RunOptions,
    ) -> Result<RunOutcome, RunError> {
        let policy = request.policy();
        let limits = *policy.limits();
        let work = match request.cwd() {
            Some(cwd) => WorkDir::existing(cwd),
            None => {
                WorkDir::create(&self.config.work_root, None).map_err(|source| RunError::Io {
                    what: "creating the run directory",
                    source,
                })?
            }
        };
        let program = resolve_program(&request.argv()[0], work.path())?;
        let env = child_environment(request.env(), work.path());

        let (mut command, executable, denials) = match &self.mode {
            Mode::Seatbelt { sandbox_exec, log } => {
                let resolve = |p: &Path| {
                    std::fs::canonicalize(p).map_err(|source| RunError::PathUnavailable {
                        path: p.to_owned(),
                        source,
                    })
                };
                let read = policy
                    .read_paths()
                    .iter()
                    .map(|p| resolve(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let write = policy
                    .write_paths()
                    .iter()
                    .map(|p| resolve(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let work_dir = resolve(work.path())?;
                let profile = profile::render_run_profile(policy, &work_dir, &read, &write);
                let mut command = Command::new(sandbox_exec);
                command.args(sandbox_exec_args(&profile, &program, &request.argv()[1..]));
                // The log stream starts before the child so that early denials are seen.
                let denials = log.as_deref().map(DenialLog::start).transpose()?;
                (command, sandbox_exec.clone(), denials)
            }
            Mode::Soft | Mode::None => {
                let mut command = Command::new(&program);
                command.arg0(&request.argv()[0]).args(&request.argv()[1..]);
                (command, program.clone(), None)
            }
        };
        command
            .env_clear()
            .envs(env)
            .current_dir(work.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if self.rlimits() {
            // SAFETY: the hook only calls setrlimit with values copied into the closure; it
            // neither allocates nor takes a lock, so it is async-signal-safe after fork.
            unsafe {
                command.pre_exec(move || set_rlimits(&limits));
            }
        }

        let started = Instant::now();
        let mut child = command.spawn().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => RunError::Exec {
                program: executable.clone(),
                source,
            },
            _ => RunError::Io {
                what: "spawning the child",
                source,
            },
        })?;
        let pid = libc::pid_t::try_from(child.id()).map_err(|e| RunError::Io {
            what: "spawning the child",
            source: io::Error::other(e),
        })?;
        let pipes = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (Some(stdin), Some(stdout), Some(stderr)) => ChildPipes {
                stdin: Some(OwnedFd::from(stdin)),
                stdout: OwnedFd::from(stdout),
                stderr: OwnedFd::from(stderr),
                nonblocking: false,
            },
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Io {
                    what: "spawning the child",
                    source: io::Error::other("a standard stream of the child is not a pipe"),
                });
            }
        };
        // std's handle neither kills nor waits on drop; the control below owns the child.
        drop(child);
        let control = UnixChild::start(pid)?;
        let supervised = supervise(
            &control,
            pipes,
            request.stdin().to_vec(),
            &limits,
            options.output,
            started,
        )
        .await?;

        let mut violations = supervised.limit_violations();
        if let Some(denials) = denials {
            violations.extend(denials.finish(pid).await);
        }
        drop(control);
        drop(work);
        Ok(supervised.into_outcome(self.report(), violations))
    }
}

/// The rlimit resource type differs between the C libraries.
#[cfg(target_os = "linux")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_os = "linux"))]
type Resource = libc::c_int;

fn set_rlimit(resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: limit is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the run's hard rlimits in the child. Async-signal-safe: raw calls only.
fn set_rlimits(l: &Limits) -> io::Result<()> {
    // CPU: SIGXCPU at the limit, SIGKILL one second later.
    let cpu_s = l.cpu_time_ms.div_ceil(1000);
    set_rlimit(libc::RLIMIT_CPU, cpu_s, cpu_s + 1)?;
    set_rlimit(
        libc::RLIMIT_FSIZE,
        l.max_file_size_bytes,
        l.max_file_size_bytes,
    )?;
    set_rlimit(libc::RLIMIT_NOFILE, l.max_open_files, l.max_open_files)?;
    set_rlimit(libc::RLIMIT_CORE, 0, 0)?;
    // macOS accepts RLIMIT_AS but does not enforce it, so it is only set where it works.
    #[cfg(target_os = "linux")]
    set_rlimit(libc::RLIMIT_AS, l.memory_bytes, l.memory_bytes)?;
    Ok(())
}

/// The parent's handle on a running child.
#[derive(Debug)]
struct UnixChild {
    pid: libc::pid_t,
    exit: Mutex<Option<oneshot::Receiver<io::Result<ExitInfo>>>>,
    /// True once the child is reaped; held while reaping and while killing by pid.
    reaped: Arc<Mutex<bool>>,
}

impl UnixChild {
    fn start(pid: libc::pid_t) -> Result<Self, RunError> {
        let (tx, rx) = oneshot::channel();
        let reaped = Arc::new(Mutex::new(false));
        let waiter_reaped = Arc::clone(&reaped);
        let spawned = std::thread::Builder::new()
            .name("cordon-darwin-wait".into())
            .spawn(move || {
                let _ = tx.send(wait_and_reap(pid, &waiter_reaped));
            });
        if let Err(source) = spawned {
            // SAFETY: pid is our unreaped child; killing and reaping it leaves nothing.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(RunError::Io {
                what: "starting the waiter thread",
                source,
            });
        }
        Ok(UnixChild {
            pid,
            exit: Mutex::new(Some(rx)),
            reaped,
        })
    }
}

/// Waits for `pid` to exit, kills its process group while the exited child still holds the
/// group id, then reaps it.
fn wait_and_reap(pid: libc::pid_t, reaped: &Mutex<bool>) -> io::Result<ExitInfo> {
    loop {
        // SAFETY: siginfo_t is plain data that waitid fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our unreaped child; info is a valid pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    let mut reaped = reaped.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: kill has no memory effects; the exited, unreaped child keeps its pid, which is
    // the process group id, from being reused.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our exited, unreaped child; status and usage are valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    *reaped = true;
    drop(reaped);
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    // ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    let rss_unit = if cfg!(target_os = "linux") { 1024 } else { 1 };
    Ok(ExitInfo {
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        user_cpu_us: micros(usage.ru_utime),
        sys_cpu_us: micros(usage.ru_stime),
        max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * rss_unit,
    })
}

impl ProcessControl for UnixChild {
    fn wait_exit(&self) -> Pin<Box<dyn Future<Output = io::Result<ExitInfo>> + Send + '_>> {
        let rx = self
            .exit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Box::pin(async move {
            match rx {
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err(io::Error::other("the waiter thread ended"))),
                None => Err(io::Error::other("the child was already waited for")),
            }
        })
    }

    fn kill_tree(&self) {
        let reaped = self.reaped.lock().unwrap_or_else(PoisonError::into_inner);
        if !*reaped {
            // SAFETY: kill has no memory effects; the child is not reaped (we hold the lock
            // the waiter takes to reap it), so neither its pid nor its group id is reused.
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }

    fn violations(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Drop for UnixChild {
    fn drop(&mut self) {
        // A cancelled run: kill everything; the waiter thread reaps the child.
        self.kill_tree();
    }
}

impl Sandbox for DarwinSandbox {
    fn technology(&self) -> Technology {
        match self.inner.mode {
            // The kernel tier of the configuration (`auto` and `landlock`) is served by
            // Seatbelt on macOS; the report names the backend `sandbox-exec`.
            Mode::Seatbelt { .. } => Technology::Landlock,
            Mode::Soft => Technology::Soft,
            Mode::None => Technology::None,
        }
    }

    fn is_available(&self) -> bool {
        match &self.inner.mode {
            Mode::Seatbelt { sandbox_exec, .. } => std::fs::metadata(sandbox_exec)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0),
            Mode::Soft | Mode::None => true,
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn system_read_paths(&self) -> Vec<PathBuf> {
        profile::SYSTEM_READ_SUBPATHS
            .iter()
            .chain(profile::SYSTEM_READ_LITERALS)
            .chain(profile::DEVICES_READ_WRITE)
            .chain(profile::DEVICES_READ)
            .map(PathBuf::from)
            .collect()
    }

    /// The ceiling is not checked again here: SBPL rules name paths, and the kernel matches
    /// them against the resolved path of each access, so a symlink swapped in after the
    /// manager's check cannot widen what a rule grants.
    fn run(&self, request: RunRequest, options: RunOptions, _ceiling: &Arc<Ceiling>) -> RunFuture {
        Box::pin(Arc::clone(&self.inner).run(request, options))
    }
}
