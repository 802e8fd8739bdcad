//! `check_path` against a real directory tree with symbolic links.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use guard::{Category, PathError, check_path};

struct Tree {
    _dir: tempfile::TempDir,
    /// The temporary directory with its own symbolic links resolved.
    base: PathBuf,
}

impl Tree {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let base = fs::canonicalize(dir.path()).expect("canonical temporary directory");
        let allowed = base.join("allowed");
        fs::create_dir_all(allowed.join("sub")).unwrap();
        fs::create_dir_all(base.join("outside/a/b")).unwrap();
        fs::create_dir_all(base.join("allowedx")).unwrap();
        fs::write(allowed.join("file.txt"), "x").unwrap();
        fs::write(allowed.join(".env"), "TOKEN=x").unwrap();
        symlink(base.join("outside"), allowed.join("link_out")).unwrap();
        symlink("sub", allowed.join("link_in")).unwrap();
        symlink("link_in", allowed.join("link_chain")).unwrap();
        symlink(base.join("outside/a/b"), allowed.join("deep")).unwrap();
        symlink("/etc", allowed.join("abs_etc")).unwrap();
        symlink("/", allowed.join("abs_root")).unwrap();
        symlink("../outside", allowed.join("rel_up")).unwrap();
        symlink("sub/../../outside", allowed.join("dotdot_chain")).unwrap();
        symlink(".env", allowed.join("notes.txt")).unwrap();
        symlink("loop2", allowed.join("loop1")).unwrap();
        symlink("loop1", allowed.join("loop2")).unwrap();
        symlink(&allowed, base.join("rootlink")).unwrap();
        Self { _dir: dir, base }
    }

    fn path(&self, rel: &str) -> String {
        if rel.starts_with('/') {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.base.display())
        }
    }
}

/// (path relative to the tree, allowed, sensitive). Most refused cases are escape attempts.
const CASES: &[(&str, bool, bool)] = &[
    // Benign.
    ("allowed", true, false),
    ("allowed/file.txt", true, false),
    ("allowed/sub/", true, false),
    ("allowed/sub/new/file.rs", true, false),
    ("allowed/./sub/../file.txt", true, false),
    ("allowed//file.txt", true, false),
    ("allowed/link_in/x", true, false),
    ("allowed/link_in/../file.txt", true, false),
    ("allowed/link_chain/x", true, false),
    ("allowed/sub/../../allowed/file.txt", true, false),
    ("allowed/id_ed25519.pub", true, false),
    // Sensitive names inside the roots.
    ("allowed/.env", true, true),
    ("allowed/.ENV.local", true, true),
    ("allowed/sub/.ssh/id_rsa", true, true),
    ("allowed/CREDENTIALS.json", true, true),
    ("allowed/server.key", true, true),
    ("allowed/.aws/config", true, true),
    ("allowed/.netrc", true, true),
    ("allowed/secrets.yaml", true, true),
    ("allowed/.gnupg/private-keys-v1.d/x", true, true),
    ("allowed/notes.txt", true, true),
    // Escapes.
    ("outside/x", false, false),
    ("allowed/..", false, false),
    ("allowed/../outside/x", false, false),
    ("allowedx/file", false, false),
    ("/", false, false),
    ("/etc/shadow", false, true),
    ("allowed/link_out", false, false),
    ("allowed/link_out/x", false, false),
    ("allowed/deep/../../x", false, false),
    ("allowed/deep/../x", false, false),
    ("allowed/link_in/../../outside", false, false),
    ("allowed/abs_etc/passwd", false, false),
    ("allowed/abs_root/../etc/passwd", false, false),
    ("allowed/rel_up/data", false, false),
    ("allowed/dotdot_chain/x", false, false),
    ("allowed/missing/../../outside", false, false),
    ("allowed/missing/../link_out/x", false, false),
    ("allowed/sub/../link_out/../outside/a", false, false),
    ("allowed/abs_etc/../root/.ssh/id_rsa", false, true),
];

#[test]
fn path_table() {
    let tree = Tree::new();
    let roots = [tree.base.join("allowed")];
    let mut failures = Vec::new();
    for (rel, allowed, sensitive) in CASES {
        let path = tree.path(rel);
        let verdict = match check_path(&path, &roots) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{rel:?}: error {e}"));
                continue;
            }
        };
        if verdict.allowed != *allowed || verdict.sensitive != *sensitive {
            failures.push(format!(
                "{rel:?}: expected allowed={allowed} sensitive={sensitive}, got {verdict:?}"
            ));
        }
        let display = verdict.resolved.to_string_lossy().into_owned();
        for f in &verdict.findings {
            assert!(f.start <= f.end && f.end <= display.len(), "{rel:?}: {f:?}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn dotdot_after_a_symlink_uses_the_link_target() {
    let tree = Tree::new();
    let roots = [tree.base.join("allowed")];
    // Lexically this is `allowed/x`; the kernel resolves it to `outside/a/x`.
    let verdict = check_path(tree.path("allowed/deep/../x"), &roots).unwrap();
    assert_eq!(verdict.resolved, tree.base.join("outside/a/x"));
    assert_eq!(verdict.findings[0].category, Category::SymlinkEscape);
    let verdict = check_path(tree.path("allowed/deep/../../x"), &roots).unwrap();
    assert_eq!(verdict.resolved, tree.base.join("outside/x"));
    let verdict = check_path(tree.path("outside/x"), &roots).unwrap();
    assert_eq!(verdict.findings[0].category, Category::OutsideRoots);
}

#[test]
fn roots_are_resolved_too() {
    let tree = Tree::new();
    let verdict = check_path(tree.path("allowed/file.txt"), &[tree.base.join("rootlink")]).unwrap();
    assert!(verdict.allowed);
    assert_eq!(
        verdict.root.as_deref(),
        Some(tree.base.join("allowed").as_path())
    );
    let verdict = check_path(
        tree.path("rootlink/link_out/x"),
        &[tree.base.join("rootlink")],
    )
    .unwrap();
    assert!(!verdict.allowed);
}

#[test]
fn sensitive_findings_point_into_the_resolved_path() {
    let tree = Tree::new();
    let verdict = check_path(tree.path("allowed/notes.txt"), &[tree.base.join("allowed")]).unwrap();
    let display = verdict.resolved.to_string_lossy().into_owned();
    let finding = &verdict.findings[0];
    assert_eq!(finding.category.as_str(), "sensitive_path");
    assert_eq!(&display[finding.start..finding.end], ".env");
}

#[test]
fn invalid_inputs_are_errors() {
    let tree = Tree::new();
    let roots = [tree.base.join("allowed")];
    assert!(matches!(check_path("", &roots), Err(PathError::Empty)));
    assert!(matches!(
        check_path("relative/x", &roots),
        Err(PathError::Relative(_))
    ));
    assert!(matches!(
        check_path("/tmp/a\0b", &roots),
        Err(PathError::Nul)
    ));
    assert!(matches!(
        check_path("/tmp", &[Path::new("rel")]),
        Err(PathError::RelativeRoot(_))
    ));
    assert!(matches!(
        check_path(tree.path("allowed/loop1/x"), &roots),
        Err(PathError::TooManySymlinks(_))
    ));
    assert_eq!(
        PathError::Relative("a".into()).to_string(),
        "path \"a\" is not absolute"
    );
}

#[test]
fn no_roots_allows_nothing() {
    let verdict = check_path("/tmp", &[] as &[&Path]).unwrap();
    assert!(!verdict.allowed);
}
