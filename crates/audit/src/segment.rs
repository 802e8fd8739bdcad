//! Segment files: one SQLite database per segment, named `audit-NNNNNN.db` inside
//! `<data_dir>/audit/`.
//!
//! A segment holds three tables: `segment` (one row: its number, first seq and genesis prev_hash),
//! `records` (the chain) and `seal` (empty while the segment is active; one row once sealed, with
//! the last seq, the record count and the last hash). Triggers refuse every UPDATE and DELETE, and
//! the seal adds one that refuses any INSERT into `records`: created with the seal row rather than
//! with the schema, it costs the active segment's appends nothing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use crate::error::{Context, StoreError};
use crate::record::{ChainHash, Entry, EntryView, Kind, Record};

/// Sub-directory of the data directory that holds the audit log.
pub const AUDIT_SUBDIR: &str = "audit";

/// Name of the lock file that keeps a second writer out.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// How long a connection waits for a lock held by another connection before failing. Readers are
/// short-lived, so this only matters when a seal converts a segment while a query reads it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE segment (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    format INTEGER NOT NULL,
    number INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    genesis_prev_hash BLOB NOT NULL
) STRICT;
CREATE TABLE records (
    seq INTEGER PRIMARY KEY,
    time_unix_ms INTEGER NOT NULL,
    identity TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    method TEXT NOT NULL,
    tool TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    summary TEXT NOT NULL,
    duration_us INTEGER NOT NULL,
    peer TEXT NOT NULL,
    sandboxed INTEGER NOT NULL,
    rate_limited INTEGER NOT NULL,
    trust_level TEXT NOT NULL,
    kind TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
) STRICT;
CREATE INDEX records_time ON records (time_unix_ms);
CREATE TABLE seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    record_count INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    sealed_at_unix_ms INTEGER NOT NULL
) STRICT;
CREATE TRIGGER records_no_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER records_no_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER segment_no_update BEFORE UPDATE ON segment
    BEGIN SELECT RAISE(ABORT, 'audit segment header is immutable'); END;
CREATE TRIGGER segment_no_delete BEFORE DELETE ON segment
    BEGIN SELECT RAISE(ABORT, 'audit segment header is immutable'); END;
CREATE TRIGGER seal_no_update BEFORE UPDATE ON seal
    BEGIN SELECT RAISE(ABORT, 'audit seal is immutable'); END;
CREATE TRIGGER seal_no_delete BEFORE DELETE ON seal
    BEGIN SELECT RAISE(ABORT, 'audit seal is immutable'); END;
";

/// Version of the segment schema, stored in `segment.format`.
const SEGMENT_FORMAT: i64 = 1;

/// Columns of `records` in the order [`decode_record`] reads them.
pub(crate) const RECORD_COLUMNS: &str = "seq, time_unix_ms, identity, auth_method, method, tool, \
     request_sha256, status, summary, duration_us, peer, sandboxed, rate_limited, trust_level, \
     kind, prev_hash, hash";

/// An INSERT of one record, bound with [`bind_record`] as row 0.
pub(crate) static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_rows_sql(1));

/// An INSERT of [`ROWS_PER_INSERT`] records, bound with [`bind_record`].
pub(crate) static INSERT_MANY: LazyLock<String> =
    LazyLock::new(|| insert_rows_sql(ROWS_PER_INSERT));

/// `<data_dir>/audit`.
pub fn audit_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(AUDIT_SUBDIR)
}

/// The file of segment `number` (starting at 1) under `data_dir`.
pub fn segment_path(data_dir: &Path, number: u32) -> PathBuf {
    audit_dir(data_dir).join(segment_file_name(number))
}

fn segment_file_name(number: u32) -> String {
    format!("audit-{number:06}.db")
}

fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".db")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files in `dir`, sorted by number. Other files (WAL, lock, temporary) are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).at(dir)? {
        let item = item.at(dir)?;
        if let Some(number) = item.file_name().to_str().and_then(parse_segment_file_name) {
            out.push((number, item.path()));
        }
    }
    out.sort_by_key(|(number, _)| *number);
    Ok(out)
}

/// The header row of a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentHeader {
    pub(crate) number: u32,
    pub(crate) first_seq: u64,
    pub(crate) genesis: ChainHash,
}

/// The seal row of a sealed segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealRow {
    pub(crate) last_seq: u64,
    pub(crate) record_count: u64,
    pub(crate) last_hash: ChainHash,
}

