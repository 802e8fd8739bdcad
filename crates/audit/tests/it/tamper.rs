//! Append-only enforcement in the database, and detection of tampering by the chain.

use audit::{Query, chain_hash, verify_dir, verify_dir_with_anchor};

use crate::common::{append_range, drop_triggers, open, raw};

fn assert_bad(report: &audit::VerifyReport, seq: u64, reason_part: &str) {
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.first_bad_seq, Some(seq), "{report:?}");
    let reason = report.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(reason_part),
        "reason {reason:?} should mention {reason_part:?}"
    );
}

fn assert_refused(result: rusqlite::Result<usize>, message: &str) {
    let error = result.expect_err("the statement must be refused");
    assert!(error.to_string().contains(message), "{error}");
}

#[tokio::test]
async fn triggers_refuse_update_delete_and_insert_after_seal() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 5).await;
    {
        // The live log is open; a second connection plays a buggy or malicious client.
        let conn = raw(tmp.path(), 1);
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let append_only = "audit records are append-only";
        assert_refused(
            conn.execute("UPDATE records SET summary = 'x' WHERE seq = 2", []),
            append_only,
        );
        assert_refused(
            conn.execute("DELETE FROM records WHERE seq = 5", []),
            append_only,
        );
        assert_refused(conn.execute("DELETE FROM records", []), append_only);
        assert_refused(
            conn.execute("UPDATE segment SET first_seq = 9", []),
            "audit segment header is immutable",
        );
        // The refused statements changed nothing.
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 5);
    }
    log.seal()
        .await
        .unwrap()
        .expect("a non-empty segment seals");
    {
        let conn = raw(tmp.path(), 1);
        assert_refused(
            conn.execute(
                "INSERT INTO records SELECT seq + 100, time_unix_ms, identity, auth_method, method, \
                 tool, request_sha256, status, summary, duration_us, peer, sandboxed, rate_limited, \
                 trust_level, kind, prev_hash, hash FROM records WHERE seq = 1",
                [],
            ),
            "audit segment is sealed",
        );
        assert_refused(
            conn.execute("UPDATE seal SET last_seq = 1", []),
            "audit seal is immutable",
        );
        assert_refused(
            conn.execute("DELETE FROM seal", []),
            "audit seal is immutable",
        );
    }
    let report = log.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records_checked, 5);
}

#[tokio::test]
async fn an_edited_field_is_detected_at_that_record() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 10).await;
    drop(log);
    assert!(verify_dir(tmp.path()).unwrap().ok);

    let conn = raw(tmp.path(), 1);
    drop_triggers(&conn);
    conn.execute(
        "UPDATE records SET status = 'PERMISSION_DENIED' WHERE seq = 4",
        [],
    )
    .unwrap();
    let report = verify_dir(tmp.path()).unwrap();
    assert_bad(&report, 4, "was modified");
    assert_eq!(report.records_checked, 3);
    assert_eq!(report.head.seq, 3, "the head is the last good record");

    conn.execute("UPDATE records SET status = 'OK' WHERE seq = 4", [])
        .unwrap();
    assert!(
        verify_dir(tmp.path()).unwrap().ok,
        "restoring the value restores the chain"
    );
    // Even a flipped boolean, the smallest possible edit, breaks the hash.
    conn.execute(
        "UPDATE records SET sandboxed = 1 - sandboxed WHERE seq = 7",
        [],
    )
    .unwrap();
    assert_bad(&verify_dir(tmp.path()).unwrap(), 7, "was modified");
}

#[tokio::test]
async fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 10).await;
    let records = log.query(Query::default()).await.unwrap().records;
    drop(log);

    let conn = raw(tmp.path(), 1);
    drop_triggers(&conn);
    let mut forged = records[3].entry.clone();
    forged.identity = "someone-else".to_owned();
    let forged_hash = chain_hash(&records[3].prev_hash, 4, &forged);
    conn.execute(
        "UPDATE records SET identity = ?1, hash = ?2 WHERE seq = 4",
        rusqlite::params![forged.identity, &forged_hash.0[..]],
    )
    .unwrap();
    assert_bad(
        &verify_dir(tmp.path()).unwrap(),
        5,
        "does not link to record 4",
    );
}

#[tokio::test]
async fn a_deleted_middle_record_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 10).await;
    drop(log);
    let conn = raw(tmp.path(), 1);
    drop_triggers(&conn);
    conn.execute("DELETE FROM records WHERE seq = 5", [])
        .unwrap();
    let report = verify_dir(tmp.path()).unwrap();
    assert_bad(&report, 5, "record 5 is missing");
    assert_eq!(report.records_checked, 4);
}

