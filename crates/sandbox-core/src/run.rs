//! A run: the request a client sends and the outcome it gets back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::policy::{Policy, PolicyError, normalized_path};
use crate::report::EnforcementReport;

/// Errors building a [`RunRequest`]; the server maps them to `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// `argv` is empty.
    #[error("argv is empty")]
    EmptyArgv,
    /// An argument contains a NUL byte.
    #[error("argv[{index}] contains a nul byte")]
    NulInArgument {
        /// Position in argv.
        index: usize,
    },
    /// An environment variable name is empty or contains `=` or NUL.
    #[error("invalid environment variable name: {name:?}")]
    InvalidEnvName {
        /// The offending name.
        name: String,
    },
    /// An environment variable value contains NUL.
    #[error("environment variable {name} contains a nul byte")]
    NulInEnvValue {
        /// The variable's name.
        name: String,
    },
    /// `cwd` is not an absolute normalized path.
    #[error("cwd: {0}")]
    InvalidCwd(PolicyError),
    /// `cwd` is not a granted write path (or beneath one).
    #[error("cwd is not a granted write path: {path}")]
    CwdNotWritable {
        /// The offending path.
        path: String,
    },
}

/// A validated request to run one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    stdin: Vec<u8>,
    policy: Policy,
}

impl RunRequest {
    /// A request to run `argv` (no shell; `argv[0]` is resolved on the sandbox's `PATH`).
    pub fn new(argv: Vec<String>, policy: Policy) -> Result<Self, RequestError> {
        if argv.is_empty() {
            return Err(RequestError::EmptyArgv);
        }
        if let Some(index) = argv.iter().position(|a| a.contains('\0')) {
            return Err(RequestError::NulInArgument { index });
        }
        Ok(RunRequest {
            argv,
            env: BTreeMap::new(),
            cwd: None,
            stdin: Vec::new(),
            policy,
        })
    }

    /// Adds an environment variable; it overrides the sandbox's own (`PATH`, `HOME`, ...).
    pub fn with_env(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, RequestError> {
        let (name, value) = (name.into(), value.into());
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(RequestError::InvalidEnvName { name });
        }
        if value.contains('\0') {
            return Err(RequestError::NulInEnvValue { name });
        }
        self.env.insert(name, value);
        Ok(self)
    }

    /// Runs in `cwd` instead of a fresh per-run directory; `cwd` must be a granted write path
    /// or lie beneath one.
    pub fn with_cwd(mut self, cwd: &str) -> Result<Self, RequestError> {
        let path = normalized_path(cwd).map_err(RequestError::InvalidCwd)?;
        if !self.policy.is_writable(&path) {
            return Err(RequestError::CwdNotWritable {
                path: cwd.to_owned(),
            });
        }
        self.cwd = Some(path);
        Ok(self)
    }

    /// Bytes fed to the child's standard input.
    pub fn with_stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = stdin.into();
        self
    }

    /// The command and its arguments.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The request's own environment variables.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// The requested working directory, if any.
    pub fn cwd(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// Standard input bytes.
    pub fn stdin(&self) -> &[u8] {
        &self.stdin
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of output as the child wrote it, for streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// The stream it came from.
    pub stream: OutputStream,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Per-run options that are not part of the request itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// When set, every chunk of output is also sent here as it is read, before the run ends.
    /// Sending waits for room in the channel, so a slow receiver slows the child down, but
    /// never past the run's timeout. A closed receiver is ignored.
    pub output: Option<mpsc::Sender<OutputChunk>>,
}

/// Captured output of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    /// The bytes kept: all of them, or the head and the tail when truncated.
    pub bytes: Vec<u8>,
    /// The stream was longer than the cap; the middle was dropped.
    pub truncated: bool,
    /// How many bytes the child wrote in total.
    pub total_bytes: u64,
}

/// Resources the run consumed (from `wait4` of the child, not the server's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User CPU time in microseconds.
    pub user_cpu_us: u64,
    /// System CPU time in microseconds.
    pub sys_cpu_us: u64,
    /// Peak resident set size in bytes.
    pub max_rss_bytes: u64,
    /// Wall-clock time from spawn to exit in microseconds.
    pub wall_us: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// The exit code, `None` when a signal ended the child (the proto maps `None` to -1).
    pub exit_code: Option<i32>,
    /// The signal that ended the child, `None` when it exited (the proto maps `None` to 0).
    pub signal: Option<i32>,
    /// The run hit its wall-clock timeout and was killed.
    pub timed_out: bool,
    /// Standard output.
    pub stdout: CapturedOutput,
    /// Standard error.
    pub stderr: CapturedOutput,
    /// Resource usage.
    pub usage: Usage,
    /// What was enforced.
    pub enforcement: EnforcementReport,
    /// Limits or denials the backend observed (for example `timeout`, `cpu_time_limit`,
    /// `process_limit`), as short machine-readable phrases.
    pub violations: Vec<String>,
}
