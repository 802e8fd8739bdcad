//! Per-run pids cgroups: a bounded process count and a reliable way to kill a whole tree.
//!
//! Each run gets `<pids root>/cordon/<server pid>/run-<n>` with `pids.max` set to the run's
//! `max_processes`. The child joins it before dropping root (it writes `0`, meaning itself,
//! to a `cgroup.procs` descriptor the parent opened), so every descendant is born inside and
//! neither `setsid` nor double forking escapes. Killing the run kills every process listed
//! in the cgroup until none is left.
//!
//! Creating and removing a cgroup directory costs more than the rest of a short run's
//! bookkeeping, so a run's cgroup goes back to a small pool once it is empty again and the
//! next run reuses it: `pids.max` is set anew, and the count of refused forks is measured
//! from where the previous run left it. A cgroup that cannot be emptied is never reused.
//! The cgroup keeps its `pids.max`, `pids.current`, `pids.events` and (v2) `cgroup.kill`
//! open, so a run reads and writes them with one system call each instead of a path walk, an
//! open and a close, and a kill works even when the server is out of descriptors; a run
//! that left no process behind (`pids.current` is 0) is done without listing `cgroup.procs`.
//! That file is opened afresh for every listing: a v1 descriptor that is read again may be
//! served the process list it cached a moment ago. A listing that cannot be made (no
//! descriptor left, say) never counts as an empty cgroup: the caller falls back to killing
//! the process group, and the cgroup is not reused.
//!
//! When the server starts it removes cgroups left by a server that crashed (its pid is gone),
//! killing what is still inside, so a crash leaves nothing running for long.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many empty run cgroups are kept for reuse.
const POOL_SIZE: usize = 64;

/// An empty run cgroup waiting for its next run.
#[derive(Debug)]
struct Idle {
    dir: PathBuf,
    procs: File,
    files: ControlFiles,
}

/// The pids controller's files of one run cgroup, open for as long as the cgroup exists.
#[derive(Debug)]
struct ControlFiles {
    /// `pids.max`, for writing.
    max: File,
    /// What this server last wrote to `pids.max` (`u64::MAX`: nothing yet). Only root can
    /// write the file and the runs are never root, so it still holds that value.
    max_written: AtomicU64,
    /// `pids.current`, for reading.
    current: File,
    /// `pids.events`, for reading.
    events: File,
    /// `cgroup.kill`, for writing (v2 only: v1 has none).
    kill: Option<File>,
    /// The refused forks counted once the last run's processes were all gone (`u64::MAX`:
    /// not known). Nothing can fork in an empty cgroup, so the next run starts from there
    /// without reading the file again.
    refused_when_emptied: AtomicU64,
}

impl ControlFiles {
    fn open(dir: &Path, v2: bool) -> io::Result<ControlFiles> {
        let write = |name: &str| OpenOptions::new().write(true).open(dir.join(name));
        Ok(ControlFiles {
            max: write("pids.max")?,
            max_written: AtomicU64::new(u64::MAX),
            current: File::open(dir.join("pids.current"))?,
            events: File::open(dir.join("pids.events"))?,
            // Linux 5.14 and later; before, the listing kills alone.
            kill: if v2 { write("cgroup.kill").ok() } else { None },
            refused_when_emptied: AtomicU64::new(u64::MAX),
        })
    }

    /// Sets `pids.max`; a pooled cgroup whose last run had the same limit is left as it is.
    fn set_max(&self, max_processes: u64) -> io::Result<()> {
        if self.max_written.load(Ordering::Relaxed) == max_processes {
            return Ok(());
        }
        let value = max_processes.to_string();
        let written = self.max.write_at(value.as_bytes(), 0)?;
        if written != value.len() {
            return Err(io::Error::other("short write to pids.max"));
        }
        self.max_written.store(max_processes, Ordering::Relaxed);
        Ok(())
    }

    /// Tasks in the cgroup now; `None` when the file cannot be read.
    fn current(&self) -> Option<u64> {
        read_small(&self.current)?.trim().parse().ok()
    }

