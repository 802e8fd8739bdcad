//! Audit record types and the canonical encoding that the hash chain covers.
//!
//! The encoding of a record at sequence number `seq` is, in this order:
//!
//! | field            | encoding                                   |
//! |------------------|--------------------------------------------|
//! | format           | one byte, [`ENCODING_VERSION`]             |
//! | `seq`            | u64, 8 bytes big-endian                    |
//! | `time_unix_ms`   | i64, 8 bytes big-endian two's complement   |
//! | `identity`       | string                                     |
//! | `auth_method`    | string                                     |
//! | `method`         | string                                     |
//! | `tool`           | string                                     |
//! | `request_sha256` | string                                     |
//! | `status`         | string                                     |
//! | `summary`        | string                                     |
//! | `duration_us`    | u64, 8 bytes big-endian                    |
//! | `peer`           | string                                     |
//! | `sandboxed`      | one byte, 0 or 1                           |
//! | `rate_limited`   | one byte, 0 or 1                           |
//! | `trust_level`    | string                                     |
//! | `kind`           | string ("rpc", "tls_handshake", ...)       |
//!
//! where a string is its UTF-8 length as a u32 (4 bytes big-endian) followed by its bytes. Every
//! field has either a fixed width or a length prefix, so two different records can never encode to
//! the same bytes. The hash of a record is `SHA-256(prev_hash || encoding)`; the first record of the
//! log has `prev_hash` = 32 zero bytes. Because `seq` is inside the encoding, renumbering a record
//! changes its hash.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::InvalidRecord;

/// Version byte at the start of every canonical encoding, so that a future format can coexist.
pub const ENCODING_VERSION: u8 = 1;

/// The status name that counts as success; every other status is a failure.
pub const SUCCESS_STATUS: &str = "OK";

/// The gRPC status code names accepted in [`Entry::status`].
pub const STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Largest accepted string field, in bytes; it keeps one record far below SQLite's limits and the
/// u32 length prefix of the encoding.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// A SHA-256 value in the chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The `prev_hash` of the very first record.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// Lowercase hex, as the gRPC API shows it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits; returns `None` for anything else.
    pub fn from_hex(text: &str) -> Option<ChainHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(ChainHash(out))
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<ChainHash> {
        <[u8; 32]>::try_from(bytes).ok().map(ChainHash)
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What produced a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A gRPC call that reached the service stack.
    Rpc,
    /// A TLS handshake, recorded mostly when it fails.
    TlsHandshake,
    /// An authentication decision.
    Authentication,
}

impl Kind {
    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rpc => "rpc",
            Kind::TlsHandshake => "tls_handshake",
            Kind::Authentication => "authentication",
        }
    }

    /// Parses a name produced by [`Kind::as_str`].
    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "rpc" => Some(Kind::Rpc),
            "tls_handshake" => Some(Kind::TlsHandshake),
            "authentication" => Some(Kind::Authentication),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The content of one audit record, as the server hands it to [`crate::AuditLog::append`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Wall-clock time of the event, unix milliseconds.
    pub time_unix_ms: i64,
    /// Authenticated identity, empty when unauthenticated.
    pub identity: String,
    /// How the identity was established, for example "mtls" or "jwt".
    pub auth_method: String,
    /// Full gRPC method path, for example "/cordon.sandbox.v1.Sandbox/Exec".
    pub method: String,
    /// Tool name for tool calls, empty otherwise.
    pub tool: String,
    /// Lowercase hex SHA-256 of the request message, or empty; never the arguments in clear.
    pub request_sha256: String,
    /// gRPC status code name, one of [`STATUS_NAMES`].
    pub status: String,
    /// Short human-readable outcome.
    pub summary: String,
    /// Time spent serving the call, microseconds; at most `i64::MAX` because SQLite stores i64.
    pub duration_us: u64,
    /// Remote address.
    pub peer: String,
    /// Whether the call ran inside a sandbox.
    pub sandboxed: bool,
    /// Whether the call was refused by the rate limiter.
    pub rate_limited: bool,
    /// Trust level of the caller.
    pub trust_level: String,
    /// What produced the record.
    pub kind: Kind,
}

impl Entry {
    /// Whether the status is [`SUCCESS_STATUS`].
    pub fn is_success(&self) -> bool {
        self.status == SUCCESS_STATUS
    }

