//! Sandbox benchmark driver for `cargo xtask bench sandbox`: times running
//! `/bin/true` one way and prints one `key=value` line for xtask to read.
//!
//! `sandbox_bench latency --kind bare|library|grpc|bwrap|firejail --count N`
//! prints `median_us=… p99_us=…`; `sandbox_bench rate --kind bare|grpc
//! --seconds S --concurrency C` prints `rate=…` (runs per second).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sandbox_core::{
    Ceiling, Manager, ManagerConfig, PolicySpec, RunOptions, RunRequest, Technology,
};
use server::proto::sandbox::v1::sandbox_client::SandboxClient;
use server::proto::sandbox::v1::{Policy, RunRequest as PbRunRequest};
use tonic::transport::Channel;

#[derive(Debug, clap::Parser)]
struct Args {
    /// Modes: latency | rate (with --kind).
    mode: String,
    #[arg(long, default_value = "")]
    kind: String,
    #[arg(long, default_value = "")]
    addr: String,
    #[arg(long)]
    certs: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    count: usize,
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

async fn channel(args: &Args) -> Result<Channel> {
    Ok(common::mtls_endpoint(
        &args.addr,
        args.certs.as_deref().context("--certs is required")?,
        "admin",
    )?
    .connect()
    .await?)
}

fn true_request() -> PbRunRequest {
    PbRunRequest {
        argv: vec!["/bin/true".to_owned()],
        policy: Some(Policy::default()),
        tool_source: "bench".to_owned(),
        ..Default::default()
    }
}

fn library() -> Result<Manager> {
    let manager = sandbox_linux::manager(
        &sandbox_linux::LinuxConfig::default(),
        ManagerConfig {
            technology: Technology::Landlock,
            ceiling: Ceiling::unrestricted(),
            max_concurrent_runs: 64,
        },
    )?;
    ensure!(
        manager.capabilities().kernel_enforced,
        "the library is not kernel-enforced on this host"
    );
    Ok(manager)
}

fn command(kind: &str) -> Result<std::process::Command> {
    let mut c;
    match kind {
        "bare" => c = std::process::Command::new("/bin/true"),
        "bwrap" => {
            c = std::process::Command::new("bwrap");
            c.args(["--unshare-all", "--ro-bind", "/usr", "/usr"]);
            // Merged-/usr hosts need the top-level links to reach the loader.
            for dir in ["bin", "lib", "lib64", "sbin"] {
                let top = format!("/{dir}");
                if std::fs::symlink_metadata(&top).is_ok_and(|m| m.is_symlink()) {
                    c.args(["--symlink", &format!("usr/{dir}"), &top]);
                } else if std::path::Path::new(&top).exists() {
                    c.args(["--ro-bind", &top, &top]);
                }
            }
            c.args(["--proc", "/proc", "--dev", "/dev", "/bin/true"]);
        }
        "firejail" => {
            c = std::process::Command::new("firejail");
            c.args(["--noprofile", "--quiet", "/bin/true"]);
        }
        other => bail!("unknown command kind {other}"),
    }
    // The sandbox starts its children with a small environment; the baselines get one as small.
    // Inheriting this process's environment would handicap them: under `cargo xtask` it holds
    // cargo's LD_LIBRARY_PATH, and the loader of every baseline child then searches those
    // directories first, which measured about 30% slower for a bare /bin/true.
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::temp_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Ok(c)
}

fn spawn_true(kind: &str) -> Result<()> {
    let status = command(kind)?.status()?;
    ensure!(status.success(), "{kind} /bin/true failed: {status}");
    Ok(())
}

async fn latency(args: &Args) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(args.count);
    match args.kind.as_str() {
        "library" => {
            let manager = library()?;
            let policy = manager.policy(&PolicySpec::default())?;
            for _ in 0..args.count {
                let request = RunRequest::new(vec!["/bin/true".to_owned()], policy.clone())?;
                let start = Instant::now();
                let outcome = manager.run(request, RunOptions::default()).await?;
                times.push(start.elapsed());
                ensure!(outcome.exit_code == Some(0), "library run failed");
            }
        }
        "grpc" => {
            let mut client = SandboxClient::new(channel(args).await?);
            for _ in 0..args.count {
                let start = Instant::now();
                let response = client.run(true_request()).await?.into_inner();
                times.push(start.elapsed());
                ensure!(response.exit_code == 0, "grpc run failed: {response:?}");
            }
        }
        kind => {
            for _ in 0..args.count {
                let start = Instant::now();
                spawn_true(kind)?;
                times.push(start.elapsed());
            }
        }
    }
    Ok(times)
}

async fn rate(args: &Args) -> Result<f64> {
    match args.kind.as_str() {
        "grpc" => {
            let channel = channel(args).await?;
            let clients = (0..args.concurrency)
                .map(|_| SandboxClient::new(channel.clone()))
                .collect();
            common::closed_loop(args.seconds, clients, |client| {
                Box::pin(async move {
                    let response = client.run(true_request()).await?.into_inner();
                    ensure!(response.exit_code == 0, "grpc run failed");
                    Ok(())
                })
            })
            .await
        }
        "bare" => {
            let count = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
            let start = Instant::now();
            let threads: Vec<_> = (0..args.concurrency)
                .map(|_| {
                    let count = count.clone();
                    std::thread::spawn(move || {
                        while Instant::now() < deadline {
                            spawn_true("bare")?;
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        anyhow::Ok(())
                    })
                })
                .collect();
            for thread in threads {
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("spawn thread panicked"))??;
            }
            Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
        }
        other => bail!("rate does not support kind {other}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    match args.mode.as_str() {
        "latency" => {
            let mut times = latency(&args).await?;
            times.sort();
            println!(
                "median_us={:.1} p99_us={:.1}",
                percentile(&times, 0.5),
                percentile(&times, 0.99)
            );
        }
        "rate" => println!("rate={:.1}", rate(&args).await?),
        other => bail!("unknown mode {other}"),
    }
    Ok(())
}
