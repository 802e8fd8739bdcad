//! The journal behind [`crate::Durability::ProcessCrash`]: an append-only file of chained records
//! that an append writes before it is acknowledged, so that the writer thread can put the records
//! into SQLite later and in large batches.
//!
//! A record written to the journal is in the kernel's page cache when `write` returns, so it
//! survives a kill -9 of the server even though no fsync follows. The journal is not a second
//! log: it only holds records until the writer has committed them to a segment. A journal file
//! whose records are all committed is deleted; one left behind by a crash is read back by the next
//! open, which commits the records that are missing from the segments before anything else.
//!
//! A frame is `u32` big-endian length of the canonical encoding, the canonical encoding (which
//! holds the seq, see [`crate::record`]), and the record's 32-byte chain hash. Files are named
//! `journal-<first seq, 20 digits>.log`; a new file starts once the current one holds
//! `ROTATE_BYTES`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::{Context, StoreError};
use crate::record::{ChainHash, Entry, chain_hash_of_bytes};

const PREFIX: &str = "journal-";
const SUFFIX: &str = ".log";

/// Size at which the appender starts the next journal file, so that the writer can delete
/// committed records in whole files while appends go on.
pub(crate) const ROTATE_BYTES: u64 = 8 << 20;

/// Largest canonical encoding a frame may announce: nine strings of at most
/// [`crate::MAX_FIELD_BYTES`] plus the fixed fields fit well below it. A larger length can only
/// come from a damaged file.
const MAX_FRAME_BYTES: usize = 1 << 20;

const HASH_BYTES: usize = 32;

pub(crate) fn journal_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{first_seq:020}{SUFFIX}"))
}

/// The journal files in `dir`, ordered by the seq of their first record.
pub(crate) fn list_journals(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut journals = Vec::new();
    for item in fs::read_dir(dir).at(dir)? {
        let item = item.at(dir)?;
        let name = item.file_name();
        let first_seq = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|rest| rest.strip_suffix(SUFFIX))
            .filter(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(first_seq) = first_seq {
            journals.push((first_seq, item.path()));
        }
    }
    journals.sort();
    Ok(journals)
}

/// One record as a journal holds it.
pub(crate) struct Frame {
    pub(crate) seq: u64,
    pub(crate) canonical: Vec<u8>,
    pub(crate) hash: ChainHash,
}

/// What a journal file holds: its whole frames, and what is wrong after them, if anything.
pub(crate) struct Contents {
    pub(crate) frames: Vec<Frame>,
    /// Set when a frame cannot be a record this crate wrote. An incomplete last frame is not
    /// damage: it is an append that a crash interrupted before it was acknowledged.
    pub(crate) damage: Option<String>,
}

/// Reads a journal file. `Ok(None)` when the file no longer exists, which happens when the
/// writer deletes a committed journal while someone reads the directory.
pub(crate) fn read_journal(path: &Path) -> Result<Option<Contents>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(path),
    };
    let (frames, damage) = split_frames(&bytes);
    let frames = frames
        .into_iter()
        .map(|frame| Frame {
            seq: frame.seq,
            canonical: frame.canonical.to_vec(),
            hash: frame.hash,
        })
        .collect();
    Ok(Some(Contents { frames, damage }))
}

/// One frame inside a buffer of frames.
pub(crate) struct FrameRef<'a> {
    pub(crate) seq: u64,
    pub(crate) canonical: &'a [u8],
    /// Where `canonical` starts in the buffer.
    pub(crate) start: usize,
    pub(crate) hash: ChainHash,
}