    /// Checks the invariants that [`crate::AuditLog::append`] enforces before a record enters the
    /// chain.
    pub fn validate(&self) -> Result<(), InvalidRecord> {
        if !STATUS_NAMES.contains(&self.status.as_str()) {
            return Err(InvalidRecord::UnknownStatus(self.status.clone()));
        }
        let digest = self.request_sha256.as_bytes();
        let is_lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if !digest.is_empty() && (digest.len() != 64 || !digest.iter().all(is_lower_hex)) {
            return Err(InvalidRecord::RequestDigest);
        }
        if i64::try_from(self.duration_us).is_err() {
            return Err(InvalidRecord::DurationTooLarge(self.duration_us));
        }
        for (field, value) in self.string_fields() {
            if value.len() > MAX_FIELD_BYTES {
                return Err(InvalidRecord::FieldTooLong {
                    field,
                    len: value.len(),
                });
            }
        }
        Ok(())
    }

    fn string_fields(&self) -> [(&'static str, &str); 9] {
        [
            ("identity", &self.identity),
            ("auth_method", &self.auth_method),
            ("method", &self.method),
            ("tool", &self.tool),
            ("request_sha256", &self.request_sha256),
            ("status", &self.status),
            ("summary", &self.summary),
            ("peer", &self.peer),
            ("trust_level", &self.trust_level),
        ]
    }

    /// The canonical encoding of this entry stored at `seq` (see the module documentation).
    pub fn canonical_bytes(&self, seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.summary.len() + self.method.len());
        self.encode_into(seq, &mut out);
        out
    }

    /// Appends the canonical encoding to `out`; the seq is the 8 bytes after the first.
    pub(crate) fn encode_into(&self, seq: u64, out: &mut Vec<u8>) {
        fn put_str(out: &mut Vec<u8>, value: &str) {
            // SQLite caps strings at 1e9 bytes, so the conversion cannot fail for anything read
            // from a segment; saturating keeps this function total instead of panicking.
            let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&self.time_unix_ms.to_be_bytes());
        put_str(out, &self.identity);
        put_str(out, &self.auth_method);
        put_str(out, &self.method);
        put_str(out, &self.tool);
        put_str(out, &self.request_sha256);
        put_str(out, &self.status);
        put_str(out, &self.summary);
        out.extend_from_slice(&self.duration_us.to_be_bytes());
        put_str(out, &self.peer);
        out.push(u8::from(self.sandboxed));
        out.push(u8::from(self.rate_limited));
        put_str(out, &self.trust_level);
        put_str(out, self.kind.as_str());
    }
}

/// An entry's fields, borrowed from an [`Entry`] or from its canonical encoding, so that the
/// writer can bind them to SQLite without copying them first.
pub(crate) struct EntryView<'a> {
    pub(crate) time_unix_ms: i64,
    pub(crate) identity: &'a str,
    pub(crate) auth_method: &'a str,
    pub(crate) method: &'a str,
    pub(crate) tool: &'a str,
    pub(crate) request_sha256: &'a str,
    pub(crate) status: &'a str,
    pub(crate) summary: &'a str,
    pub(crate) duration_us: u64,
    pub(crate) peer: &'a str,
    pub(crate) sandboxed: bool,
    pub(crate) rate_limited: bool,
    pub(crate) trust_level: &'a str,
    pub(crate) kind: Kind,
}

impl Entry {
    pub(crate) fn view(&self) -> EntryView<'_> {
        EntryView {
            time_unix_ms: self.time_unix_ms,
            identity: &self.identity,
            auth_method: &self.auth_method,
            method: &self.method,
            tool: &self.tool,
            request_sha256: &self.request_sha256,
            status: &self.status,
            summary: &self.summary,
            duration_us: self.duration_us,
            peer: &self.peer,
            sandboxed: self.sandboxed,
            rate_limited: self.rate_limited,
            trust_level: &self.trust_level,
            kind: self.kind,
        }
    }
}

/// Reads back what [`Entry::canonical_bytes`] wrote: the seq and the entry. The journal stores
/// records in this form, so the bytes that are hashed are exactly the bytes that are kept.
pub(crate) fn decode_canonical(bytes: &[u8]) -> Result<(u64, Entry), String> {
    let (seq, view) = decode_view(bytes)?;
    let entry = Entry {
        time_unix_ms: view.time_unix_ms,
        identity: view.identity.to_owned(),
        auth_method: view.auth_method.to_owned(),
        method: view.method.to_owned(),
        tool: view.tool.to_owned(),
        request_sha256: view.request_sha256.to_owned(),
        status: view.status.to_owned(),
        summary: view.summary.to_owned(),
        duration_us: view.duration_us,
        peer: view.peer.to_owned(),
        sandboxed: view.sandboxed,
        rate_limited: view.rate_limited,
        trust_level: view.trust_level.to_owned(),
        kind: view.kind,
    };
    entry.validate().map_err(|e| e.to_string())?;
    Ok((seq, entry))
}

