//! Cordon's tamper-evident audit log: an append-only, hash-chained log of every call, stored in
//! SQLite under `<data_dir>/audit/`.
//!
//! # Chain
//! Every [`Record`] stores `hash = SHA-256(prev_hash || canonical encoding)` (see [`record`] for
//! the byte layout); the first record's `prev_hash` is 32 zero bytes. [`verify_dir`] recomputes
//! the chain and names the first record that does not match; its documentation lists what it
//! detects and what needs an [`Anchor`].
//!
//! # Append-only
//! Only the writer thread of an [`AuditLog`] writes, and it only inserts. SQLite triggers also
//! abort any UPDATE or DELETE of records, of the segment header and of seals, and any insert into a
//! sealed segment, so a mistaken or malicious SQL statement through a normal connection fails. A
//! tamperer with the file can drop the triggers; the chain is what detects that.
//!
//! # Group commit and durability
//! A single writer thread owns the database and commits records in groups: it takes whatever
//! queued up while it was committing and writes it in one transaction, so the cost of a commit is
//! shared by all concurrent callers. When [`AuditLog::append`] resolves depends on the
//! [`Durability`]:
//! - [`Durability::ProcessCrash`] (the server's default): the record is chained at once and
//!   written to the journal (`<data_dir>/audit/journal-*.log`) when its future is first polled or
//!   dropped, in one `write` together with every other record queued by then, and acknowledged
//!   as soon as that write returns. The writer commits journaled records later in large batches,
//!   with `synchronous = NORMAL`. An acknowledged record survives a kill -9 (the kernel holds the
//!   journal's data, and the next open commits what the segments miss), not a power cut.
//! - [`Durability::Full`]: the append waits for the transaction holding it, and SQLite fsyncs the
//!   WAL at every commit (`synchronous = FULL`), so an acknowledged record also survives a power
//!   cut.
//!
//! A record whose `append` has not resolved yet may be lost to a kill -9; the tower layer must
//! await `append` before it answers the call if the call must never happen unaudited.
//!
//! # Segments
//! [`AuditLog::seal`] writes a seal row (last seq, record count, last hash) into the active segment
//! file `audit-NNNNNN.db`, checkpoints it, marks the file read-only and starts segment
//! `NNNNNN + 1`, whose header stores the sealed segment's last hash as its genesis `prev_hash`.
//! Seqs continue across segments, and [`verify_dir`], [`query_dir`] and [`stats_dir`] span every
//! segment.

#![forbid(unsafe_code)]

mod error;
mod journal;
mod log;
mod query;
pub mod record;
mod segment;
mod verify;

pub use error::{
    AppendError, InvalidRecord, OpenError, QueryError, SealError, StoreError, TryAppendError,
    VerifyError,
};
pub use log::{Appending, AuditLog, Config, Durability, SealedSegment, WriterStats};
pub use query::{
    Count, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, Query, RECENT_FAILURES, Stats, StatsQuery,
    TOP_N, query_dir, stats_dir,
};
pub use record::{
    Anchor, ChainHash, Entry, Kind, MAX_FIELD_BYTES, Record, STATUS_NAMES, SUCCESS_STATUS,
    chain_hash,
};
pub use segment::{AUDIT_SUBDIR, audit_dir, segment_path};
pub use verify::{VerifyReport, verify_dir, verify_dir_with_anchor};
