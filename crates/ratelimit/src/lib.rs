//! Rate limiting for Cordon: five algorithms, an in-memory and a Redis backend.
//!
//! [`Limiter`] is the entry point: it resolves a [`Descriptor`] against a named
//! [`Policy`] (or an inline [`Limit`]), decides it on the policy's backend, applies the
//! policy's [`FailureMode`] when Redis is unreachable, and counts per policy. The
//! algorithms are pure state machines in [`algorithm`], tested against reference models.
//!
//! Time is in microseconds throughout: the in-memory backend reads a monotonic clock,
//! the Redis script reads Redis `TIME`, so servers with skewed clocks agree.
#![forbid(unsafe_code)]

pub mod algorithm;
mod limit;
mod limiter;
mod memory;
mod policy;
mod redis;
mod stats;

pub use limit::{Algorithm, Decision, Limit, LimitError, MAX_LOG_LIMIT, MAX_SCALED};
pub use limiter::{
    BuildError, CheckError, CheckFuture, Descriptor, INLINE, Limiter, LimiterConfig, MultiDecision,
    ResetError, Target, identity_prefix,
};
pub use memory::{CapacityError, MemoryBackend, MemoryConfig, MemoryItem, Owner};
pub use policy::{
    Backend, DEFAULT_TOOL, FailureMode, Override, Policy, PolicyError, PolicySet, TOOL_DEFAULTS,
};
pub use redis::{
    DECIDE_SCRIPT, RedisBackend, RedisConfig, RedisDecisions, RedisError, RedisItem,
    RedisSetupError, ScriptCall, decide_script_sha, hash_tag,
};
pub use stats::PolicyStats;
