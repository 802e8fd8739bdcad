//! New mTLS connections per second (full handshake plus one health call) and
//! unary calls per second on one connection, next to `openssl s_server` and
//! `openssl s_time` using the same certificates.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::{
    BenchServer, ROUNDS, build_release, free_port, loadgen, median, print_row, wait_for_port,
};
use crate::tools::ensure_apt_program;

pub(super) fn run(root: &Path) -> Result<()> {
    let openssl_program = ensure_apt_program("openssl", "openssl")?;
    let release = build_release(root)?;
    let server = BenchServer::start(&release, "")?;
    let certs = server.certs();
    let certs_arg = certs.to_str().context("certificate path is not UTF-8")?;

    let port = free_port()?;
    let mut openssl = Command::new(&openssl_program)
        .args(["s_server", "-quiet", "-www", "-tls1_3", "-Verify", "1"])
        .arg("-accept")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(certs.join("server.pem"))
        .arg("-key")
        .arg(certs.join("server.key"))
        .arg("-CAfile")
        .arg(certs.join("ca.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting openssl s_server")?;
    wait_for_port(port)?;

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..ROUNDS {
        ours.push(loadgen(
            &release,
            &[
                "handshakes",
                "--addr",
                &server.addr,
                "--certs",
                certs_arg,
                "--seconds",
                "2",
            ],
        )?);
        theirs.push(s_time(&openssl_program, &certs, port)?);
    }
    let mut unary = Vec::new();
    for _ in 0..ROUNDS {
        unary.push(loadgen(
            &release,
            &[
                "unary",
                "--addr",
                &server.addr,
                "--certs",
                certs_arg,
                "--seconds",
                "2",
                "--concurrency",
                "32",
            ],
        )?);
    }
    let _ = openssl.kill();
    let _ = openssl.wait();

    println!("\nbench tls ({ROUNDS} rounds, medians)");
    print_row(
        "cordon: new mTLS connection + health call",
        median(ours),
        "conn/s",
        Some(("openssl s_time -new", median(theirs))),
    );
    print_row(
        "cordon: unary WhoAmI on one connection (32 in flight)",
        median(unary),
        "calls/s",
        None,
    );
    Ok(())
}

/// `openssl s_time -new` for two seconds: full handshakes per second.
fn s_time(openssl: &Path, certs: &Path, port: u16) -> Result<f64> {
    let output = Command::new(openssl)
        .args(["s_time", "-new", "-time", "2"])
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(certs.join("admin.pem"))
        .arg("-key")
        .arg(certs.join("admin.key"))
        .arg("-CAfile")
        .arg(certs.join("ca.pem"))
        .output()
        .context("running openssl s_time")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "N connections in T real seconds, B bytes read per connection"
    let line = text
        .lines()
        .find(|line| line.contains("connections in") && line.contains("real seconds"))
        .with_context(|| format!("unexpected s_time output:\n{text}"))?;
    let mut words = line.split_whitespace();
    let connections: f64 = words.next().context("count")?.parse()?;
    let seconds: f64 = words.nth(2).context("seconds")?.parse()?;
    Ok(connections / seconds)
}
