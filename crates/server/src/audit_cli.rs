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
        /// A head printed by an earlier verify and kept where the server
        /// cannot write, as `SEQ:HASH`: the log must still hold that record
        /// with that hash. This detects records removed from the end and a
        /// history rewritten with recomputed hashes, which the chain alone
        /// cannot show.
        #[arg(long, value_name = "SEQ:HASH", value_parser = parse_anchor)]
        anchor: Option<audit::Anchor>,
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
        AuditCommand::Verify { data_dir, anchor } => verify(&data_dir, anchor.as_ref()),
        AuditCommand::Seal { data_dir } => seal(data_dir),
    }
}

/// Reads `SEQ:HASH` (the hash as 64 hex digits) for `--anchor`.
fn parse_anchor(text: &str) -> Result<audit::Anchor, String> {
    let (seq, hash) = text
        .split_once(':')
        .ok_or("expected SEQ:HASH, for example 42:<64 hex digits>")?;
    let seq = seq
        .parse()
        .map_err(|_| format!("the seq {seq:?} is not a number"))?;
    let hash = audit::ChainHash::from_hex(hash)
        .ok_or_else(|| format!("the hash {hash:?} is not 64 hex digits"))?;
    Ok(audit::Anchor { seq, hash })
}

fn verify(data_dir: &std::path::Path, anchor: Option<&audit::Anchor>) -> Result<()> {
    let report = match anchor {
        Some(anchor) => audit::verify_dir_with_anchor(data_dir, anchor)?,
        None => audit::verify_dir(data_dir)?,
    };
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
