//! The inventory of issued certificates, in SQLite.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;
use time::OffsetDateTime;

use crate::crl::{RevocationReason, Revoked};
use crate::names::{self, SerialError};

/// Default page size of [`Inventory::list`] when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size of [`Inventory::list`]; larger requests are clamped.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The state of a certificate, as the inventory sees it at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Not revoked and `notAfter` not yet passed.
    Active,
    /// Not revoked, but `notAfter` has passed.
    Expired,
    /// Revoked (whatever its expiry).
    Revoked,
}

impl Status {
    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

/// One row of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Normalised hex serial.
    pub serial_hex: String,
    /// The identity the certificate names.
    pub identity: String,
    /// `notBefore`.
    pub not_before: OffsetDateTime,
    /// `notAfter`.
    pub not_after: OffsetDateTime,
    /// Status at the time of the query.
    pub status: Status,
    /// Revocation reason and time, when revoked.
    pub revocation: Option<(RevocationReason, OffsetDateTime)>,
}

/// What [`Inventory::list`] should return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this identity.
    pub identity: Option<String>,
    /// Only this status (evaluated at `now`).
    pub status: Option<Status>,
    /// Page size; 0 means [`DEFAULT_PAGE_SIZE`], above [`MAX_PAGE_SIZE`] is clamped.
    pub page_size: u32,
    /// The `next_page_token` of the previous page, or empty for the first page.
    pub page_token: String,
}

/// One page of [`Inventory::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Records in issuance order.
    pub records: Vec<Record>,
    /// Token of the next page; empty when this is the last page.
    pub next_page_token: String,
}

/// Errors of the inventory.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InventoryError {
    /// SQLite failed.
    #[error("inventory database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A serial is not valid hex.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// An identity is invalid.
    #[error(transparent)]
    Name(#[from] names::NameError),
    /// The serial is already recorded.
    #[error("certificate {0} is already recorded")]
    Duplicate(String),
    /// No certificate with this serial was issued.
    #[error("no certificate with serial {0}")]
    UnknownSerial(String),
    /// The certificate is already revoked.
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    /// The page token was not produced by [`Inventory::list`].
    #[error("invalid page token")]
    PageToken,
    /// A stored value is not what this version writes (a damaged or foreign database).
    #[error("corrupt inventory row: {0}")]
    Corrupt(String),
}

