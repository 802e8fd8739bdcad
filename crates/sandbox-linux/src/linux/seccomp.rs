//! Compiles the seccomp deny list of [`crate::profile`] into one BPF program.
//!
//! The program has two parts:
//!
//! 1. a dispatcher written here: it kills the process on a foreign architecture (for
//!    example i386 through `int 0x80`) and on any x32 syscall (number with bit 30 set),
//!    answers `clone3` with `ENOSYS` (so libc falls back to `clone`, whose flags the deny
//!    list can inspect), and finds the syscall number by binary search among the numbers the
//!    deny list names. Every other syscall is allowed after a handful of comparisons;
//! 2. the deny list proper (`EPERM`), compiled by `seccompiler` from the profile data, which
//!    only the named syscalls reach.
//!
//! Why the dispatcher: seccompiler emits one linear chain of comparisons. The kernel pays for
//! the length of a filter three times: when it loads it, when it precomputes which syscalls
//! are always allowed (it evaluates the filter once for every syscall number), and on every
//! syscall of the sandboxed program. A binary search in front cuts the evaluation of the
//! common, allowed syscalls from the whole chain to a few instructions, and one program
//! instead of three avoids paying the per-filter costs three times. That made installing
//! the filter about five times cheaper on the development machine.
//!
//! Programs are compiled once per variant (network mode, bind ports, unix sockets, process
//! group rules) and cached, so a run only pays for installing them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

use crate::profile;

/// A compiled BPF program in the kernel's instruction format.
pub(crate) type Program = Vec<libc::sock_filter>;

/// What changes the filter from one run to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    pub(crate) tcp: bool,
    /// The policy allows some TCP bind port; without one, `listen` is refused in TCP mode.
    pub(crate) tcp_bind: bool,
    pub(crate) unix_sockets: bool,
    pub(crate) lock_process_group: bool,
}

