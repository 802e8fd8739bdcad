//! The limiter: resolves policies, routes to a backend, applies failure modes, counts.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::limit::{Decision, Limit};
use crate::memory::{CapacityError, MemoryBackend, MemoryConfig, MemoryItem, Owner};
use crate::policy::{Backend, DEFAULT_TOOL, FailureMode, Policy, PolicySet};
use crate::redis::{RedisBackend, RedisConfig, RedisError, RedisItem, RedisSetupError, hash_tag};
use crate::stats::{Counters, PolicyStats};

/// Namespace and stats name of inline limits. Inline limits share state per key.
pub const INLINE: &str = "inline";

/// Backends of a limiter.
#[derive(Debug, Clone, Default)]
pub struct LimiterConfig {
    pub memory: MemoryConfig,
    /// Required when any policy uses the Redis backend.
    pub redis: Option<RedisConfig>,
}

/// What a descriptor is limited by.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A named policy, with the caller's identity and tool to pick overrides.
    Policy {
        name: &'a str,
        identity: Option<&'a str>,
        tool: Option<&'a str>,
    },
    /// A limit given in the request; always decided in memory.
    Inline(Limit),
}

/// One request for quota. A cost of zero peeks without consuming.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor<'a> {
    pub key: &'a str,
    pub cost: u64,
    pub target: Target<'a>,
    /// Who a new key is charged to, in memory and in Redis. Descriptors built without
    /// [`Descriptor::owned_by`] belong to the empty identity and share its quota, so that
    /// a forgotten owner never reaches the server's reserved capacity.
    pub owner: Owner<'a>,
}

impl<'a> Descriptor<'a> {
    pub fn policy(key: &'a str, cost: u64, name: &'a str) -> Self {
        Self {
            key,
            cost,
            target: Target::Policy {
                name,
                identity: None,
                tool: None,
            },
            owner: Owner::Identity(""),
        }
    }

    pub fn inline(key: &'a str, cost: u64, limit: Limit) -> Self {
        Self {
            key,
            cost,
            target: Target::Inline(limit),
            owner: Owner::Identity(""),
        }
    }

    /// Sets who a new key is charged to.
    pub fn owned_by(mut self, owner: Owner<'a>) -> Self {
        self.owner = owner;
        self
    }

    /// Sets the identity and tool used to pick a policy override.
    pub fn for_caller(mut self, identity: Option<&'a str>, tool: Option<&'a str>) -> Self {
        if let Target::Policy { name, .. } = self.target {
            self.target = Target::Policy {
                name,
                identity,
                tool,
            };
        }
        self
    }
}

/// The answer to an all-or-nothing check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiDecision {
    /// True only if every descriptor was admitted; otherwise nothing was consumed.
    pub allowed: bool,
    /// One decision per descriptor, in request order. When the whole check is denied,
    /// an individual decision may still say allowed: that descriptor alone would have
    /// passed, but it consumed nothing.
    pub decisions: Vec<Decision>,
}

/// Why a check could not be decided at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    #[error("unknown policy {0}")]
    UnknownPolicy(String),
    #[error("cost {cost} exceeds the capacity {capacity} of the limit")]
    CostExceedsCapacity { cost: u64, capacity: u64 },
    #[error("a multi-key check cannot mix memory and redis policies")]
    MixedBackends,
    #[error("a multi-key check on redis cluster needs keys with one hash tag, got {0} and {1}")]
    CrossSlot(String, String),
    /// A new key did not fit; nothing was consumed.
    #[error(transparent)]
    Capacity(#[from] CapacityError),
}

/// Why a limiter could not be built or reloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("policy {0} uses redis but no redis backend is configured")]
    RedisNotConfigured(String),
    #[error(transparent)]
    Redis(#[from] RedisSetupError),
}

/// Why a reset failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetError {
    #[error("unknown policy {0}")]
    UnknownPolicy(String),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

/// One resolved descriptor.
struct Resolved<'a> {
    owner: Owner<'a>,
    key: &'a str,
    cost: u64,
    namespace: &'a str,
    limit: Limit,
    backend: Backend,
    failure_mode: FailureMode,
    counters: &'a Counters,
}

