//! The `[sandbox]` configuration section and the manager built from it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sandbox_core::{CeilingConfig, Limits, Manager, ManagerConfig, Technology};
#[cfg(not(target_os = "macos"))]
use sandbox_linux::LinuxConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SandboxConfig {
    /// `auto`, `landlock`, `seccomp`, `soft` or `none`. An explicit technology
    /// that this host lacks stops the server from starting.
    pub(crate) technology: Technology,
    /// Roots under which clients may request read access.
    pub(crate) read_roots: Vec<String>,
    /// Roots under which clients may request write access (also readable).
    pub(crate) write_roots: Vec<String>,
    /// Largest limits a client may request.
    pub(crate) max_limits: LimitsConfig,
    /// Limits applied to fields a client leaves at zero.
    pub(crate) default_limits: LimitsConfig,
    /// The uid and gid sandboxed commands run as when the server is root;
    /// never 0 (a command that kept root's uid would own root's files).
    pub(crate) run_uid: u32,
    pub(crate) run_gid: u32,
    /// Where per-run work directories are created. Default: `<data_dir>/runs`.
    pub(crate) work_root: Option<PathBuf>,
    /// What holds the work root: `auto` (a private tmpfs when the server may
    /// mount one, else a plain directory), `tmpfs` (refuse to start without
    /// it) or `directory`.
    pub(crate) work_fs: WorkFs,
    /// Size of the private tmpfs, shared by all runs at once.
    pub(crate) work_fs_size_bytes: u64,
    /// Runs at once; beyond it RESOURCE_EXHAUSTED at once. 0 means 4 per CPU.
    pub(crate) max_concurrent_runs: usize,
    /// Put each run in its own pids cgroup when the server is root.
    pub(crate) cgroup: bool,
    pub(crate) trust: TrustConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let linux = LinuxConfig::default();
        Self {
            technology: Technology::Auto,
            read_roots: Vec::new(),
            write_roots: Vec::new(),
            max_limits: Limits::MAX.into(),
            default_limits: Limits::default().into(),
            run_uid: linux.run_uid.get(),
            run_gid: linux.run_gid.get(),
            work_root: None,
            work_fs: WorkFs::Auto,
            work_fs_size_bytes: DEFAULT_WORK_FS_BYTES,
            max_concurrent_runs: 0,
            cgroup: linux.cgroup,
            trust: TrustConfig::default(),
        }
    }
}

/// 1 GiB: room for the default concurrency of runs writing a few hundred
/// MiB between them, in memory that the operator can count on.
const DEFAULT_WORK_FS_BYTES: u64 = 1 << 30;

/// `sandbox.work_fs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WorkFs {
    Auto,
    Tmpfs,
    Directory,
}

/// What holds the work root once [`SandboxConfig::prepare_work_fs`] has run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkFsOutcome {
    /// A tmpfs of this many bytes that only the server and its runs see.
    PrivateTmpfs { size_bytes: u64 },
    /// A plain directory, for the reason given.
    Directory { why: String },
}

impl WorkFsOutcome {
    /// The sentence `GetCapabilities` reports as the `work_directory` layer.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::PrivateTmpfs { size_bytes } => format!(
                "private tmpfs of {size_bytes} bytes (nosuid, nodev) in the server's own mount \
                 namespace: runs share it and cannot fill the disk of the data directory"
            ),
            Self::Directory { why } => format!(
                "directory on the host file system ({why}): runs can fill that file system \
                 within their file-size and process limits"
            ),
        }
    }
}

/// The seven run limits, as in the proto's `Limits` message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsConfig {
    pub(crate) timeout_ms: u64,
    pub(crate) cpu_time_ms: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) max_output_bytes: u64,
    pub(crate) max_processes: u64,
    pub(crate) max_file_size_bytes: u64,
    pub(crate) max_open_files: u64,
}

impl From<Limits> for LimitsConfig {
    fn from(l: Limits) -> Self {
        Self {
            timeout_ms: l.timeout_ms,
            cpu_time_ms: l.cpu_time_ms,
            memory_bytes: l.memory_bytes,
            max_output_bytes: l.max_output_bytes,
            max_processes: l.max_processes,
            max_file_size_bytes: l.max_file_size_bytes,
            max_open_files: l.max_open_files,
        }
    }
}