/// The inventory of issued certificates.
///
/// One SQLite connection behind a `Mutex`: `Inventory` is `Send + Sync` and every method takes
/// `&self`, so the server can share it in an `Arc`. Calls block briefly on disk I/O; call them
/// from `spawn_blocking` in async code.
#[derive(Debug)]
pub struct Inventory {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS certificates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    serial TEXT NOT NULL UNIQUE,
    identity TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    revoked_at INTEGER,
    revocation_reason TEXT,
    CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
);
CREATE INDEX IF NOT EXISTS certificates_identity ON certificates (identity, seq);
CREATE TABLE IF NOT EXISTS crl_number (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO crl_number (id, last) VALUES (0, 0);
";

impl Inventory {
    /// Opens (creating if needed) the inventory at `path`.
    pub fn open(path: &Path) -> Result<Self, InventoryError> {
        let conn = Connection::open(path)?;
        // WAL keeps readers from blocking the writer; the busy timeout covers a second
        // process (for example an admin tool) touching the same file.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::init(conn)
    }

    /// An inventory that lives in memory only, for tests and benchmarks.
    pub fn open_in_memory() -> Result<Self, InventoryError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, InventoryError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each statement is
        // atomic), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an issued certificate as active.
    pub fn record(
        &self,
        serial_hex: &str,
        identity: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(), InventoryError> {
        let serial = names::normalize_serial_hex(serial_hex)?;
        names::validate_identity(identity)?;
        let result = self.conn().execute(
            "INSERT INTO certificates (serial, identity, not_before, not_after) VALUES (?1, ?2, ?3, ?4)",
            params![serial, identity, not_before.unix_timestamp(), not_after.unix_timestamp()],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(InventoryError::Duplicate(serial))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records a certificate from an [`crate::Issued`].
    pub fn record_issued(
        &self,
        issued: &crate::Issued,
        identity: &str,
    ) -> Result<(), InventoryError> {
        self.record(
            &issued.serial_hex,
            identity,
            issued.not_before,
            issued.not_after,
        )
    }

    /// Marks a certificate revoked. Errors if the serial is unknown or already revoked; the
    /// check and the update happen under one lock, so two concurrent revocations of the same
    /// certificate cannot both succeed.
    pub fn revoke(
        &self,
        serial_hex: &str,
        reason: RevocationReason,
        at: OffsetDateTime,
    ) -> Result<Record, InventoryError> {
        let serial = names::normalize_serial_hex(serial_hex)?;
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE certificates SET revoked_at = ?2, revocation_reason = ?3
             WHERE serial = ?1 AND revoked_at IS NULL",
            params![serial, at.unix_timestamp(), reason.as_str()],
        )?;
        let record = get_locked(&conn, &serial, OffsetDateTime::now_utc())?;
        match (changed, record) {
            (1, Some(record)) => Ok(record),
            (_, Some(_)) => Err(InventoryError::AlreadyRevoked(serial)),
            (_, None) => Err(InventoryError::UnknownSerial(serial)),
        }
    }

    /// One certificate by serial, with its status at `now`.
    pub fn get(
        &self,
        serial_hex: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Record>, InventoryError> {
        let serial = names::normalize_serial_hex(serial_hex)?;
        get_locked(&self.conn(), &serial, now)
    }

    /// A page of certificates in issuance order, filtered, with status evaluated at `now`.
    ///
    /// Pagination is by issuance sequence number, so pages are stable: certificates issued or
    /// revoked between two calls neither shift nor repeat rows already returned.
    pub fn list(&self, query: &ListQuery, now: OffsetDateTime) -> Result<Page, InventoryError> {
        let after: i64 = if query.page_token.is_empty() {
            0
        } else {
            query
                .page_token
                .strip_prefix("s")
                .and_then(|s| s.parse().ok())
                .filter(|n| *n > 0)
                .ok_or(InventoryError::PageToken)?
        };
        let page_size = match query.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let status = query.status.map(Status::as_str);
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, serial, identity, not_before, not_after, revoked_at, revocation_reason
             FROM certificates
             WHERE seq > ?1
               AND (?2 IS NULL OR identity = ?2)
               AND (?3 IS NULL
                    OR (?3 = 'revoked' AND revoked_at IS NOT NULL)
                    OR (?3 = 'expired' AND revoked_at IS NULL AND not_after < ?4)
                    OR (?3 = 'active' AND revoked_at IS NULL AND not_after >= ?4))
             ORDER BY seq
             LIMIT ?5",
        )?;
        // One row more than asked tells whether another page exists.
        let rows = stmt
            .query_map(
                params![
                    after,
                    query.identity,
                    status,
                    now.unix_timestamp(),
                    i64::from(page_size) + 1
                ],
                |row| Ok((row.get::<_, i64>(0)?, raw_record(row, 1)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let more = rows.len() > page_size as usize;
        let mut records = Vec::with_capacity(rows.len().min(page_size as usize));
        let mut last_seq = 0;
        for (seq, raw) in rows.into_iter().take(page_size as usize) {
            records.push(raw.into_record(now)?);
            last_seq = seq;
        }
        Ok(Page {
            records,
            next_page_token: if more {
                format!("s{last_seq}")
            } else {
                String::new()
            },
        })
    }

    /// Every revoked certificate, for building the CRL.
    pub fn revoked(&self) -> Result<Vec<Revoked>, InventoryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT serial, revoked_at, revocation_reason FROM certificates
             WHERE revoked_at IS NOT NULL ORDER BY seq",
        )?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(serial_hex, at, reason)| {
                Ok(Revoked {
                    serial_hex,
                    revoked_at: timestamp(at)?,
                    reason: reason.parse().map_err(|e: crate::crl::UnknownReason| {
                        InventoryError::Corrupt(e.to_string())
                    })?,
                })
            })
            .collect()
    }

    /// Returns the next CRL number (1, 2, 3, ...), persisted so that it keeps growing across
    /// restarts as RFC 5280 requires.
    pub fn next_crl_number(&self) -> Result<u64, InventoryError> {
        let conn = self.conn();
        let next: i64 = conn.query_row(
            "UPDATE crl_number SET last = last + 1 WHERE id = 0 RETURNING last",
            [],
            |row| row.get(0),
        )?;
        u64::try_from(next).map_err(|_| InventoryError::Corrupt(format!("crl number {next}")))
    }
}

struct RawRecord {
    serial_hex: String,
    identity: String,
    not_before: i64,
    not_after: i64,
    revoked_at: Option<i64>,
    reason: Option<String>,
}

fn raw_record(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        serial_hex: row.get(first)?,
        identity: row.get(first + 1)?,
        not_before: row.get(first + 2)?,
        not_after: row.get(first + 3)?,
        revoked_at: row.get(first + 4)?,
        reason: row.get(first + 5)?,
    })
}

impl RawRecord {
    fn into_record(self, now: OffsetDateTime) -> Result<Record, InventoryError> {
        let not_after = timestamp(self.not_after)?;
        let revocation = match (self.revoked_at, self.reason) {
            (Some(at), Some(reason)) => Some((
                reason.parse().map_err(|e: crate::crl::UnknownReason| {
                    InventoryError::Corrupt(e.to_string())
                })?,
                timestamp(at)?,
            )),
            (None, None) => None,
            _ => return Err(InventoryError::Corrupt(self.serial_hex)),
        };
        let status = if revocation.is_some() {
            Status::Revoked
        } else if not_after < now {
            Status::Expired
        } else {
            Status::Active
        };
        Ok(Record {
            serial_hex: self.serial_hex,
            identity: self.identity,
            not_before: timestamp(self.not_before)?,
            not_after,
            status,
            revocation,
        })
    }
}

fn get_locked(
    conn: &Connection,
    serial: &str,
    now: OffsetDateTime,
) -> Result<Option<Record>, InventoryError> {
    conn.prepare_cached(
        "SELECT serial, identity, not_before, not_after, revoked_at, revocation_reason
         FROM certificates WHERE serial = ?1",
    )?
    .query_row([serial], |row| raw_record(row, 0))
    .optional()?
    .map(|raw| raw.into_record(now))
    .transpose()
}

fn timestamp(unix: i64) -> Result<OffsetDateTime, InventoryError> {
    OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|_| InventoryError::Corrupt(format!("timestamp {unix}")))
}