    /// How many forks `pids.max` has refused since the cgroup was created.
    fn refused_forks(&self) -> u64 {
        read_small(&self.events)
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("max ").map(|n| n.trim().parse().ok()))
                    .flatten()
            })
            .unwrap_or(0)
    }
}

/// Reads a short control file from its start: a read at offset 0 makes the kernel produce
/// the value anew.
fn read_small(file: &File) -> Option<String> {
    let mut buffer = [0u8; 128];
    let len = file.read_at(&mut buffer, 0).ok()?;
    String::from_utf8(buffer.get(..len)?.to_vec()).ok()
}

/// Where this server creates run cgroups.
#[derive(Debug, Clone)]
pub(crate) struct CgroupRoot {
    base: PathBuf,
    v2: bool,
    pool: Arc<Mutex<Vec<Idle>>>,
}

impl CgroupRoot {
    /// Finds a writable pids controller (cgroup v1 at `/sys/fs/cgroup/pids`, or v2 with
    /// `pids` available) and prepares this server's directory; `None` when there is none.
    pub(crate) fn detect() -> Option<Self> {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let (root, v2) = if v1.join("cgroup.procs").exists() {
            (v1.to_owned(), false)
        } else {
            let unified = Path::new("/sys/fs/cgroup");
            let controllers = fs::read_to_string(unified.join("cgroup.controllers")).ok()?;
            if !controllers.split_whitespace().any(|c| c == "pids") {
                return None;
            }
            (unified.to_owned(), true)
        };
        let cordon = root.join("cordon");
        let base = cordon.join(std::process::id().to_string());
        let prepare = || -> io::Result<()> {
            if v2 {
                fs::write(root.join("cgroup.subtree_control"), "+pids")?;
            }
            fs::create_dir_all(&cordon)?;
            if v2 {
                fs::write(cordon.join("cgroup.subtree_control"), "+pids")?;
            }
            sweep_stale(&cordon);
            fs::create_dir_all(&base)?;
            if v2 {
                fs::write(base.join("cgroup.subtree_control"), "+pids")?;
            }
            if !base.join("pids.max").exists() {
                return Err(io::Error::other("pids.max missing"));
            }
            Ok(())
        };
        match prepare() {
            Ok(()) => Some(CgroupRoot {
                base,
                v2,
                pool: Arc::default(),
            }),
            Err(error) => {
                tracing::warn!(%error, root = %root.display(), "pids cgroup unusable");
                None
            }
        }
    }

