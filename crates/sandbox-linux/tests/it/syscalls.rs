//! The seccomp deny list, exercised by real syscalls.

use sandbox_core::{PolicySpec, Technology};

use crate::*;

fn denied(code: &str, expected: &str) {
    denied_with(PolicySpec::default(), code, expected);
}

fn denied_with(spec: PolicySpec, code: &str, expected: &str) {
    let out = attack(policy(spec), code);
    assert!(out.enforcement.seccomp);
    assert_eq!(stdout(&out), expected, "{code}\nstderr: {}", stderr(&out));
}

#[test]
fn namespace_and_mount_syscalls_are_denied() {
    denied(
        &format!(
            "sys_call({unshare}, 0x10000000)\nsys_call({mount}, 0, 0, 0, 0, 0)\n\
             attempt(lambda: os.unshare(os.CLONE_NEWNS) if hasattr(os, 'unshare') else \
             (_ for _ in ()).throw(OSError(1, 'x')))",
            unshare = libc::SYS_unshare,
            mount = libc::SYS_mount,
        ),
        "DENIED EPERM\nDENIED EPERM\nDENIED EPERM\n",
    );
}

#[test]
fn kernel_attack_surface_syscalls_are_denied() {
    denied(
        &format!(
            "sys_call({}, 8, 0)\nsys_call({}, 0, 0, 0)\nsys_call({}, 0, 0, 0, 0, 0)\n\
             sys_call({}, 0, 0, 0, 0, 0)",
            libc::SYS_io_uring_setup,
            libc::SYS_bpf,
            libc::SYS_keyctl,
            libc::SYS_perf_event_open,
        ),
        "DENIED EPERM\nDENIED EPERM\nDENIED EPERM\nDENIED EPERM\n",
    );
}

#[test]
fn clone3_reports_enosys_and_fork_still_works() {
    denied(
        &format!(
            "sys_call({}, 0, 0)\npid = os.fork()\nif pid == 0: os._exit(3)\n\
             print(os.waitpid(pid, 0)[1] >> 8)",
            libc::SYS_clone3
        ),
        "DENIED ENOSYS\n3\n",
    );
}

#[test]
fn tiocsti_on_a_pty_is_denied() {
    // The pty is granted explicitly, so only seccomp stands in the way.
    let spec = PolicySpec {
        write_paths: vec!["/dev/ptmx".into(), "/dev/pts".into()],
        ..PolicySpec::default()
    };
    denied_with(
        spec,
        "import pty, fcntl, termios\nm, s = pty.openpty()\n\
         attempt(lambda: fcntl.ioctl(s, termios.TIOCSTI, b'x'))",
        "DENIED EPERM\n",
    );
}

#[test]
fn personality_changes_are_denied() {
    denied(
        &format!(
            "sys_call({p}, 0x0040000)\nsys_call({p}, 0xffffffff)",
            p = libc::SYS_personality
        ),
        "DENIED EPERM\nALLOWED 0\n",
    );
}

#[test]
fn raising_a_hard_rlimit_is_denied() {
    denied(
        "import resource\nsoft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
         try:\n    resource.setrlimit(resource.RLIMIT_NOFILE, (hard + 1, hard + 1))\n    print('ALLOWED')\n\
         except (ValueError, OSError):\n    print('DENIED')",
        "DENIED\n",
    );
}

#[test]
fn an_x32_syscall_kills_the_process() {
    let out = attack(
        policy(PolicySpec::default()),
        &format!(
            "sys_call({})\nprint('survived')",
            0x4000_0000 | libc::SYS_getpid
        ),
    );
    assert_eq!(out.signal, Some(libc::SIGSYS), "{}", stdout(&out));
    assert!(out.violations.contains(&"seccomp_kill".to_owned()));
    assert!(!stdout(&out).contains("survived"));
}

/// Reaches into another process of the run: takes its stdout with `pidfd_getfd`, compares
/// descriptors with `kcmp`, and advises memory through a pidfd with `process_madvise`.
fn process_access_code() -> String {
    format!(
        r#"import mmap, signal, time
pid = os.fork()
if pid == 0:
    time.sleep(30)
    os._exit(0)
child = os.pidfd_open(pid)
sys_call({pidfd_getfd}, child, 1, 0)
sys_call({kcmp}, os.getpid(), pid, 0, 1, 1)
class iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
page = mmap.mmap(-1, mmap.PAGESIZE)
iov = iovec(ctypes.addressof(ctypes.c_char.from_buffer(page)), mmap.PAGESIZE)
sys_call({process_madvise}, os.pidfd_open(os.getpid()), ctypes.addressof(iov), 1, 20, 0)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
"#,
        pidfd_getfd = libc::SYS_pidfd_getfd,
        kcmp = libc::SYS_kcmp,
        process_madvise = libc::SYS_process_madvise,
    )
}

#[test]
fn process_access_syscalls_are_denied() {
    // Denied under the seccomp-only backend too, where no Landlock domain limits whom the run
    // may inspect.
    for sandbox in [strongest(), backend(Technology::Seccomp)] {
        let technology = sandbox.technology();
        let out = attack_on(
            &sandbox,
            policy(PolicySpec::default()),
            &process_access_code(),
        );
        assert!(out.enforcement.seccomp);
        assert_eq!(
            stdout(&out),
            "DENIED EPERM\nDENIED EPERM\nDENIED EPERM\n",
            "{technology:?}: {}",
            stderr(&out)
        );
    }
    // Positive control: unfiltered, each call works on the run's own processes.
    let out = attack_on(
        &backend(Technology::None),
        policy(PolicySpec::default()),
        &process_access_code(),
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}{}", stderr(&out));
    assert!(lines[0].starts_with("ALLOWED "), "{text}");
    assert_eq!(lines[1], "ALLOWED 0", "{text}");
    assert_eq!(lines[2], "ALLOWED 4096", "{text}");
}
