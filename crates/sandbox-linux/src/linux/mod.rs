//! The Linux backends: one [`LinuxSandbox`] per technology, sharing the host probe.

mod cgroup;
mod child;
mod landlock;
mod seccomp;
mod spawn;
pub(crate) mod work_fs;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use sandbox_core::supervise::{
    ProcessControl, WorkDir, child_environment, resolve_program, supervise,
};
use sandbox_core::{
    Capabilities, Ceiling, Containment, EnforcementReport, LandlockStatus, NetworkPolicy, RunError,
    RunFuture, RunOptions, RunOutcome, RunRequest, Sandbox, Technology,
};

use crate::LinuxConfig;
use crate::profile;
use cgroup::CgroupRoot;

/// What this host offers, probed once.
#[derive(Debug)]
struct Host {
    landlock_abi: u32,
    seccomp: bool,
    root: bool,
    cap_last_cap: u32,
    /// The server's capability bounding set is empty: execve grants no file capability.
    bounding_set_empty: bool,
    cgroup: Option<CgroupRoot>,
}

impl Host {
    fn probe(config: &LinuxConfig) -> Self {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        // SAFETY: PR_GET_SECCOMP takes no pointer arguments.
        let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0;
        let cap_last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        let bounding_set_empty = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_owned()))
            })
            .is_some_and(|v| v.chars().all(|c| c == '0'));
        let cgroup = if root && config.cgroup {
            static ROOT: OnceLock<Option<CgroupRoot>> = OnceLock::new();
            ROOT.get_or_init(CgroupRoot::detect).clone()
        } else {
            None
        };
        Host {
            landlock_abi: landlock::kernel_abi(),
            seccomp,
            root,
            cap_last_cap,
            bounding_set_empty,
            cgroup,
        }
    }
}

/// Which layers a technology applies.
#[derive(Debug, Clone, Copy)]
struct Layers {
    landlock: bool,
    seccomp: bool,
    no_new_privs: bool,
    rlimits: bool,
}

impl Layers {
    fn of(technology: Technology) -> Self {
        let (landlock, seccomp, hardening) = match technology {
            Technology::Landlock | Technology::Auto => (true, true, true),
            Technology::Seccomp => (false, true, true),
            Technology::Soft => (false, false, true),
            Technology::None => (false, false, false),
        };
        Layers {
            landlock,
            seccomp,
            no_new_privs: hardening,
            rlimits: hardening,
        }
    }
}

#[derive(Debug)]
struct Inner {
    technology: Technology,
    layers: Layers,
    host: Arc<Host>,
    config: LinuxConfig,
}

/// A Linux sandbox backend for one [`Technology`].
#[derive(Debug, Clone)]
pub(crate) struct LinuxSandbox {
    inner: Arc<Inner>,
}

/// The four Linux backends, strongest first.
pub(crate) fn candidates(config: &LinuxConfig) -> Vec<Arc<dyn Sandbox>> {
    let host = Arc::new(Host::probe(config));
    [
        Technology::Landlock,
        Technology::Seccomp,
        Technology::Soft,
        Technology::None,
    ]
    .into_iter()
    .map(|technology| {
        Arc::new(LinuxSandbox {
            inner: Arc::new(Inner {
                technology,
                layers: Layers::of(technology),
                host: Arc::clone(&host),
                config: config.clone(),
            }),
        }) as Arc<dyn Sandbox>
    })
    .collect()
}

impl Inner {
    fn containment(&self, cgroup: bool) -> Containment {
        if cgroup {
            Containment::Cgroup
        } else if !self.layers.rlimits {
            Containment::None
        } else if self.host.root {
            Containment::Uid
        } else {
            Containment::Rlimit
        }
    }

