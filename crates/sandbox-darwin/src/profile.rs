//! Policy as data: the one reviewed place for the macOS sandbox's fixed rules, and the
//! generator of the Seatbelt profile (SBPL) that `sandbox-exec` applies.
//!
//! Everything here is portable: it is compiled and tested on every host, and printed by
//! `cordon profile --platform macos [--policy FILE]`.
//!
//! # No path is ever spliced into the profile text
//!
//! A path of the policy (or of the run: its work directory, the ancestors of granted paths)
//! reaches the profile only as a `sandbox-exec -D NAME=VALUE` parameter that the profile names
//! with `(param "NAME")`. The profile text therefore depends only on the *shape* of the policy
//! (how many paths, which ports, which switches), never on the bytes of a path: a path with a
//! quote, a backslash, a parenthesis or a newline cannot change what the profile says. The
//! only strings written into the text are the constants of this module (checked by a test to
//! contain nothing SBPL would interpret) and parameter names this module generates.
//!
//! # What the profile allows
//!
//! `(deny default)`, then: `process-exec` only of files the run may read, `process-fork`,
//! signals and process information only within the same sandbox, the sysctls in
//! [`SYSCTLS`], the mach services in [`MACH_SERVICES`] (user and group lookup, notifications,
//! logging), `/dev/null` read and write, `/dev/urandom` and `/dev/random` read, metadata (not
//! content) of `/` and of every ancestor of a granted path (so `realpath` and `getcwd` work),
//! the system read set ([`SYSTEM_READ_SUBPATHS`], when the policy's `system_paths` is on), the
//! run's work directory, the policy's read and write paths, and the network per policy.
//! Seatbelt matches resolved paths (`/tmp` is `/private/tmp` on macOS), so the runner passes
//! canonicalized paths; [`render_profile`] shows the policy's paths as written.

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use sandbox_core::{NetworkPolicy, Policy};

/// The SBPL header: version and the default decision.
pub const HEADER: &[&str] = &["(version 1)", "(deny default)"];

/// Process rules that hold whatever the policy: a run may fork, may signal and inspect only
/// processes of its own sandbox, and may execute only what it may read (the `process-exec`
/// operation is added to every read rule below rather than allowed here).
pub const PROCESS_RULES: &[&str] = &[
    "(allow process-fork)",
    "(allow signal (target same-sandbox))",
    "(allow process-info* (target same-sandbox))",
];

/// Read-only sysctls a program needs to start and size itself (CPU count, page size, OS
/// version); every other sysctl is denied.
pub const SYSCTLS: &[&str] = &[
    "hw.activecpu",
    "hw.logicalcpu",
    "hw.logicalcpu_max",
    "hw.machine",
    "hw.memsize",
    "hw.ncpu",
    "hw.pagesize",
    "hw.pagesize_compat",
    "hw.physicalcpu",
    "hw.physicalcpu_max",
    "kern.argmax",
    "kern.hostname",
    "kern.maxfilesperproc",
    "kern.osproductversion",
    "kern.osrelease",
    "kern.ostype",
    "kern.osversion",
    "kern.version",
    "sysctl.proc_cputype",
];

/// Sysctl name prefixes allowed for reading (CPU feature flags queried by dyld and runtimes).
pub const SYSCTL_PREFIXES: &[&str] = &["hw.optional.", "hw.perflevel"];

/// Mach services the C library looks up by name: user and group lookup (`getpwuid`),
/// `notify(3)` (used by the time zone code) and logging. Every other service is denied.
pub const MACH_SERVICES: &[&str] = &[
    "com.apple.system.opendirectoryd.libinfo",
    "com.apple.system.notification_center",
    "com.apple.system.logger",
    "com.apple.logd",
];

/// POSIX shared memory `notify(3)` reads.
pub const SHM_READ: &[&str] = &["apple.shm.notification_center"];

/// Devices readable and writable whatever the policy (`2>/dev/null` works).
pub const DEVICES_READ_WRITE: &[&str] = &["/dev/null"];

/// Devices readable whatever the policy.
pub const DEVICES_READ: &[&str] = &["/dev/urandom", "/dev/random"];

/// Directories (and everything beneath) readable and executable when a policy has
/// `system_paths` on: the dynamic linker and its shared cache, system libraries and
/// frameworks, the standard tools, time zones and the few configuration files the C library
/// reads. Nothing of users' data or of the server's. Seatbelt matches resolved paths, so the
/// `/etc` files are listed under `/private/etc`.
pub const SYSTEM_READ_SUBPATHS: &[&str] = &[
    "/usr/lib",
    "/usr/libexec",
    "/usr/share",
    "/usr/bin",
    "/usr/sbin",
    "/bin",
    "/sbin",
    "/System/Library",
    "/System/Cryptexes",
    "/System/Volumes/Preboot/Cryptexes",
    "/Library/Apple/System/Library",
    "/private/var/db/dyld",
    "/private/var/db/timezone",
    "/usr/local/lib",
    "/usr/local/bin",
    "/opt/homebrew/lib",
    "/opt/homebrew/bin",
];

