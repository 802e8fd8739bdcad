//! Reloads the TLS configuration when one of its files changes on disk, the
//! same way SIGHUP does: a bad new file is refused with a log line naming it
//! and the previous configuration stays. Established connections keep their
//! session; only new handshakes see the new configuration.
//!
//! Files are polled once a second rather than watched through inotify,
//! because certificate rotation tools replace files by rename, often of a
//! symlinked directory (Kubernetes secrets), which inotify watches on the old
//! inode miss; a stat per file per second costs nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::tls::{TlsFiles, TlsState};

const POLL: Duration = Duration::from_secs(1);

/// What identifies one version of a file: a rename changes the inode, an
/// in-place write the modification time or the length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn versions(paths: &[PathBuf]) -> Vec<Option<Version>> {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|path| {
            std::fs::metadata(path).ok().map(|meta| Version {
                modified: meta.modified().ok(),
                len: meta.len(),
                inode: meta.ino(),
            })
        })
        .collect()
}

/// Polls the certificate, key, client CA bundle and CRL files and reloads on
/// a change, once the files have stayed the same for one poll, so that a
/// file caught half-written is not loaded (and refused) before it is complete.
pub(crate) fn spawn(files: &TlsFiles, tls: Arc<TlsState>) {
    let mut paths = vec![
        files.cert.clone(),
        files.key.clone(),
        files.client_ca.clone(),
    ];
    paths.extend(files.crls.iter().cloned());
    tokio::spawn(async move {
        let mut attempted = versions(&paths);
        let mut previous = attempted.clone();
        let mut ticks = tokio::time::interval(POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let current = versions(&paths);
            if current != attempted && current == previous {
                let changed: Vec<String> = paths
                    .iter()
                    .zip(current.iter().zip(attempted.iter()))
                    .filter(|(_, (now, before))| now != before)
                    .map(|(path, _)| path.display().to_string())
                    .collect();
                attempted = current.clone();
                match tls.reload() {
                    Ok(()) => tracing::info!(
                        files = ?changed,
                        "tls files changed on disk; configuration reloaded"
                    ),
                    Err(error) => tracing::error!(
                        error = format!("{error:#}"),
                        "tls files changed on disk but the reload was refused; the previous configuration stays in force"
                    ),
                }
            }
            previous = current;
        }
    });
}
