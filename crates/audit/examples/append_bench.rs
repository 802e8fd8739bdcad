//! Group-commit throughput: `cargo run --release -p audit --example append_bench -- [records]
//! [appenders] [full|process] [dir]`. Each appender awaits its append before the next one, as the
//! server's audit layer does, so the batch size is bounded by the number of appenders.

use std::time::Instant;

use audit::{AuditLog, Config, Durability, Entry, Kind, verify_dir};

fn entry(n: u64) -> Entry {
    Entry {
        time_unix_ms: now_unix_ms(),
        identity: format!("spiffe://cordon/agent-{}", n % 16),
        auth_method: "mtls".to_owned(),
        method: "/cordon.sandbox.v1.Sandbox/Exec".to_owned(),
        tool: "shell".to_owned(),
        request_sha256: "5e".repeat(32),
        status: if n.is_multiple_of(20) {
            "PERMISSION_DENIED"
        } else {
            "OK"
        }
        .to_owned(),
        summary: "exit 0".to_owned(),
        duration_us: 1000 + n % 5000,
        peer: "10.0.0.7:51234".to_owned(),
        sandboxed: true,
        rate_limited: false,
        trust_level: "standard".to_owned(),
        kind: Kind::Rpc,
    }
}

/// The server stamps each record with the call's start time, so a log's times rise with its seqs
/// (give or take the calls in flight); the benchmark's records do the same.
fn now_unix_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since_epoch.as_millis()).expect("time fits i64")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let records: u64 = args
        .first()
        .map_or(200_000, |a| a.parse().expect("records"));
    let appenders: u64 = args.get(1).map_or(64, |a| a.parse().expect("appenders"));
    let durability = match args.get(2).map(String::as_str) {
        None | Some("full") => Durability::Full,
        Some("process") => Durability::ProcessCrash,
        Some(other) => panic!("durability must be full or process, not {other}"),
    };
    let tmp = match args.get(3) {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");

    let mut config = Config::new(tmp.path());
    config.durability = durability;
    let log = AuditLog::open(config).expect("open audit log");
    let per_task = records / appenders;
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|task| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    log.append(entry(task * per_task + i))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("appender task");
    }
    let elapsed = start.elapsed();
    let total = per_task * appenders;
    let stats = log.writer_stats();
    println!(
        "appended {total} records with {appenders} appenders ({durability:?}) in {:.2}s: {:.0} records/s, {} commits, mean batch {:.1}, largest {}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        stats.batches,
        stats.records as f64 / stats.batches.max(1) as f64,
        stats.largest_batch,
    );
    if let Some(cpu) = writer_cpu_ns() {
        println!(
            "writer thread: {:.2} us of CPU per record",
            cpu as f64 / 1000.0 / total as f64
        );
    }
    drop(log);
    let start = Instant::now();
    let report = verify_dir(tmp.path()).expect("verify");
    assert!(report.ok, "{report:?}");
    println!(
        "verified {} records in {:.2}s",
        report.records_checked,
        start.elapsed().as_secs_f64()
    );
}

/// CPU time of the writer thread so far, from Linux's per-thread scheduler statistics; `None`
/// where they cannot be read.
fn writer_cpu_ns() -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path();
        let name = std::fs::read_to_string(path.join("comm")).ok()?;
        if name.trim_end() == "cordon-audit-wr" {
            let schedstat = std::fs::read_to_string(path.join("schedstat")).ok()?;
            return schedstat.split_whitespace().next()?.parse().ok();
        }
    }
    None
}
