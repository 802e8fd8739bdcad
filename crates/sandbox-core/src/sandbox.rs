//! The backend trait and the errors of a run.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ceiling::Ceiling;
use crate::policy::PolicyError;
use crate::report::Capabilities;
use crate::run::{RunOptions, RunOutcome, RunRequest};

/// The future of one run. Dropping it before it completes kills the whole process tree of the
/// run and removes its work directory (a cancelled `RunStream` call kills the run).
pub type RunFuture = Pin<Box<dyn Future<Output = Result<RunOutcome, RunError>> + Send + 'static>>;

/// `security.sandbox.technology`: which backend to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Technology {
    /// The strongest available; falls back to `soft` with a loud warning.
    #[default]
    Auto,
    /// Landlock plus seccomp (and everything below); refuse to start without Landlock.
    Landlock,
    /// seccomp without Landlock: syscalls restricted, file system not.
    Seccomp,
    /// rlimits, environment, timeouts and path validation; no kernel file or network rules.
    Soft,
    /// No restrictions beyond supervision (timeout, output caps, killing the tree).
    None,
}

impl Technology {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Technology::Auto => "auto",
            Technology::Landlock => "landlock",
            Technology::Seccomp => "seccomp",
            Technology::Soft => "soft",
            Technology::None => "none",
        }
    }
}

impl fmt::Display for Technology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A technology name that is not one of `auto`, `landlock`, `seccomp`, `soft`, `none`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sandbox technology: {0} (expected auto, landlock, seccomp, soft or none)")]
pub struct UnknownTechnology(pub String);

impl FromStr for Technology {
    type Err = UnknownTechnology;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Technology::Auto,
            "landlock" => Technology::Landlock,
            "seccomp" => Technology::Seccomp,
            "soft" => Technology::Soft,
            "none" => Technology::None,
            other => return Err(UnknownTechnology(other.to_owned())),
        })
    }
}

/// Errors of a run. The comment on each variant gives the gRPC status the server maps it to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The policy violates the operator ceiling (`INVALID_ARGUMENT`).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The policy requires kernel enforcement and this host's backend lacks it
    /// (`FAILED_PRECONDITION`).
    #[error("kernel enforcement required but backend {backend} does not provide it")]
    KernelEnforcementUnavailable {
        /// The backend in use.
        backend: &'static str,
    },
    /// The concurrency bound is reached (`RESOURCE_EXHAUSTED`).
    #[error("too many concurrent runs (limit {limit})")]
    Busy {
        /// The configured bound.
        limit: usize,
    },
    /// `argv[0]` was not found on the sandbox's `PATH` or is not executable
    /// (`INVALID_ARGUMENT`).
    #[error("program not found or not executable: {program}")]
    ProgramNotFound {
        /// `argv[0]`.
        program: String,
    },
    /// A granted path does not exist or cannot be opened (`FAILED_PRECONDITION`).
    #[error("granted path unavailable: {path}: {source}")]
    PathUnavailable {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The child failed while applying the sandbox, before running the command (`INTERNAL`).
    #[error("sandbox setup failed in the child at {stage}: {source}")]
    Setup {
        /// Which step failed (for example `landlock_restrict_self`).
        stage: &'static str,
        /// The errno it returned.
        source: std::io::Error,
    },
    /// The command could not be executed after the sandbox was applied, for example because
    /// the policy does not grant read access to it (`FAILED_PRECONDITION`).
    #[error("cannot execute {program}: {source}")]
    Exec {
        /// The resolved program.
        program: PathBuf,
        /// The errno `execve` returned.
        source: std::io::Error,
    },
    /// Preparing the run failed on the server side (`INTERNAL`).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// A sandbox backend.
///
/// Implementations live in the platform crates (`sandbox-linux`, `sandbox-darwin`).
pub trait Sandbox: Send + Sync + fmt::Debug {
    /// Which technology this backend implements (never [`Technology::Auto`]).
    fn technology(&self) -> Technology;

    /// Whether this host supports the backend.
    fn is_available(&self) -> bool;

    /// What the backend enforces on this host.
    fn capabilities(&self) -> Capabilities;

    /// The default system read set granted when a policy has `system_paths` on, so the
    /// manager can check it against the ceiling's forbidden paths.
    fn system_read_paths(&self) -> Vec<PathBuf>;

    /// Starts a run. The policy and `cwd` have already been checked against `ceiling` by the
    /// [`Manager`](crate::Manager), by name. A backend whose rules attach to the objects it
    /// opens checks each opened grant again with [`Ceiling::check_opened`], because a name
    /// can change between that check and the open.
    fn run(&self, request: RunRequest, options: RunOptions, ceiling: &Arc<Ceiling>) -> RunFuture;
}
