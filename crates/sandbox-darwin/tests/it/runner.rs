//! The runner against a stand-in `sandbox-exec`: a shell script that records its arguments
//! (NUL-separated, next to itself) and then runs the command the way `sandbox-exec` does.
//! Nothing here is sandboxed by the kernel; these tests prove the argument building and the
//! shared supervision (environment, work directory, timeouts, killing the tree, output caps,
//! rlimits, usage, errors), and the manager's choice of backend.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox_core::{
    Ceiling, LimitsSpec, ManagerConfig, PolicySpec, RunError, RunOptions, RunOutcome, RunRequest,
    Sandbox, Technology,
};
use sandbox_darwin::profile::render_run_profile;
use sandbox_darwin::{DarwinConfig, SEATBELT_BACKEND, candidates_with_stand_in};
use tempfile::TempDir;

use crate::policy;

const STAND_IN: &str = r#"#!/bin/sh
# Stand-in for /usr/bin/sandbox-exec: record the arguments, skip the options, run the command.
dir=$(dirname "$0")
printf '%s\0' "$@" > "$dir/args"
while [ $# -gt 0 ]; do
  case "$1" in
    -p|-f|-D) shift 2 ;;
    *) break ;;
  esac
done
exec "$@"
"#;

struct Fixture {
    dir: TempDir,
    backends: Vec<Arc<dyn Sandbox>>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let stand_in = dir.path().join("sandbox-exec");
        std::fs::write(&stand_in, STAND_IN).expect("write stand-in");
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755))
            .expect("chmod stand-in");
        let config = DarwinConfig {
            work_root: dir.path().join("runs"),
            collect_denials: false,
        };
        let backends = candidates_with_stand_in(&config, stand_in, None);
        Fixture { dir, backends }
    }

    fn backend(&self, technology: Technology) -> &Arc<dyn Sandbox> {
        self.backends
            .iter()
            .find(|b| b.technology() == technology)
            .expect("backend")
    }

    fn seatbelt(&self) -> &Arc<dyn Sandbox> {
        self.backend(Technology::Landlock)
    }

    fn recorded_args(&self) -> Vec<String> {
        let raw = std::fs::read(self.dir.path().join("args")).expect("stand-in ran");
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8(a.to_vec()).expect("utf-8"))
            .collect()
    }

    /// A directory inside the fixture, created.
    fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// The ceiling for runs that call the backend directly; the manager's own checks are tested
/// in sandbox-core.
fn unrestricted() -> Arc<Ceiling> {
    Arc::new(Ceiling::unrestricted())
}

fn request(argv: Vec<String>, spec: PolicySpec) -> RunRequest {
    RunRequest::new(argv, policy(spec)).expect("valid request")
}

