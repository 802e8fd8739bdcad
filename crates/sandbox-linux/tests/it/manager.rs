//! Backend selection, gating and reporting through the manager.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use sandbox_core::{
    Ceiling, CeilingConfig, Containment, Limits, ManagerConfig, ManagerError, PolicyError,
    PolicySpec, RunError, RunOptions, RunRequest, Technology,
};
use sandbox_linux::LinuxConfig;

use crate::*;

fn config(technology: Technology, max: usize) -> ManagerConfig {
    ManagerConfig {
        technology,
        ceiling: Ceiling::unrestricted(),
        max_concurrent_runs: max,
    }
}

/// The manager `auto` picks on this host, under `ceiling`.
fn auto_manager(ceiling: Ceiling) -> sandbox_core::Manager {
    sandbox_linux::manager(
        &LinuxConfig::default(),
        ManagerConfig {
            technology: Technology::Auto,
            ceiling,
            max_concurrent_runs: 4,
        },
    )
    .unwrap()
}

/// The Linux settings with per-run cgroups off, as on a host without root.
fn no_cgroup() -> LinuxConfig {
    LinuxConfig {
        cgroup: false,
        ..LinuxConfig::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn naming_landlock_requires_landlock() {
    let result = sandbox_linux::manager(&LinuxConfig::default(), config(Technology::Landlock, 4));
    if kernel_landlock_abi() > 0 {
        let manager = result.expect("landlock is available");
        assert_eq!(manager.capabilities().backend, "landlock");
        assert!(manager.capabilities().kernel_enforced);
        assert_eq!(manager.capabilities().landlock_abi, kernel_landlock_abi());
    } else {
        assert!(matches!(result, Err(ManagerError::Unavailable { .. })));
    }
    let auto = sandbox_linux::manager(&LinuxConfig::default(), config(Technology::Auto, 4))
        .expect("auto always finds a backend");
    let expected = if kernel_landlock_abi() > 0 {
        "landlock"
    } else {
        "seccomp"
    };
    assert_eq!(auto.capabilities().backend, expected);
}

/// A manager whose backend (`backend`) is not kernel-enforced refuses a run that requires
/// kernel enforcement, and still runs one that does not; returns that run's outcome.
fn refuses_required_enforcement_but_runs(
    manager: &sandbox_core::Manager,
    backend: &str,
) -> RunOutcome {
    let strict = PolicySpec {
        require_kernel_enforcement: true,
        ..PolicySpec::default()
    };
    let request = RunRequest::new(vec!["true".into()], manager.policy(&strict).unwrap()).unwrap();
    let err = rt()
        .block_on(manager.run(request, RunOptions::default()))
        .unwrap_err();
    assert!(
        matches!(err, RunError::KernelEnforcementUnavailable { backend: b } if b == backend),
        "{err}"
    );
    let request = RunRequest::new(
        vec!["echo".into(), backend.into()],
        manager.policy(&PolicySpec::default()).unwrap(),
    )
    .unwrap();
    let out = rt()
        .block_on(manager.run(request, RunOptions::default()))
        .unwrap();
    assert_eq!(stdout(&out), format!("{backend}\n"));
    assert_eq!(out.enforcement.backend, backend);
    out
}

#[test]
fn soft_backend_reports_honestly_and_refuses_required_enforcement() {
    let manager =
        sandbox_linux::manager(&LinuxConfig::default(), config(Technology::Soft, 4)).unwrap();
    assert!(!manager.capabilities().kernel_enforced);
    let out = refuses_required_enforcement_but_runs(&manager, "soft");
    let e = &out.enforcement;
    assert_eq!(e.backend, "soft");
    assert!(!e.filesystem && !e.seccomp && !e.kernel_enforced && e.rlimits && e.no_new_privs);
    assert!(e.missing.contains(&"filesystem".to_owned()));
    assert!(e.missing.contains(&"seccomp".to_owned()));
}

/// Without a cgroup, a run is killed by its process group, which only seccomp locks. The
/// soft backend says that a process calling setsid outlives the run, and one does; the
/// seccomp backend says the group is locked.
#[test]
fn without_a_cgroup_the_report_says_whether_setsid_escapes() {
    let no_cgroup = no_cgroup();
    let seccomp = sandbox_linux::manager(&no_cgroup, config(Technology::Seccomp, 4)).unwrap();
    let text = &seccomp.capabilities().layers["process_containment"];
    assert!(text.contains("locked by seccomp"), "{text}");

    let soft = sandbox_linux::manager(&no_cgroup, config(Technology::Soft, 4)).unwrap();
    let text = &soft.capabilities().layers["process_containment"];
    assert!(text.contains("outlives the run"), "{text}");
    let m = marker("setsid-escape");
    // The main shell exits, and the run kills its process group, only once the background
    // shell has called setsid and said so in a file in the run's directory (or after 10 s,
    // should it never): the process that then outlives the run escaped the kill, not a race.
    let script = format!(
        "setsid sh -c 'touch \"$HOME/detached\"; exec sleep {m}' </dev/null >/dev/null 2>&1 & \
         i=0; while [ ! -e \"$HOME/detached\" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done"
    );
    let request = RunRequest::new(
        vec!["sh".into(), "-c".into(), script],
        policy(PolicySpec::default()),
    )
    .unwrap();
    let outcome = rt()
        .block_on(soft.run(request, RunOptions::default()))
        .unwrap();
    assert_eq!(outcome.exit_code, Some(0), "{}", stderr(&outcome));
    let survivors = processes_with(&m);
    for pid in &survivors {
        // SAFETY: kill has no memory effects; the pid runs this test's own sleep.
        unsafe { libc::kill(i32::try_from(*pid).unwrap(), libc::SIGKILL) };
    }
    assert!(
        !survivors.is_empty(),
        "the report says setsid escapes, but nothing did"
    );
}

/// Without a cgroup the process group is the run: when the main process exits, a child it
/// left in the background and a double-forked grandchild die with it.
#[test]
fn without_a_cgroup_the_process_group_dies_with_the_main_process() {
    let no_cgroup = no_cgroup();
    let manager = sandbox_linux::manager(&no_cgroup, config(Technology::Seccomp, 4)).unwrap();
    let m = marker("group");
    let script = format!(
        "sleep {m} </dev/null >/dev/null 2>&1 & (sleep {m} </dev/null >/dev/null 2>&1 &); \
         sleep 0.2; echo started"
    );
    let request = RunRequest::new(
        vec!["sh".into(), "-c".into(), script],
        policy(PolicySpec::default()),
    )
    .unwrap();
    let outcome = rt()
        .block_on(manager.run(request, RunOptions::default()))
        .unwrap();
    assert_eq!(stdout(&outcome), "started\n", "{}", stderr(&outcome));
    assert_ne!(outcome.enforcement.process_containment, Containment::Cgroup);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !processes_with(&m).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left running: {:?}",
            processes_with(&m)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_ceiling_is_enforced_at_run_time() {
    let data = open_dir();
    let ceiling = Ceiling::new(CeilingConfig {
        read_roots: vec!["/tmp".into()],
        write_roots: vec!["/tmp".into()],
        forbidden: vec![data.path().display().to_string()],
        max: Limits {
            timeout_ms: 60_000,
            ..Limits::MAX
        },
        defaults: Limits::default(),
    })
    .unwrap();
    let manager = auto_manager(ceiling);
    // The parent of the forbidden directory is refused, naming the path.
    let parent = data.path().parent().unwrap().display().to_string();
    let spec = PolicySpec {
        read_paths: vec![parent.clone()],
        ..PolicySpec::default()
    };
    let err = manager.policy(&spec).unwrap_err();
    assert_eq!(
        err,
        PolicyError::Forbidden {
            field: "read_paths",
            path: parent.clone()
        }
    );
    assert!(err.to_string().contains(&parent));
    // A policy built without the ceiling is still checked when it runs.
    let request = RunRequest::new(vec!["true".into()], policy(spec)).unwrap();
    let err = rt()
        .block_on(manager.run(request, RunOptions::default()))
        .unwrap_err();
    assert!(
        matches!(err, RunError::Policy(PolicyError::Forbidden { .. })),
        "{err}"
    );
    // A symlink to the forbidden directory, inside an allowed root, is refused too.
    let link_dir = open_dir();
    let link = link_dir.path().join("innocent");
    std::os::unix::fs::symlink(data.path(), &link).unwrap();
    let spec = PolicySpec {
        write_paths: vec![link.display().to_string()],
        ..PolicySpec::default()
    };
    assert!(matches!(
        manager.policy(&spec),
        Err(PolicyError::Forbidden { .. })
    ));
    // Limits above the ceiling name the field.
    let spec = PolicySpec {
        limits: sandbox_core::LimitsSpec {
            timeout_ms: 120_000,
            ..Default::default()
        },
        ..PolicySpec::default()
    };
    assert!(matches!(
        manager.policy(&spec),
        Err(PolicyError::LimitAboveCeiling {
            field: "timeout_ms",
            ..
        })
    ));
}

/// A granted directory that is swapped for a symlink to a forbidden directory between the
/// manager's check of its name and the backend's open must not put the symlink's target in
/// the ruleset: the backend checks what it opened. A thread keeps exchanging the directory
/// with the symlink while runs granted the directory try to read a secret beneath the
/// target.
#[test]
fn a_grant_swapped_for_a_symlink_after_the_check_grants_nothing_outside() {
    let root = open_dir();
    let secret_dir = open_dir();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "TOPSECRET").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let granted = root.path().join("granted");
    let decoy = root.path().join("decoy");
    std::fs::create_dir(&granted).unwrap();
    std::fs::set_permissions(&granted, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(secret_dir.path(), &decoy).unwrap();
    let root_text = root.path().display().to_string();
    let ceiling = Ceiling::new(CeilingConfig {
        read_roots: vec![root_text.clone()],
        write_roots: vec![root_text],
        forbidden: vec![secret_dir.path().display().to_string()],
        max: Limits::MAX,
        defaults: Limits::default(),
    })
    .unwrap();
    let manager = auto_manager(ceiling);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = Arc::clone(&stop);
        let from = std::ffi::CString::new(granted.as_os_str().as_bytes()).unwrap();
        let to = std::ffi::CString::new(decoy.as_os_str().as_bytes()).unwrap();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
                let status = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        from.as_ptr(),
                        libc::AT_FDCWD,
                        to.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(status, 0, "{}", std::io::Error::last_os_error());
                swaps += 1;
            }
            swaps
        })
    };
    let spec = PolicySpec {
        write_paths: vec![granted.display().to_string()],
        ..PolicySpec::default()
    };
    let secret_text = secret.display().to_string();
    let (mut ran, mut refused) = (0, 0);
    rt().block_on(async {
        for _ in 0..200 {
            let request = RunRequest::new(
                vec!["cat".into(), secret_text.clone()],
                policy(spec.clone()),
            )
            .unwrap();
            match manager.run(request, RunOptions::default()).await {
                Ok(outcome) => {
                    ran += 1;
                    if fs_enforced(&outcome) {
                        assert!(
                            !stdout(&outcome).contains("TOPSECRET"),
                            "a swapped grant let the run read {secret_text}"
                        );
                        assert_ne!(outcome.exit_code, Some(0), "{}", stderr(&outcome));
                    }
                }
                Err(RunError::Policy(PolicyError::Forbidden { field, path })) => {
                    assert_eq!(
                        (field, path.as_str()),
                        ("write_paths", spec.write_paths[0].as_str())
                    );
                    refused += 1;
                }
                // The name can be mid-exchange when it is opened.
                Err(RunError::PathUnavailable { .. }) => refused += 1,
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 200, "the swapper made only {swaps} exchanges");
    assert!(
        refused > 0,
        "the race was never hit: ran {ran}, refused {refused}"
    );

    // With the directory back under its name and left alone, the same grant works.
    if std::fs::symlink_metadata(&granted).unwrap().is_symlink() {
        std::fs::rename(&granted, root.path().join("link")).unwrap();
        std::fs::rename(&decoy, &granted).unwrap();
    }
    let written = granted.join("written");
    let request = RunRequest::new(
        vec!["touch".into(), written.display().to_string()],
        policy(spec),
    )
    .unwrap();
    let outcome = rt()
        .block_on(manager.run(request, RunOptions::default()))
        .unwrap();
    assert_eq!(outcome.exit_code, Some(0), "{}", stderr(&outcome));
    assert!(written.exists());
}

#[test]
fn concurrency_beyond_the_bound_is_refused_at_once() {
    let manager =
        sandbox_linux::manager(&LinuxConfig::default(), config(Technology::Auto, 1)).unwrap();
    let manager = Arc::new(manager);
    rt().block_on(async {
        let sleeper = RunRequest::new(
            vec!["sleep".into(), "0.5".into()],
            manager.policy(&PolicySpec::default()).unwrap(),
        )
        .unwrap();
        let first = manager.run(sleeper.clone(), RunOptions::default());
        let second = manager.run(sleeper.clone(), RunOptions::default()).await;
        assert!(matches!(second, Err(RunError::Busy { limit: 1 })));
        assert_eq!(first.await.unwrap().exit_code, Some(0));
        // The permit is released when a run ends.
        assert!(manager.run(sleeper, RunOptions::default()).await.is_ok());
    });
}

#[test]
fn output_is_streamed_as_it_comes() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let request = RunRequest::new(
        vec![
            "sh".into(),
            "-c".into(),
            "echo one; sleep 3; echo two >&2".into(),
        ],
        // A timeout far beyond the program's 3 s, for a slow machine.
        policy(PolicySpec {
            limits: sandbox_core::LimitsSpec {
                timeout_ms: 60_000,
                ..Default::default()
            },
            ..PolicySpec::default()
        }),
    )
    .unwrap();
    let sandbox = strongest();
    rt().block_on(async {
        let run = tokio::spawn(sandbox.run(
            request,
            RunOptions { output: Some(tx) },
            &crate::unrestricted(),
        ));
        let first = rx.recv().await.expect("a first chunk");
        // The program sleeps 3 s between its two lines, so a chunk handed over before the
        // run has ended, and before the second line, was streamed, however long the run took
        // to start.
        assert!(!run.is_finished(), "the first chunk came only at the end");
        assert!(
            rx.try_recv().is_err(),
            "the first chunk came with the second"
        );
        assert_eq!(first.data, b"one\n");
        assert_eq!(first.stream, sandbox_core::OutputStream::Stdout);
        let second = rx.recv().await.unwrap();
        assert_eq!(second.data, b"two\n");
        assert_eq!(second.stream, sandbox_core::OutputStream::Stderr);
        let out = run.await.unwrap().unwrap();
        assert_eq!(out.stdout.bytes, b"one\n");
    });
}

#[test]
fn the_profile_prints_the_rules() {
    let spec = PolicySpec::from_toml(
        r#"
read_paths = ["/srv/data"]
write_paths = ["/srv/out"]
system_paths = true
[network]
mode = "tcp"
connect_ports = [443]
[limits]
timeout_ms = 5000
"#,
    )
    .unwrap();
    let text = sandbox_linux::render_linux_profile(&policy(spec));
    for needle in [
        "/srv/data",
        "/srv/out",
        "/usr",
        "ptrace",
        "io_uring_setup",
        "TIOCSTI",
        "443",
        "clone3",
        "5000",
        "pidfd_getfd",
        "process_madvise",
        "kcmp",
        "sendto & MSG_FASTOPEN",
        "sendmsg & MSG_FASTOPEN",
        "sendmmsg & MSG_FASTOPEN",
        "listen               EPERM",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    assert!(!text.contains("not enforced"), "{text}");

    // With a bind port allowed, listen stays, and the profile says what that leaves open.
    let spec = PolicySpec::from_toml("[network]\nmode = \"tcp\"\nbind_ports = [8080]\n").unwrap();
    let text = sandbox_linux::render_linux_profile(&policy(spec));
    assert!(!text.contains("listen               EPERM"), "{text}");
    assert!(
        text.contains("not enforced: listen() on an unbound socket"),
        "{text}"
    );
}

#[test]
fn the_network_layer_says_what_it_does_not_stop() {
    let caps = strongest().capabilities();
    let network = &caps.layers["network"];
    if kernel_landlock_abi() >= 4 {
        assert!(network.contains("TCP Fast Open sends refused"), "{network}");
        assert!(
            network.contains("not enforced: with bind ports allowed, listen on an unbound socket"),
            "{network}"
        );
    } else {
        assert!(network.contains("TCP ports not restricted"), "{network}");
    }
}

/// Set in the child that [`a_host_without_landlock_falls_back_honestly`] starts.
const NO_LANDLOCK_CHILD: &str = "SANDBOX_TEST_NO_LANDLOCK_CHILD";

/// What a host without Landlock must get: naming Landlock is refused, `auto` falls back to
/// seccomp and says so in every report, and a run that requires kernel enforcement is
/// refused. The host is made to lack Landlock for real: this test re-runs itself in a child
/// whose seccomp filter answers the three Landlock syscalls with ENOSYS, which is what a
/// kernel without Landlock answers.
#[test]
fn a_host_without_landlock_falls_back_honestly() {
    if std::env::var_os(NO_LANDLOCK_CHILD).is_none() {
        run_without_landlock("manager::a_host_without_landlock_falls_back_honestly");
        return;
    }
    assert_eq!(kernel_landlock_abi(), 0, "the child still sees Landlock");
    let named = sandbox_linux::manager(&LinuxConfig::default(), config(Technology::Landlock, 4));
    assert!(
        matches!(named, Err(ManagerError::Unavailable { .. })),
        "{named:?}"
    );

    let manager =
        sandbox_linux::manager(&LinuxConfig::default(), config(Technology::Auto, 4)).unwrap();
    let caps = manager.capabilities();
    assert_eq!(caps.backend, "seccomp");
    assert_eq!(caps.landlock_abi, 0);
    assert!(!caps.kernel_enforced);

    // The fallback still runs commands, under seccomp, and its report names what is missing.
    let out = refuses_required_enforcement_but_runs(&manager, "seccomp");
    let e = &out.enforcement;
    assert_eq!(e.backend, "seccomp");
    assert_eq!(e.landlock_abi, 0);
    assert!(!e.filesystem && e.seccomp && !e.kernel_enforced);
    assert!(
        e.missing.contains(&"filesystem".to_owned()),
        "{:?}",
        e.missing
    );
    assert!(
        !e.missing.contains(&"seccomp".to_owned()),
        "{:?}",
        e.missing
    );
}

/// Runs the test named `test` in a child of this test binary in which every Landlock syscall
/// fails with ENOSYS, and fails unless it passed there.
fn run_without_landlock(test: &str) {
    use std::collections::BTreeMap;
    use std::os::unix::process::CommandExt;

    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};

    #[cfg(target_arch = "x86_64")]
    const ARCH: TargetArch = TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    const ARCH: TargetArch = TargetArch::aarch64;

    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = [
        libc::SYS_landlock_create_ruleset,
        libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
    ]
    .into_iter()
    .map(|n| (n, Vec::new()))
    .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .unwrap();
    let program: seccompiler::BpfProgram = filter.try_into().unwrap();
    // Leaked so the closure can point at it from the child without owning it.
    let program: &'static [seccompiler::sock_filter] = Box::leak(program.into_boxed_slice());
    let len = u16::try_from(program.len()).unwrap();
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(NO_LANDLOCK_CHILD, "1");
    // SAFETY: between fork and exec the closure makes two raw system calls on memory prepared
    // before the fork (the leaked program lives for the rest of the process).
    unsafe {
        command.pre_exec(move || {
            let fprog = libc::sock_fprog {
                len,
                filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0u32,
                    &raw const fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}
