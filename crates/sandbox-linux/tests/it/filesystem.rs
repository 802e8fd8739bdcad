//! File system attacks: each checks the effect from outside.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use sandbox_core::PolicySpec;

use crate::*;

fn secret_dir() -> tempfile::TempDir {
    let dir = open_dir();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o666)).unwrap();
    dir
}

#[test]
fn reading_outside_the_allow_list_is_denied() {
    let dir = secret_dir();
    let secret = dir.path().join("secret.txt");
    let out = attack(
        policy(PolicySpec::default()),
        &format!(
            "attempt(lambda: print(open({:?}).read()))",
            secret.display().to_string()
        ),
    );
    if fs_enforced(&out) {
        assert_eq!(stdout(&out), "DENIED EACCES\n", "{}", stderr(&out));
    }
    // The server's own files too (here: this test binary's directory).
    let exe = std::env::current_exe().unwrap();
    let out = attack(
        policy(PolicySpec::default()),
        &format!(
            "attempt(lambda: open({:?}, 'rb').read(1))",
            exe.display().to_string()
        ),
    );
    if fs_enforced(&out) {
        assert_eq!(stdout(&out), "DENIED EACCES\n", "{}", stderr(&out));
    }
}

#[test]
fn writing_outside_is_denied_and_no_file_appears() {
    let dir = open_dir();
    let target = dir.path().join("planted");
    let out = attack(
        policy(PolicySpec::default()),
        &format!(
            "attempt(lambda: open({:?}, 'w').write('x'))",
            target.display().to_string()
        ),
    );
    if fs_enforced(&out) {
        assert_eq!(stdout(&out), "DENIED EACCES\n", "{}", stderr(&out));
        assert!(!target.exists());
    }
}

#[test]
fn a_read_only_grant_cannot_be_written_renamed_or_deleted() {
    let dir = secret_dir();
    let secret = dir.path().join("secret.txt");
    let spec = PolicySpec {
        read_paths: vec![dir.path().display().to_string()],
        ..PolicySpec::default()
    };
    let code = format!(
        "s = {s:?}\nattempt(lambda: open(s).read())\nattempt(lambda: open(s, 'a').write('x'))\n\
         attempt(lambda: open(s + '.new', 'w'))\n\
         attempt(lambda: os.rename(s, os.environ['HOME'] + '/stolen'))\n\
         attempt(lambda: os.unlink(s))",
        s = secret.display().to_string()
    );
    let out = attack(policy(spec), &code);
    if fs_enforced(&out) {
        assert_eq!(
            stdout(&out),
            "ALLOWED\nDENIED EACCES\nDENIED EACCES\nDENIED EACCES\nDENIED EACCES\n",
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret");
    assert!(!dir.path().join("secret.txt.new").exists());
}

#[test]
fn symlinks_and_hardlinks_do_not_reach_outside() {
    let dir = secret_dir();
    let secret = dir.path().join("secret.txt");
    // A symlink the attacker finds inside a granted directory, pointing outside.
    let granted = open_dir();
    std::os::unix::fs::symlink(&secret, granted.path().join("link")).unwrap();
    let spec = PolicySpec {
        read_paths: vec![granted.path().display().to_string()],
        ..PolicySpec::default()
    };
    let code = format!(
        "s = {s:?}\nattempt(lambda: open({l:?}).read())\n\
         attempt(lambda: os.symlink(s, 'mine') or open('mine').read())\n\
         attempt(lambda: os.link(s, 'hard'))",
        s = secret.display().to_string(),
        l = granted.path().join("link").display().to_string()
    );
    let out = attack(policy(spec), &code);
    if fs_enforced(&out) {
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "DENIED EACCES", "{text} {}", stderr(&out));
        assert_eq!(lines[1], "DENIED EACCES", "{text}");
        assert!(
            lines[2] == "DENIED EXDEV" || lines[2] == "DENIED EPERM",
            "{text}"
        );
    }
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
}

#[test]
fn mknod_of_a_device_is_denied() {
    let dir = open_dir();
    let outside = dir.path().join("null2");
    let code = format!(
        "import stat\nattempt(lambda: os.mknod('dev', stat.S_IFCHR | 0o666, os.makedev(1, 3)))\n\
         attempt(lambda: os.mknod({o:?}, stat.S_IFIFO | 0o666))",
        o = outside.display().to_string()
    );
    let out = attack(policy(PolicySpec::default()), &code);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "DENIED EPERM", "{text} {}", stderr(&out));
    if fs_enforced(&out) {
        assert_eq!(lines[1], "DENIED EACCES", "{text}");
    }
    assert!(!outside.exists());
}

