//! Error types, one per operation.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A failure of the underlying storage, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite refused or failed an operation.
    #[error("sqlite error on {path}: {source}")]
    Sqlite {
        /// The segment file or directory concerned.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file-system operation failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// A segment's content does not have the shape this crate writes.
    #[error("{path} is not a valid audit segment: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why an [`crate::Entry`] was refused before it reached the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRecord {
    /// The status is not a gRPC status code name.
    #[error("status {0:?} is not a grpc status code name")]
    UnknownStatus(String),
    /// The request digest is neither empty nor 64 lowercase hex digits.
    #[error("request_sha256 must be empty or 64 lowercase hex digits")]
    RequestDigest,
    /// The duration does not fit SQLite's signed 64-bit integers.
    #[error("duration_us {0} exceeds i64::MAX")]
    DurationTooLarge(u64),
    /// A string field is longer than [`crate::MAX_FIELD_BYTES`].
    #[error("field {field} is {len} bytes, more than the limit")]
    FieldTooLong {
        /// The field name.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

/// Failure of [`crate::AuditLog::open`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process or another [`crate::AuditLog`] in this process holds the log.
    #[error("audit log {path} is already open elsewhere")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The storage could not be opened or prepared.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer thread could not be started.
    #[error("cannot start the audit writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// Failure of [`crate::AuditLog::append`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The entry breaks an invariant and was not written.
    #[error("invalid audit record: {0}")]
    Invalid(#[from] InvalidRecord),
    /// The batch holding this entry failed to commit; nothing of that batch was written. The error
    /// is shared by every entry of the batch.
    #[error("audit batch failed to commit: {0}")]
    Store(#[source] Arc<StoreError>),
    /// The writer thread has stopped, so the entry was not acknowledged.
    #[error("audit writer has stopped")]
    Closed,
}

/// Failure of [`crate::AuditLog::try_append`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryAppendError {
    /// The writer's queue is full; the entry is handed back untouched.
    #[error("the audit queue is full")]
    Full(Box<crate::Entry>),
    /// The entry was refused, or the writer has stopped.
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// Failure of [`crate::AuditLog::seal`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Sealing or starting the next segment failed. If the seal row was committed, the next append
    /// or the next open starts the new segment, so the chain stays continuous.
    #[error("cannot seal the audit segment: {0}")]
    Store(#[from] StoreError),
    /// The writer thread has stopped.
    #[error("audit writer has stopped")]
    Closed,
}

/// Failure of a query or of statistics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// No audit log exists in the given data directory.
    #[error("no audit log in {0}")]
    NotFound(PathBuf),
    /// A segment could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running the query was cancelled or panicked.
    #[error("audit query task did not complete")]
    Interrupted,
}

/// Failure to run a verification at all. A log that fails verification is not an error: it is a
/// [`crate::VerifyReport`] with `ok == false`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No audit log exists in the given data directory.
    #[error("no audit log in {0}")]
    NotFound(PathBuf),
    /// The audit directory could not be listed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task running the verification was cancelled or panicked.
    #[error("audit verify task did not complete")]
    Interrupted,
}

pub(crate) trait Context<T> {
    fn at(self, path: &std::path::Path) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn at(self, path: &std::path::Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl<T> Context<T> for Result<T, io::Error> {
    fn at(self, path: &std::path::Path) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
