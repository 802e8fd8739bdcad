//! The `[ratelimit]` configuration section, the one [`Limiter`] the server
//! shares between the RateLimit service and Sandbox.Run, and its reload on
//! SIGHUP.
//!
//! ```toml
//! [ratelimit.policies.api]            # read by ratelimit::PolicySet
//! algorithm = "gcra"
//! limit = 100
//! window = "1m"
//! backend = "redis"
//! failure_mode = "fail_closed"
//!
//! [ratelimit.tools]
//! shell = "api"
//! default = "api"                     # every tool without its own entry
//!
//! [ratelimit.redis]                   # needed when a policy uses backend = "redis"
//! url = "redis://127.0.0.1:6379"
//! timeout_ms = 50
//! max_keys_per_identity = 10000       # live keys per identity, all servers together
//!
//! [ratelimit.memory]
//! max_keys = 1000000                  # callers' keys, all identities together
//! max_keys_per_identity = 10000
//! server_keys = 100000                # reserved for the per-tool limits
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::ratelimit::{Backend, Limiter, LimiterConfig, MemoryConfig, PolicySet, RedisConfig};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Overrides};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RateLimitConfig {
    /// Named policies, in the form `ratelimit::PolicySet` documents. Kept as
    /// raw TOML here so that the library alone defines and validates them.
    pub(crate) policies: BTreeMap<String, toml::Value>,
    /// Tool name to the policy that limits Sandbox.Run of that tool; the
    /// entry `default` limits every tool without its own.
    pub(crate) tools: BTreeMap<String, String>,
    pub(crate) redis: Option<RedisSection>,
    pub(crate) memory: MemorySection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RedisSection {
    pub(crate) url: String,
    /// Longest wait for one decision; then the policy's failure mode applies.
    pub(crate) timeout_ms: u64,
    /// Multiplexed connections used for decisions.
    pub(crate) pool_size: usize,
    pub(crate) key_prefix: String,
    /// How often Redis is probed while it is unreachable.
    pub(crate) probe_interval_ms: u64,
    /// Refuse CheckMultiple across Redis Cluster slots.
    pub(crate) cluster: bool,
    /// Most live keys one identity may hold in Redis. A setting of its own,
    /// not `memory.max_keys_per_identity`: Redis is sized apart from the
    /// server's memory and shared by every server using it.
    pub(crate) max_keys_per_identity: usize,
}

impl Default for RedisSection {
    fn default() -> Self {
        let d = RedisConfig::default();
        Self {
            url: d.url,
            timeout_ms: millis(d.timeout),
            pool_size: d.pool_size,
            key_prefix: d.key_prefix,
            probe_interval_ms: millis(d.probe_interval),
            cluster: d.cluster,
            max_keys_per_identity: d.max_keys_per_identity,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MemorySection {
    /// Most keys held in memory at once for callers, all identities
    /// together; beyond it callers' new keys are refused.
    pub(crate) max_keys: usize,
    /// Most keys one identity may hold; unset means a quarter of `max_keys`,
    /// at most 10000.
    pub(crate) max_keys_per_identity: Option<usize>,
    /// Keys reserved for the server's own limits (Sandbox.Run per tool).
    pub(crate) server_keys: usize,
    pub(crate) shards: usize,
    pub(crate) sweep_interval_ms: u64,
}

impl Default for MemorySection {
    fn default() -> Self {
        let d = MemoryConfig::default();
        Self {
            max_keys: d.max_keys,
            max_keys_per_identity: None,
            server_keys: d.server_keys,
            shards: d.shards,
            sweep_interval_ms: millis(d.sweep_interval),
        }
    }
}

impl MemorySection {
    /// The per-identity quota in force: the configured one, or a quarter of
    /// `max_keys` capped at the library's default, so that at least four
    /// identities fit before the callers' room is full.
    fn quota(&self) -> usize {
        self.max_keys_per_identity.unwrap_or_else(|| {
            (self.max_keys / 4).clamp(1, MemoryConfig::default().max_keys_per_identity)
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Largest connection pool accepted; more connections buy nothing on one
/// Redis and a typo such as 100000 would exhaust file descriptors.
const MAX_POOL_SIZE: usize = 256;

/// Largest Redis key quota accepted: the members a Redis sorted set, the
/// identity's key index, can hold.
const MAX_REDIS_KEYS_PER_IDENTITY: usize = u32::MAX as usize;

impl RateLimitConfig {
    /// Builds the policy set, naming the offending field on error.
    pub(crate) fn policy_set(&self) -> Result<PolicySet> {
        // Each policy alone first, so that an error names the policy even when
        // the library's message (for example serde's "unknown field") does not.
        for (name, policy) in &self.policies {
            let mut one = toml::Table::new();
            one.insert(name.clone(), policy.clone());
            let mut table = toml::Table::new();
            table.insert("policies".to_owned(), toml::Value::Table(one));
            PolicySet::deserialize(toml::Value::Table(table))
                .map_err(|e| anyhow::anyhow!("ratelimit.policies.{name}: {}", e.message()))?;
        }
        let mut table = toml::Table::new();
        table.insert(
            "policies".to_owned(),
            toml::Value::Table(self.policies.clone().into_iter().collect()),
        );
        table.insert(
            "tools".to_owned(),
            toml::Value::Table(
                self.tools
                    .iter()
                    .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                    .collect(),
            ),
        );
        let set = PolicySet::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("ratelimit.tools: {}", e.message()))?;
        if self.redis.is_none()
            && let Some(p) = set.policies().find(|p| p.backend() == Backend::Redis)
        {
            bail!(
                "ratelimit.policies.{}: backend = \"redis\" needs a [ratelimit.redis] section",
                p.name()
            );
        }
        Ok(set)
    }

    /// Checks everything that can be checked without connecting anywhere.
    pub(crate) fn validate(&self) -> Result<()> {
        self.policy_set()?;
        if let Some(redis) = &self.redis {
            let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|s| redis.url.starts_with(s));
            if !scheme_ok {
                bail!(
                    "ratelimit.redis.url must start with redis://, rediss:// or unix://, not {:?}",
                    redis.url
                );
            }
            if redis.timeout_ms == 0 {
                bail!("ratelimit.redis.timeout_ms must be positive");
            }
            if redis.probe_interval_ms == 0 {
                bail!("ratelimit.redis.probe_interval_ms must be positive");
            }
            if redis.pool_size == 0 || redis.pool_size > MAX_POOL_SIZE {
                bail!("ratelimit.redis.pool_size must be between 1 and {MAX_POOL_SIZE}");
            }
            if !(1..=MAX_REDIS_KEYS_PER_IDENTITY).contains(&redis.max_keys_per_identity) {
                bail!(
                    "ratelimit.redis.max_keys_per_identity must be between 1 and {MAX_REDIS_KEYS_PER_IDENTITY}"
                );
            }
        }
        if self.memory.max_keys == 0 {
            bail!("ratelimit.memory.max_keys must be positive");
        }
        if let Some(quota) = self.memory.max_keys_per_identity
            && (quota == 0 || quota >= self.memory.max_keys)
        {
            // A quota as large as the shared room would let one identity fill
            // it and refuse every other identity's new keys.
            bail!(
                "ratelimit.memory.max_keys_per_identity must be between 1 and max_keys - 1 ({})",
                self.memory.max_keys - 1
            );
        }
        if self.memory.server_keys == 0 {
            bail!("ratelimit.memory.server_keys must be positive");
        }
        if self.memory.shards == 0 || self.memory.shards > 65_536 {
            bail!("ratelimit.memory.shards must be between 1 and 65536");
        }
        if self.memory.sweep_interval_ms == 0 {
            bail!("ratelimit.memory.sweep_interval_ms must be positive");
        }
        Ok(())
    }

    fn limiter_config(&self) -> LimiterConfig {
        LimiterConfig {
            memory: MemoryConfig {
                shards: self.memory.shards,
                max_keys: self.memory.max_keys,
                max_keys_per_identity: self.memory.quota(),
                server_keys: self.memory.server_keys,
                sweep_interval: Duration::from_millis(self.memory.sweep_interval_ms),
            },
            redis: self.redis.as_ref().map(|r| RedisConfig {
                url: r.url.clone(),
                timeout: Duration::from_millis(r.timeout_ms),
                pool_size: r.pool_size,
                key_prefix: r.key_prefix.clone(),
                probe_interval: Duration::from_millis(r.probe_interval_ms),
                cluster: r.cluster,
                max_keys_per_identity: r.max_keys_per_identity,
            }),
        }
    }
}

/// The server's one limiter. Must run inside the Tokio runtime, which the
/// Redis pool uses.
pub(crate) fn build_limiter(config: &RateLimitConfig) -> Result<Limiter> {
    let policies = config.policy_set()?;
    Limiter::new(policies, config.limiter_config())
        .map_err(|e| anyhow::anyhow!("ratelimit.redis: {e}"))
}

/// Re-reads the configuration file on SIGHUP and swaps in its policies;
/// counters of policies that keep their name carry on.
#[derive(Debug)]
pub(crate) struct PolicyReloader {
    limiter: Arc<Limiter>,
    file: Option<PathBuf>,
    /// The command-line values the server started with, applied again so the
    /// reloaded file is validated as the running server sees it.
    data_dir: PathBuf,
    listen: SocketAddr,
    /// Backends are built once; a change to these needs a restart.
    backends: (Option<RedisSection>, MemorySection),
}

impl PolicyReloader {
    pub(crate) fn new(config: &Config, limiter: Arc<Limiter>) -> Self {
        Self {
            limiter,
            file: config.file.clone(),
            data_dir: config.data_dir.clone(),
            listen: config.listen,
            backends: (
                config.ratelimit.redis.clone(),
                config.ratelimit.memory.clone(),
            ),
        }
    }

    /// Reloads the policies, or leaves the running ones in force and says why.
    pub(crate) fn reload(&self) {
        match self.try_reload() {
            Ok(count) => tracing::info!(policies = count, "rate-limit policies reloaded"),
            Err(error) => tracing::error!(
                error = format!("{error:#}"),
                "rate-limit reload refused; the previous policies stay in force"
            ),
        }
    }

    fn try_reload(&self) -> Result<usize> {
        let overrides = Overrides {
            data_dir: Some(self.data_dir.clone()),
            listen: Some(self.listen),
        };
        let config = Config::load(self.file.as_deref(), &overrides)?;
        let section = config.ratelimit;
        if (section.redis.clone(), section.memory.clone()) != self.backends {
            tracing::warn!(
                "ratelimit.redis and ratelimit.memory changes take effect only after a restart"
            );
        }
        let policies = section.policy_set()?;
        let count = policies.policies().count();
        self.limiter
            .reload(policies)
            .context("ratelimit.policies")?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RateLimitConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn empty_section_keeps_the_tool_defaults() {
        let set = RateLimitConfig::default().policy_set().unwrap();
        for (_, name, _) in ::ratelimit::TOOL_DEFAULTS {
            assert!(set.get(name).is_some(), "{name}");
        }
        assert_eq!(set.tool_policy("shell").unwrap().limit().limit(), 5);
    }

    #[test]
    fn policies_and_tools_are_read() {
        let c = parse(
            r#"
            [policies.api]
            algorithm = "gcra"
            limit = 7
            window = "1s"
            burst = 2
            [tools]
            shell = "api"
            "#,
        );
        c.validate().unwrap();
        let set = c.policy_set().unwrap();
        assert_eq!(set.get("api").unwrap().limit().capacity(), 9);
        assert_eq!(set.tool_policy("shell").unwrap().name(), "api");
        assert!(set.tool_policy("unlisted").is_none());
    }

    #[test]
    fn the_default_tool_entry_covers_unlisted_tools() {
        let c = parse(
            r#"
            [policies.rest]
            algorithm = "gcra"
            limit = 7
            window = "1m"
            [tools]
            default = "rest"
            "#,
        );
        c.validate().unwrap();
        let set = c.policy_set().unwrap();
        assert_eq!(set.tool_policy("unlisted").unwrap().name(), "rest");
        assert_eq!(set.tool_policy("").unwrap().name(), "rest");
        assert_eq!(set.tool_policy("shell").unwrap().name(), "tool.shell");
    }

    #[test]
    fn the_identity_quota_defaults_below_the_shared_room() {
        let quota = |text: &str| parse(text).memory.quota();
        assert_eq!(quota(""), 10_000);
        assert_eq!(quota("[memory]\nmax_keys = 64"), 16);
        assert_eq!(
            quota("[memory]\nmax_keys = 64\nmax_keys_per_identity = 5"),
            5
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "[policies.api]\nalgorithm = \"gcra\"\nlimit = 0\nwindow = 1000",
                "ratelimit.policies.api",
            ),
            (
                "[policies.api]\nalgorithm = \"gcra\"\nlimit = 1\nwindow = 1000\nbogus = 1",
                "ratelimit.policies.api",
            ),
            (
                "[policies.api]\nalgorithm = \"gcra\"\nlimit = 1\nwindow = 1000\nbackend = \"redis\"",
                "ratelimit.policies.api",
            ),
            ("[tools]\nshell = \"missing\"", "ratelimit.tools"),
            ("[redis]\nurl = \"http://x\"", "ratelimit.redis.url"),
            ("[redis]\ntimeout_ms = 0", "ratelimit.redis.timeout_ms"),
            ("[redis]\npool_size = 0", "ratelimit.redis.pool_size"),
            (
                "[redis]\nmax_keys_per_identity = 0",
                "ratelimit.redis.max_keys_per_identity",
            ),
            (
                "[redis]\nmax_keys_per_identity = 4294967296",
                "ratelimit.redis.max_keys_per_identity",
            ),
            ("[memory]\nmax_keys = 0", "ratelimit.memory.max_keys"),
            (
                "[memory]\nmax_keys = 64\nmax_keys_per_identity = 64",
                "ratelimit.memory.max_keys_per_identity",
            ),
            ("[memory]\nserver_keys = 0", "ratelimit.memory.server_keys"),
        ];
        for (text, field) in cases {
            let error = parse(text).validate().unwrap_err().to_string();
            assert!(error.starts_with(field), "{text:?}: {error}");
        }
    }
}
