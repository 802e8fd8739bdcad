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
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};

/// Fresh directories kept ready per (root, owner).
const READY: usize = 4;

/// Where directories are made and who owns them.
type Place = (PathBuf, Option<(u32, u32)>);

enum Chore {
    Prepare(Place),
    Remove(PathBuf),
}

/// The janitor's queue and the directories it has made ready.
struct Janitor {
    chores: mpsc::Sender<Chore>,
    ready: Mutex<HashMap<Place, Vec<PathBuf>>>,
}

/// The janitor, started on first use; `None` when its thread could not be started.
fn janitor() -> Option<&'static Janitor> {
    static JANITOR: OnceLock<Option<Janitor>> = OnceLock::new();
    JANITOR
        .get_or_init(|| {
            let (sender, receiver) = mpsc::channel();
            std::thread::Builder::new()
                .name("cordon-workdirs".to_owned())
                .spawn(move || {
                    for chore in receiver {
                        match chore {
                            Chore::Prepare(place) => prepare(place),
                            Chore::Remove(path) => {
                                remove(&path);
                                top_up();
                            }
                        }
                    }
                })
                .ok()?;
            Some(Janitor {
                chores: sender,
                ready: Mutex::default(),
            })
        })
        .as_ref()
}

impl Janitor {
    fn send(&self, chore: Chore) -> Result<(), Chore> {
        self.chores.send(chore).map_err(|e| e.0)
    }

    /// A ready directory of `place`, if there is one, and whether the janitor knows `place`.
    fn take_ready(&self, place: &Place) -> (Option<PathBuf>, bool) {
        match self
            .ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(place)
        {
            Some(ready) => (ready.pop(), true),
            None => (None, false),
        }
    }
}

/// Tops up the ready directories of every place in use (on the janitor's thread). Every run
/// that takes a directory sends it back for removal, so topping up there keeps the places
/// stocked with one wake-up of the janitor per run instead of two.
fn top_up() {
    let Some(janitor) = janitor() else {
        return;
    };
    let places: Vec<Place> = janitor
        .ready
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .cloned()
        .collect();
    for place in places {
        prepare(place);
    }
}

/// Tops up the ready directories of `place` (on the janitor's thread).
fn prepare(place: Place) {
    let Some(janitor) = janitor() else {
        return;
    };
    let (first_use, missing) = {
        let ready = janitor.ready.lock().unwrap_or_else(PoisonError::into_inner);
        let count = ready.get(&place).map(Vec::len);
        (count.is_none(), READY.saturating_sub(count.unwrap_or(0)))
    };
    if first_use {
        sweep_stale(&place.0);
    }
    for _ in 0..missing {
        match make(&place.0, place.1) {
            Ok(path) => janitor
                .ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(place.clone())
                .or_default()
                .push(path),
            Err(error) => {
                tracing::warn!(root = %place.0.display(), %error, "cannot prepare run directories");
                return;
            }
        }
    }
}

/// Creates a fresh directory (mode 0700) under `root`, owned by `owner` when given.
fn make(root: &Path, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(root)?;
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
        let janitor = janitor();
        let (ready, known) = janitor.map_or((None, true), |j| j.take_ready(&place));
        if let Some(janitor) = janitor
            && !known
        {
            // The janitor tops up the places it knows when a run's directory comes back; a
            // new place is introduced to it once. A failed send means the janitor is gone,
            // and runs then make their own.
            let _ = janitor.send(Chore::Prepare(place));
        }
        let path = match ready {
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
        let chore = match janitor() {
            Some(janitor) => janitor.send(Chore::Remove(path)),
            None => Err(Chore::Remove(path)),
        };
        if let Err(Chore::Remove(path)) = chore {
            remove(&path);
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
