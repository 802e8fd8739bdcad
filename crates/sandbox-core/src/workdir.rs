//! Per-run working directories, made ahead of time and removed off the run's path.
//!
//! Creating a directory (and giving it to the run's uid) and removing it afterwards cost a
//! short run about as much as everything else the supervisor does, mostly in the file
//! system's journal. A background thread, the janitor, therefore keeps a few fresh
//! directories ready for each (root, owner) pair in use, and removes the directories of
//! finished runs. A directory handed to a run has never been used before: it was created
//! empty with mode 0700 and the run's owner, and nothing but the janitor knew its name. When
//! no directory is ready the run creates its own, exactly as the janitor would; when the
//! janitor is gone the run removes its own.
//!
//! Directories are named `run-<server pid>-<n>`. The ready directories of a server that has
//! stopped, and whatever a crashed one left, are removed the first time a later server uses
//! the same root.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// Fresh directories kept ready per (root, owner). Sixteen, which wakes the janitor every
/// eighth run, measured faster than eight.
const READY: usize = 16;

/// The janitor is woken to top up a place once this few of its directories are left ready.
const LOW_WATER: usize = READY / 2;

/// The janitor is woken to remove finished runs' directories once this many are waiting.
const REMOVE_BATCH: usize = READY / 2;

/// How long a finished run's directory may wait for a batch while runs are going on.
const LINGER: Duration = Duration::from_millis(100);

/// Where directories are made and who owns them.
type Place = (PathBuf, Option<(u32, u32)>);

/// What the janitor is doing, which decides whether a run must wake it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// Working, or woken and about to: it looks at everything before it sleeps again.
    Busy,
    /// Asleep until woken or until [`LINGER`] has passed: it had work last time it looked,
    /// so runs are going on.
    Lingering,
    /// Asleep until woken: it had nothing to do last time it looked.
    Idle,
}

/// What the runs and the janitor share.
struct Shelf {
    ready: HashMap<Place, Vec<PathBuf>>,
    /// Directories of finished runs, waiting for removal.
    doomed: Vec<PathBuf>,
    activity: Activity,
}

/// The janitor's shelf and the signal that wakes it.
///
/// Waking a sleeping thread costs about as much as making a directory on a fast file
/// system, and a run that wakes the janitor pays for it before its child starts. So runs
/// wake it only once a place runs low or finished directories have piled up, and it then
/// does a batch: a wake-up for every few runs instead of one or two per run. While runs
/// are going on it also looks on its own every [`LINGER`], so a finished directory never
/// waits much longer than that; once a look finds nothing to do it sleeps until a run
/// wakes it, and the first directory given back then does.
struct Janitor {
    shelf: Mutex<Shelf>,
    wake: Condvar,
}

/// The janitor, started on first use; `None` when its thread could not be started.
fn janitor() -> Option<&'static Janitor> {
    static JANITOR: OnceLock<Option<Janitor>> = OnceLock::new();
    JANITOR
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("cordon-workdirs".to_owned())
                .spawn(|| {
                    if let Some(janitor) = janitor() {
                        janitor.work();
                    }
                })
                .ok()?;
            Some(Janitor {
                shelf: Mutex::new(Shelf {
                    ready: HashMap::new(),
                    doomed: Vec::new(),
                    activity: Activity::Busy,
                }),
                wake: Condvar::new(),
            })
        })
        .as_ref()
}

impl Janitor {
    fn shelf(&self) -> MutexGuard<'_, Shelf> {
        self.shelf.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the janitor unless it is already busy; the caller holds the shelf.
    fn rouse(&self, shelf: &mut Shelf) {
        if shelf.activity != Activity::Busy {
            shelf.activity = Activity::Busy;
            self.wake.notify_one();
        }
    }

    /// A ready directory of `place`, if there is one.
    fn take_ready(&self, place: &Place) -> Option<PathBuf> {
        let mut shelf = self.shelf();
        let ready = match shelf.ready.get_mut(place) {
            Some(ready) => ready,
            None => {
                // A new place: the janitor stocks it from now on.
                shelf.ready.insert(place.clone(), Vec::new());
                self.rouse(&mut shelf);
                return None;
            }
        };
        let path = ready.pop();
        if ready.len() <= LOW_WATER {
            self.rouse(&mut shelf);
        }
        path
    }

    /// Takes back a finished run's directory for removal.
    fn give_back(&self, path: PathBuf) {
        let mut shelf = self.shelf();
        shelf.doomed.push(path);
        if shelf.activity == Activity::Idle || shelf.doomed.len() >= REMOVE_BATCH {
            self.rouse(&mut shelf);
        }
    }