#[test]
fn the_servers_environment_is_unreachable_through_proc() {
    // Even with /proc granted, the server's environ stays closed: another uid, and Landlock
    // forbids ptrace-mode access to processes outside the sandbox.
    let spec = PolicySpec {
        read_paths: vec!["/proc".into()],
        ..PolicySpec::default()
    };
    let out = attack(
        policy(spec),
        &format!(
            "attempt(lambda: print(open('/proc/{}/environ','rb').read()))\n\
             attempt(lambda: print(open('/proc/self/environ','rb').read()[:0]))",
            std::process::id()
        ),
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "DENIED EACCES", "{text} {}", stderr(&out));
    assert!(
        lines.contains(&"ALLOWED"),
        "own environ stays readable: {text}"
    );
}

#[test]
fn a_run_cannot_reach_the_work_directory_of_another_live_run() {
    // Both runs have the same uid, so only the second run's ruleset stands between it and the
    // first run's files: a ruleset reused across runs, or one made ahead that still held an
    // earlier grant, would let it through.
    let shared = open_dir();
    let home_file = shared.path().join("home");
    // The first run stays alive, and with it its work directory, until the attack is over and
    // the test creates `release`: a directory already removed would answer ENOENT, not the
    // sandbox's EACCES. It gives up after 20 s, so a failing test cannot leave it waiting.
    let release = shared.path().join("release");
    let spec = PolicySpec {
        write_paths: vec![shared.path().display().to_string()],
        ..PolicySpec::default()
    };
    let first = {
        let policy = policy(spec.clone());
        let home_file = home_file.display().to_string();
        let release = release.display().to_string();
        std::thread::spawn(move || {
            python(
                policy,
                &format!(
                    "import os, time\nopen('secret.txt', 'w').write('mine')\n\
                     open({home_file:?} + '.tmp', 'w').write(os.environ['HOME'])\n\
                     os.rename({home_file:?} + '.tmp', {home_file:?})\n\
                     deadline = time.monotonic() + 20\n\
                     while time.monotonic() < deadline:\n\
                     \x20   if os.path.exists({release:?}):\n\
                     \x20       print('released', flush=True)\n\
                     \x20       break\n\
                     \x20   time.sleep(0.01)"
                ),
            )
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !home_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let other_home = std::fs::read_to_string(&home_file).unwrap();
    let out = attack(
        policy(spec),
        &format!(
            "p = {other_home:?}\nattempt(lambda: open(p + '/secret.txt').read())\n\
             attempt(lambda: os.listdir(p))\nattempt(lambda: open(p + '/planted', 'w'))\n\
             attempt(lambda: open(os.environ['HOME'] + '/mine.txt', 'w').write('x'))"
        ),
    );
    let planted = std::path::Path::new(&other_home).join("planted").exists();
    std::fs::write(&release, "").unwrap();
    let first = first.join().unwrap();
    assert_eq!(first.exit_code, Some(0), "{}", stderr(&first));
    assert_eq!(
        stdout(&first),
        "released\n",
        "the first run ended before the attack was over"
    );
    if fs_enforced(&out) {
        assert_eq!(
            stdout(&out),
            "DENIED EACCES\nDENIED EACCES\nDENIED EACCES\nALLOWED\n",
            "{}",
            stderr(&out)
        );
        assert!(!planted);
    }
}