/// The whole frames at the start of `bytes`, and what is wrong after them, if anything (see
/// [`Contents::damage`]).
pub(crate) fn split_frames(bytes: &[u8]) -> (Vec<FrameRef<'_>>, Option<String>) {
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut start = 0;
    while rest.len() >= 4 {
        let mut len = [0u8; 4];
        len.copy_from_slice(&rest[..4]);
        let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
        if !(9..=MAX_FRAME_BYTES).contains(&len) {
            return (frames, Some(format!("a frame announces {len} bytes")));
        }
        let Some(frame) = rest.get(4..4 + len + HASH_BYTES) else {
            break;
        };
        let (canonical, hash) = frame.split_at(len);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&canonical[1..9]);
        frames.push(FrameRef {
            seq: u64::from_be_bytes(seq),
            canonical,
            start: start + 4,
            hash: ChainHash::from_slice(hash).unwrap_or_else(|| unreachable!()),
        });
        rest = &rest[4 + len + HASH_BYTES..];
        start += 4 + len + HASH_BYTES;
    }
    (frames, None)
}

/// A frame whose seq and hash [`UnplacedFrame::place`] fills in once the record's place in the
/// chain is known. Encoding the entry before taking the journal's lock keeps the lock short.
pub(crate) struct UnplacedFrame(Vec<u8>);

impl UnplacedFrame {
    pub(crate) fn new(entry: &Entry) -> UnplacedFrame {
        let mut bytes = Vec::with_capacity(256 + entry.summary.len() + entry.method.len());
        bytes.extend_from_slice(&[0; 4]);
        entry.encode_into(0, &mut bytes);
        // `Entry::validate` caps every field far below u32::MAX, so the length always fits.
        let len = u32::try_from(bytes.len() - 4).unwrap_or(u32::MAX);
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&[0; HASH_BYTES]);
        UnplacedFrame(bytes)
    }

    /// Gives the frame its seq and its hash after `prev`, and returns the hash and the whole
    /// frame, ready for [`Journal::write`].
    pub(crate) fn place(&mut self, seq: u64, prev: &ChainHash) -> (ChainHash, &[u8]) {
        let bytes = &mut self.0;
        let end = bytes.len() - HASH_BYTES;
        bytes[5..13].copy_from_slice(&seq.to_be_bytes());
        let hash = chain_hash_of_bytes(prev, &bytes[4..end]);
        bytes[end..].copy_from_slice(&hash.0);
        (hash, bytes)
    }
}

/// The journal file that appends currently go to.
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    dir: PathBuf,
    path: PathBuf,
    /// Bytes of whole frames in the file.
    len: u64,
    /// A write failed after it may have put part of a frame in the file; the next write first cuts
    /// the file back to `len`, so a torn frame never sits in front of a good one.
    torn: bool,
    /// Length at which the appender starts the next file.
    rotate_at: u64,
}

impl Journal {
    /// Creates the journal file whose first record will be `first_seq`.
    pub(crate) fn create(dir: &Path, first_seq: u64) -> Result<Journal, StoreError> {
        let path = journal_path(dir, first_seq);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        Ok(Journal {
            file,
            dir: dir.to_path_buf(),
            path,
            len: 0,
            torn: false,
            rotate_at: ROTATE_BYTES,
        })
    }

    /// Creates the journal file that follows this one, in the same directory, whose first record
    /// will be `first_seq`.
    pub(crate) fn next(&self, first_seq: u64) -> Result<Journal, StoreError> {
        Journal::create(&self.dir, first_seq)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this file is full enough for the appender to start the next one.
    pub(crate) fn is_due_for_rotation(&self) -> bool {
        self.len >= self.rotate_at
    }

    /// After a failed attempt to start the next file: this one takes the next records, and the
    /// next attempt comes after another sixteenth of [`ROTATE_BYTES`], not at every append.
    pub(crate) fn postpone_rotation(&mut self) {
        self.rotate_at = self.len + ROTATE_BYTES / 16;
    }

    /// Appends whole frames with a single `write`, after which their records survive a kill -9.
    pub(crate) fn write(&mut self, frames: &[u8]) -> Result<(), StoreError> {
        if self.torn {
            self.file.set_len(self.len).at(&self.path)?;
            self.torn = false;
        }
        match self.file.write_all(frames) {
            Ok(()) => {
                self.len += frames.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.torn = true;
                Err(e).at(&self.path)
            }
        }
    }
}
