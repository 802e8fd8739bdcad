//! Rate limiting: nanoseconds per in-memory decision next to `governor`'s
//! keyed limiter; Check RPCs per second over mTLS with 64 concurrent streams;
//! and decisions per second through the Redis backend next to
//! `redis-benchmark` replaying the very same script call with EVALSHA.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use super::{
    BenchServer, ROUNDS, build_release, free_port, median, print_row, rotation, wait_for_port,
};
use crate::tools::ensure_apt_program;

/// A GCRA policy that the benchmark never exhausts, so every decision is
/// computed in full and admitted.
const CONFIG: &str = r#"
[ratelimit.policies.bench]
algorithm = "gcra"
limit = 1000000000
window = "1s"
"#;

const CONCURRENCY: &str = "64";

pub(super) fn run(root: &Path) -> Result<()> {
    let redis_server = ensure_apt_program("redis-server", "redis-server")?;
    let benchmark_program = ensure_apt_program("redis-benchmark", "redis-tools")?;
    let release = build_release(root)?;
    let bench = |args: &[&str]| -> Result<Vec<(String, String)>> {
        let output = Command::new(release.join("examples/ratelimit_bench"))
            .args(args)
            .output()
            .context("running ratelimit_bench")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "ratelimit_bench {args:?} failed: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    };
    let number = |values: &[(String, String)], key: &str| -> Result<f64> {
        values
            .iter()
            .find(|(k, _)| k == key)
            .with_context(|| format!("ratelimit_bench printed no {key}"))?
            .1
            .parse()
            .with_context(|| format!("ratelimit_bench {key}"))
    };

    let (mut backend, mut limiter, mut governor) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let values = bench(&["memory", "--seconds", "1.5"])?;
        backend.push(number(&values, "backend_ns")?);
        limiter.push(number(&values, "limiter_ns")?);
        governor.push(number(&values, "governor_ns")?);
    }
    let governor = median(governor);
    // governor's keyed limiter decides for a key under one fixed quota, which is what the
    // backend does; the whole limiter also finds a named, reloadable policy and counts its
    // decisions, which governor has no counterpart for, so the target applies to the first row.
    println!("in-memory decision, ns (lower is better; ratio = ours / governor)");
    print_row(
        "MemoryBackend::check (gcra, 4096 keys)",
        median(backend),
        "ns",
        Some(("governor keyed check_key", governor)),
    );
    println!("  target <= 1.5 for the decision above; below, what named policies add to it");
    print_row(
        "Limiter::check (policy lookup + backend)",
        median(limiter),
        "ns",
        Some(("governor keyed check_key", governor)),
    );

    // The default server records every call in the audit log before answering it; the
    // second, with the log off, shows how much of the figure the audit takes.
    let servers = [
        BenchServer::start(&release, CONFIG)?,
        BenchServer::start(&release, &format!("{CONFIG}[audit]\nenabled = false\n"))?,
    ];
    let mut rpcs = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for index in rotation(round, servers.len()) {
            let server = &servers[index];
            let certs = server.certs();
            let certs = certs.to_str().context("certificate path is not UTF-8")?;
            let values = bench(&[
                "check",
                "--addr",
                &server.addr,
                "--certs",
                certs,
                "--seconds",
                "2",
                "--concurrency",
                CONCURRENCY,
            ])?;
            rpcs[index].push(number(&values, "rate")?);
        }
    }
    drop(servers);
    let [audited, unaudited] = rpcs.map(median);
    println!("Check over mTLS, one connection, 64 concurrent streams (target >= 25000/s)");
    print_row(
        "RateLimit/Check (default audit log)",
        audited,
        "calls/s",
        Some(("without the audit log", unaudited)),
    );

    let port = free_port()?;
    let redis = RedisServer::start(&redis_server, port)?;
    wait_for_port(port)?;
    let url = format!("redis://127.0.0.1:{port}");
    let (mut ours, mut raw, mut pipelined) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let values = bench(&[
            "redis",
            "--url",
            &url,
            "--seconds",
            "2",
            "--concurrency",
            CONCURRENCY,
        ])?;
        ours.push(number(&values, "rate")?);
        let field = |key: &str| {
            values
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .with_context(|| format!("ratelimit_bench printed no {key}"))
        };
        let (sha, keys, args) = (field("sha")?, field("keys")?, field("args")?);
        raw.push(redis_benchmark(
            &benchmark_program,
            port,
            &sha,
            &keys,
            &args,
            "1",
        )?);
        pipelined.push(redis_benchmark(
            &benchmark_program,
            port,
            &sha,
            &keys,
            &args,
            "16",
        )?);
    }
    drop(redis);
    let ours = median(ours);
    println!(
        "Redis decisions/s, 64 concurrent callers, one EVALSHA round trip each (target ratio >= 0.5)"
    );
    print_row(
        "Limiter::check on a redis policy",
        ours,
        "decisions/s",
        Some(("redis-benchmark EVALSHA -P 1", median(raw))),
    );
    // The limiter's multiplexed connections pipeline concurrent calls, so the
    // one-call-at-a-time figure above is not the script's ceiling; this is.
    print_row(
        "Limiter::check on a redis policy",
        ours,
        "decisions/s",
        Some(("redis-benchmark EVALSHA -P 16", median(pipelined))),
    );
    Ok(())
}

struct RedisServer(Child);

impl RedisServer {
    fn start(program: &Path, port: u16) -> Result<Self> {
        let child = Command::new(program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        Ok(Self(child))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Requests per second of `redis-benchmark` running the script call that
/// `ratelimit_bench` printed, with the same number of clients, `pipeline`
/// calls in flight on each.
fn redis_benchmark(
    program: &Path,
    port: u16,
    sha: &str,
    keys: &str,
    args: &str,
    pipeline: &str,
) -> Result<f64> {
    let key_count = keys.split(' ').count().to_string();
    let output = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", CONCURRENCY, "-n", "100000", "-P", pipeline])
        .args(["--csv", "EVALSHA", sha])
        .arg(&key_count)
        .args(keys.split(' '))
        .args(args.split(' '))
        .output()
        .context("running redis-benchmark")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "redis-benchmark failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // CSV: a header line `"test","rps",...`, then one row per test.
    stdout
        .lines()
        .filter(|l| !l.starts_with("\"test\""))
        .find_map(|l| l.split(',').nth(1))
        .map(|rps| rps.trim_matches('"').to_owned())
        .context("redis-benchmark printed no rate")?
        .parse()
        .context("redis-benchmark rate")
}
