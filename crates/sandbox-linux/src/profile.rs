//! Policy as data: the one reviewed place for the Linux sandbox's fixed rules.
//!
//! Everything here is plain data, compiled and tested on every host, and printed by
//! [`render_linux_profile`] (`cordon profile --platform linux [--policy FILE]`). The Linux
//! backend turns it into a Landlock ruleset and seccomp filters; nothing else in the crate
//! names a system path or a syscall to deny.

use std::fmt::Write;

use sandbox_core::{NetworkPolicy, Policy};

/// Paths granted read and execute access when a policy has `system_paths` on: what
/// `/bin/sh` and `python3` need to start, and nothing of users' or the server's data.
/// Paths missing on a host are skipped.
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
    "/usr/share/zoneinfo",
    "/dev/urandom",
    "/dev/random",
];

/// Device files granted read and write access with the system set (`2>/dev/null` works).
pub const SYSTEM_WRITE_PATHS: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

/// A syscall on the seccomp deny list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedSyscall {
    /// The syscall's name.
    pub name: &'static str,
    /// Why it is denied.
    pub why: &'static str,
}

const fn deny(name: &'static str, why: &'static str) -> DeniedSyscall {
    DeniedSyscall { name, why }
}

/// Syscalls that fail with `EPERM` whatever their arguments.
pub const DENIED_SYSCALLS: &[DeniedSyscall] = &[
    deny("ptrace", "inspect or control other processes"),
    deny("process_vm_readv", "read another process's memory"),
    deny("process_vm_writev", "write another process's memory"),
    deny("pidfd_getfd", "take another process's file descriptors"),
    deny("process_madvise", "advise on another process's memory"),
    deny("kcmp", "compare another process's descriptors and memory"),
    deny("mount", "change the mount table"),
    deny("umount2", "change the mount table"),
    deny("pivot_root", "change the root file system"),
    deny("chroot", "change the root directory"),
    deny("fsopen", "new mount API"),
    deny("fsconfig", "new mount API"),
    deny("fsmount", "new mount API"),
    deny("fspick", "new mount API"),
    deny("move_mount", "new mount API"),
    deny("open_tree", "new mount API"),
    deny("mount_setattr", "new mount API"),
    deny("unshare", "create namespaces"),
    deny("setns", "enter namespaces"),
    deny("bpf", "load eBPF programs"),
    deny(
        "perf_event_open",
        "kernel profiling, a frequent exploit vector",
    ),
    deny("userfaultfd", "race-widening primitive for kernel exploits"),
    deny("keyctl", "kernel keyring"),
    deny("add_key", "kernel keyring"),
    deny("request_key", "kernel keyring"),
    deny("io_uring_setup", "io_uring bypasses syscall filtering"),
    deny("io_uring_enter", "io_uring bypasses syscall filtering"),
    deny("io_uring_register", "io_uring bypasses syscall filtering"),
    deny("kexec_load", "replace the kernel"),
    deny("kexec_file_load", "replace the kernel"),
    deny("init_module", "load kernel modules"),
    deny("finit_module", "load kernel modules"),
    deny("delete_module", "unload kernel modules"),
    deny("reboot", "reboot the host"),
    deny("swapon", "change swap"),
    deny("swapoff", "change swap"),
    deny("acct", "process accounting"),
    deny("quotactl", "disk quotas"),
    deny("quotactl_fd", "disk quotas"),
    deny(
        "open_by_handle_at",
        "open files by handle, bypassing path checks",
    ),
    deny(
        "name_to_handle_at",
        "file handles, paired with open_by_handle_at",
    ),
];

/// Syscalls that fail with `ENOSYS`, so that libc falls back to an older syscall the filter
/// can inspect (`clone3` passes its flags in memory, out of seccomp's reach).
pub const ENOSYS_SYSCALLS: &[&str] = &["clone3"];

/// `clone` flags that create namespaces; `clone` with any of them fails with `EPERM`.
pub const DENIED_CLONE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWNS", 0x0002_0000),
    ("CLONE_NEWCGROUP", 0x0200_0000),
    ("CLONE_NEWUTS", 0x0400_0000),
    ("CLONE_NEWIPC", 0x0800_0000),
    ("CLONE_NEWUSER", 0x1000_0000),
    ("CLONE_NEWPID", 0x2000_0000),
    ("CLONE_NEWNET", 0x4000_0000),
];