async fn run(backend: &Arc<dyn Sandbox>, request: RunRequest) -> RunOutcome {
    backend
        .run(request, RunOptions::default(), &unrestricted())
        .await
        .expect("run succeeds")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Fails unless the process whose pid is in `pidfile` is gone within three seconds.
async fn assert_dies(pidfile: &Path, what: &str) {
    let pid: i32 = std::fs::read_to_string(pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let deadline = Instant::now() + Duration::from_secs(3);
    while process_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!process_alive(pid), "{what} {pid} survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_exec_gets_the_profile_its_parameters_and_the_command() {
    let f = Fixture::new();
    let read = f.mkdir("in \"quotes\" (and parens)\nnewline");
    let write = f.mkdir("out");
    let spec = PolicySpec {
        read_paths: vec![read.display().to_string()],
        write_paths: vec![write.display().to_string()],
        ..PolicySpec::default()
    };
    let pol = policy(spec.clone());
    let req = RunRequest::new(
        vec!["echo".into(), "hello".into(), "-D".into(), "x y".into()],
        pol.clone(),
    )
    .expect("request")
    .with_cwd(&write.display().to_string())
    .expect("cwd");
    let out = run(f.seatbelt(), req).await;
    assert_eq!(out.exit_code, Some(0), "{}", text(&out.stderr.bytes));
    assert_eq!(text(&out.stdout.bytes), "hello -D x y\n");

    let args = f.recorded_args();
    let canon = |p: &Path| std::fs::canonicalize(p).expect("canonicalize");
    let expected = render_run_profile(&pol, &canon(&write), &[canon(&read)], &[canon(&write)]);
    assert_eq!(args[0], "-p");
    assert_eq!(args[1], expected.text);
    let mut i = 2;
    for (name, value) in &expected.params {
        assert_eq!(args[i], "-D");
        assert_eq!(args[i + 1], format!("{name}={value}"));
        i += 2;
    }
    assert!(
        expected
            .params
            .contains(&("READ_0".into(), canon(&read).display().to_string())),
        "the hostile path reaches sandbox-exec only as a parameter"
    );
    assert!(!args[1].contains("quotes"));
    assert!(
        Path::new(&args[i]).is_absolute(),
        "program is absolute: {}",
        args[i]
    );
    assert!(args[i].ends_with("/echo"));
    assert_eq!(args[i + 1..], ["hello", "-D", "x y"]);

    let e = &out.enforcement;
    assert_eq!(e.backend, SEATBELT_BACKEND);
    assert_eq!(e.platform, "macos");
    assert!(e.filesystem && e.rlimits && !e.seccomp && !e.network_ports);
    assert!(!e.kernel_enforced, "no syscall filter on macOS");
    for layer in [
        "seccomp",
        "network_ports",
        "no_new_privs",
        "process_containment",
    ] {
        assert!(e.missing.iter().any(|m| m == layer), "{:?}", e.missing);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_work_directory_stdin_and_usage() {
    let f = Fixture::new();
    let req = request(
        sh("echo \"$HOME|$TMPDIR|$FOO|${CARGO:-unset}|$PATH\"; pwd; cat"),
        PolicySpec::default(),
    )
    .with_env("FOO", "bar")
    .expect("env")
    .with_stdin("from stdin");
    let out = run(f.seatbelt(), req).await;
    let stdout = text(&out.stdout.bytes);
    let mut lines = stdout.lines();
    let first: Vec<&str> = lines.next().expect("line").split('|').collect();
    let pwd = lines.next().expect("pwd");
    assert_eq!(first[0], pwd, "HOME is the work directory");
    assert_eq!(first[1], pwd, "TMPDIR is the work directory");
    assert_eq!(first[2], "bar");
    assert_eq!(first[3], "unset", "the server's environment does not leak");
    assert_eq!(first[4], sandbox_core::supervise::SAFE_PATH);
    assert!(pwd.starts_with(&f.dir.path().join("runs").display().to_string()));
    assert_eq!(lines.next(), Some("from stdin"));
    assert!(out.usage.wall_us > 0);
    // Removal happens off the run's path, on the work-directory janitor's thread.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Path::new(pwd).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the per-run directory is removed after the run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_tree() {
    let f = Fixture::new();
    let pidfile = f.dir.path().join("bg.pid");
    let spec = PolicySpec {
        limits: LimitsSpec {
            timeout_ms: 500,
            ..LimitsSpec::default()
        },
        ..PolicySpec::default()
    };
    let script = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
    let started = Instant::now();
    let out = run(f.seatbelt(), request(sh(&script), spec)).await;
    assert!(out.timed_out);
    assert!(
        out.violations.iter().any(|v| v == "timeout"),
        "{:?}",
        out.violations
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_dies(&pidfile, "background process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_of_the_main_child_kills_its_background_processes() {
    let f = Fixture::new();
    let pidfile = f.dir.path().join("bg.pid");
    let script = format!("sleep 30 & echo $! > '{}'", pidfile.display());
    let started = Instant::now();
    let out = run(f.seatbelt(), request(sh(&script), PolicySpec::default())).await;
    assert_eq!(out.exit_code, Some(0));
    assert!(!out.timed_out);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_dies(&pidfile, "background process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_run_kills_it() {
    let f = Fixture::new();
    let pidfile = f.dir.path().join("main.pid");
    let script = format!("echo $$ > '{}'; exec sleep 30", pidfile.display());
    let future = f.seatbelt().run(
        request(sh(&script), PolicySpec::default()),
        RunOptions::default(),
        &unrestricted(),
    );
    let cancelled = tokio::time::timeout(Duration::from_millis(700), future).await;
    assert!(cancelled.is_err(), "the run was still going");
    assert_dies(&pidfile, "cancelled run").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_capped_keeping_head_and_tail() {
    let f = Fixture::new();
    let spec = PolicySpec {
        limits: LimitsSpec {
            max_output_bytes: 1000,
            ..LimitsSpec::default()
        },
        ..PolicySpec::default()
    };
    let out = run(
        f.seatbelt(),
        request(
            sh("printf start; head -c 100000 /dev/zero; printf end"),
            spec,
        ),
    )
    .await;
    assert!(out.stdout.truncated);
    assert_eq!(out.stdout.total_bytes, 100_008);
    assert_eq!(out.stdout.bytes.len(), 1000);
    assert!(out.stdout.bytes.starts_with(b"start"));
    assert!(out.stdout.bytes.ends_with(b"end"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlimits_reach_the_command_through_sandbox_exec() {
    let f = Fixture::new();
    let spec = PolicySpec {
        limits: LimitsSpec {
            max_open_files: 77,
            max_file_size_bytes: 4096,
            ..LimitsSpec::default()
        },
        ..PolicySpec::default()
    };
    let out = run(
        f.seatbelt(),
        request(sh("ulimit -n; ulimit -c"), spec.clone()),
    )
    .await;
    assert_eq!(text(&out.stdout.bytes), "77\n0\n");

    let out = run(
        f.seatbelt(),
        request(sh("head -c 20000 /dev/zero > big"), spec.clone()),
    )
    .await;
    assert!(
        out.violations.iter().any(|v| v == "file_size_limit")
            || out.exit_code.is_some_and(|c| c != 0),
        "writing past the file size limit must fail: {out:?}"
    );

    // The `none` backend sets no rlimits and says so.
    let out = run(f.backend(Technology::None), request(sh("ulimit -n"), spec)).await;
    assert_ne!(text(&out.stdout.bytes), "77\n");
    assert!(!out.enforcement.rlimits && !out.enforcement.filesystem);
    assert_eq!(out.enforcement.backend, "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_backend_runs_without_sandbox_exec() {
    let f = Fixture::new();
    let out = run(
        f.backend(Technology::Soft),
        request(vec!["echo".into(), "soft".into()], PolicySpec::default()),
    )
    .await;
    assert_eq!(text(&out.stdout.bytes), "soft\n");
    assert!(!f.dir.path().join("args").exists(), "sandbox-exec not used");
    assert_eq!(out.enforcement.backend, "soft");
    assert!(out.enforcement.rlimits && !out.enforcement.filesystem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed() {
    let f = Fixture::new();
    let missing = f.dir.path().join("does-not-exist");
    let spec = PolicySpec {
        read_paths: vec![missing.display().to_string()],
        ..PolicySpec::default()
    };
    let err = f
        .seatbelt()
        .run(
            request(vec!["true".into()], spec),
            RunOptions::default(),
            &unrestricted(),
        )
        .await
        .expect_err("missing granted path");
    assert!(
        matches!(err, RunError::PathUnavailable { ref path, .. } if *path == missing),
        "{err:?}"
    );

    let err = f
        .seatbelt()
        .run(
            request(vec!["no-such-program-xyz".into()], PolicySpec::default()),
            RunOptions::default(),
            &unrestricted(),
        )
        .await
        .expect_err("unknown program");
    assert!(matches!(err, RunError::ProgramNotFound { .. }), "{err:?}");
}

fn manager_config(technology: Technology) -> ManagerConfig {
    ManagerConfig {
        technology,
        ceiling: Ceiling::unrestricted(),
        max_concurrent_runs: 2,
    }
}

#[test]
fn the_manager_picks_seatbelt_when_sandbox_exec_exists_else_soft() {
    let f = Fixture::new();
    let m = sandbox_core::Manager::new(manager_config(Technology::Auto), f.backends.clone())
        .expect("manager");
    assert_eq!(m.capabilities().backend, SEATBELT_BACKEND);
    assert_eq!(m.capabilities().platform, "macos");
    assert!(!m.capabilities().kernel_enforced);

    let config = DarwinConfig {
        work_root: f.dir.path().join("runs"),
        collect_denials: false,
    };
    let absent = candidates_with_stand_in(&config, f.dir.path().join("absent"), None);
    assert!(!absent[0].is_available());
    let m = sandbox_core::Manager::new(manager_config(Technology::Auto), absent.clone())
        .expect("manager");
    assert_eq!(m.capabilities().backend, "soft");
    let err = sandbox_core::Manager::new(manager_config(Technology::Landlock), absent)
        .expect_err("explicit kernel tier without sandbox-exec");
    assert!(
        matches!(err, sandbox_core::ManagerError::Unavailable { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_kernel_enforcement_is_refused_on_macos() {
    let f = Fixture::new();
    let m = sandbox_core::Manager::new(manager_config(Technology::Auto), f.backends.clone())
        .expect("manager");
    let spec = PolicySpec {
        require_kernel_enforcement: true,
        ..PolicySpec::default()
    };
    let err = m
        .run(request(vec!["true".into()], spec), RunOptions::default())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, RunError::KernelEnforcementUnavailable { .. }),
        "{err:?}"
    );
}

#[test]
fn no_backend_outside_macos_without_the_stand_in() {
    let c = sandbox_darwin::candidates(&DarwinConfig::default());
    if cfg!(target_os = "macos") {
        assert_eq!(c.len(), 3);
    } else {
        assert!(c.is_empty());
    }
}
