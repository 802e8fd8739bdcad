//! The sandbox policy: what a run may read, write, reach on the network and consume.
//!
//! [`PolicySpec`] is the raw, unvalidated shape (the TOML policy file and the server's
//! conversion target for the protobuf `Policy`); its keys are the proto field names.
//! [`Policy`] is the validated form: paths are absolute and normalized, ports are in range and
//! limits are within [`Limits::MIN`] and [`Limits::MAX`]. Backends take a `Policy` and never
//! re-check it.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Raw policy as written in a TOML policy file or converted from the protobuf `Policy`.
///
/// Zero limits mean "the default" (the server's, or [`Limits::default`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySpec {
    /// Paths readable (and executable) by the child.
    pub read_paths: Vec<String>,
    /// Paths readable and writable by the child.
    pub write_paths: Vec<String>,
    /// Network access.
    pub network: NetworkSpec,
    /// Resource limits; zero fields take the default.
    pub limits: LimitsSpec,
    /// Grant read access to the platform's default system set; `None` means on.
    pub system_paths: Option<bool>,
    /// Refuse to run unless file system and syscall restrictions are kernel-enforced.
    pub require_kernel_enforcement: bool,
    /// Allow `AF_UNIX` sockets.
    pub allow_unix_sockets: bool,
}

/// Raw network section of a [`PolicySpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSpec {
    /// `none` or `tcp`.
    pub mode: NetworkMode,
    /// TCP ports the child may connect to (mode `tcp`).
    pub connect_ports: Vec<u32>,
    /// TCP ports the child may bind (mode `tcp`).
    pub bind_ports: Vec<u32>,
}

/// Network mode of a [`NetworkSpec`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// No network sockets at all.
    #[default]
    #[serde(alias = "NONE", alias = "MODE_NONE")]
    None,
    /// TCP to and from the listed ports only.
    #[serde(alias = "TCP", alias = "MODE_TCP")]
    Tcp,
}

/// Raw limits of a [`PolicySpec`]; zero means "the default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSpec {
    /// Wall-clock timeout.
    pub timeout_ms: u64,
    /// CPU time (user plus system) of each process.
    pub cpu_time_ms: u64,
    /// Address space of each process.
    pub memory_bytes: u64,
    /// Captured bytes per output stream.
    pub max_output_bytes: u64,
    /// Processes (and threads) of the run.
    pub max_processes: u64,
    /// Largest file the run may write.
    pub max_file_size_bytes: u64,
    /// Open file descriptors per process.
    pub max_open_files: u64,
}

/// Errors reading a TOML policy file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyFileError {
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid policy file: {0}")]
    Parse(#[from] toml::de::Error),
    /// The file parsed but the policy is invalid.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
}

impl PolicySpec {
    /// Parses a TOML policy file (keys are the proto `Policy` field names).
    pub fn from_toml(text: &str) -> Result<Self, PolicyFileError> {
        Ok(toml::from_str(text)?)
    }
}

/// Errors building a [`Policy`] or admitting it under a [`Ceiling`](crate::Ceiling).
///
/// Every variant is the client's fault (the server maps them to `INVALID_ARGUMENT`) and names
/// the offending field, and the path or value in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A path is relative.
    #[error("{field}: path is not absolute: {path}")]
    RelativePath {
        /// The field that holds the path: `read_paths`, `write_paths`, `cwd`, or for a
        /// [`Ceiling`](crate::Ceiling) `read_roots`, `write_roots` or `forbidden`.
        field: &'static str,
        /// The offending path.
        path: String,
    },
    /// A path contains `.` or `..` components, a doubled or trailing slash, or NUL.
    #[error("{field}: path is not normalized: {path}")]
    UnnormalizedPath {
        /// The field that holds the path, as for [`PolicyError::RelativePath`].
        field: &'static str,
        /// The offending path.
        path: String,
    },
    /// A port is zero or above 65535.
    #[error("{field}: port out of range: {port}")]
    PortOutOfRange {
        /// `connect_ports` or `bind_ports`.
        field: &'static str,
        /// The offending value.
        port: u32,
    },
    /// Ports were given with network mode `none`.
    #[error("{field} requires network mode tcp")]
    PortsWithoutTcp {
        /// `connect_ports` or `bind_ports`.
        field: &'static str,
    },
    /// A limit is outside the absolute bounds.
    #[error("limits.{field} out of range: {value} (allowed {min}..={max})")]
    LimitOutOfRange {
        /// The limit's field name, as in the proto.
        field: &'static str,
        /// The requested value.
        value: u64,
        /// The smallest accepted value.
        min: u64,
        /// The largest accepted value.
        max: u64,
    },
    /// A limit exceeds the operator ceiling.
    #[error("limits.{field} exceeds the ceiling: {value} > {max}")]
    LimitAboveCeiling {
        /// The limit's field name, as in the proto.
        field: &'static str,
        /// The requested value.
        value: u64,
        /// The ceiling.
        max: u64,
    },
    /// A path lies outside every root the operator allows for that access.
    #[error("{field}: path outside the allowed roots: {path}")]
    OutsideCeiling {
        /// `read_paths`, `write_paths` or `cwd`.
        field: &'static str,
        /// The offending path.
        path: String,
    },
    /// A path is, contains, or lies inside a path the operator forbids.
    #[error("{field}: path overlaps a forbidden path: {path}")]
    Forbidden {
        /// `read_paths`, `write_paths`, `system_paths` or `cwd`.
        field: &'static str,
        /// The offending path.
        path: String,
    },
}