    /// The cgroup of one run: an idle one from the pool, or a new one.
    pub(crate) fn create_run(&self, max_processes: u64) -> io::Result<RunCgroup> {
        let idle = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(idle) = idle {
            let refused_before = match idle
                .files
                .refused_when_emptied
                .swap(u64::MAX, Ordering::Relaxed)
            {
                u64::MAX => idle.files.refused_forks(),
                known => known,
            };
            let cgroup = RunCgroup {
                dir: idle.dir,
                procs: Some(idle.procs),
                files: Some(idle.files),
                refused_before,
                pool: Some(Arc::clone(&self.pool)),
                emptied: AtomicBool::new(false),
            };
            cgroup.files()?.set_max(max_processes)?;
            return Ok(cgroup);
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = self
            .base
            .join(format!("run-{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir(&dir)?;
        // From here on, dropping the value removes the directory again on any error.
        let mut cgroup = RunCgroup {
            procs: None,
            files: None,
            dir,
            refused_before: 0,
            pool: None,
            emptied: AtomicBool::new(false),
        };
        let files = ControlFiles::open(&cgroup.dir, self.v2)?;
        files.set_max(max_processes)?;
        cgroup.files = Some(files);
        cgroup.procs = Some(
            OpenOptions::new()
                .write(true)
                .open(cgroup.dir.join("cgroup.procs"))?,
        );
        cgroup.pool = Some(Arc::clone(&self.pool));
        Ok(cgroup)
    }
}

/// Kills and removes cgroups of servers that are no longer running.
fn sweep_stale(cordon: &Path) {
    let Ok(entries) = fs::read_dir(cordon) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(runs) = fs::read_dir(entry.path()) {
            for run in runs.flatten().filter(|r| r.path().is_dir()) {
                kill_listed(&run.path());
                let _ = fs::remove_dir(run.path());
            }
        }
        let _ = fs::remove_dir(entry.path());
        tracing::warn!(pid, "removed the sandbox cgroups of a server that is gone");
    }
}

/// Sends SIGKILL to every process in the cgroup at `dir` until none is left (bounded); true
/// when it is empty. Only a cgroup that no longer exists counts as empty without a listing:
/// one that cannot be read (no descriptor left, say) may still hold processes.
fn kill_listed(dir: &Path) -> bool {
    let procs = dir.join("cgroup.procs");
    for round in 0..200 {
        let mut text = String::new();
        match File::open(&procs).and_then(|mut f| f.read_to_string(&mut text)) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return true,
            Err(_) => return false,
        }
        let pids: Vec<libc::pid_t> = text.lines().filter_map(|l| l.parse().ok()).collect();
        if pids.is_empty() {
            return true;
        }
        for pid in pids {
            // SAFETY: kill has no memory effects; a pid that exited in between is ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if round > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    false
}

/// The cgroup of one run; dropping it kills what is left inside and returns it to the pool,
/// or removes it.
#[derive(Debug)]
pub(crate) struct RunCgroup {
    dir: PathBuf,
    procs: Option<File>,
    /// `None` only while a new cgroup is being set up.
    files: Option<ControlFiles>,
    /// Forks `pids.max` had refused before this run (a reused cgroup keeps counting).
    refused_before: u64,
    /// Where the cgroup goes back when it is empty; `None` until it is fully set up.
    pool: Option<Arc<Mutex<Vec<Idle>>>>,
    /// A kill found the cgroup empty. Only a process inside can add one (by forking), so an
    /// empty run cgroup stays empty and is not read again.
    emptied: AtomicBool,
}

impl RunCgroup {
    /// The `cgroup.procs` descriptor the child writes `0` into.
    pub(crate) fn procs_fd(&self) -> Option<BorrowedFd<'_>> {
        self.procs.as_ref().map(|f| f.as_fd())
    }

    fn files(&self) -> io::Result<&ControlFiles> {
        self.files
            .as_ref()
            .ok_or_else(|| io::Error::other("the run cgroup is not set up"))
    }

    /// Kills every process of the run; true when the cgroup is empty afterwards.
    pub(crate) fn kill_all(&self) -> bool {
        if self.emptied.load(Ordering::Relaxed) {
            return true;
        }
        // No task inside means none can fork one in, so there is nothing to list or kill.
        if self.files.as_ref().and_then(ControlFiles::current) == Some(0) {
            self.emptied.store(true, Ordering::Relaxed);
            return true;
        }
        if let Some(kill) = self.files.as_ref().and_then(|f| f.kill.as_ref()) {
            // Kills every process at once, forking or not; the listing below confirms it.
            let _ = kill.write_at(b"1", 0);
        }
        let empty = kill_listed(&self.dir);
        self.emptied.store(empty, Ordering::Relaxed);
        empty
    }

    /// How many forks `pids.max` refused during this run.
    pub(crate) fn limit_hits(&self) -> u64 {
        let Some(files) = self.files.as_ref() else {
            return 0;
        };
        let refused = files.refused_forks();
        if self.emptied.load(Ordering::Relaxed) {
            files.refused_when_emptied.store(refused, Ordering::Relaxed);
        }
        refused.saturating_sub(self.refused_before)
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take()
            && self.kill_all()
            && let Some(procs) = self.procs.take()
            && let Some(files) = self.files.take()
        {
            let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_SIZE {
                pool.push(Idle {
                    dir: std::mem::take(&mut self.dir),
                    procs,
                    files,
                });
                return;
            }
        }
        // The control files stay open until the end: the kills below use them, and open
        // files do not keep a cgroup from being removed.
        self.procs = None;
        for _ in 0..50 {
            self.kill_all();
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        tracing::warn!(dir = %self.dir.display(), "cannot remove run cgroup");
    }
}
