//! Process supervision shared by every backend.
//!
//! A platform crate spawns the child (that part needs raw system calls) and hands the
//! supervisor a [`ProcessControl`] plus the parent ends of the three pipes. The supervisor
//! then feeds standard input, reads both output streams concurrently with a per-stream cap
//! that keeps the head and the tail, enforces the wall-clock timeout, and kills the whole
//! process tree as soon as the main child exits or the timeout fires, so no process of a run
//! outlives its response.
//!
//! Why a trait instead of `unsafe` here: this crate forbids `unsafe`, and neither std nor a
//! safe wrapper offers everything a backend needs (`wait4` with the child's rusage,
//! `pidfd_open`, killing a cgroup). So the raw calls stay in the platform crate behind
//! [`ProcessControl`], while the pipes and timers use tokio's safe wrappers.
//!
//! A grandchild that keeps a pipe open cannot stall a run: once the main child has exited
//! and the tree has been killed, the supervisor waits at most [`DRAIN_GRACE`] for end of file
//! and then returns what it has.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::workdir::WorkDir;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::policy::Limits;
use crate::run::{CapturedOutput, OutputChunk, OutputStream};
use crate::sandbox::RunError;

/// The `PATH` every child gets (request variables may override it, but `argv[0]` is always
/// resolved on this one).
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The most read from an output pipe at once.
const READ_CHUNK: usize = 64 * 1024;

/// How long to keep reading output after the tree has been killed.
pub const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// The child's environment: nothing of the server's, only `PATH`, `LANG`, `TERM`, `HOME` and
/// `TMPDIR` (both the run's directory), then the request's own variables, which win.
pub fn child_environment(
    request_env: &BTreeMap<String, String>,
    home: &Path,
) -> Vec<(String, String)> {
    let home = home.display().to_string();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), SAFE_PATH.into());
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("TERM".into(), "dumb".into());
    env.insert("HOME".into(), home.clone());
    env.insert("TMPDIR".into(), home);
    for (k, v) in request_env {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// Resolves `argv[0]`: a name without a slash is searched on [`SAFE_PATH`]; a name with a
/// slash is taken relative to `cwd`.
pub fn resolve_program(argv0: &str, cwd: &Path) -> Result<PathBuf, RunError> {
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let not_found = || RunError::ProgramNotFound {
        program: argv0.to_owned(),
    };
    if argv0.contains('/') {
        let path = cwd.join(argv0);
        return if executable(&path) {
            Ok(path)
        } else {
            Err(not_found())
        };
    }
    SAFE_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(argv0))
        .find(|p| executable(p))
        .ok_or_else(not_found)
}

/// How the child ended and what it used, from `wait4`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code when it exited.
    pub exit_code: Option<i32>,
    /// Signal when a signal ended it.
    pub signal: Option<i32>,
    /// User CPU time in microseconds (the child and its reaped descendants).
    pub user_cpu_us: u64,
    /// System CPU time in microseconds.
    pub sys_cpu_us: u64,
    /// Peak resident set size in bytes.
    pub max_rss_bytes: u64,
}

/// The platform side of a running child.
///
/// Methods take `&self` so the supervisor can wait for the exit and kill the tree at the
/// same time; implementations keep their mutable state behind atomics or locks. Dropping an
/// implementation must kill the whole tree and reap the child, so that dropping a run's
/// future kills the run.
pub trait ProcessControl: Send + Sync {
    /// Resolves when the main child has exited, after reaping it.
    fn wait_exit(&self) -> Pin<Box<dyn Future<Output = io::Result<ExitInfo>> + Send + '_>>;

    /// Sends SIGKILL to every process of the run, including those that left the process
    /// group; returns once none is left or as soon as the platform cannot do better.
    fn kill_tree(&self);

    /// Limits the platform observed being hit (for example `process_limit`).
    fn violations(&self) -> Vec<String>;
}

/// The parent's ends of the child's standard streams.
#[derive(Debug)]
pub struct ChildPipes {
    /// Write end of the child's standard input; `None` when the child's input is not a pipe
    /// (it has none to get).
    pub stdin: Option<OwnedFd>,
    /// Read end of the child's standard output.
    pub stdout: OwnedFd,
    /// Read end of the child's standard error.
    pub stderr: OwnedFd,
    /// The platform made the three ends pipes in non-blocking mode already, so the supervisor
    /// takes them as they are; otherwise it checks that each is a pipe and switches it to
    /// non-blocking itself, three system calls per end.
    pub nonblocking: bool,
}

/// What the supervisor saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Supervised {
    /// How the main child ended.
    pub exit: ExitInfo,
    /// The timeout fired.
    pub timed_out: bool,
    /// Standard output.
    pub stdout: CapturedOutput,
    /// Standard error.
    pub stderr: CapturedOutput,
    /// Wall-clock time from `started` to the main child's exit, in microseconds.
    pub wall_us: u64,
}