fn to_i64(value: u64) -> i64 {
    // Sequence numbers and counts are bounded by SQLite's rowid space (i64), so this never
    // saturates for data this crate wrote.
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Creates segment `number` atomically: the database is built under a temporary name and renamed
/// into place, so a reader never sees a segment without its header.
pub(crate) fn create_segment(dir: &Path, header: SegmentHeader) -> Result<PathBuf, StoreError> {
    let path = dir.join(segment_file_name(header.number));
    let tmp = dir.join(format!("{}.tmp", segment_file_name(header.number)));
    remove_if_exists(&tmp)?;
    {
        let mut conn = Connection::open(&tmp).at(&tmp)?;
        // WAL mode is set here, before the file has its name: switching a named segment later
        // would go through a rollback journal, and a kill -9 in the middle would leave a hot
        // journal that read-only connections (verify, queries of a stopped server) cannot roll
        // back. Closing the connection checkpoints and deletes the temporary WAL.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .at(&tmp)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(corrupt(
                &tmp,
                format!("journal mode stayed {mode} instead of wal"),
            ));
        }
        let tx = conn.transaction().at(&tmp)?;
        tx.execute_batch(SCHEMA).at(&tmp)?;
        tx.execute(
            "INSERT INTO segment (id, format, number, first_seq, genesis_prev_hash) \
             VALUES (1, ?1, ?2, ?3, ?4)",
            rusqlite::params![
                SEGMENT_FORMAT,
                header.number,
                to_i64(header.first_seq),
                &header.genesis.0[..]
            ],
        )
        .at(&tmp)?;
        tx.commit().at(&tmp)?;
        conn.close().map_err(|(_, e)| e).at(&tmp)?;
    }
    fs::rename(&tmp, &path).at(&path)?;
    sync_dir(dir)?;
    Ok(path)
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}

/// Removes temporary files left by a segment creation that a crash interrupted.
pub(crate) fn remove_temporaries(dir: &Path) -> Result<(), StoreError> {
    for item in fs::read_dir(dir).at(dir)? {
        let item = item.at(dir)?;
        let name = item.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("audit-") && name.contains(".db.tmp") {
            remove_if_exists(&item.path())?;
        }
    }
    Ok(())
}

/// Makes a rename or file creation in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// How acknowledged records are protected, see [`crate::Durability`].
pub(crate) fn open_writer(path: &Path, full_sync: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .at(path)?;
    conn.busy_timeout(BUSY_TIMEOUT).at(path)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .at(path)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("journal mode stayed {mode} instead of wal"),
        });
    }
    let sync = if full_sync { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", sync).at(path)?;
    Ok(conn)
}