/// The future of [`Limiter::check`].
#[must_use = "a decision that is not awaited is not made"]
pub enum CheckFuture<'a> {
    /// Decided already (in memory, or refused before any backend was asked).
    Ready(std::future::Ready<Result<Decision, CheckError>>),
    /// Waiting for Redis.
    Remote(Pin<Box<dyn Future<Output = Result<Decision, CheckError>> + Send + 'a>>),
}

impl Future for CheckFuture<'_> {
    type Output = Result<Decision, CheckError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            CheckFuture::Ready(ready) => Pin::new(ready).poll(cx),
            CheckFuture::Remote(remote) => remote.as_mut().poll(cx),
        }
    }
}

impl std::fmt::Debug for CheckFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckFuture::Ready(_) => "CheckFuture::Ready",
            CheckFuture::Remote(_) => "CheckFuture::Remote",
        })
    }
}

/// Rate limiter over named policies and inline limits.
///
/// Policies are swapped atomically by [`Limiter::reload`]; state lives in the backends,
/// keyed by policy name and key, so a reload never resets a counter.
#[derive(Debug)]
pub struct Limiter {
    policies: ArcSwap<PolicySet>,
    memory: MemoryBackend,
    redis: Option<RedisBackend>,
    inline: Counters,
}

impl Limiter {
    pub fn new(policies: PolicySet, config: LimiterConfig) -> Result<Self, BuildError> {
        check_backends(&policies, config.redis.is_some())?;
        let redis = config.redis.map(RedisBackend::new).transpose()?;
        Ok(Self {
            policies: ArcSwap::from_pointee(policies),
            memory: MemoryBackend::new(&config.memory),
            redis,
            inline: Counters::default(),
        })
    }

    /// Replaces the policies. Counters and stats of policies that keep their name carry on.
    pub fn reload(&self, mut policies: PolicySet) -> Result<(), BuildError> {
        check_backends(&policies, self.redis.is_some())?;
        let old = self.policies.load();
        for p in policies.policies_mut() {
            if let Some(previous) = old.get(p.name()) {
                p.counters = Arc::clone(&previous.counters);
            }
        }
        self.policies.store(Arc::new(policies));
        Ok(())
    }

