//! `cordon profile`: prints the sandbox profile a policy turns into, for Linux or macOS, on
//! any host, so operators can review and debug what a policy allows.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::ValueEnum;
use sandbox_core::{Policy, PolicySpec};

/// The platform whose profile to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Platform {
    /// Landlock rules, the seccomp filter and the limits.
    Linux,
    /// The Seatbelt (SBPL) profile and its `sandbox-exec -D` parameters.
    Macos,
}

/// Reads the TOML policy at `path` (keys are the proto `Policy` field names; the default
/// policy without a file) and renders it for `platform`.
pub(crate) fn render(platform: Platform, path: Option<&Path>) -> Result<String> {
    let spec = match path {
        Some(path) => read_policy(path)?,
        None => PolicySpec::default(),
    };
    let policy = Policy::new(&spec).with_context(|| match path {
        Some(path) => format!("invalid policy in {}", path.display()),
        None => "invalid default policy".to_owned(),
    })?;
    Ok(match platform {
        Platform::Linux => sandbox_linux::render_linux_profile(&policy),
        Platform::Macos => sandbox_darwin::render_profile(&policy).to_string(),
    })
}

fn read_policy(path: &Path) -> Result<PolicySpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    PolicySpec::from_toml(&text).with_context(|| format!("policy file {}", path.display()))
}

/// Runs `cordon profile`.
pub(crate) fn run(platform: Platform, policy: Option<PathBuf>) -> Result<()> {
    print!("{}", render(platform, policy.as_deref())?);
    Ok(())
}
