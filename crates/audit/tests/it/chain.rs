//! The chain itself: hashing, encoding, reopening, validation and the single-writer lock.

use audit::{
    AppendError, AuditLog, ChainHash, Config, InvalidRecord, OpenError, Query, chain_hash,
    verify_dir,
};
use sha2::{Digest, Sha256};

use crate::common::{append_range, entry, open, verified};

#[tokio::test]
async fn chain_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 10).await;
    let head_before = log.head();
    assert_eq!(head_before.seq, 10);
    drop(log);

    let log = open(tmp.path());
    assert_eq!(log.head(), head_before, "the head is recovered from disk");
    for n in 10..20 {
        assert_eq!(log.append(entry(n)).await.unwrap(), n + 1);
    }
    let page = log
        .query(Query {
            page_size: 1000,
            ..Query::default()
        })
        .await
        .unwrap();
    assert_eq!(page.records.len(), 20);
    assert_eq!(
        page.records[10].prev_hash, page.records[9].hash,
        "the chain links across the reopen"
    );
    drop(log);

    let report = verified(tmp.path());
    assert_eq!(report.records_checked, 20);
    assert_eq!(report.segments, 1);
    assert_eq!(report.head.seq, 20);
}

#[tokio::test]
async fn hash_is_sha256_of_prev_hash_and_canonical_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 2).await;
    let page = log.query(Query::default()).await.unwrap();
    let (first, second) = (&page.records[0], &page.records[1]);
    assert_eq!(first.prev_hash, ChainHash::GENESIS);
    assert_eq!(
        first.entry,
        entry(0),
        "a record reads back exactly as appended"
    );

    let mut hasher = Sha256::new();
    hasher.update([0u8; 32]);
    hasher.update(first.entry.canonical_bytes(1));
    assert_eq!(first.hash.0, <[u8; 32]>::from(hasher.finalize()));
    assert_eq!(second.prev_hash, first.hash);
    assert_eq!(second.hash, chain_hash(&first.hash, 2, &second.entry));
    assert_eq!(ChainHash::from_hex(&first.hash.to_hex()), Some(first.hash));
}

#[test]
fn canonical_encoding_is_length_prefixed_and_covers_seq() {
    let mut e = entry(7);
    let bytes = e.canonical_bytes(7);
    assert_eq!(bytes[0], 1, "format version");
    assert_eq!(&bytes[1..9], &7u64.to_be_bytes());
    assert_eq!(&bytes[9..17], &e.time_unix_ms.to_be_bytes());
    assert_eq!(&bytes[17..21], &(e.identity.len() as u32).to_be_bytes());
    assert_eq!(&bytes[21..21 + e.identity.len()], e.identity.as_bytes());
    assert_ne!(e.canonical_bytes(8), bytes, "the seq is covered");

    // Moving characters from one field to its neighbour must change the encoding.
    e.identity = "ab".to_owned();
    e.auth_method = "c".to_owned();
    let left = e.canonical_bytes(1);
    e.identity = "a".to_owned();
    e.auth_method = "bc".to_owned();
    assert_ne!(left, e.canonical_bytes(1));
}

#[tokio::test]
async fn invalid_entries_are_refused_and_not_written() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    let mut bad_status = entry(0);
    bad_status.status = "ok".to_owned();
    let mut bad_digest = entry(0);
    bad_digest.request_sha256 = "{\"cmd\":\"rm -rf /\"}".to_owned();
    let mut upper_digest = entry(0);
    upper_digest.request_sha256 = "AB".repeat(32);
    let mut long_duration = entry(0);
    long_duration.duration_us = u64::MAX;
    let mut long_summary = entry(0);
    long_summary.summary = "x".repeat(audit::MAX_FIELD_BYTES + 1);

    assert!(matches!(
        log.append(bad_status).await,
        Err(AppendError::Invalid(InvalidRecord::UnknownStatus(s))) if s == "ok"
    ));
    for bad in [bad_digest, upper_digest] {
        assert!(matches!(
            log.append(bad).await,
            Err(AppendError::Invalid(InvalidRecord::RequestDigest))
        ));
    }
    assert!(matches!(
        log.append(long_duration).await,
        Err(AppendError::Invalid(InvalidRecord::DurationTooLarge(_)))
    ));
    assert!(matches!(
        log.append(long_summary).await,
        Err(AppendError::Invalid(InvalidRecord::FieldTooLong {
            field: "summary",
            ..
        }))
    ));
    let mut no_digest = entry(0);
    no_digest.request_sha256 = String::new();
    assert_eq!(
        log.append(no_digest).await.unwrap(),
        1,
        "an empty digest is allowed"
    );
    assert_eq!(log.head().seq, 1);
}

#[tokio::test]
async fn a_second_writer_is_locked_out() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    let second = AuditLog::open(Config::new(tmp.path()));
    assert!(
        matches!(second, Err(OpenError::Locked { .. })),
        "{second:?}"
    );
    append_range(&log, 0, 1).await;
    drop(log);
    let reopened = AuditLog::open(Config::new(tmp.path())).expect("the lock is released on drop");
    assert_eq!(reopened.head().seq, 1);
}

#[test]
fn verify_of_a_missing_log_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        verify_dir(tmp.path()),
        Err(audit::VerifyError::NotFound(_))
    ));
}
