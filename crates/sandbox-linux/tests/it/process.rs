//! Attacks on other processes and on the run's own containment.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox_core::{Containment, LimitsSpec, PolicySpec, RunOptions, RunRequest};

use crate::*;

struct Victim(std::process::Child);

impl Victim {
    fn start() -> Self {
        Victim(
            Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep"),
        )
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn signals_ptrace_and_memory_reads_of_outside_processes_fail() {
    let mut victim = Victim::start();
    let pid = victim.0.id();
    let code = format!(
        "import signal\nattempt(lambda: os.kill({pid}, signal.SIGKILL))\n\
         sys_call({ptrace}, 16, {pid}, 0, 0)\n\
         buf = ctypes.create_string_buffer(8)\n\
         sys_call({vm}, {pid}, 0, 1, 0, 1, 0)",
        ptrace = libc::SYS_ptrace,
        vm = libc::SYS_process_vm_readv,
    );
    let out = attack(policy(PolicySpec::default()), &code);
    assert_eq!(
        stdout(&out),
        "DENIED EPERM\nDENIED EPERM\nDENIED EPERM\n",
        "{}",
        stderr(&out)
    );
    assert!(victim.alive(), "the victim was killed");
}

#[test]
fn setsid_and_double_forked_children_die_with_the_run() {
    let tag = marker("escape");
    let code = format!(
        "import os, sys\n\
         if os.fork() == 0:\n\
         \x20   try:\n\
         \x20       os.setsid()\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   if os.fork() == 0:\n\
         \x20       os.execvp('sleep', ['sleep', '{tag}'])\n\
         \x20   os._exit(0)\n\
         os.wait()\n\
         print('spawned', flush=True)"
    );
    let started = Instant::now();
    let out = python(policy(PolicySpec::default()), &code);
    assert_eq!(stdout(&out), "spawned\n", "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        processes_with(&tag),
        Vec::<u32>::new(),
        "a process outlived its run"
    );
}

#[test]
fn a_grandchild_holding_the_pipe_does_not_stall_the_response() {
    let tag = marker("holder");
    let spec = PolicySpec {
        limits: LimitsSpec {
            timeout_ms: 20_000,
            ..LimitsSpec::default()
        },
        ..PolicySpec::default()
    };
    let started = Instant::now();
    let out = run(
        policy(spec),
        &["sh", "-c", &format!("sleep {tag} & echo started")],
    );
    assert_eq!(stdout(&out), "started\n");
    assert!(!out.timed_out);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(processes_with(&tag).is_empty());
}

#[test]
fn a_fork_bomb_is_contained_and_cleaned_up() {
    let tag = marker("bomb");
    let spec = PolicySpec {
        limits: LimitsSpec {
            timeout_ms: 3_000,
            max_processes: 32,
            ..LimitsSpec::default()
        },
        ..PolicySpec::default()
    };
    let code = format!(
        "import os, time\ntag = '{tag}'\nn = 0\n\
         for _ in range(2000):\n\
         \x20   try:\n\
         \x20       if os.fork() == 0:\n\
         \x20           time.sleep(30)\n\
         \x20           os._exit(0)\n\
         \x20       n += 1\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         print(n, flush=True)"
    );
    let started = Instant::now();
    // One backend for both runs, so that the second reuses the bomb's cgroup.
    let sandbox = strongest();
    let request =
        |argv: Vec<String>, spec: PolicySpec| RunRequest::new(argv, policy(spec)).expect("request");
    let out = run_on(
        &sandbox,
        request(vec!["python3".into(), "-c".into(), code], spec.clone()),
    );
    let forked: u32 = stdout(&out)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert!(forked < 32, "forked {forked} processes");
    assert!(started.elapsed() < Duration::from_secs(10));
    if is_root() {
        assert_eq!(out.enforcement.process_containment, Containment::Cgroup);
        assert!(
            out.violations
                .iter()
                .any(|v| v.starts_with("process_limit")),
            "{:?}",
            out.violations
        );
    } else {
        assert_eq!(out.enforcement.process_containment, Containment::Rlimit);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(processes_with(&tag).is_empty());

    // The refused forks belong to the bomb's run only: a quiet run after it, in the cgroup
    // it left behind, reports none.
    let quiet = run_on(&sandbox, request(vec!["true".into()], spec));
    assert_eq!(quiet.exit_code, Some(0), "{}", stderr(&quiet));
    assert!(quiet.violations.is_empty(), "{:?}", quiet.violations);
}

#[test]
fn dropping_the_run_future_kills_the_run() {
    let tag = marker("cancel");
    let request = RunRequest::new(
        vec![
            "sh".into(),
            "-c".into(),
            format!("sleep {tag} & sleep {tag}"),
        ],
        policy(PolicySpec::default()),
    )
    .unwrap();
    let sandbox = strongest();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let run = sandbox.run(request, RunOptions::default(), &unrestricted());
        let result = tokio::time::timeout(Duration::from_millis(300), run).await;
        assert!(result.is_err(), "the run should still be going");
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(processes_with(&tag).is_empty());
}

/// A run dropped while its child is still being cloned and set up (the first poll hands the
/// child to a spawner thread and waits) must not leave that child running unsupervised. The
/// run names a `cwd` that outlives it, so the child's setup succeeds and only the spawner's
/// clean-up of a child nobody waits for can stop it.
#[test]
fn runs_cancelled_while_their_child_is_set_up_leave_nothing_behind() {
    let tag = marker("setup-cancel");
    let sandbox = strongest();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cwd = tempfile::tempdir().unwrap();
    // The run's uid (65534 when the tests run as root) must be able to enter it.
    std::fs::set_permissions(cwd.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let cwd = cwd.path().display().to_string();
    rt.block_on(async {
        for _ in 0..50 {
            let spec = PolicySpec {
                write_paths: vec![cwd.clone()],
                ..PolicySpec::default()
            };
            let request = RunRequest::new(vec!["sleep".into(), tag.clone()], policy(spec))
                .unwrap()
                .with_cwd(&cwd)
                .unwrap();
            let mut run = sandbox.run(request, RunOptions::default(), &unrestricted());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                run.as_mut().poll(&mut cx).is_pending(),
                "a sleep cannot finish on the first poll"
            );
            drop(run);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_with(&tag).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "cancelled runs left {:?} behind",
            processes_with(&tag)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
