//! `cordon audit ...`: offline work on the audit log of a stopped server.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Walk the hash chain of every segment and name the first record that
    /// does not match. Read-only; works on a stopped or a running server.
    /// Exits non-zero when the chain is broken.
    Verify {
        /// The server's data directory (the log is in `<data-dir>/audit`).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Seal the active segment and start a new one. The server must be
    /// stopped: it holds the log's lock while it runs.
    Seal {
        /// The server's data directory (the log is in `<data-dir>/audit`).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

pub(crate) fn run(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Verify { data_dir } => verify(&data_dir),
        AuditCommand::Seal { data_dir } => seal(data_dir),
    }
}

fn verify(data_dir: &std::path::Path) -> Result<()> {
    let report = audit::verify_dir(data_dir)?;
    println!("segments:        {}", report.segments);
    println!("records checked: {}", report.records_checked);
    println!("head seq:        {}", report.head.seq);
    println!("head hash:       {}", report.head.hash);
    if report.ok {
        println!("chain ok");
        return Ok(());
    }
    let seq = report.first_bad_seq.unwrap_or_default();
    let reason = report.reason.unwrap_or_default();
    println!("chain BROKEN at seq {seq}: {reason}");
    bail!("audit chain is broken at seq {seq}: {reason}")
}

fn seal(data_dir: PathBuf) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let log = audit::AuditLog::open(audit::Config::new(data_dir))?;
    match runtime.block_on(log.seal())? {
        Some(sealed) => println!(
            "sealed segment {} ({}, seqs {}..={}, last hash {})",
            sealed.number,
            sealed.path.display(),
            sealed.first_seq,
            sealed.last_seq,
            sealed.last_hash
        ),
        None => println!("the active segment is empty; nothing to seal"),
    }
    Ok(())
}
