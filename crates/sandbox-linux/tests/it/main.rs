//! Enforcement tests: real attacks in real child processes through the public API, with
//! their effects checked from outside.
#![cfg(target_os = "linux")]

mod filesystem;
mod inheritance;
mod limits;
mod manager;
mod network;
mod positive;
mod process;
mod syscalls;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use sandbox_core::{
    Ceiling, Policy, PolicySpec, RunError, RunOptions, RunOutcome, RunRequest, Sandbox, Technology,
};
use sandbox_linux::LinuxConfig;

/// The Landlock ABI of this kernel, asked directly rather than through the library.
pub fn kernel_landlock_abi() -> u32 {
    // SAFETY: the version query reads and writes no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    u32::try_from(abi).unwrap_or(0)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The backend `auto` would pick on this host.
pub fn backend(technology: Technology) -> Arc<dyn Sandbox> {
    sandbox_linux::candidates(&LinuxConfig::default())
        .into_iter()
        .find(|c| c.technology() == technology)
        .expect("every technology has a linux backend")
}

pub fn strongest() -> Arc<dyn Sandbox> {
    let technology = if kernel_landlock_abi() > 0 {
        Technology::Landlock
    } else {
        Technology::Seccomp
    };
    backend(technology)
}

pub fn policy(spec: PolicySpec) -> Policy {
    Policy::new(&spec).expect("valid policy")
}

/// The ceiling for runs that call a backend directly: the tests that exercise a ceiling go
/// through a [`sandbox_core::Manager`].
pub fn unrestricted() -> Arc<Ceiling> {
    Arc::new(Ceiling::unrestricted())
}

/// Runs `request` and returns what the run itself returned, success or error.
pub fn try_run_on(sandbox: &Arc<dyn Sandbox>, request: RunRequest) -> Result<RunOutcome, RunError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(sandbox.run(request, RunOptions::default(), &unrestricted()))
}

pub fn run_on(sandbox: &Arc<dyn Sandbox>, request: RunRequest) -> RunOutcome {
    try_run_on(sandbox, request).expect("run succeeds")
}

/// Runs `argv` with the strongest backend.
pub fn run(policy: Policy, argv: &[&str]) -> RunOutcome {
    let request =
        RunRequest::new(argv.iter().map(|s| s.to_string()).collect(), policy).expect("request");
    run_on(&strongest(), request)
}

/// Runs a python3 program with the strongest backend.
pub fn python(policy: Policy, code: &str) -> RunOutcome {
    python_on(&strongest(), policy, code)
}

/// Runs a python3 program with `sandbox`.
pub fn python_on(sandbox: &Arc<dyn Sandbox>, policy: Policy, code: &str) -> RunOutcome {
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "python3 is required: apt-get install -y python3"
    );
    let argv = vec!["python3".to_owned(), "-c".to_owned(), code.to_owned()];
    run_on(sandbox, RunRequest::new(argv, policy).expect("request"))
}

/// A directory outside every grant that the run uid could otherwise use (mode 0777 so that
/// only the sandbox, not file permissions, stands in the way).
pub fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

pub fn stdout(outcome: &RunOutcome) -> String {
    String::from_utf8_lossy(&outcome.stdout.bytes).into_owned()
}

pub fn stderr(outcome: &RunOutcome) -> String {
    String::from_utf8_lossy(&outcome.stderr.bytes).into_owned()
}

/// Whether the file system layer is kernel-enforced here; when it is not, asserts the report
/// says so honestly.
pub fn fs_enforced(outcome: &RunOutcome) -> bool {
    if kernel_landlock_abi() > 0 {
        assert!(outcome.enforcement.filesystem, "{:?}", outcome.enforcement);
        true
    } else {
        assert!(!outcome.enforcement.filesystem);
        assert!(
            outcome
                .enforcement
                .missing
                .contains(&"filesystem".to_owned())
        );
        false
    }
}

/// Python prelude: `attempt(f)` prints `ALLOWED` or `DENIED <ERRNO>`; `sys_call(nr, *args)`
/// prints the raw syscall's result and errno name.
pub const PRELUDE: &str = r#"
import ctypes, errno, os, sys
def attempt(f):
    try:
        f()
        print("ALLOWED", flush=True)
    except OSError as e:
        print("DENIED", errno.errorcode.get(e.errno, e.errno), flush=True)
_libc = ctypes.CDLL(None, use_errno=True)
def sys_call(nr, *args):
    r = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    e = ctypes.get_errno()
    print("DENIED" if r == -1 else "ALLOWED", errno.errorcode.get(e, e) if r == -1 else r, flush=True)
"#;

/// Runs `code` after [`PRELUDE`].
pub fn attack(policy: Policy, code: &str) -> RunOutcome {
    attack_on(&strongest(), policy, code)
}

/// Runs `code` after [`PRELUDE`] with `sandbox`.
pub fn attack_on(sandbox: &Arc<dyn Sandbox>, policy: Policy, code: &str) -> RunOutcome {
    python_on(sandbox, policy, &format!("{PRELUDE}\n{code}"))
}