/// Errors compiling a filter; they mean the data in `profile` is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CompileError {
    #[error("unknown syscall in the deny list: {0}")]
    UnknownSyscall(&'static str),
    #[error("seccompiler: {0}")]
    Backend(#[from] seccompiler::BackendError),
    #[error("the BPF program does not fit its encoding: {0}")]
    Layout(&'static str),
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The syscall number of a name from the profile data.
pub(crate) fn syscall_number(name: &str) -> Option<i64> {
    let n = match name {
        "ptrace" => libc::SYS_ptrace,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "pidfd_getfd" => libc::SYS_pidfd_getfd,
        "process_madvise" => libc::SYS_process_madvise,
        "kcmp" => libc::SYS_kcmp,
        "mount" => libc::SYS_mount,
        "umount2" => libc::SYS_umount2,
        "pivot_root" => libc::SYS_pivot_root,
        "chroot" => libc::SYS_chroot,
        "fsopen" => libc::SYS_fsopen,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "move_mount" => libc::SYS_move_mount,
        "open_tree" => libc::SYS_open_tree,
        "mount_setattr" => libc::SYS_mount_setattr,
        "unshare" => libc::SYS_unshare,
        "setns" => libc::SYS_setns,
        "bpf" => libc::SYS_bpf,
        "perf_event_open" => libc::SYS_perf_event_open,
        "userfaultfd" => libc::SYS_userfaultfd,
        "keyctl" => libc::SYS_keyctl,
        "add_key" => libc::SYS_add_key,
        "request_key" => libc::SYS_request_key,
        "io_uring_setup" => libc::SYS_io_uring_setup,
        "io_uring_enter" => libc::SYS_io_uring_enter,
        "io_uring_register" => libc::SYS_io_uring_register,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "reboot" => libc::SYS_reboot,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "acct" => libc::SYS_acct,
        "quotactl" => libc::SYS_quotactl,
        "quotactl_fd" => libc::SYS_quotactl_fd,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "clone3" => libc::SYS_clone3,
        "setsid" => libc::SYS_setsid,
        "setpgid" => libc::SYS_setpgid,
        "sendto" => libc::SYS_sendto,
        "sendmsg" => libc::SYS_sendmsg,
        "sendmmsg" => libc::SYS_sendmmsg,
        "listen" => libc::SYS_listen,
        _ => return None,
    };
    Some(n)
}

fn number(name: &'static str) -> Result<i64, CompileError> {
    syscall_number(name).ok_or(CompileError::UnknownSyscall(name))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, CompileError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, CompileError> {
    Ok(SeccompRule::new(conditions)?)
}

fn to_kernel(program: seccompiler::BpfProgram) -> Program {
    program
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// The deny list compiled by seccompiler, and the syscall numbers it has rules for.
fn deny_list(variant: Variant) -> Result<(Program, Vec<u32>), CompileError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for denied in profile::DENIED_SYSCALLS {
        rules.insert(number(denied.name)?, Vec::new());
    }
    if variant.lock_process_group {
        for name in profile::PROCESS_GROUP_SYSCALLS {
            rules.insert(number(name)?, Vec::new());
        }
    }
    let clone_rules = profile::DENIED_CLONE_FLAGS
        .iter()
        .map(|&(_, flag)| rule(vec![cond(0, SeccompCmpOp::MaskedEq(flag), flag)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let ioctl_rules = profile::DENIED_IOCTLS
        .iter()
        .map(|&(_, request, _)| rule(vec![cond(1, SeccompCmpOp::Eq, request)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let personality = profile::ALLOWED_PERSONALITIES
        .iter()
        .map(|&p| cond(0, SeccompCmpOp::Ne, p))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_personality, vec![rule(personality)?]);

    let mut families = Vec::new();
    if variant.unix_sockets {
        families.push(profile::AF_UNIX);
    }
    let inet = [libc::AF_INET as u64, libc::AF_INET6 as u64];
    if variant.tcp {
        families.extend(inet);
    }
    let mut socket_rules = Vec::new();
    if !families.is_empty() {
        let others = families
            .iter()
            .map(|&f| cond(0, SeccompCmpOp::Ne, f))
            .collect::<Result<Vec<_>, _>>()?;
        socket_rules.push(rule(others)?);
    }
    if variant.tcp {
        for family in inet {
            for &(_, kind) in profile::TCP_SOCKET_TYPES_DENIED {
                socket_rules.push(rule(vec![
                    cond(0, SeccompCmpOp::Eq, family)?,
                    cond(1, SeccompCmpOp::MaskedEq(0xf), kind)?,
                ])?);
            }
            socket_rules.push(rule(vec![
                cond(0, SeccompCmpOp::Eq, family)?,
                cond(2, SeccompCmpOp::Ne, 0)?,
                cond(2, SeccompCmpOp::Ne, libc::IPPROTO_TCP as u64)?,
            ])?);
        }
    }
    // An empty rule list matches every call: with no family allowed, no socket at all.
    rules.insert(libc::SYS_socket, socket_rules);
    if variant.tcp {
        for &(name, arg) in profile::FAST_OPEN_SYSCALLS {
            let fast_open = cond(
                arg,
                SeccompCmpOp::MaskedEq(profile::MSG_FASTOPEN),
                profile::MSG_FASTOPEN,
            )?;
            rules.insert(number(name)?, vec![rule(vec![fast_open])?]);
        }
        if !variant.tcp_bind {
            for name in profile::TCP_SYSCALLS_WITHOUT_BIND_PORTS {
                rules.insert(number(name)?, Vec::new());
            }
        }
    }

    let numbers = rules
        .keys()
        .map(|&n| u32::try_from(n).map_err(|_| CompileError::Layout("syscall number")))
        .collect::<Result<Vec<_>, _>>()?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )?;
    Ok((to_kernel(filter.try_into()?), numbers))
}

/// The audit architecture of the native syscall ABI (`AUDIT_ARCH_*` in `linux/audit.h`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// Set in the number of every x32 syscall; no native syscall has it.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(op: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

fn ret(action: u32) -> libc::sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, action)
}

/// Where the dispatcher sends a syscall it recognizes.
#[derive(Debug, Clone, Copy)]
enum Route {
    DenyList,
    Return(u32),
}

/// Emits a binary search over `routes` (sorted by number): a match takes its route, a
/// number not listed is allowed. Positions of the jumps into the deny list are pushed to
/// `deny_jumps`, to be patched once the deny list's position is known.
fn search(
    routes: &[(u32, Route)],
    out: &mut Program,
    deny_jumps: &mut Vec<usize>,
) -> Result<(), CompileError> {
    match routes {
        [] => out.push(ret(libc::SECCOMP_RET_ALLOW)),
        [(number, route)] => {
            out.push(jump(libc::BPF_JEQ, *number, 0, 1));
            match route {
                Route::DenyList => {
                    deny_jumps.push(out.len());
                    out.push(stmt(libc::BPF_JMP | libc::BPF_JA, 0));
                }
                Route::Return(action) => out.push(ret(*action)),
            }
            out.push(ret(libc::SECCOMP_RET_ALLOW));
        }
        _ => {
            let (low, high) = routes.split_at(routes.len() / 2);
            let branch = out.len();
            out.push(jump(libc::BPF_JGE, high[0].0, 0, 0));
            search(low, out, deny_jumps)?;
            out[branch].jt = u8::try_from(out.len() - branch - 1)
                .map_err(|_| CompileError::Layout("binary search branch"))?;
            search(high, out, deny_jumps)?;
        }
    }
    Ok(())
}

/// The dispatcher followed by the deny list, as one program.
fn compile(variant: Variant) -> Result<Program, CompileError> {
    let (deny, denied_numbers) = deny_list(variant)?;
    let mut routes: BTreeMap<u32, Route> = denied_numbers
        .into_iter()
        .map(|n| (n, Route::DenyList))
        .collect();
    for name in profile::ENOSYS_SYSCALLS {
        let n = u32::try_from(number(name)?).map_err(|_| CompileError::Layout("syscall number"))?;
        routes.insert(
            n,
            Route::Return(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        );
    }
    let routes: Vec<(u32, Route)> = routes.into_iter().collect();

    let mut program = vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, DATA_ARCH),
        jump(libc::BPF_JEQ, AUDIT_ARCH, 1, 0),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, DATA_NR),
        jump(libc::BPF_JSET, X32_SYSCALL_BIT, 0, 1),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
    ];
    let mut deny_jumps = Vec::new();
    search(&routes, &mut program, &mut deny_jumps)?;
    let deny_start = program.len();
    for at in deny_jumps {
        program[at].k = u32::try_from(deny_start - at - 1)
            .map_err(|_| CompileError::Layout("jump into the deny list"))?;
    }
    program.extend(deny);
    if program.len() > usize::from(u16::MAX) {
        return Err(CompileError::Layout("program length"));
    }
    Ok(program)
}

/// The program a spawner thread installs on itself for `variant`, compiled once and cached.
/// The process group rules are left out: the child still has to call `setpgid` after it is
/// cloned, and installs [`process_group_lock`] itself.
pub(crate) fn thread_program(variant: Variant) -> Result<Arc<Program>, CompileError> {
    static CACHE: OnceLock<Mutex<HashMap<Variant, Arc<Program>>>> = OnceLock::new();
    let variant = Variant {
        lock_process_group: false,
        ..variant
    };
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&variant)
    {
        return Ok(Arc::clone(hit));
    }
    let compiled = Arc::new(compile(variant)?);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(variant, Arc::clone(&compiled));
    Ok(compiled)
}

/// `setsid` and `setpgid` → `EPERM`, installed by a child that has already made itself the
/// leader of its process group. The spawner thread's filter has already checked the
/// architecture and the x32 bit, and the kernel keeps the most severe answer of all filters.
pub(crate) fn process_group_lock() -> Result<Arc<Program>, CompileError> {
    static PROGRAM: OnceLock<Arc<Program>> = OnceLock::new();
    if let Some(program) = PROGRAM.get() {
        return Ok(Arc::clone(program));
    }
    let numbers = profile::PROCESS_GROUP_SYSCALLS
        .iter()
        .map(|name| {
            u32::try_from(number(name)?).map_err(|_| CompileError::Layout("syscall number"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = numbers.len();
    let mut program = vec![stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, DATA_NR)];
    for (i, n) in numbers.into_iter().enumerate() {
        // A match skips the remaining comparisons and the allow, landing on the EPERM.
        let skip = u8::try_from(count - i).map_err(|_| CompileError::Layout("lock list"))?;
        program.push(jump(libc::BPF_JEQ, n, skip, 0));
    }
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    program.push(ret(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32));
    Ok(Arc::clone(PROGRAM.get_or_init(|| Arc::new(program))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_syscall_has_a_number() {
        let names = profile::DENIED_SYSCALLS
            .iter()
            .map(|d| d.name)
            .chain(profile::ENOSYS_SYSCALLS.iter().copied())
            .chain(profile::PROCESS_GROUP_SYSCALLS.iter().copied())
            .chain(profile::FAST_OPEN_SYSCALLS.iter().map(|&(name, _)| name))
            .chain(profile::TCP_SYSCALLS_WITHOUT_BIND_PORTS.iter().copied());
        for name in names {
            assert!(syscall_number(name).is_some(), "{name}");
        }
    }

    fn every_variant() -> impl Iterator<Item = Variant> {
        (0..16u8).map(|bits| Variant {
            tcp: bits & 1 != 0,
            unix_sockets: bits & 2 != 0,
            lock_process_group: bits & 4 != 0,
            tcp_bind: bits & 8 != 0,
        })
    }

    #[test]
    fn every_variant_compiles() {
        for variant in every_variant() {
            let program = thread_program(variant).expect("compiles");
            assert!(!program.is_empty() && program.len() < 4096);
        }
    }

    /// Runs a classic BPF program over `seccomp_data` the way the kernel does, for the
    /// instructions seccompiler and the dispatcher emit; returns the action and how many
    /// instructions ran.
    fn trace(program: &[libc::sock_filter], data: &[u8; 64]) -> (u32, usize) {
        let mut pc = 0;
        let mut acc: u32 = 0;
        for steps in 1.. {
            let insn = program[pc];
            let code = u32::from(insn.code);
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let at = insn.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"));
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => acc &= insn.k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += insn.k as usize,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => pc += jump(acc == insn.k),
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => pc += jump(acc >= insn.k),
                c if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => pc += jump(acc > insn.k),
                c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => {
                    pc += jump(acc & insn.k != 0);
                }
                c if c == libc::BPF_RET | libc::BPF_K => return (insn.k, steps),
                other => panic!("instruction {other:#x} not expected"),
            }
        }
        unreachable!("the loop only ends by returning")
    }

    fn evaluate(program: &[libc::sock_filter], data: &[u8; 64]) -> u32 {
        trace(program, data).0
    }

    fn seccomp_data(nr: u32, arch: u32, args: [u64; 4]) -> [u8; 64] {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        data
    }

    /// What the kernel must decide: the architecture and x32 kills, clone3 -> ENOSYS, and
    /// otherwise exactly what seccompiler's deny list decides on its own.
    fn expected(deny: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 4]) -> u32 {
        if arch != AUDIT_ARCH || nr & X32_SYSCALL_BIT != 0 {
            return libc::SECCOMP_RET_KILL_PROCESS;
        }
        if i64::from(nr) == libc::SYS_clone3 {
            return libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        }
        evaluate(deny, &seccomp_data(nr, arch, args))
    }

    #[test]
    fn the_dispatcher_decides_exactly_like_the_deny_list() {
        let mut values: Vec<u64> = vec![0, 1, 2, 3, 5, 6, 10, 16, 17, 0xffff_ffff, u64::MAX];
        values.extend(profile::DENIED_CLONE_FLAGS.iter().map(|&(_, flag)| flag));
        values.extend(profile::DENIED_CLONE_FLAGS.iter().map(|&(_, f)| f | 17));
        values.extend(
            profile::DENIED_IOCTLS
                .iter()
                .map(|&(_, request, _)| request),
        );
        values.extend(profile::DENIED_IOCTLS.iter().map(|&(_, r, _)| r | 1 << 32));
        values.extend(profile::ALLOWED_PERSONALITIES.iter().copied());
        values.extend([
            libc::SOCK_STREAM as u64 | libc::SOCK_CLOEXEC as u64,
            0x80_0002,
        ]);
        // The third and fourth arguments: socket protocols, and MSG_FASTOPEN among other send
        // flags where sendmsg (2) and sendto and sendmmsg (3) take their flags.
        let fast_open = profile::MSG_FASTOPEN | 0x40;
        let last_args = [
            (0, 0),
            (6, 0),
            (17, 0),
            (255, 0),
            (fast_open, 0),
            (0, fast_open),
            (0x40, 0x40),
        ];
        let foreign = 3 | 0x4000_0000;
        let mut checked = 0u64;
        for variant in every_variant() {
            let thread = thread_program(variant).expect("compiles");
            let lock = process_group_lock().expect("compiles");
            // What the kernel answers: the most severe result of every installed filter
            // (actions compare as signed numbers, KILL_PROCESS being the smallest).
            let program = |data: &[u8; 64]| {
                let answer = evaluate(&thread, data);
                if variant.lock_process_group {
                    let locked = evaluate(&lock, data);
                    if (locked as i32) < (answer as i32) {
                        return locked;
                    }
                }
                answer
            };
            let (deny, named) = deny_list(variant).expect("compiles");
            let mut numbers: Vec<u32> = (0..1024).collect();
            numbers.extend([X32_SYSCALL_BIT, X32_SYSCALL_BIT | 59, u32::MAX]);
            for nr in numbers {
                for arch in [AUDIT_ARCH, foreign] {
                    let args = [0; 4];
                    let got = program(&seccomp_data(nr, arch, args));
                    assert_eq!(
                        got,
                        expected(&deny, nr, arch, args),
                        "nr {nr} arch {arch:#x}"
                    );
                    checked += 1;
                }
            }
            for &nr in &named {
                for &a0 in &values {
                    for &a1 in &values {
                        for &(a2, a3) in &last_args {
                            let args = [a0, a1, a2, a3];
                            let data = seccomp_data(nr, AUDIT_ARCH, args);
                            let want = expected(&deny, nr, AUDIT_ARCH, args);
                            assert_eq!(program(&data), want, "nr {nr} args {args:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 100_000, "only {checked} cases");
    }

    #[test]
    fn allowed_syscalls_take_a_short_path() {
        let variant = Variant {
            tcp: false,
            tcp_bind: false,
            unix_sockets: false,
            lock_process_group: true,
        };
        let program = compile(variant).expect("compiles");
        let lock = process_group_lock().expect("compiles");
        let (deny, _) = deny_list(variant).expect("compiles");
        for nr in [
            libc::SYS_read,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_getpid,
        ] {
            let data = seccomp_data(nr as u32, AUDIT_ARCH, [0; 4]);
            let (action, steps) = trace(&program, &data);
            assert_eq!(action, libc::SECCOMP_RET_ALLOW);
            assert!(steps <= 20, "syscall {nr}: {steps} instructions");
            let (_, linear) = trace(&deny, &data);
            assert!(
                steps * 3 < linear,
                "syscall {nr}: {steps} vs {linear} in the chain"
            );
            assert_eq!(trace(&lock, &data), (libc::SECCOMP_RET_ALLOW, 4));
        }
    }
}
