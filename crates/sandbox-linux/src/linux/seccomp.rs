//! Compiles the seccomp deny list of [`crate::profile`] into BPF programs.
//!
//! Three programs are installed, all with "allow" as the default action:
//!
//! 1. a hand-written four-instruction program that kills the process on any x32 syscall
//!    (syscall number with bit 30 set), which the number-based rules below would not match;
//! 2. the deny list proper (`EPERM`), compiled by `seccompiler`, whose architecture check
//!    kills the process on a foreign architecture (for example i386 through `int 0x80`);
//! 3. `clone3` → `ENOSYS`, a separate program because seccompiler gives one action to all
//!    rules of a filter. The kernel runs every installed filter and keeps the most severe
//!    result, so the three compose.
//!
//! Programs are compiled once per variant (network mode, unix sockets, process group rules)
//! and cached, so a run only pays for installing them.

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

fn deny_list(variant: Variant) -> Result<Program, CompileError> {
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

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )?;
    Ok(to_kernel(filter.try_into()?))
}

fn enosys_list() -> Result<Program, CompileError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in profile::ENOSYS_SYSCALLS {
        rules.insert(number(name)?, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )?;
    Ok(to_kernel(filter.try_into()?))
}

/// Kills the process on any syscall number with the x32 bit (0x40000000) set.
fn x32_kill() -> Program {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    vec![
        // Load the syscall number (offset 0 of struct seccomp_data).
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        // If the x32 bit is set, fall through to the kill; else skip it.
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The programs for `variant`, in installation order, compiled once and cached.
pub(crate) fn programs(variant: Variant) -> Result<Arc<Vec<Program>>, CompileError> {
    static CACHE: OnceLock<Mutex<HashMap<Variant, Arc<Vec<Program>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&variant)
    {
        return Ok(Arc::clone(hit));
    }
    let compiled = Arc::new(vec![x32_kill(), deny_list(variant)?, enosys_list()?]);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(variant, Arc::clone(&compiled));
    Ok(compiled)
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
            .chain(profile::PROCESS_GROUP_SYSCALLS.iter().copied());
        for name in names {
            assert!(syscall_number(name).is_some(), "{name}");
        }
    }

    #[test]
    fn every_variant_compiles() {
        for bits in 0..8u8 {
            let variant = Variant {
                tcp: bits & 1 != 0,
                unix_sockets: bits & 2 != 0,
                lock_process_group: bits & 4 != 0,
            };
            let programs = programs(variant).expect("compiles");
            assert_eq!(programs.len(), 3);
            assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
    }
}