    fn uid(&self) -> u32 {
        if self.host.root {
            self.config.run_uid.get()
        } else {
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() }
        }
    }

    /// Whether the child can hold no capability. It starts with none: the spawner threads
    /// have emptied their inheritable (and so ambient) set, and their permitted set unless
    /// the server is root, whose children lose theirs when they change uid (`spawn.rs`). What
    /// execve could still grant comes from file capabilities, limited by the bounding set:
    /// empty when the server is root (dropped) or started without one, and with
    /// `no_new_privs` execve grants nothing the process did not hold. Only a server that is
    /// neither root nor without a bounding set, running `none` (no `no_new_privs`), leaves a
    /// child that can gain capabilities, as any process of its uid could, by executing a
    /// program that has file capabilities.
    fn capabilities_dropped(&self) -> bool {
        self.host.root || self.layers.no_new_privs || self.host.bounding_set_empty
    }

    fn missing(&self, report: &EnforcementReport) -> Vec<String> {
        let mut missing = Vec::new();
        let mut need = |ok: bool, name: &str| {
            if !ok {
                missing.push(name.to_owned());
            }
        };
        need(report.filesystem, "filesystem");
        need(report.network_ports, "network_ports");
        need(report.ipc_scoping, "ipc_scoping");
        need(report.seccomp, "seccomp");
        need(report.no_new_privs, "no_new_privs");
        need(report.capabilities_dropped, "capabilities_dropped");
        need(report.rlimits, "rlimits");
        need(
            report.process_containment == Containment::Cgroup,
            "process_containment:cgroup",
        );
        missing
    }

    fn capabilities(&self) -> Capabilities {
        let landlock = self.layers.landlock && self.host.landlock_abi > 0;
        let abi = if landlock { self.host.landlock_abi } else { 0 };
        let mut layers = BTreeMap::new();
        let mut layer = |name: &str, text: String| {
            layers.insert(name.to_owned(), text);
        };
        layer(
            "filesystem",
            if landlock {
                format!("landlock ABI {abi}: read and write allow-lists, deny by default")
            } else {
                "not enforced: paths are validated but the kernel does not restrict access".into()
            },
        );
        layer(
            "network",
            match (landlock && abi >= landlock::ABI_NET, self.layers.seccomp) {
                (true, true) => "landlock TCP connect and bind port allow-lists; seccomp \
                                 socket families per policy, TCP Fast Open sends refused (they \
                                 connect without Landlock's check), listen refused when no bind \
                                 port is allowed; not enforced: with bind ports allowed, listen \
                                 on an unbound socket takes an ephemeral port outside them"
                    .into(),
                (false, true) => "seccomp socket families per policy, listen refused when no \
                                  bind port is allowed; TCP ports not restricted"
                    .into(),
                (_, false) => "not enforced".into(),
            },
        );
        layer(
            "ipc_scoping",
            if landlock && abi >= landlock::ABI_SCOPE {
                "landlock scoping of abstract unix sockets and signals".into()
            } else {
                "not enforced".into()
            },
        );
        layer(
            "seccomp",
            if self.layers.seccomp {
                format!(
                    "deny list of {} syscalls, namespace clone flags, TIOCSTI/TIOCLINUX, \
                     personality; x32 and foreign architectures killed; clone3 -> ENOSYS",
                    profile::DENIED_SYSCALLS.len()
                )
            } else {
                "not enforced".into()
            },
        );
        layer(
            "privileges",
            format!(
                "no_new_privs: {}; capabilities dropped: {}; child uid {}",
                self.layers.no_new_privs,
                self.capabilities_dropped(),
                self.uid()
            ),
        );
        layer(
            "limits",
            if self.layers.rlimits {
                "hard rlimits: address space, CPU time, file size, open files, core 0".into()
            } else {
                "not enforced (wall-clock timeout and output caps only)".into()
            },
        );
        let containment = self.containment(self.host.cgroup.is_some());
        // Without a cgroup the run is killed by its process group, which seccomp locks (no
        // setsid, no setpgid); without seccomp a process can leave the group and outlive
        // the run.
        let group = if self.layers.seccomp && self.host.seccomp {
            "process group killed, and locked by seccomp"
        } else {
            "process group killed; a process that calls setsid or setpgid leaves it and \
             outlives the run"
        };
        layer(
            "process_containment",
            match containment {
                Containment::Cgroup => {
                    "per-run pids cgroup: process count bounded, whole tree killed".into()
                }
                Containment::Uid => format!("unprivileged uid with RLIMIT_NPROC; {group}"),
                Containment::Rlimit => format!("RLIMIT_NPROC of the server's uid; {group}"),
                Containment::None => format!("{group}; process count not bounded"),
            },
        );
        Capabilities {
            platform: "linux",
            backend: self.technology.as_str(),
            landlock_abi: abi,
            seccomp: self.layers.seccomp && self.host.seccomp,
            layers,
            kernel_enforced: landlock && self.layers.seccomp && self.host.seccomp,
            process_containment: containment,
        }
    }

    async fn run(
        self: Arc<Self>,
        request: RunRequest,
        options: RunOptions,
        ceiling: Arc<Ceiling>,
    ) -> Result<RunOutcome, RunError> {
        let policy = request.policy();
        let limits = *policy.limits();
        let owner = self
            .host
            .root
            .then_some((self.config.run_uid.get(), self.config.run_gid.get()));
        let work = match request.cwd() {
            Some(cwd) => WorkDir::existing(cwd),
            None => {
                WorkDir::create(&self.config.work_root, owner).map_err(|source| RunError::Io {
                    what: "creating the run directory",
                    source,
                })?
            }
        };
        let program = resolve_program(&request.argv()[0], work.path())?;
        let env = child_environment(request.env(), work.path());
        let ruleset = if self.layers.landlock {
            let grant = match request.cwd() {
                Some(cwd) => landlock::WorkGrant::Requested(cwd),
                None => landlock::WorkGrant::Fresh(work.path()),
            };
            Some(landlock::build(
                policy,
                grant,
                &ceiling,
                self.host.landlock_abi,
            )?)
        } else {
            None
        };
        let cgroup = match &self.host.cgroup {
            Some(root) => {
                Some(
                    root.create_run(limits.max_processes)
                        .map_err(|source| RunError::Io {
                            what: "creating the run cgroup",
                            source,
                        })?,
                )
            }
            None => None,
        };
        let contained = cgroup.is_some();
        let (tcp, tcp_bind) = match policy.network() {
            NetworkPolicy::None => (false, false),
            NetworkPolicy::Tcp { bind_ports, .. } => (true, !bind_ports.is_empty()),
        };
        let seccomp_variant = if self.layers.seccomp {
            let variant = seccomp::Variant {
                tcp,
                tcp_bind,
                unix_sockets: policy.allow_unix_sockets(),
                lock_process_group: !contained,
            };
            // Compiled once per variant; a profile that does not compile fails the run here.
            seccomp::thread_program(variant).map_err(|e| RunError::Io {
                what: "compiling the seccomp filter",
                source: io::Error::other(e),
            })?;
            Some(variant)
        } else {
            None
        };

        let mut report = EnforcementReport {
            backend: self.technology.as_str(),
            platform: "linux",
            landlock_abi: if ruleset.is_some() {
                self.host.landlock_abi
            } else {
                0
            },
            landlock_status: ruleset
                .as_ref()
                .map_or(LandlockStatus::NotEnforced, |r| r.status),
            filesystem: ruleset.is_some(),
            // In TCP mode the port rules need both layers: Landlock checks connect and bind,
            // and seccomp refuses TCP Fast Open sends, which connect without Landlock's check.
            network_ports: seccomp_variant.is_some()
                && (!tcp || ruleset.as_ref().is_some_and(|r| r.network_ports)),
            ipc_scoping: ruleset.as_ref().is_some_and(|r| r.ipc_scoping),
            seccomp: seccomp_variant.is_some(),
            no_new_privs: self.layers.no_new_privs,
            capabilities_dropped: self.capabilities_dropped(),
            rlimits: self.layers.rlimits,
            process_containment: self.containment(contained),
            uid: self.uid(),
            missing: Vec::new(),
            kernel_enforced: ruleset.is_some() && seccomp_variant.is_some(),
        };
        report.missing = self.missing(&report);

        let spec = spawn::SpawnSpec {
            program: &program,
            argv: request.argv(),
            env: &env,
            cwd: work.path(),
            stdin: !request.stdin().is_empty(),
            limits: self.layers.rlimits.then_some(&limits),
            nproc: !contained,
            credentials: owner,
            drop_bounding_set: self.host.root.then_some(self.host.cap_last_cap),
            no_new_privs: self.layers.no_new_privs,
            cgroup,
            landlock: ruleset.map(|r| r.fd),
            seccomp: seccomp_variant,
        };
        let started = Instant::now();
        let spawned = spawn::spawn(spec).await?;
        let control = spawned.child;
        let supervised = supervise(
            &control,
            spawned.pipes,
            request.stdin().to_vec(),
            &limits,
            options.output,
            started,
        )
        .await?;

        let mut violations = supervised.limit_violations();
        if supervised.exit.signal == Some(libc::SIGSYS) {
            violations.push("seccomp_kill".to_owned());
        }
        violations.extend(control.violations());
        drop(control);
        drop(work);
        Ok(supervised.into_outcome(report, violations))
    }
}

impl Sandbox for LinuxSandbox {
    fn technology(&self) -> Technology {
        self.inner.technology
    }

    fn is_available(&self) -> bool {
        let host = &self.inner.host;
        match self.inner.technology {
            Technology::Landlock | Technology::Auto => host.landlock_abi > 0 && host.seccomp,
            Technology::Seccomp => host.seccomp,
            Technology::Soft | Technology::None => true,
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn system_read_paths(&self) -> Vec<PathBuf> {
        profile::SYSTEM_READ_PATHS
            .iter()
            .chain(profile::SYSTEM_WRITE_PATHS)
            .map(PathBuf::from)
            .collect()
    }

    fn run(&self, request: RunRequest, options: RunOptions, ceiling: &Arc<Ceiling>) -> RunFuture {
        Box::pin(Arc::clone(&self.inner).run(request, options, Arc::clone(ceiling)))
    }
}
