//! What the child must not inherit from the server: capabilities and open descriptors.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use sandbox_core::{PolicySpec, RunRequest, Technology};

use crate::*;

/// CAP_NET_BIND_SERVICE, what systemd's `AmbientCapabilities=` typically grants a service
/// that runs under `User=`.
const CAP_NET_BIND_SERVICE: caps::Capability = caps::Capability::CAP_NET_BIND_SERVICE;

/// The `Cap*:` lines of a `/proc/<pid>/status`, as numbers.
fn capability_sets(status: &str) -> Vec<(String, u64)> {
    status
        .lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("Cap")?.split_once(':')?;
            Some((name.to_owned(), u64::from_str_radix(value.trim(), 16).ok()?))
        })
        .collect()
}

fn own_capability_set(name: &str) -> u64 {
    capability_sets(&std::fs::read_to_string("/proc/self/status").unwrap())
        .into_iter()
        .find_map(|(n, v)| (n == name).then_some(v))
        .unwrap_or_else(|| panic!("Cap{name} in /proc/self/status"))
}

/// Runs `cat /proc/self/status` with the strongest backend and with `none`, and checks that
/// the child holds no capability in any set, and that the report says whether it could
/// still gain one at execve (file capabilities): as root the bounding set is empty, with
/// `no_new_privs` execve grants nothing, otherwise the server's bounding set decides.
fn child_holds_no_capability() {
    let spec = PolicySpec {
        read_paths: vec!["/proc".into()],
        ..PolicySpec::default()
    };
    let no_bounding_set = own_capability_set("Bnd") == 0;
    for sandbox in [strongest(), backend(Technology::None)] {
        let request = RunRequest::new(
            vec!["cat".into(), "/proc/self/status".into()],
            policy(spec.clone()),
        )
        .unwrap();
        let out = run_on(&sandbox, request);
        let e = &out.enforcement;
        let sets = capability_sets(&stdout(&out));
        assert_eq!(sets.len(), 5, "{}{}", stdout(&out), stderr(&out));
        for (name, value) in sets {
            if name != "Bnd" {
                assert_eq!(value, 0, "Cap{name} of the {} child", e.backend);
            }
        }
        let dropped = is_root() || e.no_new_privs || no_bounding_set;
        assert_eq!(e.capabilities_dropped, dropped, "{e:?}");
        assert_eq!(
            e.missing.contains(&"capabilities_dropped".to_owned()),
            !dropped,
            "{e:?}"
        );
    }
}

/// Capabilities of a server that is not root (systemd's `AmbientCapabilities=` with `User=`)
/// survive execve in the ambient set, even with `no_new_privs`, unless the sandbox drops them.
#[test]
fn capabilities_of_the_server_do_not_reach_the_child() {
    if in_helper() {
        // The part of a server that is not root and holds CAP_NET_BIND_SERVICE ambient.
        assert_ne!(
            own_capability_set("Amb") & CAP_NET_BIND_SERVICE.bitmask(),
            0
        );
        assert!(!is_root());
        child_holds_no_capability();
        return;
    }
    child_holds_no_capability();
    if !is_root() {
        // Without root, no capability can be given to a helper: the check above is all.
        return;
    }
    let work = open_dir();
    let tmpdir = work.path().display().to_string();
    rerun(
        "inheritance::capabilities_of_the_server_do_not_reach_the_child",
        &[("TMPDIR", &tmpdir)],
        || {
            const ID: libc::c_long = 65533;
            let granted = caps::CapsHashSet::from([CAP_NET_BIND_SERVICE]);
            // SAFETY: a plain prctl that takes numbers only.
            let keep = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0) };
            check(keep.into())?;
            become_id(ID)?;
            // The permitted set kept across the change of uid is narrowed to the one
            // capability first; the effective and inheritable sets may then hold it, and the
            // ambient set may only hold what both the permitted and inheritable sets do.
            for set in [
                caps::CapSet::Permitted,
                caps::CapSet::Effective,
                caps::CapSet::Inheritable,
            ] {
                caps::set(None, set, &granted).map_err(std::io::Error::other)?;
            }
            caps::raise(None, caps::CapSet::Ambient, CAP_NET_BIND_SERVICE)
                .map_err(std::io::Error::other)?;
            Ok(())
        },
    );
}

/// The errno the helper's seccomp filter answers `close_range` with.
const CLOSE_RANGE_ERRNO: &str = "CORDON_IT_CLOSE_RANGE_ERRNO";

/// A descriptor some thread of the server opened without close-on-exec must not reach the
/// child, also where `close_range` is missing (kernels before 5.9, or a container's seccomp
/// profile answering ENOSYS or EPERM) or lacks `CLOSE_RANGE_CLOEXEC` (5.9 and 5.10: EINVAL).
#[test]
fn descriptors_without_close_on_exec_do_not_reach_the_child() {
    if in_helper() {
        let errno: i32 = std::env::var(CLOSE_RANGE_ERRNO).unwrap().parse().unwrap();
        // SAFETY: a range of descriptors this process does not use, with no flags.
        let status =
            unsafe { libc::syscall(libc::SYS_close_range, 1_000_000u32, 1_000_001u32, 0u32) };
        assert_eq!(
            (status, std::io::Error::last_os_error().raw_os_error()),
            (-1, Some(errno)),
            "close_range is not refused here"
        );
    }
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: F_DUPFD duplicates a valid descriptor, without close-on-exec.
    let leaked = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD, 700) };
    assert!(leaked >= 700);
    // SAFETY: a fresh descriptor that nothing else owns.
    let leaked = unsafe { OwnedFd::from_raw_fd(leaked) };
    let code = format!(
        "import os\ntry:\n    os.fstat({})\n    print('leaked')\nexcept OSError:\n    print('closed')",
        leaked.as_raw_fd()
    );
    let out = python(policy(PolicySpec::default()), &code);
    assert_eq!(stdout(&out), "closed\n", "{}", stderr(&out));
    if in_helper() {
        return;
    }
    // A small soft descriptor limit keeps the child's fallback loop short.
    // SAFETY: rlimit is plain data that getrlimit fills.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: limit is a valid rlimit.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(status, 0);
    limit.rlim_cur = limit.rlim_cur.min(1024);
    for errno in [libc::ENOSYS, libc::EINVAL, libc::EPERM] {
        let filter = [
            // The system call number, at offset 0 of `struct seccomp_data`.
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: libc::SYS_close_range as u32,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | errno as u32,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        rerun(
            "inheritance::descriptors_without_close_on_exec_do_not_reach_the_child",
            &[(CLOSE_RANGE_ERRNO, &errno.to_string())],
            move || {
                let program = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr().cast_mut(),
                };
                // SAFETY: raw system calls on plain data that lives across each call.
                unsafe {
                    check(libc::setrlimit(libc::RLIMIT_NOFILE, &limit).into())?;
                    check(
                        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0).into(),
                    )?;
                    check(libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0u32,
                        &raw const program,
                    ))?;
                }
                Ok(())
            },
        );
    }
}
