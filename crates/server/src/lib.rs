//! The Cordon control plane: the `cordon` binary's implementation, and the
//! generated protobuf code that examples and tests use as clients.

#![forbid(unsafe_code)]

mod audit_cli;
mod ca;
mod config;
mod events;
mod layers;
mod listener;
mod notes;
mod ops;
mod profile;
pub mod proto;
mod rate_limits;
mod serve;
mod services;
mod tls;
mod tls_watch;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "cordon",
    version,
    about = "Security control plane for AI-agent tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "CORDON_CONFIG")]
        config: Option<PathBuf>,
        /// Directory for certificates and databases (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Listen address (overrides `listen`); port 0 picks a free port.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print the sandbox profile of a policy for Linux or macOS (works on any host).
    Profile {
        /// Which platform's profile to print.
        #[arg(long, value_enum)]
        platform: profile::Platform,
        /// TOML policy file whose keys are the proto `Policy` field names (default policy
        /// without it).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Work on the audit log offline.
    Audit {
        #[command(subcommand)]
        command: audit_cli::AuditCommand,
    },
}

/// Parses the command line and runs the chosen command.
pub fn run_cli() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            listen,
        } => {
            let overrides = Overrides { data_dir, listen };
            let config = Config::load(config.as_deref(), &overrides)?;
            init_logging(&config);
            // Before the runtime: the mount namespace is per thread, and every
            // thread started afterwards must share the one holding the tmpfs.
            let work_fs = config.sandbox.prepare_work_fs(&config.data_dir)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve::run(config, work_fs))
        }
        Command::Audit { command } => audit_cli::run(command),
        Command::Profile { platform, policy } => profile::run(platform, policy),
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log.level.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}
