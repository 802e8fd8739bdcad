//! The journal of `Durability::ProcessCrash`: records acknowledged through it verify before any
//! segment holds them, are committed by the next open, and are refused when they were edited.
//!
//! A crash image is made without killing anything: the audit directory is moved away and a file
//! put in its place, so the writer can no longer start a segment and commit, while appends keep
//! being acknowledged through the journal's open descriptor. A copy of the moved directory then
//! holds exactly what a kill -9 at that moment would leave: records in the journal that no segment
//! has.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use audit::{AuditLog, Config, Durability, Entry, Query, verify_dir};

use crate::common::{append_range, entry, open, verified};

fn open_journaled(dir: &Path) -> AuditLog {
    let mut config = Config::new(dir);
    config.durability = Durability::ProcessCrash;
    AuditLog::open(config).expect("open audit log")
}

fn journals(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(audit::audit_dir(dir))
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("journal-") && name.ends_with(".log")
        })
        .collect();
    found.sort();
    found
}

async fn all_entries(log: &AuditLog) -> Vec<Entry> {
    let page = log
        .query(Query {
            page_size: 1000,
            ..Query::default()
        })
        .await
        .unwrap();
    let mut records = page.records;
    records.sort_by_key(|r| r.seq);
    records.into_iter().map(|r| r.entry).collect()
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Returns a live log whose writer cannot commit, the directory it really writes to, and the crash
/// image: 3 records committed to segment 1 and records 4 to 7 only in the journal.
async fn crash_image(tmp: &Path) -> (AuditLog, PathBuf, tempfile::TempDir) {
    let log = open_journaled(tmp);
    append_range(&log, 0, 3).await;
    assert_eq!(
        all_entries(&log).await.len(),
        3,
        "a query sees its own records"
    );

    let dir = audit::audit_dir(tmp);
    let away = tmp.join("audit-away");
    std::fs::rename(&dir, &away).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    assert!(
        log.seal().await.is_err(),
        "the next segment cannot be created"
    );
    for n in 3..7 {
        assert_eq!(log.append(entry(n)).await.unwrap(), n + 1, "acknowledged");
    }
    wait_until("the writer reports its failed commits", || log.is_failing());

    let image = tempfile::tempdir().unwrap();
    let copy = audit::audit_dir(image.path());
    std::fs::create_dir(&copy).unwrap();
    for item in std::fs::read_dir(&away).unwrap() {
        let path = item.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    (log, away, image)
}

/// Puts the audit directory that [`crash_image`] moved away back in its place.
fn repair(data_dir: &Path, away: &Path) {
    let dir = audit::audit_dir(data_dir);
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(away, &dir).unwrap();
}

#[tokio::test]
async fn journaled_records_verify_offline_and_are_committed_by_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, away, image) = crash_image(tmp.path()).await;

    let in_segments = audit::query_dir(image.path(), &Query::default()).unwrap();
    assert_eq!(
        in_segments.records.len(),
        3,
        "records 4 to 7 are only in the journal"
    );
    let report = verified(image.path());
    assert_eq!((report.records_checked, report.head.seq), (7, 7));
    assert_eq!(
        report.head,
        log.head(),
        "verify sees every acknowledged record"
    );

    let reopened = open(image.path());
    let expected: Vec<Entry> = (0..7).map(entry).collect();
    assert_eq!(all_entries(&reopened).await, expected);
    assert_eq!(reopened.append(entry(7)).await.unwrap(), 8);
    drop(reopened);
    assert!(
        journals(image.path()).is_empty(),
        "a committed journal is removed"
    );
    let report = verified(image.path());
    assert_eq!(report.records_checked, 8);

    // The live log commits its journaled records once the directory is back.
    repair(tmp.path(), &away);
    wait_until("the writer's retry succeeds", || !log.is_failing());
    assert_eq!(all_entries(&log).await, expected);
    drop(log);
    let report = verified(tmp.path());
    assert_eq!(report.records_checked, 7);
}

