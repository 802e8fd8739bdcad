//! Many concurrent appenders share one chain, and readers run alongside the writer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::{entry, open};

const TASKS: u64 = 64;
const PER_TASK: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_build_one_valid_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path());
    let done = Arc::new(AtomicBool::new(false));

    // A reader verifies and queries the live log the whole time; it must never see a broken chain.
    let reader = {
        let (log, done) = (log.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut rounds = 0u32;
            while !done.load(Ordering::Relaxed) || rounds == 0 {
                let report = log.verify().await.unwrap();
                assert!(report.ok, "live verify: {report:?}");
                log.query(audit::Query::default()).await.unwrap();
                rounds += 1;
            }
            rounds
        })
    };

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_TASK {
                seqs.push(log.append(entry(task * PER_TASK + i)).await.unwrap());
            }
            seqs
        }));
    }
    // A seal in the middle of the traffic must not break or fork the chain.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    log.seal().await.unwrap();

    let mut all = BTreeSet::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one task's appends keep their order"
        );
        for seq in seqs {
            assert!(all.insert(seq), "seq {seq} acknowledged twice");
        }
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.await.unwrap() > 0);

    let total = TASKS * PER_TASK;
    assert_eq!(all, (1..=total).collect::<BTreeSet<_>>());
    let report = log.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records_checked, total);
    assert_eq!(report.head, log.head());

    let stats = log.writer_stats();
    assert_eq!(stats.records, total);
    assert!(
        stats.batches < total / 4 && stats.largest_batch > 8,
        "concurrent appends must share commits: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_hands_the_entry_back_and_append_waits_for_room() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = audit::Config::new(tmp.path());
    config.queue_capacity = 1;
    let log = audit::AuditLog::open(config).unwrap();

    // Queuing far faster than the writer commits (an fsync per batch) fills a queue of one.
    let mut queued = Vec::new();
    let mut handed_back = Vec::new();
    for n in 0..200 {
        match log.try_append(entry(n)) {
            Ok(appending) => queued.push(appending),
            Err(audit::TryAppendError::Full(returned)) => handed_back.push(*returned),
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(!handed_back.is_empty(), "the queue of one never filled");
    assert!(
        handed_back
            .iter()
            .all(|returned| returned.summary.starts_with("call ")),
        "entries come back untouched"
    );
    let mut seqs = BTreeSet::new();
    for appending in queued {
        assert!(seqs.insert(appending.await.unwrap()));
    }
    for returned in handed_back {
        assert!(seqs.insert(log.append(returned).await.unwrap()));
    }
    assert_eq!(seqs, (1..=200).collect::<BTreeSet<_>>());
    let report = log.verify().await.unwrap();
    assert!(report.ok && report.records_checked == 200, "{report:?}");
}
