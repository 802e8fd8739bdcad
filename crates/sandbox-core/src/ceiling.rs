//! The operator ceiling: what any client may ask for, whatever its role.
//!
//! The server builds one [`Ceiling`] from its configuration. A client's [`PolicySpec`] is
//! admitted with [`Ceiling::admit`], and the [`Manager`](crate::Manager) checks every policy
//! again with [`Ceiling::check`] before a run, so a policy built elsewhere cannot bypass it.
//!
//! Forbidden paths (the server's data directory: keys, databases) are never grantable: not
//! the path itself, not anything beneath it, and not any parent of it. Paths are compared both
//! as written and after resolving symbolic links, so a symlink inside an allowed root that
//! points at a forbidden directory is refused too.

use std::path::{Path, PathBuf};

use crate::policy::{Limits, Policy, PolicyError, PolicySpec, normalized_path};

/// Operator settings for a [`Ceiling`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeilingConfig {
    /// Roots under which clients may request read access (write roots are readable too).
    pub read_roots: Vec<String>,
    /// Roots under which clients may request write access.
    pub write_roots: Vec<String>,
    /// Paths never grantable, not even through a parent path.
    pub forbidden: Vec<String>,
    /// Largest limits a client may request.
    pub max: Limits,
    /// Limits used for fields a client leaves at zero.
    pub defaults: Limits,
}

/// A validated operator ceiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceiling {
    read_roots: Vec<PathBuf>,
    write_roots: Vec<PathBuf>,
    forbidden: Vec<PathBuf>,
    max: Limits,
    defaults: Limits,
}

impl Ceiling {
    /// Validates the operator's settings: absolute normalized paths, limits within bounds and
    /// defaults within the maximum.
    pub fn new(config: CeilingConfig) -> Result<Self, PolicyError> {
        let paths = |field: &'static str, raw: &[String]| -> Result<Vec<PathBuf>, PolicyError> {
            raw.iter().map(|p| normalized_path(field, p)).collect()
        };
        config.max.validate()?;
        config.defaults.validate()?;
        config.defaults.check_within(&config.max)?;
        let mut forbidden = paths("forbidden", &config.forbidden)?;
        // The canonical form of a forbidden path is forbidden too, so that a forbidden path
        // given through a symlink (for example /var/run -> /run) is still recognized.
        let canonical: Vec<PathBuf> = forbidden
            .iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect();
        forbidden.extend(canonical);
        forbidden.sort();
        forbidden.dedup();
        Ok(Ceiling {
            read_roots: paths("read_roots", &config.read_roots)?,
            write_roots: paths("write_roots", &config.write_roots)?,
            forbidden,
            max: config.max,
            defaults: config.defaults,
        })
    }

    /// A ceiling that allows every path and the absolute maximum limits, with the built-in
    /// defaults. Meant for tests and for printing profiles, not for a server.
    pub fn unrestricted() -> Self {
        Ceiling {
            read_roots: vec![PathBuf::from("/")],
            write_roots: vec![PathBuf::from("/")],
            forbidden: Vec::new(),
            max: Limits::MAX,
            defaults: Limits::default(),
        }
    }

    /// The forbidden paths, including their canonical forms.
    pub fn forbidden(&self) -> &[PathBuf] {
        &self.forbidden
    }

    /// The largest limits a client may request.
    pub fn max(&self) -> &Limits {
        &self.max
    }

    /// The limits used for fields a client leaves at zero.
    pub fn defaults(&self) -> &Limits {
        &self.defaults
    }

    /// Validates a client's policy with this ceiling's defaults and checks it against the
    /// ceiling.
    pub fn admit(&self, spec: &PolicySpec) -> Result<Policy, PolicyError> {
        let policy = Policy::with_defaults(spec, &self.defaults)?;
        self.check(&policy)?;
        Ok(policy)
    }

    /// Checks a validated policy against the ceiling, naming the first offending path or
    /// limit.
    pub fn check(&self, policy: &Policy) -> Result<(), PolicyError> {
        policy.limits().check_within(&self.max)?;
        for path in policy.read_paths() {
            self.check_grant("read_paths", path, false)?;
        }
        for path in policy.write_paths() {
            self.check_grant("write_paths", path, true)?;
        }
        Ok(())
    }

    /// Checks one path the child would be granted (`field` names it in the error).
    ///
    /// This checks names, and a name can change before a backend opens it (a directory
    /// swapped for a symlink). A backend whose rules attach to what it opened, rather than
    /// to a name resolved at each access, must therefore also check the opened object's own
    /// path with [`Ceiling::check_opened`].
    pub fn check_grant(
        &self,
        field: &'static str,
        path: &Path,
        write: bool,
    ) -> Result<(), PolicyError> {
        let canonical = std::fs::canonicalize(path).ok();
        for form in std::iter::once(path).chain(canonical.as_deref()) {
            self.check_form(field, path, form, write)?;
        }
        Ok(())
    }

    /// Checks what a backend actually opened for a grant of `requested`: `opened` is the
    /// kernel's own path of the opened object (on Linux, the target of
    /// `/proc/self/fd/<fd>`), so no symlink or rename between [`Ceiling::check_grant`] and
    /// the open can widen the grant. Errors name `requested`, the path the client gave.
    pub fn check_opened(
        &self,
        field: &'static str,
        requested: &Path,
        opened: &Path,
        write: bool,
    ) -> Result<(), PolicyError> {
        self.check_form(field, requested, opened, write)
    }

    /// Checks one spelling `form` of the granted path `shown` against the forbidden paths and
    /// the roots.
    fn check_form(
        &self,
        field: &'static str,
        shown: &Path,
        form: &Path,
        write: bool,
    ) -> Result<(), PolicyError> {
        if self.overlaps_forbidden(form) {
            return Err(PolicyError::Forbidden {
                field,
                path: shown.display().to_string(),
            });
        }
        let roots = if write {
            &self.write_roots[..]
        } else {
            &self.read_roots[..]
        };
        let inside = roots
            .iter()
            .chain(if write {
                [].iter()
            } else {
                self.write_roots.iter()
            })
            .any(|root| form.starts_with(root));
        if !inside {
            return Err(PolicyError::OutsideCeiling {
                field,
                path: shown.display().to_string(),
            });
        }
        Ok(())
    }

    /// Checks a path of the platform's system read set against the forbidden paths.
    pub fn check_system_path(&self, path: &Path) -> Result<(), PolicyError> {
        if self.overlaps_forbidden(path) {
            return Err(PolicyError::Forbidden {
                field: "system_paths",
                path: path.display().to_string(),
            });
        }
        Ok(())
    }

    fn overlaps_forbidden(&self, path: &Path) -> bool {
        self.forbidden
            .iter()
            .any(|f| path.starts_with(f) || f.starts_with(path))
    }
}
