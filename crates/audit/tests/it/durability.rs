//! Acknowledged records survive a kill -9 of the process that appended them.
//!
//! The test re-executes its own binary, filtered to this very test, with `AUDIT_KILL9_DIR` set:
//! in that child the test appends forever from many tasks and prints each acknowledged seq; the
//! parent SIGKILLs it mid-stream and checks the files.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use audit::{AuditLog, Config, Durability, Query};

use crate::common::{entry, verified};

const CHILD_ENV: &str = "AUDIT_KILL9_DIR";
const DURABILITY_ENV: &str = "AUDIT_KILL9_DURABILITY";
/// Acknowledgements the parent waits for before it kills the child.
const ACKS_BEFORE_KILL: usize = 1500;

#[test]
fn acknowledged_records_survive_kill_9_with_full_durability() {
    kill_9_case(
        "acknowledged_records_survive_kill_9_with_full_durability",
        "full",
    );
}

#[test]
fn acknowledged_records_survive_kill_9_without_fsync() {
    kill_9_case(
        "acknowledged_records_survive_kill_9_without_fsync",
        "process",
    );
}

fn durability(name: &str) -> Durability {
    match name {
        "full" => Durability::Full,
        _ => Durability::ProcessCrash,
    }
}

fn kill_9_case(test_name: &str, mode: &str) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let mode = std::env::var(DURABILITY_ENV).unwrap_or_default();
        child(std::path::Path::new(&dir), durability(&mode));
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("durability::{test_name}"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .env(DURABILITY_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < ACKS_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "child acknowledged only {} records",
            acked.len()
        );
        let line = lines.next().expect("child output ended early").unwrap();
        if let Some(seq) = line.strip_prefix("ACK ") {
            acked.insert(seq.parse::<u64>().unwrap());
        }
    }
    // Child::kill sends SIGKILL: no destructor, no flush, no checkpoint runs in the child.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    // Acknowledgements the child printed before it died are still in the pipe.
    for line in lines {
        if let Some(seq) = line.unwrap().strip_prefix("ACK ") {
            acked.insert(seq.parse::<u64>().unwrap());
        }
    }

    // Offline verification of the files exactly as the killed process left them.
    let report = verified(tmp.path());
    let max_acked = *acked.last().unwrap();
    assert!(
        report.head.seq >= max_acked,
        "acked {max_acked} but the log ends at {}",
        report.head.seq
    );

    let log = AuditLog::open(Config::new(tmp.path())).unwrap();
    let mut present = BTreeSet::new();
    let mut after = None;
    loop {
        let page = audit::query_dir(
            tmp.path(),
            &Query {
                page_size: 1000,
                after_seq: after,
                ..Query::default()
            },
        )
        .unwrap();
        present.extend(page.records.iter().map(|r| r.seq));
        match page.next_after_seq {
            Some(seq) => after = Some(seq),
            None => break,
        }
    }
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    let next = log.head().seq + 1;
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(log.append(entry(0))).unwrap(),
        next,
        "the chain continues"
    );
    drop(log);
    verified(tmp.path());
}

/// Runs in the re-executed child until the parent kills it.
fn child(dir: &std::path::Path, durability: Durability) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = Config::new(dir);
        config.durability = durability;
        let log = AuditLog::open(config).unwrap();
        for task in 0..32u64 {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let seq = log.append(entry(task * 1_000_000 + i)).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {seq}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
        std::future::pending::<()>().await;
    });
    unreachable!("the parent kills this process")
}