impl From<LimitsConfig> for Limits {
    fn from(l: LimitsConfig) -> Self {
        Self {
            timeout_ms: l.timeout_ms,
            cpu_time_ms: l.cpu_time_ms,
            memory_bytes: l.memory_bytes,
            max_output_bytes: l.max_output_bytes,
            max_processes: l.max_processes,
            max_file_size_bytes: l.max_file_size_bytes,
            max_open_files: l.max_open_files,
        }
    }
}

/// How far the server trusts a tool source (`RunRequest.tool_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TrustLevel {
    /// Runs are refused with PERMISSION_DENIED.
    Untrusted,
    Trusted,
    Verified,
}

impl TrustLevel {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::Trusted => "trusted",
            Self::Verified => "verified",
        }
    }
}

/// `[sandbox.trust]`: tool source to trust level.
///
/// The default for sources not listed (including an empty `tool_source`) is
/// `untrusted`: a source the operator never named cannot run anything, so a
/// new or misspelled source fails closed instead of silently gaining access.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TrustConfig {
    /// Level of sources missing from `sources`.
    pub(crate) default: TrustLevel,
    pub(crate) sources: BTreeMap<String, TrustLevel>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            default: TrustLevel::Untrusted,
            sources: BTreeMap::new(),
        }
    }
}

impl TrustConfig {
    pub(crate) fn level_of(&self, source: &str) -> TrustLevel {
        self.sources.get(source).copied().unwrap_or(self.default)
    }
}

impl SandboxConfig {
    /// Builds the sandbox manager, with the (absolute) data directory forbidden
    /// to every run. Fails when the configured technology is unavailable.
    /// The Linux backends (Landlock, seccomp, soft, none).
    /// Fails when `run_uid` or `run_gid` is 0.
    #[cfg(not(target_os = "macos"))]
    fn platform_manager(&self, work_root: PathBuf, config: ManagerConfig) -> Result<Manager> {
        let id = |value: u32, setting: &str| {
            std::num::NonZeroU32::new(value).with_context(|| {
                format!(
                    "sandbox.{setting} must not be 0: sandboxed commands would keep root's \
                     identity and own root's files"
                )
            })
        };
        let linux = LinuxConfig {
            run_uid: id(self.run_uid, "run_uid")?,
            run_gid: id(self.run_gid, "run_gid")?,
            work_root,
            cgroup: self.cgroup,
        };
        sandbox_linux::manager(&linux, config).context("cannot start the sandbox")
    }

    /// The macOS backends (`sandbox-exec`, soft, none). The run uid and the
    /// cgroup settings have no macOS counterpart and are not used there.
    #[cfg(target_os = "macos")]
    fn platform_manager(&self, work_root: PathBuf, config: ManagerConfig) -> Result<Manager> {
        let darwin = sandbox_darwin::DarwinConfig {
            work_root,
            collect_denials: true,
        };
        sandbox_darwin::manager(&darwin, config).context("cannot start the sandbox")
    }

    /// The work root: `work_root` as configured, or `runs` in the (absolute)
    /// data directory.
    fn work_root(&self, data_dir: &Path) -> PathBuf {
        self.work_root
            .clone()
            .unwrap_or_else(|| data_dir.join("runs"))
    }

    /// Puts the work root on a private tmpfs as `work_fs` asks. Must run
    /// before the process starts its first thread (see
    /// [`sandbox_linux::mount_private_tmpfs`]); a mount that `auto` cannot make
    /// is logged and leaves a plain directory, one that `tmpfs` requires
    /// stops the server.
    pub(crate) fn prepare_work_fs(&self, data_dir: &Path) -> Result<WorkFsOutcome> {
        if self.work_fs == WorkFs::Directory {
            return Ok(WorkFsOutcome::Directory {
                why: "sandbox.work_fs = \"directory\"".into(),
            });
        }
        if self.work_fs_size_bytes == 0 {
            bail!("sandbox.work_fs_size_bytes must be above 0");
        }
        let work_root = self.work_root(&absolute(data_dir)?);
        if !work_root.is_absolute() {
            bail!(
                "sandbox.work_root must be absolute, not {}",
                work_root.display()
            );
        }
        std::fs::create_dir_all(&work_root)
            .with_context(|| format!("cannot create sandbox work root {}", work_root.display()))?;
        match mount_work_fs(&work_root, self.work_fs_size_bytes) {
            Ok(()) => {
                tracing::info!(
                    work_root = %work_root.display(),
                    size_bytes = self.work_fs_size_bytes,
                    "work directories on a private tmpfs"
                );
                Ok(WorkFsOutcome::PrivateTmpfs {
                    size_bytes: self.work_fs_size_bytes,
                })
            }
            Err(error) if self.work_fs == WorkFs::Auto => {
                let why = format!("no private tmpfs: {error}");
                tracing::warn!(
                    work_root = %work_root.display(),
                    "work directories on the host file system, {why}; a run can fill the file \
                     system they are on (see SECURITY.md)"
                );
                Ok(WorkFsOutcome::Directory { why })
            }
            Err(error) => Err(error.context(format!(
                "sandbox.work_fs = \"tmpfs\": cannot mount a private tmpfs on {}",
                work_root.display()
            ))),
        }
    }

