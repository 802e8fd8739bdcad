//! `check_path`: resolve a path like the kernel would and check it against allowed roots.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::finding::{Category, Finding};

/// Linux gives up after 40 symbolic links (`MAXSYMLINKS`); following more than that can only be a
/// loop or an attack.
const MAX_SYMLINKS: usize = 40;

/// The result of [`check_path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathVerdict {
    /// True when the resolved path lies under one of the allowed roots. Sensitivity does not
    /// change this flag: a workspace may legitimately hold a `.env`; callers decide.
    pub allowed: bool,
    /// The absolute path after resolving symbolic links of the existing prefix and normalizing
    /// the non-existent tail lexically.
    pub resolved: PathBuf,
    /// The resolved root that contains `resolved`, if any.
    pub root: Option<PathBuf>,
    /// True when some component of the resolved path commonly holds secrets.
    pub sensitive: bool,
    /// Why the path is refused or sensitive; offsets are into `resolved.to_string_lossy()`.
    pub findings: Vec<Finding>,
}

/// Why a path could not be checked at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is the empty string.
    #[error("path is empty")]
    Empty,
    /// The path contains a NUL byte, which no system call accepts.
    #[error("path contains a nul byte")]
    Nul,
    /// The path is relative; there is no working directory to resolve it against.
    #[error("path {0:?} is not absolute")]
    Relative(PathBuf),
    /// An allowed root is relative.
    #[error("allowed root {0:?} is not absolute")]
    RelativeRoot(PathBuf),
    /// Resolving the path followed more than 40 symbolic links.
    #[error("too many levels of symbolic links resolving {0:?}")]
    TooManySymlinks(PathBuf),
}

/// Resolves `path` and checks it against `roots`.
///
/// Symbolic links are resolved component by component, so `..` after a link applies to the link's
/// target (as in the kernel): `/allowed/link/../../etc/passwd` with `link -> /a/b/c` resolves to
/// `/a/etc/passwd`, not lexically to `/etc/passwd`. Components that do not exist
/// are appended lexically. Roots are resolved the same way, so a root that is itself a link (such
/// as `/tmp` on macOS) still matches. With no roots, nothing is allowed.
///
/// This touches the file system (`lstat` and `readlink`), so async callers should run it in
/// `spawn_blocking`. The answer describes the file system at the time of the call; a path that
/// is created or replaced afterwards can change it, which is why the sandbox, not this check,
/// is the enforcement.
pub fn check_path<P: AsRef<Path>>(
    path: impl AsRef<Path>,
    roots: &[P],
) -> Result<PathVerdict, PathError> {
    let path = path.as_ref();
    validate(path)?;
    if !path.is_absolute() {
        return Err(PathError::Relative(path.to_path_buf()));
    }
    let mut resolved_roots = Vec::with_capacity(roots.len());
    for root in roots {
        let root = root.as_ref();
        validate(root)?;
        if !root.is_absolute() {
            return Err(PathError::RelativeRoot(root.to_path_buf()));
        }
        resolved_roots.push((lexical(root), resolve(root)?));
    }

    let resolved = resolve(path)?;
    let display = resolved.to_string_lossy().into_owned();
    let root = resolved_roots
        .iter()
        .find(|(_, r)| resolved.starts_with(r))
        .map(|(_, r)| r.clone());
    let allowed = root.is_some();

    let mut findings = Vec::new();
    if !allowed {
        let lexical_path = lexical(path);
        let lexically_inside = resolved_roots
            .iter()
            .any(|(l, _)| lexical_path.starts_with(l));
        if lexically_inside {
            findings.push(Finding::new(
                Category::SymlinkEscape,
                "a symbolic link leads outside the allowed roots",
                0,
                display.len(),
            ));
        } else {
            findings.push(Finding::new(
                Category::OutsideRoots,
                "path is outside the allowed roots",
                0,
                display.len(),
            ));
        }
    }
    findings.extend(sensitive_findings(&resolved));
    let sensitive = findings
        .iter()
        .any(|f| f.category == Category::SensitivePath);
    Ok(PathVerdict {
        allowed,
        resolved,
        root,
        sensitive,
        findings,
    })
}

fn validate(path: &Path) -> Result<(), PathError> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.is_empty() {
        return Err(PathError::Empty);
    }
    if bytes.contains(&0) {
        return Err(PathError::Nul);
    }
    Ok(())
}

enum Step {
    Parent,
    Name(OsString),
}

fn steps(path: &Path) -> impl Iterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::ParentDir => Some(Step::Parent),
        Component::Normal(name) => Some(Step::Name(name.to_os_string())),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Normalizes `.` and `..` without looking at the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for step in steps(path) {
        match step {
            Step::Parent => {
                out.pop();
            }
            Step::Name(name) => out.push(name),
        }
    }
    out
}

