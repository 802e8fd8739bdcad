//! The server configuration: TOML with environment overrides.
//!
//! Every field has a default so an empty file (or no file) gives a working
//! loopback development server. `CORDON_` environment variables override the
//! file, with `__` separating nested keys (`CORDON_TLS__MIN_VERSION=1.2`).
//! The reference for every option is the "Configuration" section of README.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// Address of the gRPC listener.
    pub(crate) listen: SocketAddr,
    /// Directory for certificates, databases and run directories.
    pub(crate) data_dir: PathBuf,
    /// SPIFFE trust domain of issued identities (`spiffe://<trust_domain>/user/<name>`).
    pub(crate) trust_domain: String,
    pub(crate) tls: TlsConfig,
    pub(crate) server: ServerLimits,
    pub(crate) log: LogConfig,
    pub(crate) auth: AuthConfig,
    pub(crate) rbac: RbacConfig,
    pub(crate) audit: crate::layers::audit::AuditConfig,
    pub(crate) guard: crate::services::guard::GuardConfig,
    pub(crate) ops: crate::ops::OpsConfig,
    pub(crate) ca: crate::ca::CaConfig,
    /// Identity name to its roles.
    pub(crate) identities: BTreeMap<String, IdentityConfig>,
    pub(crate) sandbox: crate::services::sandbox::config::SandboxConfig,
    pub(crate) ratelimit: crate::rate_limits::RateLimitConfig,
    /// The file this configuration was read from, for reloads on SIGHUP.
    #[serde(skip)]
    pub(crate) file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        let mut identities = BTreeMap::new();
        identities.insert(
            "admin".to_owned(),
            IdentityConfig {
                roles: vec!["admin".to_owned()],
            },
        );
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("cordon-data"),
            trust_domain: "cordon.local".to_owned(),
            tls: TlsConfig::default(),
            server: ServerLimits::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            rbac: RbacConfig::default(),
            audit: Default::default(),
            guard: Default::default(),
            ops: Default::default(),
            ca: crate::ca::CaConfig::default(),
            identities,
            sandbox: Default::default(),
            ratelimit: Default::default(),
            file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClientAuth {
    /// A client certificate is verified when presented; API keys and JWTs
    /// authenticate callers without one.
    Optional,
    /// Every connection must present a valid client certificate.
    Required,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TlsConfig {
    /// Server certificate chain (PEM). Default: `<data_dir>/certs/server.pem`.
    pub(crate) cert: Option<PathBuf>,
    /// Server private key (PEM). Default: `<data_dir>/certs/server.key`.
    pub(crate) key: Option<PathBuf>,
    /// CA bundle that client certificates must chain to. Default: `<data_dir>/certs/ca.pem`.
    pub(crate) client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) checked for every client certificate.
    pub(crate) crl: Vec<PathBuf>,
    /// Lowest TLS version accepted: "1.3" or "1.2".
    #[serde(deserialize_with = "version_text")]
    pub(crate) min_version: String,
    pub(crate) client_auth: ClientAuth,
    /// A non-loopback listener with optional client authentication is refused
    /// unless this is set.
    pub(crate) allow_optional_client_auth_off_loopback: bool,
    /// Time a client has to finish the TLS handshake.
    pub(crate) handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            crl: Vec::new(),
            min_version: "1.3".to_owned(),
            client_auth: ClientAuth::Optional,
            allow_optional_client_auth_off_loopback: false,
            handshake_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServerLimits {
    /// Largest request message accepted; larger ones get RESOURCE_EXHAUSTED.
    pub(crate) max_message_bytes: usize,
    /// Deadline for unary calls and for the first response of streaming calls,
    /// except sandbox runs, which their own `timeout_ms` bounds.
    pub(crate) request_timeout_ms: u64,
    /// Calls served at once across all connections; beyond it RESOURCE_EXHAUSTED at once.
    pub(crate) max_concurrent_requests: usize,
    /// HTTP/2 streams per connection.
    pub(crate) max_concurrent_streams: u32,
    pub(crate) http2_keepalive_interval_ms: u64,
    pub(crate) http2_keepalive_timeout_ms: u64,
    /// Connections are closed gracefully after this age, so clients re-handshake
    /// and pick up rotated certificates and revocations.
    pub(crate) max_connection_age_ms: u64,
    /// Grace period for in-flight calls on SIGTERM or SIGINT.
    pub(crate) shutdown_grace_ms: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            request_timeout_ms: 60_000,
            max_concurrent_requests: 512,
            max_concurrent_streams: 128,
            http2_keepalive_interval_ms: 30_000,
            http2_keepalive_timeout_ms: 10_000,
            max_connection_age_ms: 3_600_000,
            shutdown_grace_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogConfig {
    pub(crate) format: LogFormat,
    /// Filter directives when `RUST_LOG` is unset.
    pub(crate) level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthConfig {
    pub(crate) api_keys: Vec<ApiKeyConfig>,
    pub(crate) jwt: Option<JwtConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyConfig {
    /// The identity the key authenticates as.
    pub(crate) name: String,
    /// Hex SHA-256 of the key. Keys are random and long, so a fast hash is
    /// enough; the plain key is never stored.
    pub(crate) sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtConfig {
    /// "HS256", "HS384", "HS512", "RS256", "ES256", "ES384" or "EdDSA".
    pub(crate) algorithm: String,
    /// Shared secret for the HS algorithms.
    pub(crate) secret: Option<String>,
    /// PEM public key for the asymmetric algorithms.
    pub(crate) public_key_file: Option<PathBuf>,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    #[serde(default = "default_leeway")]
    pub(crate) leeway_seconds: u64,
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RbacConfig {
    /// Extra roles (or extended built-in roles) and their permissions.
    pub(crate) roles: BTreeMap<String, RoleConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RoleConfig {
    pub(crate) permissions: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct IdentityConfig {
    pub(crate) roles: Vec<String>,
}

/// Command-line values that override the file and the environment.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) listen: Option<SocketAddr>,
}

/// Reads a version written as text (`"1.2"`) or as the number an environment
/// variable such as `CORDON_TLS__MIN_VERSION=1.2` parses to. The number keeps
/// its shortest spelling, so `1.25` stays `"1.25"` and is refused by
/// validation rather than rounded to a valid version.
fn version_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Version {
        Text(String),
        Number(f64),
    }
    Ok(match Version::deserialize(deserializer)? {
        Version::Text(text) => text,
        Version::Number(number) => number.to_string(),
    })
}

impl Config {
    /// Loads defaults, then the file, then `CORDON_*` variables, then the
    /// command line.
    pub(crate) fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        // `CORDON_CONFIG` names the file itself (see `cordon serve --config`).
        figment = figment.merge(Env::prefixed("CORDON_").split("__").ignore(&["config"]));
        let mut config: Config = figment.extract().context("invalid configuration")?;
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        config.file = file.map(Path::to_path_buf);
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if !matches!(self.tls.min_version.as_str(), "1.2" | "1.3") {
            bail!(
                "tls.min_version must be \"1.2\" or \"1.3\", not {:?}",
                self.tls.min_version
            );
        }
        if !self.listen.ip().is_loopback()
            && self.tls.client_auth == ClientAuth::Optional
            && !self.tls.allow_optional_client_auth_off_loopback
        {
            bail!(
                "listen address {} is not loopback: set tls.client_auth = \"required\", or set \
                 tls.allow_optional_client_auth_off_loopback = true to accept API keys and JWTs there",
                self.listen
            );
        }
        if self.server.max_message_bytes == 0 || self.server.max_concurrent_requests == 0 {
            bail!("server.max_message_bytes and server.max_concurrent_requests must be positive");
        }
        if self.trust_domain.is_empty() || self.trust_domain.contains('/') {
            bail!("trust_domain must be a non-empty name without '/'");
        }
        for key in &self.auth.api_keys {
            let bytes = hex::decode(&key.sha256).ok();
            if bytes.is_none_or(|b| b.len() != 32) {
                bail!(
                    "auth.api_keys entry {:?}: sha256 must be 64 hex digits",
                    key.name
                );
            }
        }
        self.ratelimit.validate()?;
        Ok(())
    }

    pub(crate) fn certs_dir(&self) -> PathBuf {
        self.data_dir.join("certs")
    }

    pub(crate) fn server_cert_path(&self) -> PathBuf {
        self.tls
            .cert
            .clone()
            .unwrap_or_else(|| self.certs_dir().join("server.pem"))
    }

    pub(crate) fn server_key_path(&self) -> PathBuf {
        self.tls
            .key
            .clone()
            .unwrap_or_else(|| self.certs_dir().join("server.key"))
    }

    pub(crate) fn client_ca_path(&self) -> PathBuf {
        self.tls
            .client_ca
            .clone()
            .unwrap_or_else(|| self.certs_dir().join("ca.pem"))
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls.handshake_timeout_ms)
    }
}

/// Creates `dir` (and its missing parents) and makes it private to the
/// server's uid: mode 0700, also when it already existed with a wider mode.
/// The data directory itself stays searchable by others so that the run uid
/// can reach its work directory beneath it, and the files SQLite creates are
/// readable by others under the usual umask: without this, a run under a
/// backend without Landlock could read the audit log or the CA inventory by
/// name.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot inspect {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::Serialized;

    use super::Config;

    /// The `tls.min_version` read from `value`, or `None` when it cannot be read.
    fn min_version(value: impl serde::Serialize) -> Option<String> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(("tls.min_version", value))
            .extract::<Config>()
            .ok()
            .map(|config| config.tls.min_version)
    }

    #[test]
    fn a_tls_version_may_come_as_text_or_as_the_number_an_environment_variable_gives() {
        assert_eq!(min_version("1.2").as_deref(), Some("1.2"));
        assert_eq!(min_version(1.2).as_deref(), Some("1.2"));
        assert_eq!(min_version(1.3).as_deref(), Some("1.3"));
        // Not rounded into a valid version: validation refuses it.
        assert_eq!(min_version(1.25).as_deref(), Some("1.25"));
        assert_eq!(min_version(true), None);
    }
}