#[tokio::test]
async fn swapped_and_renumbered_records_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 10).await;
    drop(log);
    let conn = raw(tmp.path(), 1);
    drop_triggers(&conn);
    // Swap the whole content (hashes included) of rows 3 and 6, keeping their seqs.
    conn.execute_batch(
        "CREATE TEMP TABLE saved AS SELECT * FROM records WHERE seq IN (3, 6);
         UPDATE records SET (time_unix_ms, identity, auth_method, method, tool, request_sha256,
             status, summary, duration_us, peer, sandboxed, rate_limited, trust_level, kind,
             prev_hash, hash) =
             (SELECT time_unix_ms, identity, auth_method, method, tool, request_sha256, status,
                  summary, duration_us, peer, sandboxed, rate_limited, trust_level, kind,
                  prev_hash, hash FROM saved WHERE saved.seq = 9 - records.seq)
             WHERE seq IN (3, 6);",
    )
    .unwrap();
    assert_bad(
        &verify_dir(tmp.path()).unwrap(),
        3,
        "does not link to record 2",
    );
    // Swap them back, then exchange the seqs of rows 7 and 8 instead.
    conn.execute_batch(
        "UPDATE records SET (time_unix_ms, identity, auth_method, method, tool, request_sha256,
             status, summary, duration_us, peer, sandboxed, rate_limited, trust_level, kind,
             prev_hash, hash) =
             (SELECT time_unix_ms, identity, auth_method, method, tool, request_sha256, status,
                  summary, duration_us, peer, sandboxed, rate_limited, trust_level, kind,
                  prev_hash, hash FROM saved WHERE saved.seq = records.seq)
             WHERE seq IN (3, 6);",
    )
    .unwrap();
    assert!(verify_dir(tmp.path()).unwrap().ok);
    conn.execute_batch(
        "UPDATE records SET seq = -7 WHERE seq = 7;
         UPDATE records SET seq = 7 WHERE seq = 8;
         UPDATE records SET seq = 8 WHERE seq = -7;",
    )
    .unwrap();
    assert_bad(
        &verify_dir(tmp.path()).unwrap(),
        7,
        "does not link to record 6",
    );
}

#[tokio::test]
async fn a_truncated_sealed_segment_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 10).await;
    log.seal().await.unwrap().unwrap();
    append_range(&log, 10, 15).await;
    let records = log.query(Query::default()).await.unwrap().records;
    drop(log);

    let conn = raw(tmp.path(), 1);
    drop_triggers(&conn);
    conn.execute("DELETE FROM records WHERE seq > 7", [])
        .unwrap();
    assert_bad(&verify_dir(tmp.path()).unwrap(), 8, "records were removed");

    // A careful tamperer also rewrites the seal; the next segment's genesis still remembers.
    conn.execute(
        "UPDATE seal SET last_seq = 7, record_count = 7, last_hash = ?1",
        [&records[6].hash.0[..]],
    )
    .unwrap();
    assert_bad(
        &verify_dir(tmp.path()).unwrap(),
        8,
        "segment 2 starts at seq 11 instead of 8",
    );
}

#[tokio::test]
async fn a_truncated_active_tail_needs_an_anchor() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 10).await;
    let anchor = log.head();
    drop(log);
    assert!(verify_dir_with_anchor(tmp.path(), &anchor).unwrap().ok);

    let conn = raw(tmp.path(), 1);
    drop_triggers(&conn);
    conn.execute("DELETE FROM records WHERE seq > 8", [])
        .unwrap();
    // Documented limit: the files alone cannot show that the active segment had a longer tail.
    assert!(verify_dir(tmp.path()).unwrap().ok);
    assert_bad(
        &verify_dir_with_anchor(tmp.path(), &anchor).unwrap(),
        9,
        "the tail was removed",
    );
}

#[tokio::test]
async fn a_rewritten_history_needs_an_anchor() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 10).await;
    let anchor = log.head();
    let records = log.query(Query::default()).await.unwrap().records;
    drop(log);

    // Rewrite history from record 5 on, recomputing every hash: consistent, but not the anchor's.
    let conn = raw(tmp.path(), 1);
    drop_triggers(&conn);
    let mut prev = records[3].hash;
    for record in &records[4..] {
        let mut forged = record.entry.clone();
        forged.summary = "nothing happened".to_owned();
        let hash = chain_hash(&prev, record.seq, &forged);
        conn.execute(
            "UPDATE records SET summary = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![forged.summary, &prev.0[..], &hash.0[..], record.seq as i64],
        )
        .unwrap();
        prev = hash;
    }
    let report = verify_dir(tmp.path()).unwrap();
    assert!(report.ok, "a full rewrite is self-consistent: {report:?}");
    assert_bad(
        &verify_dir_with_anchor(tmp.path(), &anchor).unwrap(),
        10,
        "history was rewritten",
    );
}

#[tokio::test]
async fn a_missing_or_unsealed_middle_segment_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    append_range(&log, 0, 4).await;
    log.seal().await.unwrap().unwrap();
    append_range(&log, 4, 8).await;
    let second = log.seal().await.unwrap().unwrap();
    append_range(&log, 8, 10).await;
    drop(log);
    assert_eq!(
        (second.number, second.first_seq, second.last_seq),
        (2, 5, 8)
    );

    let moved = tmp.path().join("segment-2.db");
    std::fs::rename(&second.path, &moved).unwrap();
    let report = verify_dir(tmp.path()).unwrap();
    assert_bad(&report, 5, "segment 2 is missing");
    assert_eq!(report.records_checked, 4);
    std::fs::rename(&moved, &second.path).unwrap();
    assert!(verify_dir(tmp.path()).unwrap().ok);

    let conn = raw(tmp.path(), 2);
    drop_triggers(&conn);
    conn.execute("DELETE FROM seal", []).unwrap();
    assert_bad(
        &verify_dir(tmp.path()).unwrap(),
        9,
        "segment 2 is not sealed",
    );
}
