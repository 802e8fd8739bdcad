//! The Sandbox service through grpcio: the attack suite, the API's own
//! checks, the soft fallback, where the work directories live, start-up
//! refusals and graceful shutdown.

use std::path::Path;
use std::time::{Duration, Instant};

use certgen::DevBundle;
use serde_json::json;

use crate::harness::{self, TestServer};

/// Writes the dev bundle with the clients the sandbox tests use and returns
/// their certificate paths for the Python context.
fn certificates(dir: &Path) -> serde_json::Value {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certgen::write_dev_bundle(
        &certs,
        &DevBundle {
            trust_domain: "cordon.local".into(),
            server_names: vec![],
            clients: vec!["admin".into(), "agent".into(), "auditor".into()],
        },
    )
    .unwrap();
    let pair = |name: &str| json!({"cert": certs.join(format!("{name}.pem")), "key": certs.join(format!("{name}.key"))});
    json!({"admin": pair("admin"), "agent": pair("agent"), "auditor": pair("auditor")})
}

fn config(extra: &str) -> String {
    format!(
        r#"
[identities.admin]
roles = ["admin"]
[identities.agent]
roles = ["agent"]
[identities.auditor]
roles = ["auditor"]

[sandbox]
read_roots = ["/tmp"]
write_roots = ["/tmp", "/dev/pts", "/dev/ptmx"]
max_concurrent_runs = 3
{extra}

[sandbox.trust]
default = "untrusted"
[sandbox.trust.sources]
builtin = "verified"
community = "trusted"
shady = "untrusted"
"#
    )
}

fn start(extra: &str) -> (TestServer, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let certs = certificates(dir.path());
    let server = TestServer::start_in(dir, &config(extra));
    let context = json!({
        "target": server.addr,
        "proto_dir": harness::proto_dir(),
        "ca": server.certs().join("ca.pem"),
        "certs": certs,
        "data_dir": server.dir.path(),
        "server_pid": server.child.id(),
    });
    (server, context)
}

fn with(mut context: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    context[key] = value;
    context
}

#[test]
fn attack_suite_through_grpc_from_python() {
    let (server, context) = start("");
    let scratch = tempfile::tempdir().unwrap();
    let context = with(context, "scratch", json!(scratch.path()));
    harness::run_python("test_sandbox.py", &with(context, "mode", json!("attacks")));
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn soft_backend_warns_and_refuses_kernel_enforcement() {
    let (server, context) = start(r#"technology = "soft""#);
    harness::run_python("test_sandbox.py", &with(context, "mode", json!("soft")));
    let log = server.log();
    assert!(log.contains("SANDBOX NOT KERNEL-ENFORCED"), "{log}");
}

#[test]
fn runs_outlive_the_request_timeout_and_cut_runs_are_recorded() {
    let (_server, context) = start("[server]\nrequest_timeout_ms = 1500");
    let scratch = tempfile::tempdir().unwrap();
    let context = with(context, "scratch", json!(scratch.path()));
    harness::run_python(
        "test_sandbox.py",
        &with(context, "mode", json!("deadlines")),
    );
}

#[test]
fn sigterm_lets_a_run_in_flight_finish_then_exits_zero() {
    let (mut server, context) = start("");
    harness::run_python("test_sandbox.py", &with(context, "mode", json!("sigterm")));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}\n{}", server.log());
}

/// Whether a process started here may mount a private tmpfs, asked of
/// util-linux's `unshare` and `mount` in a throwaway namespace: root is not
/// enough where a container withholds CAP_SYS_ADMIN or its security profile
/// forbids mounts, and there the server's `auto` must fall back instead.
fn host_allows_private_mounts() -> bool {
    let target = tempfile::tempdir().unwrap();
    std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "slave", "mount", "-t", "tmpfs"])
        .args(["-o", "size=1M", "cordon-probe"])
        .arg(target.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running util-linux unshare")
        .success()
}

/// The line of a process's mount table for a tmpfs Cordon mounted on `path`.
fn work_fs_mount(mountinfo: &str, path: &Path) -> Option<String> {
    let path = path.to_str().unwrap();
    mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(path) && l.contains(" - tmpfs cordon-work "))
        .map(str::to_owned)
}

/// Runs the Python work_fs suite on a server started with `extra`, expecting
/// a private tmpfs of `size_bytes` or not, and returns the server.
fn work_fs_suite(extra: &str, size_bytes: u64, expect_tmpfs: bool) -> TestServer {
    let (server, context) = start(extra);
    let context = with(context, "mode", json!("work_fs"));
    let context = with(context, "expect_tmpfs", json!(expect_tmpfs));
    let context = with(context, "work_fs_size_bytes", json!(size_bytes));
    harness::run_python("test_sandbox.py", &context);
    server
}