/// Resolves symbolic links one component at a time, like the kernel's path walk, and appends
/// components that do not exist (or cannot be inspected) lexically.
fn resolve(path: &Path) -> Result<PathBuf, PathError> {
    let mut out = PathBuf::from("/");
    let mut queue: VecDeque<Step> = steps(path).collect();
    let mut links = 0;
    while let Some(step) = queue.pop_front() {
        let name = match step {
            Step::Parent => {
                // `out` never contains a symbolic link, so popping it is what the kernel does.
                out.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let next = out.join(&name);
        let is_link = fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            out = next;
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(PathError::TooManySymlinks(path.to_path_buf()));
        }
        match fs::read_link(&next) {
            Ok(target) => {
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                for (i, step) in steps(&target).enumerate() {
                    queue.insert(i, step);
                }
            }
            // The link vanished between lstat and readlink; treat it as a plain name.
            Err(_) => out = next,
        }
    }
    Ok(out)
}

/// Full paths that hold secrets whatever their names look like.
const SENSITIVE_FILES: &[(&str, &str)] = &[
    ("/etc/shadow", "system password hashes"),
    ("/etc/gshadow", "system group password hashes"),
    ("/etc/sudoers", "sudo configuration"),
    ("/etc/ssl/private", "tls private keys"),
];

/// File and directory names (compared case-insensitively) that commonly hold secrets.
const SENSITIVE_NAMES: &[(&str, &str)] = &[
    (".ssh", "ssh keys directory"),
    (".aws", "aws credentials directory"),
    (".gnupg", "gnupg keyring directory"),
    (".netrc", "netrc credentials file"),
    ("_netrc", "netrc credentials file"),
    (".pgpass", "postgres password file"),
    (".git-credentials", "git credentials file"),
    (".npmrc", "npm credentials file"),
    (".pypirc", "pypi credentials file"),
    (".kube", "kubernetes credentials directory"),
    (".docker", "docker credentials directory"),
    (".azure", "azure credentials directory"),
    (".vault-token", "vault token file"),
    (".htpasswd", "http password file"),
    (".bash_history", "shell history file"),
    (".zsh_history", "shell history file"),
];

/// File name stems (before the first dot) that commonly hold secrets.
const SENSITIVE_STEMS: &[&str] = &["credentials", "credential", "secrets", "secret"];

const PRIVATE_KEY_PREFIXES: &[&str] = &[
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    "private_key",
    "privkey",
    "client_secret",
];

const PRIVATE_KEY_EXTENSIONS: &[&str] = &[
    ".pem",
    ".key",
    ".p12",
    ".pfx",
    ".jks",
    ".keystore",
    ".ppk",
    ".kdbx",
];

pub(crate) fn sensitive_name(name: &str) -> Option<&'static str> {
    let lower = name.to_lowercase();
    if let Some((_, why)) = SENSITIVE_NAMES.iter().find(|(n, _)| *n == lower) {
        return Some(why);
    }
    if lower == ".env" || lower.starts_with(".env.") {
        // Templates are committed to repositories precisely because they hold no secrets.
        let template = [".example", ".sample", ".template", ".dist"]
            .iter()
            .any(|t| lower.ends_with(t));
        return (!template).then_some("environment file");
    }
    let stem = lower.split('.').next().unwrap_or_default();
    if SENSITIVE_STEMS.contains(&stem) {
        return Some("credentials or secrets file");
    }
    if lower.ends_with(".pub") {
        return None;
    }
    if PRIVATE_KEY_PREFIXES.iter().any(|p| lower.starts_with(p))
        || PRIVATE_KEY_EXTENSIONS.iter().any(|e| lower.ends_with(e))
    {
        return Some("private key file");
    }
    None
}

fn sensitive_findings(resolved: &Path) -> Vec<Finding> {
    let display = resolved.to_string_lossy();
    let mut findings = Vec::new();
    for (file, why) in SENSITIVE_FILES {
        if resolved.starts_with(file) {
            findings.push(Finding::new(Category::SensitivePath, *why, 0, file.len()));
        }
    }
    // `/proc/self` is itself a link to `/proc/<pid>`, so match the environment file by shape.
    if resolved.starts_with("/proc") && resolved.file_name().is_some_and(|n| n == "environ") {
        findings.push(Finding::new(
            Category::SensitivePath,
            "process environment",
            0,
            display.len(),
        ));
    }
    // Walk the components of the lossy display string so that offsets index into it.
    let mut offset = 0;
    for part in display.split('/') {
        if let Some(why) = sensitive_name(part) {
            findings.push(Finding::new(
                Category::SensitivePath,
                why,
                offset,
                offset + part.len(),
            ));
        }
        offset += part.len() + 1;
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normalization_stops_at_root() {
        assert_eq!(lexical(Path::new("/a/./b/../../../c")), PathBuf::from("/c"));
    }

    #[test]
    fn sensitive_names_are_case_insensitive() {
        assert!(sensitive_name(".SSH").is_some());
        assert!(sensitive_name("Credentials.JSON").is_some());
        assert!(sensitive_name("id_rsa.pub").is_none());
        assert!(sensitive_name(".env.production").is_some());
        assert!(sensitive_name(".env.example").is_none());
        assert!(sensitive_name("secretary.txt").is_none());
        assert!(sensitive_name("main.rs").is_none());
    }
}