/// Every process's pid and `/proc/<pid>` directory.
fn processes() -> impl Iterator<Item = (u32, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path()))
        })
}

/// Pids of live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for (pid, dir) in processes() {
        if let Ok(cmdline) = std::fs::read(dir.join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(pid);
        }
    }
    found
}

/// Pids of live processes whose command line is exactly `sleep <marker>`: the `sleep` a run
/// started, told apart from a shell or python3 process whose program text names the marker.
pub fn sleeps_with(marker: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{marker}\0");
    let mut found = Vec::new();
    for (pid, dir) in processes() {
        if let Ok(cmdline) = std::fs::read(dir.join("cmdline"))
            && cmdline == wanted.as_bytes()
        {
            found.push(pid);
        }
    }
    found
}

/// Waits, up to `within`, until `ready` returns true, and fails naming `what` if it never
/// does. A test that needs a run to have reached some point polls for it this way instead
/// of sleeping a fixed time, which a slow or loaded machine can overrun.
pub fn wait_for(what: &str, within: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Asserts that no process whose command line contains `marker` is left, waiting up to 5 s
/// for the last ones to go. As root a run's cgroup is emptied before the run returns, but
/// without one (not root) the run only sends SIGKILL to its process group, and a killed
/// process is still listed until the kernel has torn it down. A process that escaped the
/// kill (the processes these tests look for sleep 30 s and more) is still there after 5 s.
pub fn assert_gone(marker: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a process outlived its run: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A unique marker for one test's processes.
pub fn marker(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}.{}{}",
        std::process::id() % 1000 + 1000,
        N.fetch_add(1, Ordering::Relaxed),
        name.len()
    )
}

/// Children of this process named `comm` that have exited and that nobody has reaped. A
/// zombie has no command line, so a test that must find one gives its program a name of its
/// own (the kernel takes `comm` from the path given to execve, so a symlink does it). Orphaned
/// grandchildren are not counted: they go to init (or a subreaper), whose task reaping is.
pub fn zombies_named(comm: &str) -> Vec<u32> {
    let parent = std::process::id().to_string();
    let mut found = Vec::new();
    for (pid, dir) in processes() {
        // The format is `pid (comm) state ...`; comm may itself contain spaces or ')'.
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some((open, close)) = stat.find('(').zip(stat.rfind(')')) else {
            continue;
        };
        let mut fields = stat.get(close + 1..).unwrap_or("").split_whitespace();
        if stat.get(open + 1..close) == Some(comm)
            && fields.next() == Some("Z")
            && fields.next() == Some(parent.as_str())
        {
            found.push(pid);
        }
    }
    found
}

/// Set in the copy of this test binary that [`rerun`] starts.
const HELPER: &str = "CORDON_IT_HELPER";

/// Whether this process is a copy of the test binary started by [`rerun`]: a test that needs
/// a process of its own (other credentials, a seccomp filter, an exhausted descriptor table)
/// plays its inside part there.
pub fn in_helper() -> bool {
    std::env::var_os(HELPER).is_some()
}

/// Runs the test `name` (`module::function`) alone in a new copy of this test binary, where
/// [`in_helper`] is true, with `env` added and `prepare` applied between fork and exec, and
/// asserts that it passed. `prepare` runs in the forked child of a process with many threads,
/// so it may only make raw system calls.
pub fn rerun(
    name: &str,
    env: &[(&str, &str)],
    prepare: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(HELPER, "1")
        .envs(env.iter().copied());
    // SAFETY: the callers' closures make only raw system calls, which are async-signal-safe.
    unsafe { command.pre_exec(prepare) };
    let output = command.output().expect("starting the helper");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("test result: ok. 1 passed"),
        "the helper {name} failed: {text}"
    );
}

/// Makes the calling process uid and gid `id` with no supplementary groups, with raw system
/// calls only, for a [`rerun`] `prepare` closure of a root test.
pub fn become_id(id: libc::c_long) -> std::io::Result<()> {
    // SAFETY: raw system calls that read no memory but a null pointer.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            0usize,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, id, id, id))?;
        check(libc::syscall(libc::SYS_setresuid, id, id, id))
    }
}

/// A python3 program that forks up to `attempts` children, each sleeping `seconds`, and
/// prints how many forks succeeded.
pub fn fork_counter(attempts: u32, seconds: &str) -> String {
    format!(
        "import os, time\nn = 0\n\
         for _ in range({attempts}):\n\
         \x20   try:\n\
         \x20       if os.fork() == 0:\n\
         \x20           time.sleep({seconds})\n\
         \x20           os._exit(0)\n\
         \x20       n += 1\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         print(n, flush=True)"
    )
}

/// The last error of a raw system call in a [`rerun`] `prepare` closure.
pub fn check(result: libc::c_long) -> std::io::Result<()> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
