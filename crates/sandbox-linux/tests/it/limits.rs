//! Resource limits: each bomb is stopped and the run still answers.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use sandbox_core::{LimitsSpec, PolicySpec};

use crate::*;

fn with_limits(limits: LimitsSpec) -> PolicySpec {
    PolicySpec {
        limits,
        ..PolicySpec::default()
    }
}

#[test]
fn a_memory_bomb_fails_to_allocate() {
    let spec = with_limits(LimitsSpec {
        memory_bytes: 256 << 20,
        ..LimitsSpec::default()
    });
    let out = python(
        policy(spec),
        "try:\n    b = bytearray(1 << 30)\n    print('ALLOCATED')\nexcept MemoryError:\n    print('MemoryError')",
    );
    assert_eq!(stdout(&out), "MemoryError\n", "{}", stderr(&out));
}

#[test]
fn a_cpu_burn_is_stopped_by_the_cpu_limit() {
    let spec = with_limits(LimitsSpec {
        cpu_time_ms: 1_000,
        timeout_ms: 20_000,
        ..LimitsSpec::default()
    });
    let started = Instant::now();
    let out = python(policy(spec), "while True: pass");
    assert_eq!(out.signal, Some(libc::SIGXCPU), "{out:?}");
    assert!(!out.timed_out);
    assert!(out.violations.contains(&"cpu_time_limit".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(10));
    // rusage is sampled per tick, so allow for accounting slack.
    assert!(
        out.usage.user_cpu_us + out.usage.sys_cpu_us >= 500_000,
        "{:?}",
        out.usage
    );
}

#[test]
fn sleeping_past_the_timeout_is_killed() {
    let spec = with_limits(LimitsSpec {
        timeout_ms: 500,
        ..LimitsSpec::default()
    });
    let started = Instant::now();
    let out = run(policy(spec), &["sleep", "60"]);
    assert!(out.timed_out);
    assert_eq!(out.signal, Some(libc::SIGKILL));
    assert_eq!(out.exit_code, None);
    assert!(out.violations.contains(&"timeout".to_owned()));
    // A run not killed at its timeout would sleep for a minute: the bound catches that and
    // still leaves a slow machine room to set the run up and tear it down.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_output_flood_keeps_head_and_tail() {
    let out = python(
        policy(PolicySpec::default()),
        "import sys\nw = sys.stdout.buffer\nw.write(b'BEGIN')\nchunk = b'.' * (1 << 20)\n\
         for _ in range(100): w.write(chunk)\nw.write(b'END')\nw.flush()",
    );
    assert_eq!(out.exit_code, Some(0), "{}", stderr(&out));
    assert!(out.stdout.truncated);
    assert_eq!(out.stdout.total_bytes, 100 * (1 << 20) + 8);
    assert_eq!(out.stdout.bytes.len(), 1 << 20);
    assert!(out.stdout.bytes.starts_with(b"BEGIN."));
    assert!(out.stdout.bytes.ends_with(b".END"));
    assert!(!out.stderr.truncated);
}

#[test]
fn a_large_file_stops_at_the_file_size_limit() {
    let dir = open_dir();
    if is_root() {
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    }
    let target = dir.path().join("big");
    let spec = PolicySpec {
        write_paths: vec![dir.path().display().to_string()],
        limits: LimitsSpec {
            max_file_size_bytes: 1 << 20,
            ..LimitsSpec::default()
        },
        ..PolicySpec::default()
    };
    let code = format!(
        "f = open({t:?}, 'wb', buffering=0)\nchunk = b'x' * (1 << 20)\n\
         attempt(lambda: [f.write(chunk) for _ in range(100)])",
        t = target.display().to_string()
    );
    let out = attack(policy(spec), &code);
    // Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing it.
    assert_eq!(stdout(&out), "DENIED EFBIG\n", "{}", stderr(&out));
    assert!(std::fs::metadata(&target).unwrap().size() <= 1 << 20);
}

#[test]
fn opening_many_files_stops_at_the_limit() {
    let spec = with_limits(LimitsSpec {
        max_open_files: 64,
        ..LimitsSpec::default()
    });
    let out = attack(
        policy(spec),
        "files = []\ntry:\n    for _ in range(10000): files.append(open('/dev/null'))\n\
         except OSError as e:\n    print(len(files), errno.errorcode[e.errno])",
    );
    let text = stdout(&out);
    let (count, err) = text
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("{text} {}", stderr(&out)));
    assert!(count.parse::<u32>().unwrap() < 64);
    assert_eq!(err, "EMFILE");
}