/// Single files readable when `system_paths` is on.
pub const SYSTEM_READ_LITERALS: &[&str] = &[
    "/private/etc/localtime",
    "/private/etc/hosts",
    "/private/etc/passwd",
    "/private/etc/group",
    "/private/etc/protocols",
    "/private/etc/services",
    "/private/etc/ssl/cert.pem",
];

/// The value shown for the work directory parameter when no run is involved
/// (`cordon profile`).
pub const WORK_DIR_PLACEHOLDER: &str = "<per-run work directory>";

/// A generated profile: SBPL text and the `-D` parameters it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The SBPL text, identical for every policy of the same shape.
    pub text: String,
    /// `(name, value)` pairs passed as `sandbox-exec -D name=value`, in order.
    pub params: Vec<(String, String)>,
}

impl fmt::Display for Profile {
    /// The text, then the parameters as SBPL comments with their values quoted and escaped
    /// (a value may contain a newline), as `cordon profile` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        writeln!(f, "\n;; sandbox-exec -D parameters:")?;
        for (name, value) in &self.params {
            writeln!(f, ";;   {name}={value:?}")?;
        }
        Ok(())
    }
}

/// Renders the profile of `policy` as written, with [`WORK_DIR_PLACEHOLDER`] for the run's
/// work directory (for `cordon profile`; the runner resolves paths first).
pub fn render_profile(policy: &Policy) -> Profile {
    build(policy, None, policy.read_paths(), policy.write_paths())
}

/// Renders the profile for one run: `work_dir`, `read` and `write` are the resolved paths
/// the runner grants.
pub fn render_run_profile(
    policy: &Policy,
    work_dir: &Path,
    read: &[PathBuf],
    write: &[PathBuf],
) -> Profile {
    build(policy, Some(work_dir), read, write)
}

/// Every strict ancestor of `path`, `/` included.
fn ancestors(path: &Path) -> impl Iterator<Item = &Path> {
    path.ancestors().skip(1)
}

/// Writes a rule `(allow OPS\n  (FILTER "value")...)` with constant values, or nothing when
/// there are no values.
fn literal_rule(out: &mut String, ops: &str, filter: &str, values: &[&str]) {
    if values.is_empty() {
        return;
    }
    let _ = write!(out, "(allow {ops}");
    for v in values {
        let _ = write!(out, "\n  ({filter} \"{v}\")");
    }
    out.push_str(")\n");
}

/// Writes a rule whose filters name parameters, or nothing when there are none.
fn param_rule(out: &mut String, ops: &str, filter: &str, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let _ = write!(out, "(allow {ops}");
    for name in names {
        let _ = write!(out, "\n  ({filter} (param \"{name}\"))");
    }
    out.push_str(")\n");
}