/// A read-only connection; works on the active segment while the writer runs (WAL readers do not
/// block the writer) and on a stopped server's files.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .at(path)?;
    conn.busy_timeout(BUSY_TIMEOUT).at(path)?;
    Ok(conn)
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(crate) fn read_header(conn: &Connection, path: &Path) -> Result<SegmentHeader, StoreError> {
    let (format, number, first_seq, genesis): (i64, i64, i64, Vec<u8>) = conn
        .query_row(
            "SELECT format, number, first_seq, genesis_prev_hash FROM segment WHERE id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()
        .at(path)?
        .ok_or_else(|| corrupt(path, "missing segment header"))?;
    if format != SEGMENT_FORMAT {
        return Err(corrupt(path, format!("unknown segment format {format}")));
    }
    Ok(SegmentHeader {
        number: u32::try_from(number).map_err(|_| corrupt(path, "bad segment number"))?,
        first_seq: u64::try_from(first_seq).map_err(|_| corrupt(path, "bad first_seq"))?,
        genesis: ChainHash::from_slice(&genesis)
            .ok_or_else(|| corrupt(path, "genesis_prev_hash is not 32 bytes"))?,
    })
}

pub(crate) fn read_seal(conn: &Connection, path: &Path) -> Result<Option<SealRow>, StoreError> {
    let row: Option<(i64, i64, Vec<u8>)> = conn
        .query_row(
            "SELECT last_seq, record_count, last_hash FROM seal WHERE id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()
        .at(path)?;
    let Some((last_seq, record_count, last_hash)) = row else {
        return Ok(None);
    };
    Ok(Some(SealRow {
        last_seq: u64::try_from(last_seq).map_err(|_| corrupt(path, "bad seal last_seq"))?,
        record_count: u64::try_from(record_count)
            .map_err(|_| corrupt(path, "bad seal record_count"))?,
        last_hash: ChainHash::from_slice(&last_hash)
            .ok_or_else(|| corrupt(path, "seal last_hash is not 32 bytes"))?,
    }))
}

/// Refuses appends to a sealed segment. `IF NOT EXISTS` because segments written before the
/// trigger moved here carry a conditional one of the same name, which refuses the same inserts.
const SEALED_REFUSES_INSERTS: &str = "CREATE TRIGGER IF NOT EXISTS records_no_insert_after_seal \
     BEFORE INSERT ON records BEGIN SELECT RAISE(ABORT, 'audit segment is sealed'); END";

/// Writes the seal row and the trigger that refuses later appends, in one transaction, so no
/// sealed segment lacks the trigger.
pub(crate) fn insert_seal(
    conn: &mut Connection,
    path: &Path,
    seal: &SealRow,
) -> Result<(), StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let tx = conn.transaction().at(path)?;
    tx.execute(
        "INSERT INTO seal (id, last_seq, record_count, last_hash, sealed_at_unix_ms) \
         VALUES (1, ?1, ?2, ?3, ?4)",
        rusqlite::params![
            to_i64(seal.last_seq),
            to_i64(seal.record_count),
            &seal.last_hash.0[..],
            now
        ],
    )
    .at(path)?;
    tx.execute(SEALED_REFUSES_INSERTS, []).at(path)?;
    tx.commit().at(path)?;
    Ok(())
}

/// The last record's seq and hash, if the segment holds any.
pub(crate) fn last_record(
    conn: &Connection,
    path: &Path,
) -> Result<Option<(u64, ChainHash)>, StoreError> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .at(path)?;
    row.map(|(seq, hash)| {
        Ok((
            u64::try_from(seq).map_err(|_| corrupt(path, "negative seq"))?,
            ChainHash::from_slice(&hash).ok_or_else(|| corrupt(path, "hash is not 32 bytes"))?,
        ))
    })
    .transpose()
}

/// Checkpoints a sealed segment, closes it and marks the file read-only, so that it is not
/// written by mistake. The segment stays in WAL mode: leaving WAL mode needs an exclusive lock that
/// SQLite does not wait for, so it would fail whenever a query happens to read the segment. When
/// no reader holds the file, closing the last connection also deletes the emptied WAL file.
/// Idempotent: [`crate::AuditLog::open`] repeats it for a seal that a crash interrupted.
pub(crate) fn finish_sealed(conn: Connection, path: &Path) -> Result<(), StoreError> {
    // A reader holding an old snapshot can keep the checkpoint from truncating the WAL; that only
    // leaves the WAL file in place, and every later reader still sees all records.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .at(path)?;
    conn.close().map_err(|(_, e)| e).at(path)?;
    let mut perms = fs::metadata(path).at(path)?.permissions();
    perms.set_readonly(true);
    fs::set_permissions(path, perms).at(path)?;
    Ok(())
}

/// Whether a segment file is still writable, that is, not yet finished by [`finish_sealed`].
pub(crate) fn is_writable(path: &Path) -> Result<bool, StoreError> {
    Ok(!fs::metadata(path).at(path)?.permissions().readonly())
}

/// Why a row could not be turned into a [`Record`]; verification reports it as tampering.
pub(crate) fn decode_record(row: &Row<'_>) -> Result<Record, String> {
    fn col<T: rusqlite::types::FromSql>(row: &Row<'_>, i: usize, name: &str) -> Result<T, String> {
        row.get(i)
            .map_err(|e| format!("column {name} cannot be read: {e}"))
    }
    fn flag(row: &Row<'_>, i: usize, name: &str) -> Result<bool, String> {
        match col::<i64>(row, i, name)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("column {name} holds {other}, not 0 or 1")),
        }
    }
    fn hash(row: &Row<'_>, i: usize, name: &str) -> Result<ChainHash, String> {
        ChainHash::from_slice(&col::<Vec<u8>>(row, i, name)?)
            .ok_or_else(|| format!("column {name} is not 32 bytes"))
    }
    let seq = u64::try_from(col::<i64>(row, 0, "seq")?).map_err(|_| "negative seq".to_owned())?;
    let duration_us = u64::try_from(col::<i64>(row, 9, "duration_us")?)
        .map_err(|_| "negative duration_us".to_owned())?;
    let kind_name: String = col(row, 14, "kind")?;
    let kind = Kind::parse(&kind_name).ok_or_else(|| format!("unknown kind {kind_name:?}"))?;
    Ok(Record {
        seq,
        entry: Entry {
            time_unix_ms: col(row, 1, "time_unix_ms")?,
            identity: col(row, 2, "identity")?,
            auth_method: col(row, 3, "auth_method")?,
            method: col(row, 4, "method")?,
            tool: col(row, 5, "tool")?,
            request_sha256: col(row, 6, "request_sha256")?,
            status: col(row, 7, "status")?,
            summary: col(row, 8, "summary")?,
            duration_us,
            peer: col(row, 10, "peer")?,
            sandboxed: flag(row, 11, "sandboxed")?,
            rate_limited: flag(row, 12, "rate_limited")?,
            trust_level: col(row, 13, "trust_level")?,
            kind,
        },
        prev_hash: hash(row, 15, "prev_hash")?,
        hash: hash(row, 16, "hash")?,
    })
}

