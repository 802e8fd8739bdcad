//! A run: the request a client sends and the outcome it gets back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::policy::{Policy, PolicyError, normalized_path};
use crate::report::EnforcementReport;

/// The longest string `execve` takes as one argument or one `NAME=value` environment entry,
/// counting its terminating NUL: Linux's `MAX_ARG_STRLEN`, 32 pages of 4 KiB. The kernel
/// refuses a longer one with E2BIG whatever the stack limit, so a request holding one could
/// never run.
pub const MAX_ARG_STRLEN: usize = 32 * 4096;

/// The most bytes `argv` and the request's `env` may take together, counted as the kernel
/// counts them: each string with its NUL and its pointer. Linux allows a quarter of the stack
/// limit (2 MiB under the usual 8 MiB) for these together with the sandbox's own variables,
/// and macOS allows 1 MiB in all, of which `sandbox-exec` takes its profile; half a MiB leaves
/// room for those on both and is far more than a command line needs.
pub const MAX_ARG_TOTAL: usize = 512 * 1024;

/// The bytes one argv or environment string of `len` bytes takes in the new program's stack.
fn exec_bytes(len: usize) -> usize {
    len + 1 + size_of::<usize>()
}

/// Errors building a [`RunRequest`]; the server maps them to `INVALID_ARGUMENT`. Each names the
/// request field it is about: `argv` (with the index), `env` (with the variable) or `cwd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// `argv` is empty.
    #[error("argv is empty")]
    EmptyArgv,
    /// `argv[0]`, the program, is the empty string.
    #[error("argv[0] is empty: it names the program to run")]
    EmptyProgram,
    /// An argument contains a NUL byte.
    #[error("argv[{index}] contains a nul byte")]
    NulInArgument {
        /// Position in argv.
        index: usize,
    },
    /// An argument is longer than [`MAX_ARG_STRLEN`] allows.
    #[error(
        "argv[{index}] is {len} bytes, above the limit of {max} bytes for one argument",
        max = MAX_ARG_STRLEN - 1
    )]
    ArgumentTooLong {
        /// Position in argv.
        index: usize,
        /// The argument's length in bytes.
        len: usize,
    },
    /// `argv` alone takes more than [`MAX_ARG_TOTAL`].
    #[error(
        "argv takes {total} bytes, above the limit of {MAX_ARG_TOTAL} bytes for argv and env together"
    )]
    ArgvTooLarge {
        /// The bytes argv takes, counted as for [`MAX_ARG_TOTAL`].
        total: usize,
    },
    /// An environment variable name is empty or contains `=` or NUL.
    #[error("env: invalid variable name {name:?}")]
    InvalidEnvName {
        /// The offending name.
        name: String,
    },
    /// An environment variable value contains NUL.
    #[error("env[{name}] contains a nul byte")]
    NulInEnvValue {
        /// The variable's name.
        name: String,
    },
    /// A `NAME=value` environment entry is longer than [`MAX_ARG_STRLEN`] allows.
    #[error(
        "env[{name}] is {len} bytes as NAME=value, above the limit of {max} bytes for one variable",
        max = MAX_ARG_STRLEN - 1
    )]
    EnvTooLong {
        /// The variable's name.
        name: String,
        /// The length of `NAME=value` in bytes.
        len: usize,
    },
    /// With this variable, `argv` and `env` take more than [`MAX_ARG_TOTAL`].
    #[error(
        "env[{name}] brings argv and env to {total} bytes, above the limit of {MAX_ARG_TOTAL} bytes for both together"
    )]
    EnvTooLarge {
        /// The variable that crossed the limit.
        name: String,
        /// The bytes argv and env would take with it, counted as for [`MAX_ARG_TOTAL`].
        total: usize,
    },
    /// `cwd` is not an absolute normalized path.
    #[error(transparent)]
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
    /// What `argv` and `env` take in the new program's stack, at most [`MAX_ARG_TOTAL`].
    exec_total: usize,
    cwd: Option<PathBuf>,
    stdin: Vec<u8>,
    policy: Policy,
}

impl RunRequest {
    /// A request to run `argv` (no shell; `argv[0]` is resolved on the sandbox's `PATH`).
    ///
    /// Arguments are checked against the kernel's limits ([`MAX_ARG_STRLEN`],
    /// [`MAX_ARG_TOTAL`]) here, so that a request the kernel would refuse to execute is refused
    /// as the client's error, naming the argument.
    pub fn new(argv: Vec<String>, policy: Policy) -> Result<Self, RequestError> {
        match argv.first() {
            None => return Err(RequestError::EmptyArgv),
            Some(program) if program.is_empty() => return Err(RequestError::EmptyProgram),
            Some(_) => {}
        }
        for (index, arg) in argv.iter().enumerate() {
            if arg.contains('\0') {
                return Err(RequestError::NulInArgument { index });
            }
            if arg.len() + 1 > MAX_ARG_STRLEN {
                return Err(RequestError::ArgumentTooLong {
                    index,
                    len: arg.len(),
                });
            }
        }
        let total = argv.iter().map(|a| exec_bytes(a.len())).sum();
        if total > MAX_ARG_TOTAL {
            return Err(RequestError::ArgvTooLarge { total });
        }
        Ok(RunRequest {
            argv,
            env: BTreeMap::new(),
            exec_total: total,
            cwd: None,
            stdin: Vec::new(),
            policy,
        })
    }

    /// Adds an environment variable; it overrides the sandbox's own (`PATH`, `HOME`, ...).
    /// Like arguments, it is checked against [`MAX_ARG_STRLEN`] and, with argv and the other
    /// variables, against [`MAX_ARG_TOTAL`].
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
        let len = name.len() + 1 + value.len();
        if len + 1 > MAX_ARG_STRLEN {
            return Err(RequestError::EnvTooLong { name, len });
        }
        let replaced = self
            .env
            .get(&name)
            .map_or(0, |old| exec_bytes(name.len() + 1 + old.len()));
        let total = self.exec_total - replaced + exec_bytes(len);
        if total > MAX_ARG_TOTAL {
            return Err(RequestError::EnvTooLarge { name, total });
        }
        self.exec_total = total;
        self.env.insert(name, value);
        Ok(self)
    }

    /// Runs in `cwd` instead of a fresh per-run directory; `cwd` must be a granted write path
    /// or lie beneath one.
    pub fn with_cwd(mut self, cwd: &str) -> Result<Self, RequestError> {
        let path = normalized_path("cwd", cwd).map_err(RequestError::InvalidCwd)?;
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
