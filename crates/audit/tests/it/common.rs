//! Helpers shared by the test modules.

use std::path::Path;

use audit::{AuditLog, Config, Entry, Kind, VerifyReport, verify_dir};

/// A valid entry whose fields depend on `n`, so that records differ from each other.
pub(crate) fn entry(n: u64) -> Entry {
    Entry {
        time_unix_ms: 1_700_000_000_000 + i64::try_from(n).expect("small n"),
        identity: format!("agent-{}", n % 3),
        auth_method: "mtls".to_owned(),
        method: "/cordon.sandbox.v1.Sandbox/Exec".to_owned(),
        tool: format!("tool-{}", n % 2),
        request_sha256: "ab".repeat(32),
        status: "OK".to_owned(),
        summary: format!("call {n}"),
        duration_us: 100 + n,
        peer: "127.0.0.1:5000".to_owned(),
        sandboxed: n.is_multiple_of(2),
        rate_limited: false,
        trust_level: "trusted".to_owned(),
        kind: Kind::Rpc,
    }
}

pub(crate) fn open(dir: &Path) -> AuditLog {
    AuditLog::open(Config::new(dir)).expect("open audit log")
}

/// Verifies the stopped log under `dir` offline, fails the test unless the chain is intact, and
/// returns the report for its counts.
pub(crate) fn verified(dir: &Path) -> VerifyReport {
    let report = verify_dir(dir).expect("verify the log directory");
    assert!(report.ok, "{report:?}");
    report
}

/// Appends `entry(from)`, ..., `entry(to - 1)` one after the other.
pub(crate) async fn append_range(log: &AuditLog, from: u64, to: u64) {
    for n in from..to {
        log.append(entry(n)).await.expect("append");
    }
}

/// A raw read-write connection to a segment, as a tamperer with file access would open it.
pub(crate) fn raw(dir: &Path, segment: u32) -> rusqlite::Connection {
    let path = audit::segment_path(dir, segment);
    // Sealed segments are read-only files, and SQLite gives the WAL side files that readers create
    // the same mode; a tamperer simply makes them all writable again.
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        if let Ok(meta) = std::fs::metadata(&file) {
            let mut perms = meta.permissions();
            #[expect(
                clippy::permissions_set_readonly_false,
                reason = "the test plays a tamperer"
            )]
            perms.set_readonly(false);
            std::fs::set_permissions(&file, perms).expect("chmod segment");
        }
    }
    rusqlite::Connection::open(path).expect("open segment")
}

/// Drops the triggers that refuse UPDATE and DELETE, the first thing a tamperer does.
pub(crate) fn drop_triggers(conn: &rusqlite::Connection) {
    conn.execute_batch(
        "DROP TRIGGER records_no_update; DROP TRIGGER records_no_delete; \
         DROP TRIGGER seal_no_update; DROP TRIGGER seal_no_delete;",
    )
    .expect("drop triggers");
}