#[tokio::test]
async fn an_edited_journal_record_is_named_by_verify_and_refused_by_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (_log, _away, image) = crash_image(tmp.path()).await;
    let journal = journals(image.path()).pop().unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    let at = bytes
        .windows(6)
        .position(|w| w == b"call 4")
        .expect("record 5 is in the journal");
    bytes[at + 5] = b'9';
    std::fs::write(&journal, bytes).unwrap();

    let report = verify_dir(image.path()).unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_seq, Some(5), "{report:?}");
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("journal record 5")
    );
    let error = AuditLog::open(Config::new(image.path())).unwrap_err();
    assert!(
        error.to_string().contains("journal record 5"),
        "open refuses to drop or commit a forged record: {error}"
    );
}

#[tokio::test]
async fn a_torn_journal_tail_is_an_unacknowledged_append() {
    let tmp = tempfile::tempdir().unwrap();
    let (_log, _away, image) = crash_image(tmp.path()).await;
    let journal = journals(image.path()).pop().unwrap();
    let len = std::fs::metadata(&journal).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    file.set_len(len - 10).unwrap();
    drop(file);

    let report = verified(image.path());
    assert_eq!(report.records_checked, 6);
    let reopened = open_journaled(image.path());
    assert_eq!(reopened.append(entry(6)).await.unwrap(), 7);
    let expected: Vec<Entry> = (0..7).map(entry).collect();
    assert_eq!(all_entries(&reopened).await, expected);
}

#[tokio::test]
async fn the_journal_rotates_and_committed_files_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open_journaled(tmp.path());
    // 60 KB summaries fill a journal file with about 140 records.
    let big = |n: u64| Entry {
        summary: format!("{n:>60000}"),
        ..entry(n)
    };
    for n in 0..400 {
        log.append(big(n)).await.unwrap();
    }
    assert_eq!(all_entries(&log).await.len(), 400);
    let left = journals(tmp.path());
    assert_eq!(left.len(), 1, "only the journal taking appends is left");
    let name = left[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.as_str() > "journal-00000000000000000200.log",
        "the journal rotated: {name}"
    );
    drop(log);
    assert!(journals(tmp.path()).is_empty());
    let report = verified(tmp.path());
    assert_eq!(report.records_checked, 400);
}

#[tokio::test]
async fn records_of_a_long_outage_wait_in_the_journal_and_are_all_committed_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, away, _image) = crash_image(tmp.path()).await;
    // More records than the writer keeps in memory while it cannot commit (65,536): the rest are
    // read back from the journal once it can.
    let total: u64 = 80_000;
    for n in 7..total {
        log.append(entry(n)).await.unwrap();
    }
    assert!(log.is_failing());
    repair(tmp.path(), &away);
    wait_until("the writer's retry succeeds", || !log.is_failing());
    let head = log.head();
    assert_eq!(head.seq, total);
    drop(log);
    assert!(
        journals(tmp.path()).is_empty(),
        "every journal is committed"
    );
    let report = verified(tmp.path());
    assert_eq!(report.head, head);
    let segments_only = audit::query_dir(
        tmp.path(),
        &Query {
            after_seq: Some(total - 2),
            ..Query::default()
        },
    )
    .unwrap();
    assert_eq!(segments_only.records.len(), 2);
    assert_eq!(segments_only.records[1].entry, entry(total - 1));
}

/// Bytes in the log's journal files.
fn journal_bytes(dir: &Path) -> u64 {
    journals(dir)
        .iter()
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum()
}

#[tokio::test]
async fn appends_queued_together_are_written_to_the_journal_in_one_write() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open_journaled(tmp.path());
    let appending: Vec<_> = (0..10).map(|n| log.try_append(entry(n)).unwrap()).collect();
    // Queued, not yet acknowledged: nothing is in the journal.
    assert_eq!(journal_bytes(tmp.path()), 0);

    let mut appending = appending.into_iter();
    assert_eq!(appending.next().unwrap().await.unwrap(), 1);
    // Awaiting the first wrote all ten: the others resolve without writing anything more.
    let written = journal_bytes(tmp.path());
    assert!(written > 0);
    for (seq, rest) in (2..).zip(appending) {
        assert_eq!(rest.await.unwrap(), seq);
    }
    assert_eq!(journal_bytes(tmp.path()), written);

    let entries = all_entries(&log).await;
    assert_eq!(entries, (0..10).map(entry).collect::<Vec<_>>());
    drop(log);
    let report = verified(tmp.path());
    assert_eq!(report.records_checked, 10);
}

