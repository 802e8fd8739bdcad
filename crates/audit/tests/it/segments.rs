//! Sealing segments and continuing the chain across them.

use audit::{Query, segment_path};

use crate::common::{append_range, open, raw, verified};

#[tokio::test]
async fn seal_continue_and_verify_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 10).await;
    let first = log.seal().await.unwrap().expect("sealed");
    assert_eq!((first.number, first.first_seq, first.last_seq), (1, 1, 10));
    assert_eq!(first.last_hash, log.head().hash);
    assert_eq!(first.path, segment_path(tmp.path(), 1));
    assert!(
        std::fs::metadata(&first.path)
            .unwrap()
            .permissions()
            .readonly()
    );
    let wal = first.path.with_extension("db-wal");
    assert!(
        !wal.exists(),
        "a sealed segment has no WAL left: {}",
        wal.display()
    );

    for n in 10..15 {
        assert_eq!(log.append(crate::common::entry(n)).await.unwrap(), n + 1);
    }
    let second = log.seal().await.unwrap().expect("sealed");
    assert_eq!(
        (second.number, second.first_seq, second.last_seq),
        (2, 11, 15)
    );
    append_range(&log, 15, 18).await;

    let report = log.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.records_checked, report.segments), (18, 3));

    // Pages of 7 cross both segment boundaries and return every record once, in order.
    let mut seqs = Vec::new();
    let mut after = None;
    loop {
        let page = log
            .query(Query {
                page_size: 7,
                after_seq: after,
                ..Query::default()
            })
            .await
            .unwrap();
        seqs.extend(page.records.iter().map(|r| r.seq));
        match page.next_after_seq {
            Some(seq) => after = Some(seq),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=18).collect::<Vec<_>>());
    let records = log.query(Query::default()).await.unwrap().records;
    assert_eq!(
        records[10].prev_hash, first.last_hash,
        "segment 2 starts from segment 1's hash"
    );
    assert_eq!(records[15].prev_hash, second.last_hash);
    drop(log);

    let log = open(tmp.path());
    assert_eq!(log.append(crate::common::entry(18)).await.unwrap(), 19);
    drop(log);
    let report = verified(tmp.path());
    assert_eq!((report.records_checked, report.segments), (19, 3));
}

#[tokio::test]
async fn sealing_an_empty_segment_does_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    assert_eq!(log.seal().await.unwrap(), None);
    append_range(&log, 0, 1).await;
    assert!(log.seal().await.unwrap().is_some());
    assert_eq!(log.seal().await.unwrap(), None, "the new segment is empty");
    let report = log.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.segments, 2);
}

#[tokio::test]
async fn a_seal_interrupted_by_a_crash_is_completed_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 5).await;
    let head = log.head();
    drop(log);

    // The state a crash leaves between committing the seal row and creating the next segment.
    let conn = raw(tmp.path(), 1);
    conn.execute(
        "INSERT INTO seal (id, last_seq, record_count, last_hash, sealed_at_unix_ms) \
         VALUES (1, 5, 5, ?1, 0)",
        [&head.hash.0[..]],
    )
    .unwrap();
    drop(conn);

    let log = open(tmp.path());
    assert_eq!(log.head(), head);
    assert_eq!(log.append(crate::common::entry(5)).await.unwrap(), 6);
    let first = segment_path(tmp.path(), 1);
    assert!(
        std::fs::metadata(&first).unwrap().permissions().readonly(),
        "the seal was finished"
    );
    assert!(segment_path(tmp.path(), 2).exists());
    let report = log.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.records_checked, report.segments), (6, 2));
}

#[tokio::test]
async fn the_writer_seals_after_every_configured_number_of_records() {
    seals_after_every_configured_number_of_records(audit::Durability::Full).await;
}

#[tokio::test]
async fn a_batch_that_crosses_a_seal_is_cut_there() {
    // Journaled appends are acknowledged at once, so the writer commits all ten in one batch,
    // which it must cut at the seals.
    seals_after_every_configured_number_of_records(audit::Durability::ProcessCrash).await;
}

async fn seals_after_every_configured_number_of_records(durability: audit::Durability) {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = audit::Config::new(tmp.path());
    config.seal_every_records = 4;
    config.durability = durability;
    let log = audit::AuditLog::open(config).unwrap();
    append_range(&log, 0, 10).await;
    let all = log.query(audit::Query::default()).await.unwrap();
    assert_eq!(all.records.len(), 10, "committed");
    // The seals fall exactly after seq 4 and 8; records 9 and 10 stay in the active segment.
    let report = log.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.segments, report.records_checked), (3, 10));
    for (number, first, last) in [(1, 1, 4), (2, 5, 8)] {
        let path = segment_path(tmp.path(), number);
        assert!(
            std::fs::metadata(&path).unwrap().permissions().readonly(),
            "segment {number} is sealed"
        );
        let (first_seq, last_seq): (i64, i64) = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
        .query_row("SELECT MIN(seq), MAX(seq) FROM records", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
        assert_eq!((first_seq, last_seq), (first, last), "segment {number}");
    }
}

#[tokio::test]
async fn a_log_that_cannot_start_its_next_segment_fails_appends_until_it_can() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 3).await;
    assert!(!log.is_failing());

    // A file where the audit directory was: even root cannot create the next segment in it,
    // while the open segment's descriptors keep working.
    let dir = audit::audit_dir(tmp.path());
    let away = tmp.path().join("audit-away");
    std::fs::rename(&dir, &away).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    assert!(log.seal().await.is_err(), "the seal cannot finish");
    assert!(!log.is_failing(), "no commit has failed yet");
    assert!(log.append(crate::common::entry(3)).await.is_err());
    assert!(log.is_failing(), "a failed commit is reported");
    assert_eq!(
        log.head().seq,
        3,
        "the failed record left no trace in the chain"
    );

    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&away, &dir).unwrap();
    assert_eq!(log.append(crate::common::entry(4)).await.unwrap(), 4);
    assert!(
        !log.is_failing(),
        "a commit that succeeds clears the failure"
    );
    drop(log);

    let report = verified(tmp.path());
    assert_eq!((report.records_checked, report.segments), (4, 2));
    let log = open(tmp.path());
    assert_eq!(log.append(crate::common::entry(5)).await.unwrap(), 5);
    drop(log);
    let report = verified(tmp.path());
    assert_eq!(report.records_checked, 5);
}