    /// The current policies.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    pub fn memory(&self) -> &MemoryBackend {
        &self.memory
    }

    pub fn redis(&self) -> Option<&RedisBackend> {
        self.redis.as_ref()
    }

    /// Decides one descriptor.
    ///
    /// An in-memory decision is made before this returns, and the returned future is merely
    /// ready: the common case pays neither for an async state machine sized for the Redis
    /// round trip nor for moving one around. Only a Redis policy returns pending work.
    pub fn check<'a>(&'a self, d: &'a Descriptor<'a>) -> CheckFuture<'a> {
        let set = self.policies.load();
        let r = match self.resolve(&set, d) {
            Ok(r) => r,
            Err(e) => return CheckFuture::Ready(std::future::ready(Err(e))),
        };
        if r.backend == Backend::Memory {
            let decision = self
                .memory
                .check(r.owner, r.namespace, r.key, &r.limit, r.cost)
                .map_err(CheckError::from);
            if let Ok(d) = &decision {
                r.counters.record(d.allowed);
            }
            return CheckFuture::Ready(std::future::ready(decision));
        }
        drop(set);
        CheckFuture::Remote(Box::pin(async move {
            // Resolved again under a guard that lives across the round trip.
            let set = self.policies.load();
            let r = self.resolve(&set, d)?;
            let many = self.check_redis(std::slice::from_ref(&r)).await?;
            Ok(many.decisions[0])
        }))
    }

    /// Decides a tool call, or answers `None` when no policy limits the tool.
    ///
    /// A tool with its own policy is checked with key `<identity>:<tool>`. Every other
    /// tool, the empty name included, falls to the policy of [`DEFAULT_TOOL`] with the
    /// one key `<identity>:default`: the tool name is the caller's choice, so a bucket per
    /// name would let a caller mint fresh quota by inventing names. The identity is
    /// written as [`identity_prefix`] writes it, so these are the buckets the caller
    /// reaches through a scoped key. The keys are the server's own and are stored in its
    /// reserved capacity, which no caller's keys can fill.
    pub async fn check_tool(
        &self,
        identity: &str,
        tool: &str,
        cost: u64,
    ) -> Result<Option<Decision>, CheckError> {
        let set = self.policies.load();
        let (policy, bucket, override_tool) = match set.own_tool_policy(tool) {
            Some(policy) => (policy, tool, Some(tool)),
            None => match set.default_tool_policy() {
                Some(policy) => (policy, DEFAULT_TOOL, None),
                None => return Ok(None),
            },
        };
        let key = format!("{}:{bucket}", identity_prefix(identity));
        let d = Descriptor::policy(&key, cost, policy.name())
            .for_caller(Some(identity), override_tool)
            .owned_by(Owner::Server);
        self.check(&d).await.map(Some)
    }

    /// Decides all descriptors or none. All descriptors must use one backend (inline
    /// limits count as memory).
    pub async fn check_many(
        &self,
        descriptors: &[Descriptor<'_>],
    ) -> Result<MultiDecision, CheckError> {
        let set = self.policies.load();
        let resolved = descriptors
            .iter()
            .map(|d| self.resolve(&set, d))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = resolved.first() else {
            return Ok(MultiDecision {
                allowed: true,
                decisions: Vec::new(),
            });
        };
        if resolved.iter().any(|r| r.backend != first.backend) {
            return Err(CheckError::MixedBackends);
        }
        if first.backend == Backend::Memory {
            let (allowed, decisions) = self.memory.check_many(&memory_items(&resolved))?;
            for (r, d) in resolved.iter().zip(&decisions) {
                r.counters.record(d.allowed && allowed);
            }
            return Ok(MultiDecision { allowed, decisions });
        }
        if self.redis.as_ref().is_some_and(|r| r.config().cluster) {
            let tag = hash_tag(first.key);
            if let Some(other) = resolved.iter().find(|r| hash_tag(r.key) != tag) {
                return Err(CheckError::CrossSlot(
                    tag.to_owned(),
                    hash_tag(other.key).to_owned(),
                ));
            }
        }
        self.check_redis(&resolved).await
    }

    async fn check_redis(&self, resolved: &[Resolved<'_>]) -> Result<MultiDecision, CheckError> {
        let Some(redis) = &self.redis else {
            unreachable!("policies using redis are refused when no redis backend is configured")
        };
        let items: Vec<RedisItem<'_>> = resolved
            .iter()
            .map(|r| RedisItem {
                owner: r.owner,
                namespace: r.namespace,
                key: r.key,
                limit: &r.limit,
                cost: r.cost,
            })
            .collect();
        match redis.check_many(&items).await {
            // Redis answered: a refusal is the caller's quota, not an outage.
            Ok(Err(refused)) => Err(refused.into()),
            Ok(Ok((allowed, decisions))) => {
                for (r, d) in resolved.iter().zip(&decisions) {
                    r.counters.record(d.allowed && allowed);
                }
                Ok(MultiDecision { allowed, decisions })
            }
            Err(e) => {
                tracing::debug!(error = %e, "redis rate-limit check failed");
                for r in resolved {
                    r.counters.backend_errors.fetch_add(1, Ordering::Relaxed);
                }
                self.degraded(resolved, redis.config().probe_interval)
            }
        }
    }

    /// The answer while Redis is unreachable: the strictest failure mode among the
    /// descriptors wins (closed, then local fallback, then open).
    fn degraded(
        &self,
        resolved: &[Resolved<'_>],
        probe: Duration,
    ) -> Result<MultiDecision, CheckError> {
        let mode = resolved
            .iter()
            .map(|r| r.failure_mode)
            .max_by_key(|m| match m {
                FailureMode::FailOpen => 0,
                FailureMode::LocalFallback => 1,
                FailureMode::FailClosed => 2,
            })
            .unwrap_or_default();
        let decisions: Vec<Decision> = match mode {
            FailureMode::FailOpen => resolved
                .iter()
                .map(|r| Decision {
                    allowed: true,
                    limit: r.limit.limit(),
                    remaining: r.limit.limit().saturating_sub(r.cost),
                    reset_after: Duration::ZERO,
                    retry_after: Duration::ZERO,
                })
                .collect(),
            FailureMode::FailClosed => resolved
                .iter()
                .map(|r| Decision {
                    allowed: false,
                    limit: r.limit.limit(),
                    remaining: 0,
                    reset_after: probe,
                    retry_after: probe,
                })
                .collect(),
            FailureMode::LocalFallback => {
                for r in resolved {
                    r.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                let (allowed, decisions) = self.memory.check_many(&memory_items(resolved))?;
                for (r, d) in resolved.iter().zip(&decisions) {
                    r.counters.record(d.allowed && allowed);
                }
                return Ok(MultiDecision { allowed, decisions });
            }
        };
        let allowed = mode == FailureMode::FailOpen;
        for r in resolved {
            r.counters.record(allowed);
        }
        Ok(MultiDecision { allowed, decisions })
    }

    fn resolve<'a>(
        &'a self,
        set: &'a PolicySet,
        d: &Descriptor<'a>,
    ) -> Result<Resolved<'a>, CheckError> {
        let r = match d.target {
            Target::Inline(limit) => Resolved {
                owner: d.owner,
                key: d.key,
                cost: d.cost,
                namespace: INLINE,
                limit,
                backend: Backend::Memory,
                failure_mode: FailureMode::FailClosed,
                counters: &self.inline,
            },
            Target::Policy {
                name,
                identity,
                tool,
            } => {
                let p: &Policy = set
                    .get(name)
                    .ok_or_else(|| CheckError::UnknownPolicy(name.to_owned()))?;
                Resolved {
                    owner: d.owner,
                    key: d.key,
                    cost: d.cost,
                    namespace: p.name(),
                    limit: *p.resolve(identity, tool),
                    backend: p.backend(),
                    failure_mode: p.failure_mode(),
                    counters: &p.counters,
                }
            }
        };
        if r.cost > r.limit.capacity() {
            return Err(CheckError::CostExceedsCapacity {
                cost: r.cost,
                capacity: r.limit.capacity(),
            });
        }
        Ok(r)
    }

    /// Forgets a key's state under a policy (or under inline limits when `policy` is
    /// `None`), in memory and, for Redis policies, in Redis.
    pub async fn reset(&self, key: &str, policy: Option<&str>) -> Result<(), ResetError> {
        let Some(name) = policy else {
            self.memory.reset(INLINE, key);
            return Ok(());
        };
        let set = self.policies.load();
        let p = set
            .get(name)
            .ok_or_else(|| ResetError::UnknownPolicy(name.to_owned()))?;
        self.memory.reset(name, key);
        if let (Backend::Redis, Some(redis)) = (p.backend(), &self.redis) {
            let mut limits: Vec<Limit> = vec![*p.limit()];
            limits.extend(p.overrides().iter().map(|o| o.limit));
            redis.reset(name, key, &limits).await?;
        }
        Ok(())
    }

    /// Counters of every current policy, sorted by name, then of inline limits.
    pub fn stats(&self) -> Vec<PolicyStats> {
        let set = self.policies.load();
        let mut out: Vec<PolicyStats> = set
            .policies()
            .map(|p| p.counters.snapshot(p.name()))
            .collect();
        out.sort_by(|a, b| a.policy.cmp(&b.policy));
        out.push(self.inline.snapshot(INLINE));
        out
    }
}

fn memory_items<'a>(resolved: &'a [Resolved<'a>]) -> Vec<MemoryItem<'a>> {
    resolved
        .iter()
        .map(|r| MemoryItem {
            owner: r.owner,
            namespace: r.namespace,
            key: r.key,
            limit: &r.limit,
            cost: r.cost,
        })
        .collect()
}

fn check_backends(policies: &PolicySet, has_redis: bool) -> Result<(), BuildError> {
    match policies.policies().find(|p| p.backend() == Backend::Redis) {
        Some(p) if !has_redis => Err(BuildError::RedisNotConfigured(p.name().to_owned())),
        _ => Ok(()),
    }
}

/// How an identity begins the keys scoped to it: `<prefix>:<key>`. `%` and `:` are
/// percent-encoded, so the first `:` of a scoped key always ends the identity and two
/// identities can never produce the same key.
pub fn identity_prefix(identity: &str) -> Cow<'_, str> {
    if !identity.contains([':', '%']) {
        return Cow::Borrowed(identity);
    }
    Cow::Owned(identity.replace('%', "%25").replace(':', "%3A"))
}
