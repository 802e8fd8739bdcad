//! `cordon profile`: the real binary prints both platforms' profiles on this host, keeps
//! hostile paths out of the macOS profile text, and rejects a bad policy file.

use std::path::Path;
use std::process::{Command, Output};

fn cordon_profile(platform: &str, policy: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cordon"));
    cmd.args(["profile", "--platform", platform]);
    if let Some(policy) = policy {
        cmd.arg("--policy").arg(policy);
    }
    cmd.output().expect("run cordon profile")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "cordon profile failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

const POLICY: &str = r#"
read_paths = ["/srv/data/it's \"quoted\" (x)"]
write_paths = ["/srv/out"]
system_paths = true

[network]
mode = "tcp"
connect_ports = [5432]

[limits]
timeout_ms = 5000
"#;

#[test]
fn linux_profile_shows_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, POLICY).expect("write policy");
    let text = stdout(&cordon_profile("linux", Some(&file)));
    assert!(text.contains("## Landlock (deny by default)"), "{text}");
    assert!(text.contains("/srv/out"), "{text}");
    assert!(text.contains("tcp connect ports: {5432}"), "{text}");
    assert!(text.contains("timeout_ms          5000"), "{text}");
    for needle in ["ptrace", "pidfd_getfd", "sendto & MSG_FASTOPEN", "listen"] {
        assert!(
            text.contains(needle),
            "the seccomp deny list is printed with {needle}: {text}"
        );
    }
}

#[test]
fn macos_profile_keeps_paths_in_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, POLICY).expect("write policy");
    let text = stdout(&cordon_profile("macos", Some(&file)));
    let (profile, params) = text
        .split_once(";; sandbox-exec -D parameters:")
        .expect("parameters section");
    assert!(
        profile.starts_with("(version 1)\n(deny default)\n"),
        "{profile}"
    );
    assert!(
        profile.contains("(subpath (param \"READ_0\"))"),
        "{profile}"
    );
    assert!(
        profile.contains("(subpath (param \"WRITE_0\"))"),
        "{profile}"
    );
    assert!(
        profile.contains("(allow network-outbound (remote tcp \"localhost:5432\"))"),
        "{profile}"
    );
    assert!(
        !profile.contains("/srv"),
        "no policy path in the profile text"
    );
    assert!(
        !profile.contains("quoted"),
        "no policy path in the profile text"
    );
    assert!(
        params.contains(r#"READ_0="/srv/data/it's \"quoted\" (x)""#),
        "{params}"
    );
    assert!(params.contains(r#"WRITE_0="/srv/out""#), "{params}");
}

#[test]
fn default_policy_without_a_file() {
    let text = stdout(&cordon_profile("macos", None));
    assert!(text.contains("(deny default)"), "{text}");
    assert!(!text.contains("READ_0"), "{text}");
    let text = stdout(&cordon_profile("linux", None));
    assert!(text.contains("read+execute:"), "{text}");
}

#[test]
fn a_bad_policy_file_fails_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "read_pathz = [\"/srv\"]\n").expect("write");
    let relative = dir.path().join("relative.toml");
    std::fs::write(&relative, "write_paths = [\"srv/out\"]\n").expect("write");
    for (file, field) in [(&unknown, "read_pathz"), (&relative, "srv/out")] {
        for platform in ["linux", "macos"] {
            let out = cordon_profile(platform, Some(file));
            assert!(
                !out.status.success(),
                "{platform} accepted {}",
                file.display()
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(&file.display().to_string()), "{stderr}");
            assert!(stderr.contains(field), "{stderr}");
            assert!(out.stdout.is_empty(), "nothing printed on error");
        }
    }
    let out = cordon_profile("macos", Some(&dir.path().join("missing.toml")));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    let out = cordon_profile("windows", None);
    assert!(!out.status.success(), "unknown platform is rejected");
}