/// `ioctl` requests that fail with `EPERM` (the low 32 bits of the request are compared).
pub const DENIED_IOCTLS: &[(&str, u64, &str)] = &[
    ("TIOCSTI", 0x5412, "inject input into a terminal"),
    ("TIOCLINUX", 0x541C, "console selection can inject input"),
];

/// `personality` values allowed: query (0xffffffff) and the default `PER_LINUX` (0); any
/// other persona fails with `EPERM` (for example disabling address space randomization).
pub const ALLOWED_PERSONALITIES: &[u64] = &[0, 0xffff_ffff];

/// Socket families denied when the network mode is `none` (every family except `AF_UNIX`
/// is denied in fact; these are the ones that reach beyond the host's processes).
pub const NETWORK_FAMILIES: &[(&str, u64)] = &[
    ("AF_INET", 2),
    ("AF_INET6", 10),
    ("AF_NETLINK", 16),
    ("AF_PACKET", 17),
    ("AF_VSOCK", 40),
];

/// `AF_UNIX`, allowed only when the policy sets `allow_unix_sockets`.
pub const AF_UNIX: u64 = 1;

/// With network mode `tcp`, `AF_INET` and `AF_INET6` sockets must be `SOCK_STREAM` with
/// protocol 0 or `IPPROTO_TCP`, so Landlock's TCP port rules cover all their traffic.
pub const TCP_SOCKET_TYPES_DENIED: &[(&str, u64)] = &[
    ("SOCK_DGRAM", 2),
    ("SOCK_RAW", 3),
    ("SOCK_RDM", 4),
    ("SOCK_SEQPACKET", 5),
    ("SOCK_DCCP", 6),
    ("SOCK_PACKET", 10),
];

/// `MSG_FASTOPEN`: with network mode `tcp`, a send with this flag fails with `EPERM`. It
/// connects an unconnected TCP socket without going through `connect`, so Landlock's connect
/// port rules never see it (landlock-lsm/linux issue 41); on a connected socket the kernel
/// refuses it anyway. `TCP_FASTOPEN_CONNECT` needs no rule: its address comes from `connect`.
pub const MSG_FASTOPEN: u64 = 0x2000_0000;

