//! Client certificates issued per second from P-256 CSRs: by the certgen
//! library alone, with the SQLite inventory the server keeps, and through
//! `IssueCertificate` over mTLS, each next to raw rcgen signing measured in
//! the same rounds.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{BenchServer, ROUNDS, build_release, median, print_row};

pub(super) fn run(root: &Path) -> Result<()> {
    let release = build_release(root)?;
    let server = BenchServer::start(&release, "")?;
    let certs = server.certs();
    let certs_arg = certs.to_str().context("certificate path is not UTF-8")?;

    let mut raw = Vec::new();
    let mut library = Vec::new();
    let mut with_inventory = Vec::new();
    let mut grpc = Vec::new();
    for _ in 0..ROUNDS {
        raw.push(ca_load(&release, &["rcgen"])?);
        library.push(ca_load(&release, &["library"])?);
        with_inventory.push(ca_load(&release, &["library-inventory"])?);
        grpc.push(ca_load(
            &release,
            &[
                "grpc",
                "--addr",
                &server.addr,
                "--certs",
                certs_arg,
                "--concurrency",
                "8",
            ],
        )?);
    }
    let raw = median(raw);
    println!("\nbench ca ({ROUNDS} rounds, medians, P-256)");
    let baseline = Some(("raw rcgen signing", raw));
    print_row(
        "certgen sign_csr (parse, verify, sign)",
        median(library),
        "certs/s",
        baseline,
    );
    print_row(
        "certgen sign_csr + SQLite inventory record",
        median(with_inventory),
        "certs/s",
        baseline,
    );
    print_row(
        "cordon IssueCertificate over mTLS (8 in flight)",
        median(grpc),
        "certs/s",
        baseline,
    );
    Ok(())
}

/// Runs the `ca_load` example for two seconds and returns the rate it printed.
fn ca_load(release: &Path, args: &[&str]) -> Result<f64> {
    let output = Command::new(release.join("examples/ca_load"))
        .args(args)
        .args(["--seconds", "2"])
        .output()
        .context("running ca_load")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "ca_load {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("rate="))
        .context("ca_load printed no rate")?
        .parse()
        .context("ca_load rate")
}