/// Like [`decode_record`] for queries, where an undecodable row is a storage error.
pub(crate) fn decode_for_query(row: &Row<'_>, path: &Path) -> Result<Record, StoreError> {
    decode_record(row).map_err(|reason| corrupt(path, reason))
}

/// Rows inserted by one statement of [`INSERT_MANY`]: one statement for many rows runs the
/// statement machinery (step, reset, the bindings' bookkeeping) once for all of them.
pub(crate) const ROWS_PER_INSERT: usize = 16;

const RECORD_PARAMS: usize = 17;

/// An INSERT of `rows` records, with the parameters of row `r` at `r * 17 + 1 ..= r * 17 + 17`.
fn insert_rows_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO records ({RECORD_COLUMNS}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for param in 1..=RECORD_PARAMS {
            if param > 1 {
                sql.push(',');
            }
            sql.push_str(&format!("?{}", row * RECORD_PARAMS + param));
        }
        sql.push(')');
    }
    sql
}

/// Binds one record as row `row` of [`INSERT_ONE`] or [`INSERT_MANY`].
pub(crate) fn bind_record(
    stmt: &mut rusqlite::Statement<'_>,
    row: usize,
    seq: u64,
    e: &EntryView<'_>,
    prev_hash: &ChainHash,
    hash: &ChainHash,
) -> rusqlite::Result<()> {
    let at = row * RECORD_PARAMS;
    stmt.raw_bind_parameter(at + 1, to_i64(seq))?;
    stmt.raw_bind_parameter(at + 2, e.time_unix_ms)?;
    stmt.raw_bind_parameter(at + 3, e.identity)?;
    stmt.raw_bind_parameter(at + 4, e.auth_method)?;
    stmt.raw_bind_parameter(at + 5, e.method)?;
    stmt.raw_bind_parameter(at + 6, e.tool)?;
    stmt.raw_bind_parameter(at + 7, e.request_sha256)?;
    stmt.raw_bind_parameter(at + 8, e.status)?;
    stmt.raw_bind_parameter(at + 9, e.summary)?;
    stmt.raw_bind_parameter(at + 10, to_i64(e.duration_us))?;
    stmt.raw_bind_parameter(at + 11, e.peer)?;
    stmt.raw_bind_parameter(at + 12, e.sandboxed)?;
    stmt.raw_bind_parameter(at + 13, e.rate_limited)?;
    stmt.raw_bind_parameter(at + 14, e.trust_level)?;
    stmt.raw_bind_parameter(at + 15, e.kind.as_str())?;
    stmt.raw_bind_parameter(at + 16, &prev_hash.0[..])?;
    stmt.raw_bind_parameter(at + 17, &hash.0[..])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_is_in_wal_mode_from_the_moment_it_has_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let header = SegmentHeader {
            number: 1,
            first_seq: 1,
            genesis: ChainHash::GENESIS,
        };
        let path = create_segment(tmp.path(), header).unwrap();
        // Bytes 18 and 19 of an SQLite file are its write and read format versions: 2 in WAL
        // mode, 1 with a rollback journal. Nobody has opened the segment since it was renamed.
        let bytes = fs::read(&path).unwrap();
        assert_eq!((bytes[18], bytes[19]), (2, 2));
        let mut names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["audit-000001.db"],
            "no journal, WAL or temporary file is left"
        );
        let reader = open_reader(&path).unwrap();
        let read = read_header(&reader, &path).unwrap();
        assert_eq!((read.number, read.first_seq), (1, 1));
    }
}