#[tokio::test]
async fn a_queued_append_that_nobody_awaits_is_still_written_and_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open_journaled(tmp.path());
    drop(log.try_append(entry(0)).unwrap());
    // Dropping the future wrote the record: it survives a kill -9 from here on.
    assert!(journal_bytes(tmp.path()) > 0);
    assert_eq!(log.append(entry(1)).await.unwrap(), 2);
    assert_eq!(all_entries(&log).await, vec![entry(0), entry(1)]);
}

#[tokio::test]
async fn the_head_includes_queued_appends_only_once_they_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open_journaled(tmp.path());
    let queued = log.try_append(entry(0)).unwrap();
    assert_eq!(journal_bytes(tmp.path()), 0);
    // Reading the head writes what is queued, so an anchor never names an unwritten record.
    assert_eq!(log.head().seq, 1);
    assert!(journal_bytes(tmp.path()) > 0);
    assert_eq!(queued.await.unwrap(), 1);
}

/// Set in the re-executed child of the failed-write test: the data directory to use.
const FAILED_WRITE_CHILD_ENV: &str = "AUDIT_FAILED_WRITE_DIR";

/// Sets this process's soft file-size limit with util-linux `prlimit`; `limit` is a byte count or
/// "unlimited".
fn set_file_size_limit(limit: &str) {
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--fsize={limit}:"),
        ])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --fsize={limit}: failed");
}

fn file_size_limit() -> String {
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            "--fsize",
            "--raw",
            "--noheadings",
            "--output",
            "SOFT",
        ])
        .output()
        .expect("run prlimit");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A journal write that the kernel refuses (a file-size limit: the write stops at the limit,
/// leaving a torn frame, then fails with EFBIG) acknowledges none of the records queued for it,
/// puts the head back, and the chain continues from the last record that was written once
/// writing works again. It runs in a re-executed child whose SIGXFSZ is ignored, so the limit
/// only fails the writes instead of killing the test runner.
#[test]
fn a_failed_journal_write_acknowledges_none_of_its_records_and_the_chain_continues() {
    if let Some(dir) = std::env::var_os(FAILED_WRITE_CHILD_ENV) {
        failed_write_child(Path::new(&dir));
        println!("FAILED-WRITE CHILD DONE");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let test =
        "journal::a_failed_journal_write_acknowledges_none_of_its_records_and_the_chain_continues";
    // `trap '' XFSZ` sets SIGXFSZ to ignored, which survives the exec.
    let out = std::process::Command::new("sh")
        .args(["-c", "trap '' XFSZ; exec \"$@\"", "sh"])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(FAILED_WRITE_CHILD_ENV, tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("FAILED-WRITE CHILD DONE"),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = verified(tmp.path());
    assert_eq!(report.records_checked, 4);
}

fn failed_write_child(dir: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let log = open_journaled(dir);
        append_range(&log, 0, 3).await;
        let original = file_size_limit();
        // Room for less than one more frame in the journal; the segment's files are larger
        // already, so the writer's commits fail too until the limit goes back.
        set_file_size_limit(&(journal_bytes(dir) + 100).to_string());
        let queued: Vec<_> = (10..15)
            .map(|n| log.try_append(entry(n)).unwrap())
            .collect();
        for appending in queued {
            assert!(
                appending.await.is_err(),
                "a record whose write failed must not be acknowledged"
            );
        }
        assert!(log.is_failing());
        assert_eq!(
            log.head().seq,
            3,
            "the head is back where the group started"
        );

        set_file_size_limit(&original);
        assert_eq!(
            log.append(entry(3)).await.unwrap(),
            4,
            "the chain continues"
        );
        wait_until("the writer's retry succeeds", || !log.is_failing());
        assert_eq!(
            all_entries(&log).await,
            (0..4).map(entry).collect::<Vec<_>>()
        );
    });
}
