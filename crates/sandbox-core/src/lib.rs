//! Platform-independent half of the Cordon sandbox.
//!
//! This crate holds everything that is the same on every operating system:
//!
//! - [`policy`]: the validated [`Policy`] (built from a [`PolicySpec`], which is also the
//!   TOML policy-file format) and its [`Limits`] and [`NetworkPolicy`];
//! - [`ceiling`]: the operator [`Ceiling`] that bounds what any client may request;
//! - [`run`]: the [`RunRequest`] a client sends and the [`RunOutcome`] it gets back;
//! - [`report`]: the [`EnforcementReport`] saying which layers the kernel enforced;
//! - [`sandbox`]: the [`Sandbox`] trait a platform backend implements;
//! - [`manager`]: the [`Manager`] that picks a backend from a [`Technology`];
//! - [`supervise`]: process supervision shared by every backend (timeouts, killing the whole
//!   tree, capped output, the child environment, per-run work directories, usage).
//!
//! The crate contains no `unsafe`: everything that needs raw system calls (fork, wait4, kill)
//! sits behind the [`supervise::ProcessControl`] trait, which the platform crates implement.
//! The supervisor itself only needs pipes and timers, which tokio offers safely.
#![forbid(unsafe_code)]

pub mod ceiling;
pub mod manager;
pub mod policy;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod supervise;
mod workdir;

pub use ceiling::{Ceiling, CeilingConfig};
pub use manager::{Manager, ManagerConfig, ManagerError};
pub use policy::{
    Limits, LimitsSpec, NetworkMode, NetworkPolicy, NetworkSpec, Policy, PolicyError,
    PolicyFileError, PolicySpec,
};
pub use report::{Capabilities, Containment, EnforcementReport, LandlockStatus};
pub use run::{
    CapturedOutput, MAX_ARG_STRLEN, MAX_ARG_TOTAL, OutputChunk, OutputStream, RequestError,
    RunOptions, RunOutcome, RunRequest, Usage,
};
pub use sandbox::{RunError, RunFuture, Sandbox, Technology, UnknownTechnology};