fn build(policy: &Policy, work_dir: Option<&Path>, read: &[PathBuf], write: &[PathBuf]) -> Profile {
    // Writing to a String cannot fail, so the results of write! are ignored in this module.
    let mut out = String::new();
    let mut params: Vec<(String, String)> = Vec::new();
    let mut add = |prefix: &str, index: usize, value: &Path| -> String {
        let name = format!("{prefix}_{index}");
        // Paths of a validated policy and canonicalized paths are UTF-8 on macOS; a
        // non-UTF-8 byte is shown lossily, which can only narrow the grant.
        params.push((name.clone(), value.to_string_lossy().into_owned()));
        name
    };

    let work_param = "WORK_DIR".to_owned();
    let work_value = work_dir.map_or_else(
        || WORK_DIR_PLACEHOLDER.to_owned(),
        |p| p.to_string_lossy().into_owned(),
    );
    let read_names: Vec<String> = read
        .iter()
        .enumerate()
        .map(|(i, p)| add("READ", i, p))
        .collect();
    let write_names: Vec<String> = write
        .iter()
        .enumerate()
        .map(|(i, p)| add("WRITE", i, p))
        .collect();
    // Ancestors of granted paths: their metadata only. Constant system ancestors go into
    // the text; those of the policy's and the run's paths are parameters.
    let granted_ancestors: BTreeSet<&Path> = read
        .iter()
        .chain(write)
        .map(PathBuf::as_path)
        .chain(work_dir)
        .flat_map(ancestors)
        .filter(|a| *a != Path::new("/"))
        .collect();
    let meta_names: Vec<String> = granted_ancestors
        .iter()
        .enumerate()
        .map(|(i, p)| add("META", i, p))
        .collect();
    params.insert(0, (work_param.clone(), work_value));

    for line in HEADER {
        let _ = writeln!(out, "{line}");
    }
    out.push_str("\n;; Processes: fork; signals and process information within this sandbox.\n");
    for line in PROCESS_RULES {
        let _ = writeln!(out, "{line}");
    }
    out.push_str("\n;; System services a program needs to start.\n");
    literal_rule(&mut out, "sysctl-read", "sysctl-name", SYSCTLS);
    literal_rule(
        &mut out,
        "sysctl-read",
        "sysctl-name-prefix",
        SYSCTL_PREFIXES,
    );
    literal_rule(&mut out, "mach-lookup", "global-name", MACH_SERVICES);
    literal_rule(
        &mut out,
        "ipc-posix-shm-read-data",
        "ipc-posix-name",
        SHM_READ,
    );
    literal_rule(
        &mut out,
        "file-read* file-write-data file-ioctl",
        "literal",
        DEVICES_READ_WRITE,
    );
    literal_rule(&mut out, "file-read*", "literal", DEVICES_READ);

    out.push_str(
        "\n;; Metadata (not content) of the root and of the ancestors of granted paths.\n",
    );
    let mut system_ancestors: BTreeSet<&str> = BTreeSet::from(["/"]);
    if policy.system_paths() {
        for p in SYSTEM_READ_SUBPATHS.iter().chain(SYSTEM_READ_LITERALS) {
            system_ancestors.extend(ancestors(Path::new(p)).filter_map(Path::to_str));
        }
    }
    let system_ancestors: Vec<&str> = system_ancestors.into_iter().collect();
    literal_rule(&mut out, "file-read-metadata", "literal", &system_ancestors);
    param_rule(&mut out, "file-read-metadata", "literal", &meta_names);

    if policy.system_paths() {
        out.push_str("\n;; System read set (system_paths): read and execute.\n");
        literal_rule(
            &mut out,
            "file-read* process-exec",
            "subpath",
            SYSTEM_READ_SUBPATHS,
        );
        literal_rule(&mut out, "file-read*", "literal", SYSTEM_READ_LITERALS);
    }

    out.push_str("\n;; The run's work directory (HOME, TMPDIR): read, write and execute.\n");
    param_rule(
        &mut out,
        "file-read* file-write* process-exec",
        "subpath",
        std::slice::from_ref(&work_param),
    );
    out.push_str("\n;; read_paths: read and execute.\n");
    param_rule(&mut out, "file-read* process-exec", "subpath", &read_names);
    out.push_str("\n;; write_paths: read, write and execute.\n");
    param_rule(
        &mut out,
        "file-read* file-write* process-exec",
        "subpath",
        &write_names,
    );

    out.push_str("\n;; Network.\n");
    match policy.network() {
        NetworkPolicy::None => {
            out.push_str(";; mode none: every network operation is denied by default.\n");
        }
        NetworkPolicy::Tcp {
            connect_ports,
            bind_ports,
        } => {
            // Seatbelt's address filters accept only `localhost` or `*` as the host; the
            // ports come from a validated policy (u16), never from free text.
            out.push_str(";; mode tcp: outbound to the connect ports on localhost only.\n");
            for port in connect_ports {
                let _ = writeln!(
                    out,
                    "(allow network-outbound (remote tcp \"localhost:{port}\"))"
                );
            }
            out.push_str(";; mode tcp: bind and accept on the bind ports on localhost only.\n");
            for port in bind_ports {
                let _ = writeln!(
                    out,
                    "(allow network-bind network-inbound (local tcp \"localhost:{port}\"))"
                );
            }
        }
    }
    if policy.allow_unix_sockets() {
        out.push_str(";; allow_unix_sockets: unix domain sockets.\n");
        out.push_str("(allow network-outbound (remote unix-socket))\n");
        out.push_str("(allow network-bind network-inbound (local unix-socket))\n");
    }
    Profile { text: out, params }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every constant written into the profile text must be inert inside an SBPL string
    /// literal: no quote, no backslash, no control character.
    #[test]
    fn constants_are_plain() {
        let all = SYSCTLS
            .iter()
            .chain(SYSCTL_PREFIXES)
            .chain(MACH_SERVICES)
            .chain(SHM_READ)
            .chain(DEVICES_READ_WRITE)
            .chain(DEVICES_READ)
            .chain(SYSTEM_READ_SUBPATHS)
            .chain(SYSTEM_READ_LITERALS);
        for s in all {
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\'),
                "{s:?}"
            );
        }
    }

    #[test]
    fn ancestors_are_strict_and_include_the_root() {
        let a: Vec<&Path> = ancestors(Path::new("/a/b/c")).collect();
        assert_eq!(a, [Path::new("/a/b"), Path::new("/a"), Path::new("/")]);
    }
}