impl Supervised {
    /// The limits the exit itself shows were hit: the timeout, and the signals
    /// the kernel sends when an rlimit is exceeded (SIGXCPU for CPU time,
    /// SIGXFSZ for file size). Every backend starts its violations from these.
    pub fn limit_violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        if self.timed_out {
            violations.push("timeout".to_owned());
        }
        match self.exit.signal {
            Some(libc::SIGXCPU) => violations.push("cpu_time_limit".to_owned()),
            Some(libc::SIGXFSZ) => violations.push("file_size_limit".to_owned()),
            _ => {}
        }
        violations
    }

    /// The run's outcome: what was supervised, with the backend's report and violations.
    pub fn into_outcome(
        self,
        enforcement: crate::EnforcementReport,
        violations: Vec<String>,
    ) -> crate::RunOutcome {
        crate::RunOutcome {
            exit_code: self.exit.exit_code,
            signal: self.exit.signal,
            timed_out: self.timed_out,
            stdout: self.stdout,
            stderr: self.stderr,
            usage: crate::Usage {
                user_cpu_us: self.exit.user_cpu_us,
                sys_cpu_us: self.exit.sys_cpu_us,
                max_rss_bytes: self.exit.max_rss_bytes,
                wall_us: self.wall_us,
            },
            enforcement,
            violations,
        }
    }
}

/// Supervises a spawned child until it and its whole tree are gone.
///
/// `started` is when the child was spawned; the timeout counts from it.
pub async fn supervise(
    control: &dyn ProcessControl,
    pipes: ChildPipes,
    stdin: Vec<u8>,
    limits: &Limits,
    sink: Option<mpsc::Sender<OutputChunk>>,
    started: Instant,
) -> Result<Supervised, RunError> {
    let io_error = |what| move |source| RunError::Io { what, source };
    let stdin_tx = match pipes.stdin {
        Some(fd) if !stdin.is_empty() => Some(
            if pipes.nonblocking {
                pipe::Sender::from_owned_fd_unchecked(fd)
            } else {
                pipe::Sender::from_owned_fd(fd)
            }
            .map_err(io_error("stdin pipe"))?,
        ),
        _ => None,
    };
    let cap = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    let mut out = Capped::new(cap);
    let mut err = Capped::new(cap);
    let deadline =
        tokio::time::Instant::from_std(started) + Duration::from_millis(limits.timeout_ms);

    let mut exit = None;
    let mut wall_us = 0;
    let mut timed_out = false;
    let mut killed = false;
    {
        let exit_fut = control.wait_exit();
        let out_fut = pump(
            pipes.stdout,
            pipes.nonblocking,
            &mut out,
            sink.clone(),
            OutputStream::Stdout,
        );
        let err_fut = pump(
            pipes.stderr,
            pipes.nonblocking,
            &mut err,
            sink,
            OutputStream::Stderr,
        );
        let stdin_fut = feed(stdin_tx, stdin);
        tokio::pin!(exit_fut, out_fut, err_fut, stdin_fut);
        let (mut out_done, mut err_done, mut stdin_done) = (false, false, false);
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if exit.is_some() && out_done && err_done {
                break;
            }
            let wake = drain_until.unwrap_or(deadline);
            let timer_armed = drain_until.is_some() || !timed_out;
            tokio::select! {
                biased;
                result = &mut exit_fut, if exit.is_none() => {
                    wall_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    exit = Some(result.map_err(io_error("waiting for the child"))?);
                    // The main child is gone: nothing else of the run may outlive it.
                    control.kill_tree();
                    killed = true;
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                }
                result = &mut out_fut, if !out_done => {
                    result.map_err(io_error("stdout pipe"))?;
                    out_done = true;
                }
                result = &mut err_fut, if !err_done => {
                    result.map_err(io_error("stderr pipe"))?;
                    err_done = true;
                }
                () = &mut stdin_fut, if !stdin_done => stdin_done = true,
                () = tokio::time::sleep_until(wake), if timer_armed => {
                    if drain_until.is_some() {
                        // A process we could not kill still holds a pipe: stop reading.
                        break;
                    }
                    timed_out = true;
                    control.kill_tree();
                    killed = true;
                }
            }
        }
    }
    if !killed {
        control.kill_tree();
    }
    Ok(Supervised {
        exit: exit.unwrap_or_default(),
        timed_out,
        stdout: out.finish(),
        stderr: err.finish(),
        wall_us,
    })
}

