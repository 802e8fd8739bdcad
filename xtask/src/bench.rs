//! `cargo xtask bench <area>`: our figure next to its baseline, measured in
//! the same run, as medians of several rounds and as ratios. The machines
//! here are noisy, so single times are never quoted.

mod audit;
mod ca;
mod ratelimit;
mod sandbox;
mod tls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Rounds per measurement; the median is reported.
pub(crate) const ROUNDS: usize = 5;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Area {
    /// Client certificates issued per second (library and gRPC, P-256 CSRs) next to raw rcgen signing.
    Ca,
    /// Audit records appended per second, and unary calls per second with and without the audit layer.
    Audit,
    /// New mTLS connections per second and unary calls per second, next to openssl.
    Tls,
    /// In-memory decisions next to governor, Check RPCs per second, Redis decisions next to redis-benchmark.
    Ratelimit,
    /// Time to run /bin/true sandboxed (library, gRPC, bwrap, firejail) next to a bare spawn.
    Sandbox,
}

pub(crate) fn run(root: &Path, area: Area) -> Result<()> {
    match area {
        Area::Ca => ca::run(root),
        Area::Audit => audit::run(root),
        Area::Tls => tls::run(root),
        Area::Ratelimit => ratelimit::run(root),
        Area::Sandbox => sandbox::run(root),
    }
}

/// The order of `len` measured kinds in round `round`: each round starts one further along, so
/// that no kind always follows the same other (whatever one leaves behind, a server's teardown
/// say, slows the next).
pub(crate) fn rotation(round: usize, len: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |offset| (round + offset) % len)
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Builds the release server and the load generator.
pub(crate) fn build_release(root: &Path) -> Result<PathBuf> {
    crate::run(Command::new("cargo").args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "server",
        "--bins",
        "--examples",
    ]))?;
    // Cargo built into CARGO_TARGET_DIR when it is set, so run from there.
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join("release"))
}

/// A release `cordon serve` on a free loopback port with a fresh data directory.
pub(crate) struct BenchServer {
    child: Child,
    pub(crate) addr: String,
    pub(crate) dir: tempfile::TempDir,
}

impl BenchServer {
    pub(crate) fn start(release: &Path, config: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("cordon.toml");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new(release.join("cordon"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "error")
            .env("CORDON_OPS__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting cordon")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut addr = None;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line?;
            if let Some(found) = line.strip_prefix("cordon listening on ") {
                addr = Some(found.to_owned());
                break;
            }
        }
        // The server prints more after its address; a closed pipe would make
        // that print fail and kill the server.
        std::thread::spawn(move || lines.for_each(drop));
        let Some(addr) = addr else {
            let _ = child.kill();
            bail!("cordon exited before listening");
        };
        Ok(Self { child, addr, dir })
    }

    pub(crate) fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// CPU time the server's threads have run so far, from each thread's `schedstat`
    /// (nanoseconds); `None` where `/proc` does not have it.
    pub(crate) fn cpu_ns(&self) -> Option<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
        let mut total = 0u64;
        for task in tasks {
            let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            total += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(total)
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load generator and returns the rate it printed.
pub(crate) fn loadgen(release: &Path, args: &[&str]) -> Result<f64> {
    let output = Command::new(release.join("examples/loadgen"))
        .args(args)
        .output()
        .context("running loadgen")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "loadgen {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("rate="))
        .context("loadgen printed no rate")?
        .parse()
        .context("loadgen rate")
}

/// A free loopback TCP port.
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn wait_for_port(port: u16) -> Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on port {port}")
}

pub(crate) fn print_row(name: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>) {
    match baseline {
        Some((base_name, base)) => println!(
            "{name:<44} {value:>12.1} {unit:<10} {base_name:<28} {base:>12.1}  ratio {:.2}",
            value / base
        ),
        None => println!("{name:<44} {value:>12.1} {unit}"),
    }
}