/// Network policy of a validated [`Policy`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum NetworkPolicy {
    /// No network sockets.
    #[default]
    None,
    /// TCP only, to and from the listed ports.
    Tcp {
        /// Ports the child may connect to.
        connect_ports: BTreeSet<u16>,
        /// Ports the child may bind.
        bind_ports: BTreeSet<u16>,
    },
}

/// Resource limits of a validated [`Policy`]; every field is set and within bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Wall-clock timeout of the run.
    pub timeout_ms: u64,
    /// CPU time of each process (`RLIMIT_CPU`, rounded up to whole seconds).
    pub cpu_time_ms: u64,
    /// Address space of each process (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Captured bytes per output stream; beyond it the head and the tail are kept.
    pub max_output_bytes: u64,
    /// Processes (and threads) of the run.
    pub max_processes: u64,
    /// Largest file the run may write (`RLIMIT_FSIZE`).
    pub max_file_size_bytes: u64,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    pub max_open_files: u64,
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

impl Limits {
    /// Smallest accepted value of every limit.
    pub const MIN: Limits = Limits {
        timeout_ms: 1,
        cpu_time_ms: 1,
        memory_bytes: 16 * MIB,
        max_output_bytes: 1,
        max_processes: 1,
        max_file_size_bytes: 1,
        max_open_files: 8,
    };

    /// Largest accepted value of every limit, whatever the ceiling.
    pub const MAX: Limits = Limits {
        timeout_ms: 24 * 3600 * 1000,
        cpu_time_ms: 24 * 3600 * 1000,
        memory_bytes: 1024 * GIB,
        max_output_bytes: GIB,
        max_processes: 65_536,
        max_file_size_bytes: 1024 * GIB,
        max_open_files: 1_048_576,
    };