/// Reads one output pipe into `buf` (and `sink`) until its end of file.
async fn pump(
    fd: OwnedFd,
    nonblocking: bool,
    buf: &mut Capped,
    mut sink: Option<mpsc::Sender<OutputChunk>>,
    stream: OutputStream,
) -> io::Result<()> {
    let mut rx = if nonblocking {
        let Some(fd) = read_ready(fd, buf, &mut sink, stream).await else {
            return Ok(());
        };
        pipe::Receiver::from_owned_fd_unchecked(fd)?
    } else {
        pipe::Receiver::from_owned_fd(fd)?
    };
    // Most runs of short tools end without filling a pipe, often without writing at all:
    // the read buffer is only allocated once there is something to read, and `read_buf`
    // fills spare capacity, so it is never zeroed.
    let mut chunk = Vec::new();
    loop {
        if rx.readable().await.is_err() {
            return Ok(());
        }
        chunk.clear();
        chunk.reserve(READ_CHUNK);
        match rx.read_buf(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => deliver(&chunk[..n], buf, &mut sink, stream).await,
        }
    }
}

/// Reads what a non-blocking pipe already holds, without registering it with the runtime.
/// Returns the pipe while it is still open, `None` once it is at its end of file.
///
/// A short program has often written its output and exited before its supervision starts.
/// Registering a pipe that is already at its end of file would wake a runtime thread only to
/// report what one `read` here finds out at once.
async fn read_ready(
    fd: OwnedFd,
    buf: &mut Capped,
    sink: &mut Option<mpsc::Sender<OutputChunk>>,
    stream: OutputStream,
) -> Option<OwnedFd> {
    let mut pipe = std::fs::File::from(fd);
    let mut bytes = [0u8; READY_CHUNK];
    for _ in 0..READY_READS {
        match pipe.read(&mut bytes) {
            Ok(0) => return None,
            Ok(n) => deliver(&bytes[..n], buf, sink, stream).await,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // The poller reports the same error, and the pump ends there as it does here.
            Err(_) => return None,
        }
    }
    Some(OwnedFd::from(pipe))
}

/// Bytes per read, and most reads, before a pipe is registered with the runtime: together
/// one default pipe buffer.
const READY_CHUNK: usize = 4096;
const READY_READS: usize = 16;

/// Keeps `data` read from `stream` and passes it on to the sink while one listens.
async fn deliver(
    data: &[u8],
    buf: &mut Capped,
    sink: &mut Option<mpsc::Sender<OutputChunk>>,
    stream: OutputStream,
) {
    buf.push(data);
    if let Some(tx) = sink {
        let chunk = OutputChunk {
            stream,
            data: data.to_vec(),
        };
        if tx.send(chunk).await.is_err() {
            *sink = None;
        }
    }
}

async fn feed(tx: Option<pipe::Sender>, data: Vec<u8>) {
    if let Some(mut tx) = tx {
        // A child that exits without reading its input closes the pipe; that is its choice,
        // not an error of the run.
        let _ = tx.write_all(&data).await;
    }
}

/// An output buffer that keeps the first and the last bytes once the cap is exceeded.
#[derive(Debug)]
struct Capped {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capped {
    fn new(cap: usize) -> Self {
        let tail_cap = cap / 2;
        Capped {
            head_cap: cap - tail_cap,
            tail_cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_cap {
            self.tail.clear();
            self.tail
                .extend(data[data.len() - self.tail_cap..].iter().copied());
        } else {
            self.tail.extend(data.iter().copied());
            let excess = self.tail.len().saturating_sub(self.tail_cap);
            self.tail.drain(..excess);
        }
    }

    fn finish(self) -> CapturedOutput {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let mut bytes = self.head;
        bytes.extend(self.tail);
        CapturedOutput {
            bytes,
            truncated: kept < self.total,
            total_bytes: self.total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_keeps_everything_up_to_the_cap() {
        let mut c = Capped::new(10);
        c.push(b"0123456789");
        let out = c.finish();
        assert_eq!(out.bytes, b"0123456789");
        assert!(!out.truncated);
    }

    #[test]
    fn capped_keeps_head_and_tail() {
        let mut c = Capped::new(10);
        for chunk in [&b"abc"[..], b"defgh", b"ijklmnop", b"qrstuvwxyz"] {
            c.push(chunk);
        }
        let out = c.finish();
        assert_eq!(out.bytes, b"abcdevwxyz");
        assert!(out.truncated);
        assert_eq!(out.total_bytes, 26);
    }

    #[test]
    fn environment_is_an_allow_list_plus_request() {
        let mut req = BTreeMap::new();
        req.insert("FOO".to_owned(), "bar".to_owned());
        req.insert("LANG".to_owned(), "fr_FR.UTF-8".to_owned());
        let env = child_environment(&req, Path::new("/tmp/run"));
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["FOO", "HOME", "LANG", "PATH", "TERM", "TMPDIR"]);
        assert!(env.contains(&("LANG".to_owned(), "fr_FR.UTF-8".to_owned())));
        assert!(env.contains(&("HOME".to_owned(), "/tmp/run".to_owned())));
    }
}
