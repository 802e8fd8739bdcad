//! Time to run `/bin/true`: a bare spawn, the Cordon library with full
//! enforcement, Cordon through gRPC over mTLS, `bwrap --unshare-all` and
//! `firejail --noprofile`, as medians and p99 over many runs and as ratios to
//! the bare spawn; then runs per second through gRPC with 8 concurrent
//! clients next to bare spawns per second from 8 threads.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{BenchServer, ROUNDS, build_release, median, print_row, rotation};
use crate::tools::ensure_apt_program;

/// A pause after the server's busy rounds, long enough for it to remove the runs' cgroups
/// and work directories.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs per latency round.
const COUNT: &str = "200";

/// Latency rounds of the bare spawn and the library, the pair the target compares. Their
/// ratio moves by a few hundredths between runs of this benchmark as the machine's load
/// drifts; nine interleaved rounds rather than five make its median steadier.
const TARGET_ROUNDS: usize = 9;

const CONFIG: &str = r#"
[sandbox]
technology = "landlock"
max_concurrent_runs = 32
[sandbox.trust]
default = "trusted"
"#;

pub(super) fn run(root: &Path) -> Result<()> {
    ensure_apt_program("bwrap", "bubblewrap")?;
    ensure_apt_program("firejail", "firejail")?;
    let release = build_release(root)?;
    let server = BenchServer::start(&release, CONFIG)?;
    let certs = server.certs();
    let certs = certs.to_str().context("certificate path is not UTF-8")?;
    let remote = ["--addr", server.addr.as_str(), "--certs", certs];

    let kinds = ["bare", "library", "grpc", "bwrap", "firejail"];
    let mut medians = vec![Vec::new(); kinds.len()];
    let mut p99s = vec![Vec::new(); kinds.len()];
    let mut latency_rounds = |range: std::ops::Range<usize>, rounds: usize| -> Result<()> {
        // Interleaved rounds, so that a noisy moment hurts every kind alike.
        for round in 0..rounds {
            for i in rotation(round, range.len()).map(|offset| range.start + offset) {
                let mut args = vec!["latency", "--kind", kinds[i], "--count", COUNT];
                args.extend(remote);
                let line = bench(&release, &args)?;
                medians[i].push(value(&line, "median_us")?);
                p99s[i].push(value(&line, "p99_us")?);
            }
        }
        Ok(())
    };
    // Whatever runs before a kind can slow it: the server tears down the cgroups and work
    // directories of the gRPC runs for a while after them, and the kernel the namespaces of
    // bwrap and firejail. A slowdown added to both sides of a ratio flatters it, so the bare
    // spawn and the library, the pair of the target, are measured together first, with
    // nothing but each other around them.
    latency_rounds(0..2, TARGET_ROUNDS)?;
    latency_rounds(2..3, ROUNDS)?;
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (i, kind) in ["bare", "grpc"].iter().enumerate() {
            let mut args = vec![
                "rate",
                "--kind",
                kind,
                "--seconds",
                "2",
                "--concurrency",
                "8",
            ];
            args.extend(remote);
            rates[i].push(value(&bench(&release, &args)?, "rate")?);
            if *kind == "grpc" {
                // Let the server finish tearing down before the bare spawns are timed.
                std::thread::sleep(SETTLE);
            }
        }
    }
    latency_rounds(3..5, ROUNDS)?;

    println!(
        "\nbench sandbox: /bin/true ({COUNT} runs per round: {TARGET_ROUNDS} rounds for the bare \
         spawn and the library, {ROUNDS} for the others; medians of rounds)"
    );
    let bare_median = median(medians[0].clone());
    let bare_p99 = median(p99s[0].clone());
    for (i, name) in [
        "bare spawn (std::process::Command)",
        "cordon library (landlock+seccomp+cgroup)",
        "cordon through gRPC over mTLS",
        "bwrap --unshare-all",
        "firejail --noprofile",
    ]
    .iter()
    .enumerate()
    {
        print_row(
            &format!("{name}: median"),
            median(medians[i].clone()),
            "us",
            (i > 0).then_some(("bare spawn median", bare_median)),
        );
        print_row(
            &format!("{name}: p99"),
            median(p99s[i].clone()),
            "us",
            (i > 0).then_some(("bare spawn p99", bare_p99)),
        );
    }
    let bare_rate = median(rates[0].clone());
    print_row(
        "cordon gRPC Run, 8 concurrent clients",
        median(rates[1].clone()),
        "runs/s",
        Some(("bare spawns, 8 threads", bare_rate)),
    );
    println!("targets: library median <= 1.2x bare spawn; gRPC rate >= 0.5x bare spawn rate");
    Ok(())
}

fn bench(release: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(release.join("examples/sandbox_bench"))
        .args(args)
        .output()
        .context("running sandbox_bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "sandbox_bench {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

fn value(line: &str, key: &str) -> Result<f64> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("sandbox_bench printed no {key}: {line}"))?
        .parse()
        .with_context(|| format!("{key} in {line}"))
}
