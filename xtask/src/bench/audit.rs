//! Audit records appended per second with the hash chain (the library's
//! group-commit benchmark, fsync per commit), and unary calls per second on
//! three servers in the same run: recording every call with the default
//! `durability = "process_crash"` (acknowledged records are in the journal
//! and survive kill -9, not a power cut), recording with `durability =
//! "full"` (an fsync per group commit before the answer), and with
//! `[audit] enabled = false`. Rounds rotate the order of the servers so that
//! drift in the machine's load hits all alike.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{BenchServer, ROUNDS, build_release, loadgen, median, print_row, rotation};

/// Records per append round, and the concurrent appenders writing them.
const RECORDS: &str = "100000";
const APPENDERS: &str = "64";
const APPEND_ROUNDS: usize = 3;

/// Calls in flight during the unary rounds, and how long each round lasts.
const CONCURRENCY: &str = "64";
const LOAD_SECONDS: u32 = 3;

pub(super) fn run(root: &Path) -> Result<()> {
    let mut appends = Vec::new();
    for _ in 0..APPEND_ROUNDS {
        appends.push(append_rate(root)?);
    }

    let release = build_release(root)?;
    let ops = "[ops]\nlisten = \"127.0.0.1:0\"\n";
    let servers = [
        BenchServer::start(&release, ops)?,
        BenchServer::start(&release, &format!("{ops}[audit]\ndurability = \"full\"\n"))?,
        BenchServer::start(&release, &format!("{ops}[audit]\nenabled = false\n"))?,
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut cpu_per_call: [Vec<f64>; 3] = Default::default();
    let seconds = LOAD_SECONDS.to_string();
    for round in 0..ROUNDS {
        let measure = |server: &BenchServer| -> Result<f64> {
            let certs = server.certs();
            let certs = certs.to_str().context("certificate path is not UTF-8")?;
            loadgen(
                &release,
                &[
                    "unary",
                    "--addr",
                    &server.addr,
                    "--certs",
                    certs,
                    "--seconds",
                    &seconds,
                    "--concurrency",
                    CONCURRENCY,
                ],
            )
        };
        for index in rotation(round, servers.len()) {
            let before = servers[index].cpu_ns();
            let rate = measure(&servers[index])?;
            rates[index].push(rate);
            if let (Some(before), Some(after)) = (before, servers[index].cpu_ns()) {
                let calls = rate * f64::from(LOAD_SECONDS);
                cpu_per_call[index].push(after.saturating_sub(before) as f64 / 1000.0 / calls);
            }
        }
    }
    let recorded = audit_records(&release, &servers[0])?;
    drop(servers);

    let [process_crash, full, without_audit] = rates.map(median);
    println!(
        "\nbench audit (appends: {APPEND_ROUNDS} rounds; unary: {ROUNDS} rounds, {CONCURRENCY} calls in flight; medians)"
    );
    print_row(
        "audit log: durable chained appends",
        median(appends),
        "records/s",
        Some(("target", 20_000.0)),
    );
    print_row(
        "WhoAmI, audit durability process_crash (default)",
        process_crash,
        "calls/s",
        Some(("without the audit layer", without_audit)),
    );
    print_row(
        "WhoAmI, audit durability full",
        full,
        "calls/s",
        Some(("without the audit layer", without_audit)),
    );
    println!(
        "audit layer cost (target at most 10%): process_crash (default) {:.1}%, full {:.1}%; \
         {recorded} records in the first server's verified chain",
        (1.0 - process_crash / without_audit) * 100.0,
        (1.0 - full / without_audit) * 100.0
    );
    // The rate depends on the machine and on the load generator sharing its CPUs; the server's
    // own CPU time per call says what the layer costs wherever it runs.
    if cpu_per_call.iter().all(|values| values.len() == ROUNDS) {
        let [cpu_process_crash, cpu_full, cpu_without] = cpu_per_call.map(median);
        println!(
            "server CPU per call: {cpu_without:.1} us without the audit layer, \
             {cpu_process_crash:.1} us with process_crash (+{:.1} us), {cpu_full:.1} us with full (+{:.1} us)",
            cpu_process_crash - cpu_without,
            cpu_full - cpu_without
        );
    }
    Ok(())
}

/// Runs the library's append benchmark once and returns its records/s.
fn append_rate(root: &Path) -> Result<f64> {
    let output = Command::new("cargo")
        .current_dir(root)
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "audit",
            "--example",
            "append_bench",
            "--",
            RECORDS,
            APPENDERS,
            "full",
        ])
        .output()
        .context("running the audit append benchmark")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "append_bench failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    print!("{stdout}");
    stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find_map(|pair| (pair[1].trim_end_matches(',') == "records/s").then_some(pair[0]))
        .context("append_bench printed no records/s")?
        .parse()
        .context("append_bench rate")
}

/// Records in the audited server's log, read by `cordon audit verify`,
/// which also checks the chain the benchmark wrote.
fn audit_records(release: &Path, server: &BenchServer) -> Result<u64> {
    let output = Command::new(release.join("cordon"))
        .args(["audit", "verify", "--data-dir"])
        .arg(server.dir.path())
        .output()
        .context("running cordon audit verify")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("cordon audit verify failed: {stdout}");
    }
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("records checked:"))
        .context("cordon audit verify printed no record count")?
        .trim()
        .parse()
        .context("record count")
}
