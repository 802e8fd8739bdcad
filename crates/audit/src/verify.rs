//! Offline and online verification of the chain.

use std::path::Path;

use crate::error::VerifyError;
use crate::journal::{Contents, list_journals, read_journal};
use crate::record::{Anchor, ChainHash, chain_hash, chain_hash_of_bytes, decode_canonical};
use crate::segment::{
    RECORD_COLUMNS, audit_dir, decode_record, list_segments, open_reader, read_header, read_seal,
};

/// The outcome of walking the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Whether every check passed.
    pub ok: bool,
    /// Records whose links and hashes were checked and found good.
    pub records_checked: u64,
    /// When not ok: the first seq that is missing or does not match.
    pub first_bad_seq: Option<u64>,
    /// When not ok: what is wrong, in words.
    pub reason: Option<String>,
    /// Segment files found.
    pub segments: u32,
    /// The last good record; when ok, the log's head, worth keeping as an [`Anchor`].
    pub head: Anchor,
}

struct Failure {
    seq: u64,
    reason: String,
}

fn fail<T>(seq: u64, reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        seq,
        reason: reason.into(),
    })
}

struct Walk {
    /// The seq the next record must have.
    expected: u64,
    /// Hash of the last good record, or the genesis value.
    running: ChainHash,
    checked: u64,
    /// The seq whose hash to remember for the anchor check, and the hash found there.
    anchor_seq: u64,
    anchor_hash: Option<ChainHash>,
}

impl Walk {
    /// Records that the record at `seq` (the expected one) checked out with `hash`.
    fn accept(&mut self, seq: u64, hash: ChainHash) {
        if seq == self.anchor_seq {
            self.anchor_hash = Some(hash);
        }
        self.running = hash;
        self.expected += 1;
        self.checked += 1;
    }
}

/// Walks every segment in `data_dir` from the genesis record and reports the first record that
/// does not match. Opens the files read-only; works while no server runs and while one runs.
///
/// What the walk detects, and names the first bad seq for:
/// - an edited field: the record's hash no longer matches its content (reported at that record;
///   if the tamperer also recomputed that record's hash, the next record's prev_hash no longer
///   links, and the report names the next record);
/// - a deleted record in the middle: the seq sequence has a gap (reported at the missing seq);
/// - reordered or renumbered records: the seq is part of the hashed content and each prev_hash
///   names its predecessor, so the first moved record breaks the link;
/// - a truncated tail of a sealed segment: its seal row records the last seq, the count and the
///   last hash, and the next segment's genesis prev_hash repeats that hash;
/// - a missing, renamed or unsealed middle segment;
/// - an edited, reordered or damaged record in a journal file (see [`crate::Durability`]). The
///   walk continues from the segments into the journal's records that no segment holds yet, so a
///   log left by a kill -9 verifies with every acknowledged record.
///
/// What it cannot detect from the files alone: removing records from the end of the active
/// segment (or whole trailing segments), or rewriting the whole history with recomputed hashes.
/// Anyone who can write the files can do that, because the chain has no secret. Keep an
/// [`Anchor`] (the head's seq and hash, from [`crate::AuditLog::head`] or a previous report)
/// outside the data directory and check with [`verify_dir_with_anchor`] to detect both.
pub fn verify_dir(data_dir: &Path) -> Result<VerifyReport, VerifyError> {
    verify(data_dir, None)
}

/// Like [`verify_dir`], and also checks that the log still contains `anchor`'s record with
/// `anchor`'s hash, which detects a removed tail and a rewritten history.
pub fn verify_dir_with_anchor(
    data_dir: &Path,
    anchor: &Anchor,
) -> Result<VerifyReport, VerifyError> {
    verify(data_dir, Some(anchor))
}

fn verify(data_dir: &Path, anchor: Option<&Anchor>) -> Result<VerifyReport, VerifyError> {
    let dir = audit_dir(data_dir);
    if !dir.is_dir() {
        return Err(VerifyError::NotFound(dir));
    }
    // Journals are read before the segments: the writer deletes a journal only once its records
    // are committed, so each record of a journal read here is either in the segments read next
    // or still in these bytes.
    let mut journals = Vec::new();
    for (_, path) in list_journals(&dir)? {
        if let Some(contents) = read_journal(&path)? {
            journals.push((path, contents));
        }
    }
    let segments = list_segments(&dir)?;
    let mut walk = Walk {
        expected: 1,
        running: ChainHash::GENESIS,
        checked: 0,
        anchor_seq: anchor.map_or(0, |a| a.seq),
        anchor_hash: None,
    };
    let outcome = walk_all(&segments, &mut walk)
        .and_then(|()| walk_journals(&journals, &mut walk))
        .and_then(|()| match anchor {
            Some(anchor) => check_anchor(anchor, &walk),
            None => Ok(()),
        });
    let (first_bad_seq, reason) = match outcome {
        Ok(()) => (None, None),
        Err(failure) => (Some(failure.seq), Some(failure.reason)),
    };
    Ok(VerifyReport {
        ok: first_bad_seq.is_none(),
        records_checked: walk.checked,
        first_bad_seq,
        reason,
        segments: u32::try_from(segments.len()).unwrap_or(u32::MAX),
        head: Anchor {
            seq: walk.expected - 1,
            hash: walk.running,
        },
    })
}

fn walk_all(segments: &[(u32, std::path::PathBuf)], walk: &mut Walk) -> Result<(), Failure> {
    for (index, (number, path)) in segments.iter().enumerate() {
        let want = u32::try_from(index + 1).unwrap_or(u32::MAX);
        if *number != want {
            return fail(
                walk.expected,
                format!("segment {want} is missing (the next file is segment {number})"),
            );
        }
        let is_last = index + 1 == segments.len();
        walk_segment(path, want, is_last, walk)?;
    }
    Ok(())
}

