//! Named policies, per-identity and per-tool overrides, and their TOML form.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use serde::Deserialize;

use crate::limit::{Algorithm, Limit, LimitError};
use crate::stats::Counters;

/// Where a policy keeps its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// This process only.
    #[default]
    Memory,
    /// Shared by every server that uses the same Redis.
    Redis,
}

/// What a Redis-backed policy answers while Redis is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Admit every request.
    FailOpen,
    /// Deny every request. The default: a security control should not silently stop limiting.
    #[default]
    FailClosed,
    /// Decide with this process's in-memory limiter.
    LocalFallback,
}

/// A window in TOML: an integer number of milliseconds, or a humantime string such as
/// `"500ms"`, `"1m"` or `"1h 30m"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum WindowSpec {
    Millis(u64),
    Text(String),
}

impl WindowSpec {
    fn duration(&self) -> Result<Duration, PolicyError> {
        match self {
            Self::Millis(ms) => Ok(Duration::from_millis(*ms)),
            Self::Text(s) => humantime::parse_duration(s).map_err(|e| PolicyError::Window {
                window: s.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideConfig {
    identity: Option<String>,
    tool: Option<String>,
    algorithm: Option<Algorithm>,
    limit: Option<u64>,
    window: Option<WindowSpec>,
    burst: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyConfig {
    algorithm: Algorithm,
    limit: u64,
    window: WindowSpec,
    #[serde(default)]
    burst: u64,
    #[serde(default)]
    backend: Backend,
    #[serde(default)]
    failure_mode: FailureMode,
    #[serde(default)]
    overrides: Vec<OverrideConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySetConfig {
    #[serde(default)]
    policies: BTreeMap<String, PolicyConfig>,
    #[serde(default)]
    tools: BTreeMap<String, String>,
}

/// Why a policy set was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("policy {policy}: {source}")]
    Limit { policy: String, source: LimitError },
    #[error("invalid window {window:?}: {reason}")]
    Window { window: String, reason: String },
    #[error("policy {policy}: an override needs an identity, a tool, or both")]
    EmptyOverride { policy: String },
    #[error("tool {tool} refers to unknown policy {policy}")]
    UnknownToolPolicy { tool: String, policy: String },
    #[error("policy name must not be empty")]
    EmptyName,
}

/// A limit that replaces the policy's own for one identity, one tool, or both.
#[derive(Debug, Clone)]
pub struct Override {
    pub identity: Option<String>,
    pub tool: Option<String>,
    pub limit: Limit,
}

/// A named, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    name: String,
    limit: Limit,
    backend: Backend,
    failure_mode: FailureMode,
    overrides: Vec<Override>,
    pub(crate) counters: Arc<Counters>,
}

impl Policy {
    pub fn new(
        name: impl Into<String>,
        limit: Limit,
        backend: Backend,
        failure_mode: FailureMode,
    ) -> Self {
        Self {
            name: name.into(),
            limit,
            backend,
            failure_mode,
            overrides: Vec::new(),
            counters: Arc::default(),
        }
    }

    /// Adds an override; the most specific match wins (identity and tool, then identity,
    /// then tool), and among equals the first added.
    pub fn with_override(mut self, o: Override) -> Self {
        self.overrides.push(o);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limit(&self) -> &Limit {
        &self.limit
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }

    /// The limit that applies to a caller.
    pub fn resolve(&self, identity: Option<&str>, tool: Option<&str>) -> &Limit {
        if self.overrides.is_empty() || (identity.is_none() && tool.is_none()) {
            return &self.limit;
        }
        let mut best: Option<(u8, &Limit)> = None;
        for o in &self.overrides {
            let id_ok = o.identity.as_deref().is_none_or(|i| Some(i) == identity);
            let tool_ok = o.tool.as_deref().is_none_or(|t| Some(t) == tool);
            if !(id_ok && tool_ok) {
                continue;
            }
            let rank = u8::from(o.identity.is_some()) * 2 + u8::from(o.tool.is_some());
            if best.is_none_or(|(r, _)| rank > r) {
                best = Some((rank, &o.limit));
            }
        }
        best.map_or(&self.limit, |(_, l)| l)
    }
}

/// The entry of the tool map whose policy limits every tool without a policy of its
/// own. Those tools share one bucket per identity.
pub const DEFAULT_TOOL: &str = "default";

/// The per-tool defaults: `(tool, policy name, limit per minute)`, all token buckets
/// whose bucket starts full, so a caller may spend a whole minute's quota at once.
pub const TOOL_DEFAULTS: [(&str, &str, u64); 3] = [
    ("shell", "tool.shell", 5),
    ("web", "tool.web", 30),
    ("files", "tool.files", 50),
];

/// Every named policy plus the tool-to-policy map.
///
/// Deserializes from TOML such as:
///
/// ```toml
/// [policies.api]
/// algorithm = "sliding_window_log"   # sliding_window_counter, token_bucket, gcra, fixed_window
/// limit = 100
/// window = "1m"                      # or an integer number of milliseconds
/// burst = 0                          # token_bucket and gcra only
/// backend = "redis"                  # or "memory" (default)
/// failure_mode = "local_fallback"    # fail_open, fail_closed (default)
/// overrides = [{ identity = "ci-bot", limit = 1000 }, { tool = "shell", limit = 10 }]
///
/// [tools]
/// shell = "api"                      # the policy that limits Sandbox.Run of this tool
/// default = "api"                    # every tool without its own entry, one bucket per identity
/// ```
///
/// The policies `tool.shell`, `tool.web` and `tool.files` and their tool mappings exist
/// unless the file redefines them. Without a `default` entry, tools without their own
/// entry are not limited.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "PolicySetConfig")]
pub struct PolicySet {
    policies: HashMap<String, Policy>,
    tools: HashMap<String, String>,
}

impl Default for PolicySet {
    fn default() -> Self {
        let mut set = Self {
            policies: HashMap::new(),
            tools: HashMap::new(),
        };
        for (tool, name, per_minute) in TOOL_DEFAULTS {
            let limit = Limit::new(
                Algorithm::TokenBucket,
                per_minute,
                Duration::from_secs(60),
                0,
            )
            .unwrap_or_else(|_| unreachable!("the tool defaults are valid limits"));
            set.insert(Policy::new(
                name,
                limit,
                Backend::Memory,
                FailureMode::FailClosed,
            ));
            set.tools.insert(tool.to_owned(), name.to_owned());
        }
        set
    }
}

impl PolicySet {
    /// Adds or replaces a policy.
    pub fn insert(&mut self, policy: Policy) {
        self.policies.insert(policy.name.clone(), policy);
    }

    /// Maps a tool to the policy that limits it.
    pub fn set_tool(
        &mut self,
        tool: impl Into<String>,
        policy: impl Into<String>,
    ) -> Result<(), PolicyError> {
        let (tool, policy) = (tool.into(), policy.into());
        if !self.policies.contains_key(&policy) {
            return Err(PolicyError::UnknownToolPolicy { tool, policy });
        }
        self.tools.insert(tool, policy);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies.get(name)
    }

    /// The policy that limits a tool, if any: its own, else the default.
    pub fn tool_policy(&self, tool: &str) -> Option<&Policy> {
        self.own_tool_policy(tool)
            .or_else(|| self.default_tool_policy())
    }

    /// The policy mapped to this very tool name. The name [`DEFAULT_TOOL`] has none: its
    /// entry is the catch-all.
    pub fn own_tool_policy(&self, tool: &str) -> Option<&Policy> {
        if tool == DEFAULT_TOOL {
            return None;
        }
        self.tools.get(tool).and_then(|p| self.policies.get(p))
    }

    /// The policy of tools without their own, if the set has a [`DEFAULT_TOOL`] entry.
    pub fn default_tool_policy(&self) -> Option<&Policy> {
        self.tools
            .get(DEFAULT_TOOL)
            .and_then(|p| self.policies.get(p))
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    pub(crate) fn policies_mut(&mut self) -> impl Iterator<Item = &mut Policy> {
        self.policies.values_mut()
    }
}

fn limit_of(
    policy: &str,
    algorithm: Algorithm,
    limit: u64,
    window: &WindowSpec,
    burst: u64,
) -> Result<Limit, PolicyError> {
    Limit::new(algorithm, limit, window.duration()?, burst).map_err(|source| PolicyError::Limit {
        policy: policy.to_owned(),
        source,
    })
}

impl TryFrom<PolicySetConfig> for PolicySet {
    type Error = PolicyError;

    fn try_from(config: PolicySetConfig) -> Result<Self, Self::Error> {
        let mut set = Self::default();
        for (name, p) in config.policies {
            if name.is_empty() {
                return Err(PolicyError::EmptyName);
            }
            let limit = limit_of(&name, p.algorithm, p.limit, &p.window, p.burst)?;
            let mut policy = Policy::new(name.clone(), limit, p.backend, p.failure_mode);
            for o in p.overrides {
                if o.identity.is_none() && o.tool.is_none() {
                    return Err(PolicyError::EmptyOverride { policy: name });
                }
                let window = o.window.as_ref().unwrap_or(&p.window);
                let limit = limit_of(
                    &name,
                    o.algorithm.unwrap_or(p.algorithm),
                    o.limit.unwrap_or(p.limit),
                    window,
                    o.burst.unwrap_or(p.burst),
                )?;
                policy = policy.with_override(Override {
                    identity: o.identity,
                    tool: o.tool,
                    limit,
                });
            }
            set.insert(policy);
        }
        for (tool, policy) in config.tools {
            set.set_tool(tool, policy)?;
        }
        Ok(set)
    }
}