    pub(crate) fn manager(&self, data_dir: &Path) -> Result<Manager> {
        let data_dir = absolute(data_dir)?;
        let work_root = self.work_root(&data_dir);
        // The work root holds the directories of every run: a run granted it, or a parent of
        // it, could read another run's files or swap a directory that is about to become
        // another run's work directory.
        let forbidden = [&data_dir, &work_root]
            .into_iter()
            .map(|path| {
                path.to_str()
                    .map(str::to_owned)
                    .with_context(|| format!("{} is not UTF-8", path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let ceiling = sandbox_core::Ceiling::new(CeilingConfig {
            read_roots: self.read_roots.clone(),
            write_roots: self.write_roots.clone(),
            forbidden,
            max: self.max_limits.into(),
            defaults: self.default_limits.into(),
        })
        .context("invalid [sandbox] ceiling")?;
        prepare_work_root(&data_dir, &work_root)?;
        let max_concurrent_runs = match self.max_concurrent_runs {
            0 => 4 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let manager = self.platform_manager(
            work_root,
            ManagerConfig {
                technology: self.technology,
                ceiling,
                max_concurrent_runs,
            },
        )?;
        let capabilities = manager.capabilities();
        if !capabilities.kernel_enforced {
            tracing::warn!(
                backend = capabilities.backend,
                "SANDBOX NOT KERNEL-ENFORCED: sandboxed commands are not confined by \
                 Landlock and seccomp on this host; requests with \
                 require_kernel_enforcement will be refused"
            );
        }
        Ok(manager)
    }
}

fn absolute(data_dir: &Path) -> Result<PathBuf> {
    std::path::absolute(data_dir)
        .with_context(|| format!("cannot resolve data directory {}", data_dir.display()))
}

#[cfg(target_os = "linux")]
fn mount_work_fs(work_root: &Path, size_bytes: u64) -> Result<()> {
    Ok(sandbox_linux::mount_private_tmpfs(work_root, size_bytes)?)
}

#[cfg(not(target_os = "linux"))]
fn mount_work_fs(_work_root: &Path, _size_bytes: u64) -> Result<()> {
    bail!("private tmpfs mounts are only made on Linux")
}

/// Creates the work root and lets the unprivileged run uid traverse to it.
///
/// The run uid must `chdir` into its per-run directory, so every directory
/// from the data directory down to the work root gets the "others may
/// search" bit (never read or write: the run uid still cannot list the data
/// directory or open files that are not world-readable, and Landlock denies
/// the data directory entirely).
fn prepare_work_root(data_dir: &Path, work_root: &Path) -> Result<()> {
    if !work_root.is_absolute() {
        bail!(
            "sandbox.work_root must be absolute, not {}",
            work_root.display()
        );
    }
    std::fs::create_dir_all(work_root)
        .with_context(|| format!("cannot create sandbox work root {}", work_root.display()))?;
    let mut dirs: Vec<&Path> = vec![work_root];
    if work_root.starts_with(data_dir) {
        dirs.extend(
            work_root
                .ancestors()
                .skip(1)
                .take_while(|dir| dir.starts_with(data_dir)),
        );
    }
    for dir in dirs {
        let meta =
            std::fs::metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .with_context(|| format!("cannot make {} searchable", dir.display()))?;
        }
    }
    Ok(())
}