fn walk_segment(path: &Path, number: u32, is_last: bool, walk: &mut Walk) -> Result<(), Failure> {
    let expected = walk.expected;
    let unreadable = |what: &str, e: &dyn std::fmt::Display| {
        fail(
            expected,
            format!("segment {number} {what} cannot be read: {e}"),
        )
    };
    let conn = match open_reader(path) {
        Ok(conn) => conn,
        Err(e) => return unreadable("file", &e),
    };
    // A single read transaction gives one consistent snapshot of header, records and seal even
    // while the writer appends.
    if let Err(e) = conn.execute_batch("BEGIN") {
        return unreadable("file", &e);
    }
    let header = match read_header(&conn, path) {
        Ok(header) => header,
        Err(e) => return unreadable("header", &e),
    };
    if header.number != number {
        return fail(
            expected,
            format!(
                "file of segment {number} says it is segment {}",
                header.number
            ),
        );
    }
    if header.first_seq != expected {
        return fail(
            expected,
            format!(
                "segment {number} starts at seq {} instead of {expected}",
                header.first_seq
            ),
        );
    }
    if header.genesis != walk.running {
        return fail(
            expected,
            format!("segment {number} does not continue the chain of the previous segment"),
        );
    }

    let mut stmt = match conn.prepare(&format!(
        "SELECT {RECORD_COLUMNS} FROM records ORDER BY seq"
    )) {
        Ok(stmt) => stmt,
        Err(e) => return unreadable("records table", &e),
    };
    let mut rows = match stmt.query([]) {
        Ok(rows) => rows,
        Err(e) => return unreadable("records table", &e),
    };
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => return unreadable("records table", &e),
        };
        let record = match decode_record(row) {
            Ok(record) => record,
            Err(reason) => {
                let seq = row
                    .get::<_, i64>(0)
                    .ok()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(walk.expected);
                return fail(seq, format!("record {seq} cannot be decoded: {reason}"));
            }
        };
        let seq = record.seq;
        if seq != walk.expected {
            return fail(
                walk.expected,
                format!(
                    "record {} is missing (the next record is {seq})",
                    walk.expected
                ),
            );
        }
        if record.prev_hash != walk.running {
            return fail(
                seq,
                format!(
                    "record {seq} does not link to record {}: prev_hash differs",
                    seq - 1
                ),
            );
        }
        let hash = chain_hash(&record.prev_hash, seq, &record.entry);
        if hash != record.hash {
            return fail(
                seq,
                format!("record {seq} was modified: its hash does not match its content"),
            );
        }
        walk.accept(seq, hash);
    }

    let seal = match read_seal(&conn, path) {
        Ok(seal) => seal,
        Err(e) => return unreadable("seal", &e),
    };
    let last_seq = walk.expected - 1;
    match seal {
        Some(seal) if seal.last_seq > last_seq => fail(
            walk.expected,
            format!(
                "segment {number} was sealed at seq {} but ends at seq {last_seq}: records were removed",
                seal.last_seq
            ),
        ),
        Some(seal) if seal.last_seq < last_seq => fail(
            seal.last_seq + 1,
            format!(
                "segment {number} holds records after its seal at seq {}",
                seal.last_seq
            ),
        ),
        Some(seal) if seal.record_count != walk.expected - header.first_seq => fail(
            last_seq,
            format!("segment {number} seal counts {} records", seal.record_count),
        ),
        Some(seal) if seal.last_hash != walk.running => fail(
            last_seq,
            format!("segment {number} seal hash does not match record {last_seq}"),
        ),
        Some(_) => Ok(()),
        None if !is_last => fail(
            walk.expected,
            format!("segment {number} is not sealed but a later segment exists"),
        ),
        None => Ok(()),
    }
}

fn walk_journals(
    journals: &[(std::path::PathBuf, Contents)],
    walk: &mut Walk,
) -> Result<(), Failure> {
    for (path, contents) in journals {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        for frame in &contents.frames {
            let seq = frame.seq;
            if seq < walk.expected {
                continue;
            }
            if seq > walk.expected {
                return fail(
                    walk.expected,
                    format!(
                        "record {} is missing (journal {name} continues at record {seq})",
                        walk.expected
                    ),
                );
            }
            let hash = chain_hash_of_bytes(&walk.running, &frame.canonical);
            if hash != frame.hash {
                return fail(
                    seq,
                    format!(
                        "journal record {seq} in {name} was modified or does not link to record {}",
                        seq - 1
                    ),
                );
            }
            if let Err(reason) = decode_canonical(&frame.canonical) {
                return fail(
                    seq,
                    format!("journal record {seq} in {name} cannot be decoded: {reason}"),
                );
            }
            walk.accept(seq, hash);
        }
        if let Some(reason) = &contents.damage {
            return fail(
                walk.expected,
                format!(
                    "journal {name} is damaged after record {}: {reason}",
                    walk.expected - 1
                ),
            );
        }
    }
    Ok(())
}

fn check_anchor(anchor: &Anchor, walk: &Walk) -> Result<(), Failure> {
    let last_seq = walk.expected - 1;
    if anchor.seq == 0 {
        return Ok(());
    }
    if anchor.seq > last_seq {
        return fail(
            walk.expected,
            format!(
                "the log ends at seq {last_seq} but the anchor names seq {}: the tail was removed",
                anchor.seq
            ),
        );
    }
    if walk.anchor_hash != Some(anchor.hash) {
        return fail(
            anchor.seq,
            format!(
                "record {} does not have the anchor's hash: the history was rewritten",
                anchor.seq
            ),
        );
    }
    Ok(())
}