/// The syscalls that take `MSG_FASTOPEN`, with the index of their flags argument.
pub const FAST_OPEN_SYSCALLS: &[(&str, u8)] = &[("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)];

/// Syscalls that fail with `EPERM` in network mode `tcp` when the policy allows no bind port:
/// `listen` on an unbound socket takes an ephemeral port without a `bind` that Landlock could
/// check. Seccomp cannot tell a socket's family from its descriptor, so `listen` on unix
/// sockets fails too in that mode. With bind ports allowed, `listen` has to stay, and an
/// unbound socket can still listen on an ephemeral port: no kernel interface stops that.
pub const TCP_SYSCALLS_WITHOUT_BIND_PORTS: &[&str] = &["listen"];

/// Syscalls denied when no cgroup contains the run: without them a process cannot leave the
/// run's process group, so killing the group kills the whole tree.
pub const PROCESS_GROUP_SYSCALLS: &[&str] = &["setsid", "setpgid"];

/// Renders the Linux profile of `policy` for humans: the Landlock rules, the seccomp rules
/// and the limits, exactly as the backend would apply them on a host with every feature.
pub fn render_linux_profile(policy: &Policy) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail, so the results of writeln! are ignored below.
    let _ = writeln!(out, "# Cordon Linux sandbox profile");
    let _ = writeln!(out, "\n## Landlock (deny by default)");
    let _ = writeln!(
        out,
        "handled: all file system rights of the kernel's ABI, TCP bind and connect (ABI 4+), \
         scoping of abstract unix sockets and signals (ABI 6+)"
    );
    let _ = writeln!(out, "read+execute:");
    if policy.system_paths() {
        for p in SYSTEM_READ_PATHS {
            let _ = writeln!(out, "  {p}    (system)");
        }
    }
    for p in policy.read_paths() {
        let _ = writeln!(out, "  {}", p.display());
    }
    let _ = writeln!(out, "read+write:");
    let _ = writeln!(out, "  <per-run work directory>    (HOME, TMPDIR)");
    if policy.system_paths() {
        for p in SYSTEM_WRITE_PATHS {
            let _ = writeln!(out, "  {p}    (system)");
        }
    }
    for p in policy.write_paths() {
        let _ = writeln!(out, "  {}", p.display());
    }
    match policy.network() {
        NetworkPolicy::None => {
            let _ = writeln!(out, "tcp: no port may be bound or connected");
        }
        NetworkPolicy::Tcp {
            connect_ports,
            bind_ports,
        } => {
            let _ = writeln!(out, "tcp connect ports: {connect_ports:?}");
            let _ = writeln!(out, "tcp bind ports: {bind_ports:?}");
            if !bind_ports.is_empty() {
                let _ = writeln!(
                    out,
                    "  not enforced: listen() on an unbound socket takes an ephemeral port \
                     outside the bind ports"
                );
            }
        }
    }
    let _ = writeln!(out, "scoped: abstract unix sockets, signals");

    let _ = writeln!(
        out,
        "\n## seccomp (default allow; foreign architectures and x32 syscalls kill the process)"
    );
    for d in DENIED_SYSCALLS {
        let _ = writeln!(out, "  {:<20} EPERM   {}", d.name, d.why);
    }
    for name in ENOSYS_SYSCALLS {
        let _ = writeln!(out, "  {name:<20} ENOSYS  flags out of seccomp's reach");
    }
    for (name, flag) in DENIED_CLONE_FLAGS {
        let _ = writeln!(out, "  clone & {name} ({flag:#x}) EPERM");
    }
    for (name, value, why) in DENIED_IOCTLS {
        let _ = writeln!(out, "  ioctl {name} ({value:#x}) EPERM   {why}");
    }
    let _ = writeln!(
        out,
        "  personality(x) EPERM unless x in {ALLOWED_PERSONALITIES:x?}"
    );
    let mut families = Vec::new();
    if policy.allow_unix_sockets() {
        families.push("AF_UNIX");
    }
    if let NetworkPolicy::Tcp { bind_ports, .. } = policy.network() {
        families.extend(["AF_INET", "AF_INET6"]);
        let _ = writeln!(
            out,
            "  socket(AF_INET/AF_INET6) EPERM unless SOCK_STREAM with protocol 0 or IPPROTO_TCP"
        );
        for (name, arg) in FAST_OPEN_SYSCALLS {
            let _ = writeln!(
                out,
                "  {name} & MSG_FASTOPEN ({MSG_FASTOPEN:#x}, argument {arg}) EPERM   \
                 TCP Fast Open connects without Landlock's connect check"
            );
        }
        if bind_ports.is_empty() {
            for name in TCP_SYSCALLS_WITHOUT_BIND_PORTS {
                let _ = writeln!(
                    out,
                    "  {name:<20} EPERM   no bind port, and an unbound socket would listen \
                     on an ephemeral port (unix sockets are refused too)"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "  socket(family) EPERM unless family in {families:?} (denied among others: {:?})",
        NETWORK_FAMILIES.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    let _ = writeln!(
        out,
        "  {PROCESS_GROUP_SYSCALLS:?} EPERM when no cgroup contains the run"
    );

    let l = policy.limits();
    let _ = writeln!(out, "\n## Limits");
    let _ = writeln!(out, "  timeout_ms          {}", l.timeout_ms);
    let _ = writeln!(
        out,
        "  cpu_time_ms         {} (RLIMIT_CPU, rounded up to whole seconds)",
        l.cpu_time_ms
    );
    let _ = writeln!(out, "  memory_bytes        {} (RLIMIT_AS)", l.memory_bytes);
    let _ = writeln!(
        out,
        "  max_output_bytes    {} per stream",
        l.max_output_bytes
    );
    let _ = writeln!(
        out,
        "  max_processes       {} (pids cgroup, else RLIMIT_NPROC)",
        l.max_processes
    );
    let _ = writeln!(
        out,
        "  max_file_size_bytes {} (RLIMIT_FSIZE)",
        l.max_file_size_bytes
    );
    let _ = writeln!(
        out,
        "  max_open_files      {} (RLIMIT_NOFILE)",
        l.max_open_files
    );
    let _ = writeln!(out, "  core dumps          0 (RLIMIT_CORE)");
    let _ = writeln!(
        out,
        "\n## Process\n  no_new_privs; all capabilities dropped; as root the child runs as the \
         configured unprivileged uid/gid; PR_SET_PDEATHSIG=SIGKILL; environment cleared except \
         PATH, LANG, TERM, HOME, TMPDIR and the request's variables"
    );
    out
}