    fn fields(&self) -> [(&'static str, u64); 7] {
        [
            ("timeout_ms", self.timeout_ms),
            ("cpu_time_ms", self.cpu_time_ms),
            ("memory_bytes", self.memory_bytes),
            ("max_output_bytes", self.max_output_bytes),
            ("max_processes", self.max_processes),
            ("max_file_size_bytes", self.max_file_size_bytes),
            ("max_open_files", self.max_open_files),
        ]
    }

    /// Checks every field against [`Limits::MIN`] and [`Limits::MAX`].
    pub fn validate(&self) -> Result<(), PolicyError> {
        let mins = Self::MIN.fields();
        let maxs = Self::MAX.fields();
        for (i, (field, value)) in self.fields().into_iter().enumerate() {
            let (min, max) = (mins[i].1, maxs[i].1);
            if value < min || value > max {
                return Err(PolicyError::LimitOutOfRange {
                    field,
                    value,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }

    /// Checks every field against `max`, naming the first that exceeds it.
    pub fn check_within(&self, max: &Limits) -> Result<(), PolicyError> {
        let maxs = max.fields();
        for (i, (field, value)) in self.fields().into_iter().enumerate() {
            if value > maxs[i].1 {
                return Err(PolicyError::LimitAboveCeiling {
                    field,
                    value,
                    max: maxs[i].1,
                });
            }
        }
        Ok(())
    }

    /// Fills the zero fields of `spec` from `self` and validates the result.
    pub fn resolve(&self, spec: &LimitsSpec) -> Result<Limits, PolicyError> {
        let pick = |requested: u64, default: u64| if requested == 0 { default } else { requested };
        let limits = Limits {
            timeout_ms: pick(spec.timeout_ms, self.timeout_ms),
            cpu_time_ms: pick(spec.cpu_time_ms, self.cpu_time_ms),
            memory_bytes: pick(spec.memory_bytes, self.memory_bytes),
            max_output_bytes: pick(spec.max_output_bytes, self.max_output_bytes),
            max_processes: pick(spec.max_processes, self.max_processes),
            max_file_size_bytes: pick(spec.max_file_size_bytes, self.max_file_size_bytes),
            max_open_files: pick(spec.max_open_files, self.max_open_files),
        };
        limits.validate()?;
        Ok(limits)
    }
}

impl Default for Limits {
    /// The built-in defaults: 30 s wall clock and CPU, 1 GiB address space, 1 MiB of output
    /// per stream, 64 processes, 64 MiB files, 256 open files.
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            cpu_time_ms: 30_000,
            memory_bytes: GIB,
            max_output_bytes: MIB,
            max_processes: 64,
            max_file_size_bytes: 64 * MIB,
            max_open_files: 256,
        }
    }
}

/// A validated sandbox policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    read_paths: Vec<PathBuf>,
    write_paths: Vec<PathBuf>,
    network: NetworkPolicy,
    limits: Limits,
    system_paths: bool,
    require_kernel_enforcement: bool,
    allow_unix_sockets: bool,
}

impl Default for Policy {
    /// No granted paths, no network, default limits, the system read set on.
    fn default() -> Self {
        Policy {
            read_paths: Vec::new(),
            write_paths: Vec::new(),
            network: NetworkPolicy::None,
            limits: Limits::default(),
            system_paths: true,
            require_kernel_enforcement: false,
            allow_unix_sockets: false,
        }
    }
}

impl Policy {
    /// Validates `spec`, filling zero limits from [`Limits::default`].
    pub fn new(spec: &PolicySpec) -> Result<Self, PolicyError> {
        Self::with_defaults(spec, &Limits::default())
    }

    /// Validates `spec`, filling zero limits from `defaults`.
    pub fn with_defaults(spec: &PolicySpec, defaults: &Limits) -> Result<Self, PolicyError> {
        let read_paths = spec
            .read_paths
            .iter()
            .map(|p| normalized_path("read_paths", p))
            .collect::<Result<Vec<_>, _>>()?;
        let write_paths = spec
            .write_paths
            .iter()
            .map(|p| normalized_path("write_paths", p))
            .collect::<Result<Vec<_>, _>>()?;
        let network = match spec.network.mode {
            NetworkMode::None => {
                if !spec.network.connect_ports.is_empty() {
                    return Err(PolicyError::PortsWithoutTcp {
                        field: "connect_ports",
                    });
                }
                if !spec.network.bind_ports.is_empty() {
                    return Err(PolicyError::PortsWithoutTcp {
                        field: "bind_ports",
                    });
                }
                NetworkPolicy::None
            }
            NetworkMode::Tcp => NetworkPolicy::Tcp {
                connect_ports: ports("connect_ports", &spec.network.connect_ports)?,
                bind_ports: ports("bind_ports", &spec.network.bind_ports)?,
            },
        };
        Ok(Policy {
            read_paths,
            write_paths,
            network,
            limits: defaults.resolve(&spec.limits)?,
            system_paths: spec.system_paths.unwrap_or(true),
            require_kernel_enforcement: spec.require_kernel_enforcement,
            allow_unix_sockets: spec.allow_unix_sockets,
        })
    }

    /// Paths readable and executable by the child.
    pub fn read_paths(&self) -> &[PathBuf] {
        &self.read_paths
    }

    /// Paths readable and writable by the child.
    pub fn write_paths(&self) -> &[PathBuf] {
        &self.write_paths
    }

    /// Network policy.
    pub fn network(&self) -> &NetworkPolicy {
        &self.network
    }

    /// Resource limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the platform's default system read set is granted.
    pub fn system_paths(&self) -> bool {
        self.system_paths
    }

    /// Whether the run must be refused unless kernel enforcement is available.
    pub fn require_kernel_enforcement(&self) -> bool {
        self.require_kernel_enforcement
    }

    /// Whether `AF_UNIX` sockets are allowed.
    pub fn allow_unix_sockets(&self) -> bool {
        self.allow_unix_sockets
    }

    /// Whether `path` is one of the write paths or lies beneath one.
    pub fn is_writable(&self, path: &Path) -> bool {
        self.write_paths.iter().any(|w| path.starts_with(w))
    }
}

fn ports(field: &'static str, raw: &[u32]) -> Result<BTreeSet<u16>, PolicyError> {
    raw.iter()
        .map(|&port| match u16::try_from(port) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(PolicyError::PortOutOfRange { field, port }),
        })
        .collect()
}

/// Validates that `raw`, given in `field`, is absolute and normalized and returns it as a path.
///
/// Normalized means: no `.` or `..` component, no empty component (doubled slash), no
/// trailing slash except for `/` itself, and no NUL byte. The check is textual on purpose:
/// the policy must mean the same thing whatever the file system looks like when it is built.
pub fn normalized_path(field: &'static str, raw: &str) -> Result<PathBuf, PolicyError> {
    if !raw.starts_with('/') {
        return Err(PolicyError::RelativePath {
            field,
            path: raw.to_owned(),
        });
    }
    let unnormalized = || PolicyError::UnnormalizedPath {
        field,
        path: raw.to_owned(),
    };
    if raw.contains('\0') {
        return Err(unnormalized());
    }
    if raw != "/" {
        for segment in raw[1..].split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(unnormalized());
            }
        }
    }
    let path = PathBuf::from(raw);
    debug_assert!(
        path.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_paths_are_checked_textually() {
        assert!(normalized_path("read_paths", "/").is_ok());
        assert!(normalized_path("read_paths", "/usr/lib").is_ok());
        for bad in [
            "/usr/../etc",
            "/usr/./lib",
            "/usr//lib",
            "/usr/",
            "/a\0b",
            "/..",
        ] {
            assert!(
                matches!(
                    normalized_path("read_paths", bad),
                    Err(PolicyError::UnnormalizedPath { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            normalized_path("write_paths", "usr/lib"),
            Err(PolicyError::RelativePath {
                field: "write_paths",
                path: "usr/lib".into()
            })
        );
    }
}
