//! The manager: picks a backend once at start-up and gates every run.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::ceiling::Ceiling;
use crate::policy::{Policy, PolicyError, PolicySpec};
use crate::report::Capabilities;
use crate::run::{RunOptions, RunRequest};
use crate::sandbox::{RunError, RunFuture, Sandbox, Technology};

/// Settings of a [`Manager`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// `security.sandbox.technology`.
    pub technology: Technology,
    /// The operator ceiling.
    pub ceiling: Ceiling,
    /// Runs allowed at once; beyond it [`RunError::Busy`] is returned at once (no queue).
    pub max_concurrent_runs: usize,
}

/// Errors constructing a [`Manager`]; `cordon serve` refuses to start on any of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The configured technology is not available on this host.
    #[error("sandbox technology {technology} is not available on this host: {reason}")]
    Unavailable {
        /// The configured technology.
        technology: Technology,
        /// Why (for example "landlock is not supported by this kernel").
        reason: String,
    },
    /// A path of the default system read set overlaps a forbidden path.
    #[error("the system read set overlaps a forbidden path: {0}")]
    SystemPathForbidden(#[source] PolicyError),
    /// `max_concurrent_runs` is zero.
    #[error("max_concurrent_runs must be at least 1")]
    NoConcurrency,
}

/// Chooses the backend and runs requests through it.
#[derive(Debug, Clone)]
pub struct Manager {
    backend: Arc<dyn Sandbox>,
    ceiling: Arc<Ceiling>,
    permits: Arc<Semaphore>,
    max_concurrent_runs: usize,
}

impl Manager {
    /// Chooses a backend among `candidates` (the platform crate's list, strongest first).
    ///
    /// An explicit technology must be available or construction fails. `auto` takes the
    /// first available candidate among `landlock`, `seccomp` and `soft`, in that order, and
    /// logs a warning when it has to settle for `soft`.
    pub fn new(
        config: ManagerConfig,
        candidates: Vec<Arc<dyn Sandbox>>,
    ) -> Result<Self, ManagerError> {
        if config.max_concurrent_runs == 0 {
            return Err(ManagerError::NoConcurrency);
        }
        let find = |technology: Technology| {
            candidates
                .iter()
                .find(|c| c.technology() == technology && c.is_available())
                .cloned()
        };
        let backend = match config.technology {
            Technology::Auto => {
                let chosen = [Technology::Landlock, Technology::Seccomp, Technology::Soft]
                    .into_iter()
                    .find_map(find)
                    .ok_or_else(|| ManagerError::Unavailable {
                        technology: Technology::Auto,
                        reason: "no sandbox backend is available".to_owned(),
                    })?;
                if chosen.technology() == Technology::Soft {
                    tracing::warn!(
                        "SANDBOX DEGRADED: no kernel enforcement available, using the soft \
                         backend (rlimits, environment, timeouts only); file system and \
                         network access of sandboxed commands are NOT restricted"
                    );
                } else if !chosen.capabilities().kernel_enforced {
                    tracing::warn!(
                        backend = chosen.technology().as_str(),
                        "sandbox backend does not enforce file system restrictions"
                    );
                }
                chosen
            }
            technology => find(technology).ok_or_else(|| ManagerError::Unavailable {
                technology,
                reason: format!("the {technology} backend is not supported by this host"),
            })?,
        };
        for path in backend.system_read_paths() {
            config
                .ceiling
                .check_system_path(&path)
                .map_err(ManagerError::SystemPathForbidden)?;
        }
        tracing::info!(
            backend = backend.technology().as_str(),
            "sandbox backend selected"
        );
        Ok(Manager {
            backend,
            ceiling: Arc::new(config.ceiling),
            permits: Arc::new(Semaphore::new(config.max_concurrent_runs)),
            max_concurrent_runs: config.max_concurrent_runs,
        })
    }

    /// The chosen backend.
    pub fn backend(&self) -> &Arc<dyn Sandbox> {
        &self.backend
    }

    /// The operator ceiling.
    pub fn ceiling(&self) -> &Ceiling {
        &self.ceiling
    }

    /// What the chosen backend enforces on this host.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// Validates a client's policy with the ceiling's defaults and checks it against the
    /// ceiling (errors map to `INVALID_ARGUMENT`).
    pub fn policy(&self, spec: &PolicySpec) -> Result<Policy, PolicyError> {
        self.ceiling.admit(spec)
    }

    /// Starts a run after checking the ceiling, `require_kernel_enforcement` and the
    /// concurrency bound. Those checks happen now, not when the future is first polled.
    /// Dropping the returned future kills the run.
    pub fn run(&self, request: RunRequest, options: RunOptions) -> RunFuture {
        match self.start(request, options) {
            Ok(future) => future,
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }

    fn start(&self, request: RunRequest, options: RunOptions) -> Result<RunFuture, RunError> {
        self.ceiling.check(request.policy())?;
        if let Some(cwd) = request.cwd() {
            self.ceiling.check_grant("cwd", cwd, true)?;
        }
        if request.policy().require_kernel_enforcement()
            && !self.backend.capabilities().kernel_enforced
        {
            return Err(RunError::KernelEnforcementUnavailable {
                backend: self.backend.technology().as_str(),
            });
        }
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| RunError::Busy {
                limit: self.max_concurrent_runs,
            })?;
        let run = self.backend.run(request, options, &self.ceiling);
        Ok(Box::pin(async move {
            let outcome = run.await;
            drop(permit);
            outcome
        }))
    }
}
