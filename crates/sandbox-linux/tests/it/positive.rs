//! Positive controls: what must keep working inside the sandbox.

use std::os::unix::fs::PermissionsExt;

use sandbox_core::{LandlockStatus, PolicySpec, RunError, RunRequest};

use crate::*;

#[test]
fn echo_runs_with_full_enforcement() {
    let out = run(policy(PolicySpec::default()), &["echo", "hello"]);
    assert_eq!(stdout(&out), "hello\n", "stderr: {}", stderr(&out));
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.signal, None);
    let e = &out.enforcement;
    assert!(e.seccomp && e.no_new_privs && e.rlimits);
    let abi = kernel_landlock_abi();
    assert_eq!(e.landlock_abi, abi);
    if abi >= 6 {
        assert_eq!(e.landlock_status, LandlockStatus::FullyEnforced);
        assert!(e.filesystem && e.network_ports && e.ipc_scoping && e.kernel_enforced);
    }
    if is_root() {
        assert_eq!(e.uid, 65534);
        assert!(e.capabilities_dropped);
    }
}

#[test]
fn python_runs_and_sees_only_the_allow_listed_environment() {
    // SAFETY: set before any thread of this test reads the environment; the variable only
    // checks that the server's environment does not leak.
    unsafe { std::env::set_var("CORDON_SERVER_SECRET", "s3cret") };
    let out = python(
        policy(PolicySpec::default()),
        "import os; print(sorted(os.environ))",
    );
    assert_eq!(out.exit_code, Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "['HOME', 'LANG', 'LC_CTYPE', 'PATH', 'TERM', 'TMPDIR']".replace(", 'LC_CTYPE'", "")
    );
}

#[test]
fn the_program_runs_as_batch_work_at_the_normal_priority() {
    let out = python(
        policy(PolicySpec::default()),
        "import os; print(os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))",
    );
    assert_eq!(
        stdout(&out).trim(),
        format!("{} 0", libc::SCHED_BATCH),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn reads_a_granted_file_and_writes_in_the_work_dir() {
    let dir = open_dir();
    let file = dir.path().join("data.txt");
    std::fs::write(&file, "granted").unwrap();
    let spec = PolicySpec {
        read_paths: vec![dir.path().display().to_string()],
        ..PolicySpec::default()
    };
    let out = python(
        policy(spec),
        &format!(
            "import os; print(open({:?}).read()); open('w.txt','w').write('x'); \
             print(os.path.exists(os.environ['HOME'] + '/w.txt'))",
            file.display().to_string()
        ),
    );
    assert_eq!(stdout(&out), "granted\nTrue\n", "stderr: {}", stderr(&out));
}

#[test]
fn stdin_and_exit_codes_pass_through() {
    let request = RunRequest::new(
        vec![
            "python3".into(),
            "-c".into(),
            "import sys; d=sys.stdin.read(); print(d.upper()); sys.exit(7)".into(),
        ],
        policy(PolicySpec::default()),
    )
    .unwrap()
    .with_stdin(b"piped input".to_vec());
    let out = run_on(&strongest(), request);
    assert_eq!(stdout(&out), "PIPED INPUT\n");
    assert_eq!(out.exit_code, Some(7));
}

#[test]
fn without_input_stdin_is_at_end_of_file_and_not_writable() {
    // `cat` would wait for the timeout if the child's standard input stayed open.
    let started = std::time::Instant::now();
    let out = run(policy(PolicySpec::default()), &["cat"]);
    assert_eq!(out.exit_code, Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let out = python(
        policy(PolicySpec::default()),
        "import os, sys\n\
         print(repr(sys.stdin.read()))\n\
         try:\n    os.write(0, b'x'); print('written')\n\
         except OSError as e: print('refused', e.errno)",
    );
    assert_eq!(
        stdout(&out),
        format!("''\nrefused {}\n", libc::EBADF),
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn a_granted_cwd_is_used_and_kept() {
    let dir = open_dir();
    if is_root() {
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    }
    let path = dir.path().display().to_string();
    let spec = PolicySpec {
        write_paths: vec![path.clone()],
        ..PolicySpec::default()
    };
    let request = RunRequest::new(
        vec!["sh".into(), "-c".into(), "pwd; echo kept > out.txt".into()],
        policy(spec),
    )
    .unwrap()
    .with_cwd(&path)
    .unwrap();
    let out = run_on(&strongest(), request);
    assert_eq!(stdout(&out).trim(), path, "stderr: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "kept\n"
    );
}

#[test]
fn usage_is_the_childs() {
    let out = python(
        policy(PolicySpec::default()),
        "x = 0\nfor i in range(3_000_000): x += i",
    );
    assert_eq!(out.exit_code, Some(0));
    assert!(out.usage.user_cpu_us > 10_000, "{:?}", out.usage);
    assert!(out.usage.max_rss_bytes > 1_000_000, "{:?}", out.usage);
    assert!(
        out.usage.wall_us >= out.usage.user_cpu_us / 2,
        "{:?}",
        out.usage
    );
}

#[test]
fn a_program_the_kernel_refuses_to_execute_is_reported_with_its_errno() {
    let dir = open_dir();
    let program = dir.path().join("not-a-program");
    std::fs::write(&program, [0u8, 1, 2, 3]).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = PolicySpec {
        read_paths: vec![dir.path().display().to_string()],
        ..PolicySpec::default()
    };
    let request = RunRequest::new(vec![program.display().to_string()], policy(spec)).unwrap();
    match try_run_on(&strongest(), request) {
        Err(RunError::Exec {
            program: failed,
            source,
        }) => {
            assert_eq!(failed, program);
            assert_eq!(source.raw_os_error(), Some(libc::ENOEXEC), "{source}");
        }
        other => panic!("expected an exec failure, got {other:?}"),
    }
    // The spawner thread that cloned the failed child still serves runs.
    let out = run(policy(PolicySpec::default()), &["echo", "after"]);
    assert_eq!(stdout(&out), "after\n");
}

#[test]
fn a_setup_step_that_fails_in_the_child_is_named_with_its_errno() {
    // A working directory the run's uid may not enter: the child's chdir fails, after the
    // server itself opened the directory without trouble for the Landlock grant.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.path().display().to_string();
    let spec = PolicySpec {
        write_paths: vec![path.clone()],
        ..PolicySpec::default()
    };
    let request = RunRequest::new(vec!["true".into()], policy(spec))
        .unwrap()
        .with_cwd(&path)
        .unwrap();
    match try_run_on(&strongest(), request) {
        Err(RunError::Setup { stage, source }) => {
            assert_eq!(stage, "chdir");
            assert_eq!(source.raw_os_error(), Some(libc::EACCES), "{source}");
        }
        other => panic!("expected a setup failure, got {other:?}"),
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}
