//! `cargo xtask`: development tasks for the Cordon workspace.
//!
//! It always works from the workspace root, whatever directory it is called
//! from, and installs the tools the test suite needs when they are missing.

#![forbid(unsafe_code)]

mod bench;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Cordon development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write a development CA, a server certificate and client certificates.
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// A client identity, optionally with the role to give it: NAME or NAME:ROLE.
        #[arg(long = "client")]
        clients: Vec<String>,
        /// SPIFFE trust domain of the client identities.
        #[arg(long, default_value = "cordon.local")]
        trust_domain: String,
        /// Extra DNS names or IP addresses for the server certificate.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
    },
    /// Format check, clippy with -D warnings, and every test, installing what they need.
    Test {
        /// Extra arguments passed to `cargo test` (for example a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Install the tools the tests need (Python venv with grpcio and grpcurl, redis-server).
    Setup,
    /// Measure an area side by side with its baseline.
    Bench {
        #[arg(value_enum)]
        area: bench::Area,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)
        .with_context(|| format!("cannot enter workspace root {}", root.display()))?;
    match cli.command {
        Task::Certs {
            out,
            clients,
            trust_domain,
            server_names,
        } => certs(&out, &clients, trust_domain, server_names),
        Task::Test { args } => test(&root, &args),
        Task::Setup => tools::ensure_all(&root).map(|_| ()),
        Task::Bench { area } => bench::run(&root, area),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn certs(
    out: &Path,
    clients: &[String],
    trust_domain: String,
    server_names: Vec<String>,
) -> Result<()> {
    let mut names = Vec::new();
    let mut roles = Vec::new();
    for client in clients {
        let (name, role) = match client.split_once(':') {
            Some((name, role)) => (name, Some(role)),
            None => (client.as_str(), None),
        };
        names.push(name.to_owned());
        if let Some(role) = role {
            roles.push((name.to_owned(), role.to_owned()));
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    certgen::write_dev_bundle(
        out,
        &certgen::DevBundle {
            trust_domain,
            server_names,
            clients: names.clone(),
        },
    )?;
    println!(
        "wrote ca.pem ca.key server.pem server.key to {}",
        out.display()
    );
    for name in &names {
        println!("wrote {name}.pem {name}.key");
    }
    if !roles.is_empty() {
        println!("\nRoles come from the server configuration; add to cordon.toml:");
        for (name, role) in roles {
            println!("[identities.{name}]\nroles = [\"{role}\"]");
        }
    }
    Ok(())
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    let tools = tools::ensure_all(root)?;
    run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let mut cargo_test = Command::new("cargo");
    cargo_test
        .args(["test", "--workspace"])
        .args(args)
        .envs(tools.test_env());
    run(&mut cargo_test)
}

pub(crate) fn run(command: &mut Command) -> Result<()> {
    eprintln!("$ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls_pki_types::pem::PemObject;

    #[test]
    fn certs_writes_the_documented_layout() {
        let dir = tempfile::tempdir().unwrap();
        super::certs(
            dir.path(),
            &["alice:agent".to_owned(), "bob".to_owned()],
            "example.org".to_owned(),
            vec!["cordon.internal".to_owned()],
        )
        .unwrap();
        for file in [
            "ca.pem",
            "ca.key",
            "server.pem",
            "server.key",
            "alice.pem",
            "alice.key",
            "bob.pem",
            "bob.key",
        ] {
            assert!(dir.path().join(file).is_file(), "{file} missing");
        }
        for key in ["ca.key", "server.key", "alice.key", "bob.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key} has mode {mode:o}");
        }
        let alice = std::fs::read(dir.path().join("alice.pem")).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&alice).unwrap();
        let identity = certgen::client_identity(der.as_ref(), Some("example.org")).unwrap();
        assert_eq!(identity.name, "alice");
        assert_eq!(
            identity.spiffe_id.as_deref(),
            Some("spiffe://example.org/user/alice")
        );
    }

    #[test]
    fn certs_refuses_a_path_like_identity() {
        let dir = tempfile::tempdir().unwrap();
        let refused = super::certs(
            dir.path(),
            &["../evil".to_owned()],
            "example.org".to_owned(),
            Vec::new(),
        );
        assert!(refused.is_err());
        assert!(!dir.path().join("ca.pem").exists());
    }
}