/// Reads the seq and the fields of a canonical encoding in place. Checks its structure, not the
/// limits of [`Entry::validate`]: the writer uses it on frames it encoded from valid entries.
pub(crate) fn decode_view(bytes: &[u8]) -> Result<(u64, EntryView<'_>), String> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err(format!("{what} is cut short"));
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u64(&mut self, what: &str) -> Result<u64, String> {
            let mut out = [0u8; 8];
            out.copy_from_slice(self.take(8, what)?);
            Ok(u64::from_be_bytes(out))
        }
        fn flag(&mut self, what: &str) -> Result<bool, String> {
            match self.take(1, what)? {
                [0] => Ok(false),
                [1] => Ok(true),
                _ => Err(format!("{what} is neither 0 nor 1")),
            }
        }
        fn string(&mut self, what: &str) -> Result<&'a str, String> {
            let mut len = [0u8; 4];
            len.copy_from_slice(self.take(4, what)?);
            let len = usize::try_from(u32::from_be_bytes(len)).map_err(|e| e.to_string())?;
            let raw = self.take(len, what)?;
            std::str::from_utf8(raw).map_err(|_| format!("{what} is not UTF-8"))
        }
    }
    let mut r = Reader(bytes);
    if r.take(1, "format")? != [ENCODING_VERSION] {
        return Err("unknown encoding version".to_owned());
    }
    let seq = r.u64("seq")?;
    let time_unix_ms = i64::from_be_bytes(r.u64("time_unix_ms")?.to_be_bytes());
    let identity = r.string("identity")?;
    let auth_method = r.string("auth_method")?;
    let method = r.string("method")?;
    let tool = r.string("tool")?;
    let request_sha256 = r.string("request_sha256")?;
    let status = r.string("status")?;
    let summary = r.string("summary")?;
    let duration_us = r.u64("duration_us")?;
    let peer = r.string("peer")?;
    let sandboxed = r.flag("sandboxed")?;
    let rate_limited = r.flag("rate_limited")?;
    let trust_level = r.string("trust_level")?;
    let kind = r.string("kind")?;
    let kind = Kind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    if !r.0.is_empty() {
        return Err("bytes follow the last field".to_owned());
    }
    let view = EntryView {
        time_unix_ms,
        identity,
        auth_method,
        method,
        tool,
        request_sha256,
        status,
        summary,
        duration_us,
        peer,
        sandboxed,
        rate_limited,
        trust_level,
        kind,
    };
    Ok((seq, view))
}

/// `SHA-256(prev || canonical)`, for callers that already hold the canonical bytes.
pub(crate) fn chain_hash_of_bytes(prev: &ChainHash, canonical: &[u8]) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(prev.0);
    hasher.update(canonical);
    ChainHash(hasher.finalize().into())
}

/// `SHA-256(prev || entry.canonical_bytes(seq))`: the hash stored with the record at `seq`.
pub fn chain_hash(prev: &ChainHash, seq: u64, entry: &Entry) -> ChainHash {
    chain_hash_of_bytes(prev, &entry.canonical_bytes(seq))
}

/// A record as stored: its content plus its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the log, starting at 1 and contiguous across segments.
    pub seq: u64,
    /// The content that was appended.
    pub entry: Entry,
    /// Hash of the previous record, or [`ChainHash::GENESIS`] for seq 1.
    pub prev_hash: ChainHash,
    /// `chain_hash(prev_hash, seq, entry)`.
    pub hash: ChainHash,
}

/// A point in the chain that someone outside the data directory can remember: the log's head at
/// some moment. Checking a log against an anchor detects a truncated tail or a rewritten history
/// that the chain alone cannot reveal (see [`crate::verify_dir_with_anchor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Anchor {
    /// Sequence number of the last record, 0 for an empty log.
    pub seq: u64,
    /// Hash of that record, [`ChainHash::GENESIS`] for an empty log.
    pub hash: ChainHash,
}
