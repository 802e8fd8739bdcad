//! Attacks on other processes and on the run's own containment.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    // The escaped `sleep` holds the output pipes and sleeps for a thousand seconds and more:
    // a run that waited for it would last until its 30 s timeout, well past this bound,
    // which leaves a slow machine room to start python3.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_gone(&tag);
}

#[test]
fn a_grandchild_holding_the_pipe_does_not_stall_the_response() {
    let tag = marker("holder");
    let spec = PolicySpec {
        limits: LimitsSpec {
            timeout_ms: 60_000,
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
    // A response that waited for the pipe's end of file would wait for the 60 s timeout (the
    // `sleep` lasts a thousand seconds and more), far past this bound, which leaves a slow
    // machine room for the run itself.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_gone(&tag);
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
    // The tag in the program's text marks its processes in their command lines.
    let code = format!("tag = '{tag}'\n{}", fork_counter(2000, "30"));
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
    assert_gone(&tag);

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
        let mut run = sandbox.run(request, RunOptions::default(), &unrestricted());
        // The run is driven until both of its `sleep`s are running, however long a slow
        // machine takes to start them, so that dropping it must kill running processes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sleeps_with(&tag).len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the run never started its sleeps"
            );
            let result = tokio::time::timeout(Duration::from_millis(20), &mut run).await;
            assert!(result.is_err(), "the run should still be going");
        }
    });
    assert_gone(&tag);
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

