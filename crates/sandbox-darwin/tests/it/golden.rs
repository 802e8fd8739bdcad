//! Golden profiles for typical policies, checked in under `tests/golden/`.
//!
//! After an intended change to the profile, regenerate them and review the diff:
//!
//! ```sh
//! CORDON_BLESS=1 cargo test -p sandbox-darwin --test it golden::
//! git diff crates/sandbox-darwin/tests/golden
//! ```

use std::path::PathBuf;

use sandbox_core::{LimitsSpec, NetworkMode, NetworkSpec, PolicySpec};
use sandbox_darwin::render_profile;

use crate::policy;

fn check(name: &str, spec: PolicySpec) {
    let rendered = render_profile(&policy(spec)).to_string();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.sb"));
    if std::env::var_os("CORDON_BLESS").is_some() {
        std::fs::write(&path, &rendered).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with CORDON_BLESS=1 cargo test -p sandbox-darwin --test it golden::",
            path.display()
        )
    });
    assert_eq!(
        rendered,
        expected,
        "profile differs from {}; if intended, regenerate with \
         CORDON_BLESS=1 cargo test -p sandbox-darwin --test it golden::",
        path.display()
    );
}

#[test]
fn default_policy() {
    check("default", PolicySpec::default());
}

#[test]
fn project_with_local_services() {
    check(
        "project",
        PolicySpec {
            read_paths: vec!["/Users/dev/project".into(), "/opt/tools".into()],
            write_paths: vec!["/Users/dev/project/build".into()],
            network: NetworkSpec {
                mode: NetworkMode::Tcp,
                connect_ports: vec![5432, 8080],
                bind_ports: vec![3000],
            },
            limits: LimitsSpec {
                timeout_ms: 10_000,
                ..LimitsSpec::default()
            },
            ..PolicySpec::default()
        },
    );
}

#[test]
fn locked_down() {
    check(
        "locked",
        PolicySpec {
            system_paths: Some(false),
            ..PolicySpec::default()
        },
    );
}

#[test]
fn unix_sockets() {
    check(
        "unix-sockets",
        PolicySpec {
            write_paths: vec!["/Users/dev/sockets".into()],
            allow_unix_sockets: true,
            ..PolicySpec::default()
        },
    );
}