    /// The janitor's loop: remove what is doomed and top up every place, then sleep.
    fn work(&self) -> ! {
        let mut swept = std::collections::HashSet::new();
        let mut shelf = self.shelf();
        loop {
            shelf.activity = Activity::Busy;
            let doomed = std::mem::take(&mut shelf.doomed);
            let wanted: Vec<(Place, usize)> = shelf
                .ready
                .iter()
                .filter(|(_, ready)| ready.len() < READY)
                .map(|(place, ready)| (place.clone(), READY - ready.len()))
                .collect();
            drop(shelf);
            let had_work = !doomed.is_empty() || !wanted.is_empty();
            for path in &doomed {
                remove(path);
            }
            let mut stocked = true;
            for (place, missing) in wanted {
                if swept.insert(place.0.clone()) {
                    sweep_stale(&place.0);
                }
                let made = make_some(&place, missing);
                stocked &= made.len() == missing;
                self.shelf().ready.entry(place).or_default().extend(made);
            }
            shelf = self.shelf();
            // Runs do not wake a busy janitor, so it looks again before it sleeps; a place it
            // failed to stock waits for the next round rather than being retried at once.
            let running_low = shelf.ready.values().any(|ready| ready.len() <= LOW_WATER);
            if !shelf.doomed.is_empty() || (stocked && running_low) {
                continue;
            }
            shelf = if had_work {
                shelf.activity = Activity::Lingering;
                self.wake
                    .wait_timeout(shelf, LINGER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            } else {
                shelf.activity = Activity::Idle;
                self.wake
                    .wait(shelf)
                    .unwrap_or_else(PoisonError::into_inner)
            };
        }
    }
}

/// Makes up to `count` directories for `place`; stops at the first failure, which is logged.
fn make_some(place: &Place, count: usize) -> Vec<PathBuf> {
    let (root, owner) = place;
    let mut made = Vec::with_capacity(count);
    // The root is made sure of once per batch, not once per directory.
    let result = make_root(root).and_then(|()| {
        for _ in 0..count {
            made.push(make_in(root, *owner)?);
        }
        Ok(())
    });
    if let Err(error) = result {
        tracing::warn!(root = %root.display(), %error, "cannot prepare run directories");
    }
    made
}

/// Creates a fresh directory (mode 0700) under `root`, and `root` itself if need be, owned by
/// `owner` when given.
fn make(root: &Path, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
    make_root(root)?;
    make_in(root, owner)
}

/// Creates `root` (mode 0711: runs may enter their own directories, not list the others) unless
/// it exists.
fn make_root(root: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(root)
}

/// Creates a fresh directory (mode 0700) in the existing `root`, owned by `owner` when given.
fn make_in(root: &Path, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = root.join(format!("run-{}-{n}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&path)?;
    if let Some((uid, gid)) = owner
        && let Err(error) = std::os::unix::fs::chown(&path, Some(uid), Some(gid))
    {
        remove(&path);
        return Err(error);
    }
    Ok(path)
}

/// Removes the directories under `root` of servers that are no longer running. Without
/// `/proc` there is no safe way here to tell a dead server from a live one, so nothing is
/// removed.
fn sweep_stale(root: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove(&entry.path());
        }
    }
}

fn remove(path: &Path) {
    // Most runs leave their directory empty, and one rmdir is far cheaper than opening and
    // listing it first; anything else takes the full, symlink-safe removal.
    if std::fs::remove_dir(path).is_ok() {
        return;
    }
    if let Err(error) = std::fs::remove_dir_all(path) {
        tracing::warn!(path = %path.display(), %error, "cannot remove run directory");
    }
}

/// A run's working directory: a fresh directory removed after the run, or a granted `cwd`
/// that is left alone.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    /// A fresh directory (mode 0700) under `root`, owned by `owner` when given: one the
    /// janitor made ready, or a new one.
    pub fn create(root: &Path, owner: Option<(u32, u32)>) -> io::Result<Self> {
        let place = (root.to_owned(), owner);
        let path = match janitor().and_then(|janitor| janitor.take_ready(&place)) {
            Some(path) => path,
            None => make(root, owner)?,
        };
        Ok(WorkDir { path, remove: true })
    }

    /// Uses an existing directory (a granted `cwd`); it is not removed.
    pub fn existing(path: &Path) -> Self {
        WorkDir {
            path: path.to_owned(),
            remove: false,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.remove {
            return;
        }
        let path = std::mem::take(&mut self.path);
        match janitor() {
            Some(janitor) => janitor.give_back(path),
            None => remove(&path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone_soon(path: &Path) -> bool {
        for _ in 0..500 {
            if !path.exists() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn every_run_gets_a_fresh_empty_directory_that_is_removed_after() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut seen = std::collections::HashSet::new();
        for n in 0..12 {
            let dir = WorkDir::create(root.path(), None).expect("work dir");
            let path = dir.path().to_owned();
            assert!(
                seen.insert(path.clone()),
                "{} handed out twice",
                path.display()
            );
            assert_eq!(std::fs::read_dir(&path).expect("readable").count(), 0);
            let mode = std::fs::metadata(&path).expect("exists").permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o700
            );
            // Empty and non-empty directories take different ways out.
            if n % 2 == 0 {
                std::fs::create_dir(path.join("nested")).expect("writable");
                std::fs::write(path.join("nested/left-behind"), b"x").expect("writable");
            }
            drop(dir);
            assert!(gone_soon(&path), "{} was not removed", path.display());
        }
    }

    #[test]
    fn a_granted_directory_is_left_alone() {
        let root = tempfile::tempdir().expect("tempdir");
        drop(WorkDir::existing(root.path()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(root.path().exists());
    }
}