/// A run cancelled at any moment of its spawn leaves no process and no zombie behind: before
/// a spawner thread has taken its child, while the child is set up, and after the spawner
/// has handed the running child over but before the run has collected it. The program forks
/// a child that calls `setsid`, so only the run's cgroup (or, without one, the process group
/// that seccomp then keeps it in) reaches it.
#[test]
fn runs_cancelled_at_any_moment_of_their_spawn_leave_no_process_or_zombie() {
    let tag = marker("spawn-cancel");
    let dir = open_dir();
    // A name of its own for the run's main process, so that its zombie can be told apart.
    let comm = format!("cz{}", std::process::id());
    let program = dir.path().join(&comm);
    std::os::unix::fs::symlink("/usr/bin/python3", &program).unwrap();
    let code = "import os, sys, time\n\
                if os.fork() == 0:\n\
                \x20   try:\n\
                \x20       os.setsid()\n\
                \x20   except OSError:\n\
                \x20       pass\n\
                \x20   time.sleep(30)\n\
                \x20   os._exit(0)\n\
                time.sleep(30)";
    let argv = vec![
        program.display().to_string(),
        "-c".into(),
        code.into(),
        tag.clone(),
    ];
    let spec = PolicySpec {
        read_paths: vec![dir.path().display().to_string()],
        ..PolicySpec::default()
    };
    // From "at once" to "well after the program has forked", so that each stage of the
    // spawn is hit by some of the cancellations.
    let delays_us = [0, 20, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000];
    let sandbox = strongest();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for round in 0..45 {
            let request = RunRequest::new(argv.clone(), policy(spec.clone())).unwrap();
            let mut run = sandbox.run(request, RunOptions::default(), &unrestricted());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(run.as_mut().poll(&mut cx).is_pending());
            // The run is not polled again: whatever the spawner thread does meanwhile, the
            // run never collects the child.
            std::thread::sleep(Duration::from_micros(delays_us[round % delays_us.len()]));
            drop(run);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (alive, zombies) = (processes_with(&tag), zombies_named(&comm));
        if alive.is_empty() && zombies.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cancelled runs left processes {alive:?} and zombies {zombies:?} behind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A kill that cannot list the run's cgroup (here the server is out of descriptors when the
/// run ends) must not take the cgroup for empty: the process group is killed instead, and
/// the cgroup, which may still hold a process that left the group, is never given to
/// another run.
#[test]
fn a_run_cgroup_that_cannot_be_listed_is_never_reused() {
    if !in_helper() {
        rerun(
            "process::a_run_cgroup_that_cannot_be_listed_is_never_reused",
            &[],
            || Ok(()),
        );
        return;
    }
    let tag = marker("unlisted");
    // The run ends when this test creates the `release` directory, once the descriptor
    // limit is down, or after 20 s should the test never get there.
    let gate = open_dir();
    let release = gate.path().join("release");
    let spec = PolicySpec {
        read_paths: vec!["/proc".into(), gate.path().display().to_string()],
        ..PolicySpec::default()
    };
    let code = format!(
        "import os, time\n\
         print(open('/proc/self/cgroup').read(), flush=True)\n\
         if os.fork() == 0:\n\
         \x20   try:\n\
         \x20       os.setsid()\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   os.execvp('sleep', ['sleep', '{tag}'])\n\
         deadline = time.monotonic() + 20\n\
         while time.monotonic() < deadline and not os.path.isdir({release:?}):\n\
         \x20   time.sleep(0.01)",
        release = release.display().to_string(),
    );
    // Every descriptor below LOW is taken before the run starts, so the run's own are all
    // above it; once the run is under way, the soft limit drops to LOW, which makes every new
    // descriptor fail with EMFILE, also after the run has closed some of its own.
    const LOW: libc::c_int = 64;
    let null = std::fs::File::open("/dev/null").unwrap();
    let mut taken = Vec::new();
    loop {
        // SAFETY: F_DUPFD_CLOEXEC duplicates a valid descriptor.
        let fd = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor that nothing else owns.
        taken.push(unsafe { OwnedFd::from_raw_fd(fd) });
        if fd == LOW - 1 {
            break;
        }
    }
    let sandbox = strongest();
    let run = {
        let sandbox = Arc::clone(&sandbox);
        let request = RunRequest::new(
            vec!["python3".into(), "-c".into(), code],
            policy(spec.clone()),
        )
        .unwrap();
        std::thread::spawn(move || run_on(&sandbox, request))
    };
    // The limit drops only once the run's `sleep` has left the process group: from then on
    // the run waits for `release`, so its end, and the kill, come while the limit is down.
    wait_for("the run's sleep starts", Duration::from_secs(10), || {
        !sleeps_with(&tag).is_empty()
    });
    let set_soft_limit = |soft: libc::c_int| {
        // SAFETY: rlimit is plain data that getrlimit fills.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: limit is a valid rlimit; setrlimit only reads it.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            limit.rlim_cur = soft as libc::rlim_t;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
        limit.rlim_max
    };
    let hard = set_soft_limit(LOW);
    // Making a directory takes no descriptor, which this process has none left of.
    std::fs::create_dir(&release).unwrap();
    let first = run.join().unwrap();
    set_soft_limit(hard as libc::c_int);
    drop(taken);
    assert_eq!(first.exit_code, Some(0), "{}", stderr(&first));
    let survivors = processes_with(&tag);
    for pid in &survivors {
        // SAFETY: kill has no memory effects; the pid runs this test's `sleep`.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    let request =
        RunRequest::new(vec!["cat".into(), "/proc/self/cgroup".into()], policy(spec)).unwrap();
    let second = run_on(&sandbox, request);
    let pids_cgroup = |text: &str| {
        text.lines()
            .find(|l| l.contains(":pids:") || l.starts_with("0::"))
            .unwrap_or_default()
            .to_owned()
    };
    if is_root() {
        assert_ne!(
            pids_cgroup(&stdout(&first)),
            pids_cgroup(&stdout(&second)),
            "a cgroup that could not be emptied was given to the next run"
        );
    }
    // Without a cgroup, seccomp keeps `setsid` from leaving the process group, which the
    // fallback kills; with a v2 cgroup, `cgroup.kill` needs no new descriptor. A v1 cgroup
    // cannot be killed without listing it: there the survivor is only kept out of the pool.
    let v1 = Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists();
    if !(is_root() && v1) {
        assert_eq!(survivors, Vec::<u32>::new(), "a process outlived its run");
    }
}

/// Without root a run has the server's uid, and `RLIMIT_NPROC` counts every task of the uid,
/// the server's own threads included. A server with many threads must still let a run start
/// its `max_processes`, and no more.
#[test]
fn the_servers_threads_do_not_use_up_a_runs_process_limit() {
    if !in_helper() {
        let work = open_dir();
        let tmpdir = work.path().display().to_string();
        let root = is_root();
        // Without root the helper keeps this uid, whose other tasks (other tests' runs, and
        // their zombies where init is slow to reap) share its process limit.
        let env: &[(&str, &str)] = if root {
            &[("TMPDIR", &tmpdir), ("RUN_AS_OWN_UID", "1")]
        } else {
            &[("TMPDIR", &tmpdir)]
        };
        // As root, the helper becomes an unprivileged server of a uid of its own.
        let id = libc::c_long::from(50_000 + std::process::id() % 10_000);
        rerun(
            "process::the_servers_threads_do_not_use_up_a_runs_process_limit",
            env,
            move || {
                if !root {
                    return Ok(());
                }
                become_id(id)
            },
        );
        return;
    }
    assert!(!is_root());
    // A busy server: a hundred threads of this uid, parked until the run is over.
    let (release, parked) = std::sync::mpsc::channel::<()>();
    let parked = Arc::new(std::sync::Mutex::new(parked));
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let parked = Arc::clone(&parked);
            std::thread::spawn(move || {
                let _ = parked.lock().map(|receiver| receiver.recv());
            })
        })
        .collect();
    let spec = PolicySpec {
        limits: LimitsSpec {
            timeout_ms: 10_000,
            max_processes: 16,
            ..LimitsSpec::default()
        },
        ..PolicySpec::default()
    };
    // The children sleep far longer than the forks can take on a slow machine, so none has
    // exited and given its slot back before the last fork; the run kills them all when the
    // counting process exits.
    let code = fork_counter(40, "30");
    let out = python(policy(spec), &code);
    drop(release);
    for thread in threads {
        thread.join().unwrap();
    }
    let forked: u32 = stdout(&out)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}", stderr(&out)));
    // The python process is one of the 16; concurrent runs of the same uid could take a few.
    assert!(
        forked < 16,
        "forked {forked}, above the limit of 16 processes"
    );
    if std::env::var_os("RUN_AS_OWN_UID").is_some() {
        // The helper's uid has no task but the helper's: the run gets all of its 16.
        assert!(forked >= 14, "forked {forked} of 15 allowed");
    }
}