#[test]
fn work_directories_live_on_a_private_size_limited_tmpfs() {
    const SIZE: u64 = 4 << 20;
    if !host_allows_private_mounts() {
        // Without the right to mount, `auto` says so and keeps a directory,
        // and a server that requires the tmpfs does not start.
        let server = work_fs_suite("", SIZE, false);
        assert!(
            server.log().contains("no private tmpfs"),
            "{}",
            server.log()
        );
        refuses_to_start(
            "[sandbox]\nwork_fs = \"tmpfs\"\n",
            "cannot mount a private tmpfs",
        );
        return;
    }
    let server = work_fs_suite(&format!("work_fs_size_bytes = {SIZE}"), SIZE, true);
    let work_root = server.dir.path().join("runs");
    let servers_mounts =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", server.child.id())).unwrap();
    let mount = work_fs_mount(&servers_mounts, &work_root)
        .unwrap_or_else(|| panic!("no tmpfs on {}:\n{servers_mounts}", work_root.display()));
    assert!(
        mount.contains("nosuid") && mount.contains("nodev"),
        "{mount}"
    );
    assert!(mount.contains("size=4096k"), "{mount}");
    // The mount is the server's own: the rest of the host never sees it.
    let our_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(work_fs_mount(&our_mounts, &work_root), None, "{our_mounts}");
    // Explicitly required, it is mounted just the same.
    let required = work_fs_suite(
        &format!("work_fs = \"tmpfs\"\nwork_fs_size_bytes = {SIZE}"),
        SIZE,
        true,
    );
    drop(required);
}

#[test]
fn work_fs_directory_keeps_the_work_directories_on_the_host_file_system() {
    let server = work_fs_suite("work_fs = \"directory\"", 1 << 30, false);
    let work_root = server.dir.path().join("runs");
    let servers_mounts =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", server.child.id())).unwrap();
    assert_eq!(
        work_fs_mount(&servers_mounts, &work_root),
        None,
        "{servers_mounts}"
    );
}

/// `cordon serve` with `config` must exit with an error mentioning `message`.
fn refuses_to_start(config: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let text = harness::refused_startup(dir.path(), config);
    assert!(text.contains(message), "{message:?} not in {text}");
}

#[test]
fn bad_sandbox_configuration_refuses_to_start() {
    refuses_to_start(
        "[sandbox]\nread_roots = [\"relative\"]\n",
        "path is not absolute: relative",
    );
    refuses_to_start(
        "[sandbox]\ntechnology = \"chroot\"\n",
        "invalid configuration",
    );
    refuses_to_start(
        "[sandbox.trust]\ndefault = \"maybe\"\n",
        "invalid configuration",
    );
    refuses_to_start(
        "[sandbox]\nwork_fs = \"ramdisk\"\n",
        "invalid configuration",
    );
    refuses_to_start(
        "[sandbox]\nwork_fs_size_bytes = 0\n",
        "work_fs_size_bytes must be above 0",
    );
    refuses_to_start(
        "[sandbox.max_limits]\ntimeout_ms = 0\ncpu_time_ms = 1\nmemory_bytes = 1\n\
         max_output_bytes = 1\nmax_processes = 1\nmax_file_size_bytes = 1\nmax_open_files = 1\n",
        "timeout_ms",
    );
    // A run uid or gid of 0 would leave the commands root's identity (the run uid is a
    // Linux setting; macOS runs commands as the server's user).
    if cfg!(target_os = "linux") {
        refuses_to_start("[sandbox]\nrun_uid = 0\n", "sandbox.run_uid must not be 0");
        refuses_to_start("[sandbox]\nrun_gid = 0\n", "sandbox.run_gid must not be 0");
    }
}

/// The pids whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

/// Runs `cordon.sandbox.v1.Sandbox/Run` with grpcurl as admin.
fn grpcurl_run(server: &TestServer, request: &serde_json::Value) -> (bool, String) {
    harness::grpcurl_call(server, "cordon.sandbox.v1.Sandbox/Run", request)
}

/// A work root the operator moved out of the data directory is as ungrantable as the data
/// directory: a run granted it, or a parent of it, could read other runs' files or swap a
/// directory that is about to become another run's work directory.
#[test]
fn a_work_root_outside_the_data_directory_is_never_grantable() {
    let outside = tempfile::tempdir().unwrap();
    let work_root = outside.path().join("runs");
    let sibling = outside.path().join("sibling");
    std::fs::create_dir(&sibling).unwrap();
    let (server, _) = start(&format!(
        "work_root = {:?}",
        work_root.display().to_string()
    ));
    let request = |path: &Path| {
        serde_json::json!({
            "argv": ["true"],
            "tool": "grant",
            "tool_source": "builtin",
            "policy": {"read_paths": [path.display().to_string()]},
        })
    };
    for refused in [outside.path(), work_root.as_path()] {
        let (ok, text) = grpcurl_run(&server, &request(refused));
        assert!(!ok, "{text}");
        assert!(text.contains("InvalidArgument"), "{text}");
        assert!(text.contains(&refused.display().to_string()), "{text}");
    }
    let (ok, text) = grpcurl_run(&server, &request(&sibling));
    assert!(ok, "{text}");
}

#[test]
fn a_run_dies_with_a_crashed_server() {
    let (mut server, _) = start("");
    // A duration no other test uses, so the process is ours.
    let seconds = format!("{}.25", 900 + std::process::id() % 97);
    let argv = ["sleep", seconds.as_str()];
    let request = serde_json::json!({"argv": argv, "tool": "crash", "tool_source": "builtin"});
    let mut client = harness::grpcurl_as_admin(&server)
        .args([
            "-d",
            &request.to_string(),
            &server.addr,
            "cordon.sandbox.v1.Sandbox/Run",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids = loop {
        let pids = processes_running(&argv);
        if !pids.is_empty() {
            break pids;
        }
        assert!(
            Instant::now() < deadline,
            "the run never started\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_running(&argv).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{pids:?} survived the server's kill -9"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = client.kill();
    let _ = client.wait();
}
