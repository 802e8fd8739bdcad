//! The Redis backend: one Lua script call per decision, a timeout, and a circuit breaker.
//!
//! As in memory, every key has an [`Owner`]. A caller's keys are listed in an index of
//! that identity's live keys, a sorted set scored by each key's expiry, and the script
//! refuses a new key when the index already holds `max_keys_per_identity` live keys: one
//! identity cannot fill Redis and so make every Redis policy fail, or, with eviction,
//! reset other callers' counts. The server's own keys are in no index and never refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, Script};
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};

use crate::limit::{Decision, Limit};
use crate::limiter::identity_prefix;
use crate::memory::{CapacityError, Owner};

/// The decision script. KEYS and ARGV are described at its top; build them with
/// [`RedisBackend::script_call`].
pub const DECIDE_SCRIPT: &str = include_str!("decide.lua");

/// The SHA-1 of [`DECIDE_SCRIPT`], as `EVALSHA` expects it.
pub fn decide_script_sha() -> String {
    Script::new(DECIDE_SCRIPT).get_hash().to_owned()
}

/// Connection and resilience settings of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// For example `redis://127.0.0.1:6379`.
    pub url: String,
    /// Longest wait for one decision, connection included.
    pub timeout: Duration,
    /// Multiplexed connections used for decisions, taken round-robin.
    pub pool_size: usize,
    /// Prefix of every key; the hash tag follows it.
    pub key_prefix: String,
    /// While the breaker is open, how often a background task pings Redis.
    pub probe_interval: Duration,
    /// Refuse multi-key checks whose keys would live in different Cluster slots, and
    /// keep each owner's key index per hash tag, in the slot of the keys it lists.
    pub cluster: bool,
    /// Most live keys one identity may hold in Redis, across every server sharing it.
    /// The server's own keys do not count.
    pub max_keys_per_identity: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            timeout: Duration::from_millis(50),
            pool_size: 4,
            key_prefix: "cordon:rl:".to_owned(),
            probe_interval: Duration::from_millis(100),
            cluster: false,
            max_keys_per_identity: 10_000,
        }
    }
}

/// Why the Redis backend could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisSetupError {
    #[error("invalid redis configuration: {0}")]
    Config(String),
}

/// Why Redis gave no decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("circuit breaker open after a redis failure")]
    CircuitOpen,
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    #[error("redis script returned {0} values, expected {1}")]
    Reply(usize, usize),
}

/// One descriptor of a Redis check.
#[derive(Debug, Clone, Copy)]
pub struct RedisItem<'a> {
    /// Whose index a new key is listed in, and whose quota it takes.
    pub owner: Owner<'a>,
    pub namespace: &'a str,
    pub key: &'a str,
    pub limit: &'a Limit,
    pub cost: u64,
}

/// What Redis decided: the decisions of an all-or-nothing check, or the refusal of a new
/// key whose owner holds its quota already, in which case nothing was consumed.
pub type RedisDecisions = Result<(bool, Vec<Decision>), CapacityError>;

/// The exact KEYS and ARGV of one script call, for benchmarks and `redis-benchmark`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptCall {
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

/// The script's first reply value when a new key found its owner's quota used up; the
/// second is the 1-based index of the descriptor that needed it.
const REFUSED: u64 = 2;

/// Open after a failure until a background probe reaches Redis again, so that an outage
/// costs the calls in flight one timeout each and every later call nothing.
#[derive(Debug, Default)]
struct Breaker {
    open: AtomicBool,
}

/// Rate-limit state in Redis, shared by every server using the same instance.
pub struct RedisBackend {
    pool: Pool,
    /// Connections detached from the pool for decisions. A pooled `get` pings the
    /// connection before handing it out, which would double the round trips of every
    /// decision; a multiplexed connection is shared safely instead, and dropped on error.
    slots: Box<[ArcSwapOption<MultiplexedConnection>]>,
    next_slot: AtomicUsize,
    config: RedisConfig,
    sha: String,
    breaker: Arc<Breaker>,
    instance: u64,
    sequence: AtomicU64,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The hash tag of a key: its part before the first `:`, so that one identity's keys
/// (`alice`, `alice:shell`) share a Cluster slot and can be checked together.
pub fn hash_tag(key: &str) -> &str {
    key.split(':').next().unwrap_or(key)
}

impl RedisBackend {
    /// Builds the pool; no connection is made until the first check.
    pub fn new(config: RedisConfig) -> Result<Self, RedisSetupError> {
        let mut cfg = deadpool_redis::Config::from_url(config.url.clone());
        let mut pool = PoolConfig::new(config.pool_size.max(1) + 1);
        pool.timeouts = Timeouts {
            wait: Some(config.timeout),
            create: Some(config.timeout),
            recycle: Some(config.timeout),
        };
        cfg.pool = Some(pool);
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| RedisSetupError::Config(e.to_string()))?;
        Ok(Self {
            pool,
            slots: (0..config.pool_size.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect(),
            next_slot: AtomicUsize::new(0),
            config,
            sha: decide_script_sha(),
            breaker: Arc::default(),
            instance: rand::random(),
            sequence: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Whether the breaker is open: Redis failed and has not answered a probe since.
    pub fn is_degraded(&self) -> bool {
        self.breaker.open.load(Ordering::Acquire)
    }

    /// The Redis key holding one key's state under one algorithm.
    pub fn redis_key(&self, namespace: &str, key: &str, limit: &Limit) -> String {
        format!(
            "{}{{{}}}:{}:{}:{}",
            self.config.key_prefix,
            hash_tag(key),
            namespace,
            limit.algorithm().code(),
            key
        )
    }

    /// The sorted set listing an owner's live keys, or `None` for the server's own keys.
    ///
    /// Standalone, an identity has one index for all its keys. A Cluster script may only
    /// touch keys of one slot, so there the index takes the hash tag of the key it lists:
    /// a caller's scoped keys all carry its identity as their tag, so its index is still
    /// one, and only an admin's verbatim keys of other tags are counted per tag. `#` never
    /// follows the tag in a state key, so no index can be mistaken for a state.
    fn index_key(&self, owner: Owner<'_>, key: &str) -> Option<String> {
        let Owner::Identity(identity) = owner else {
            return None;
        };
        let name = identity_prefix(identity);
        let tag = if self.config.cluster {
            hash_tag(key)
        } else {
            &name
        };
        Some(self.index_name(tag, &name))
    }

    fn index_name(&self, tag: &str, name: &str) -> String {
        format!("{}{{{tag}}}#o:{name}", self.config.key_prefix)
    }

    /// KEYS and ARGV of the script call that decides `items`, with a fresh call id.
    ///
    /// A benchmark can replay one decision with `redis-cli SCRIPT LOAD` of
    /// [`DECIDE_SCRIPT`] and then `redis-benchmark EVALSHA <sha> <keys.len()> <keys…>
    /// <args…>`. Replayed calls reuse one call id, so sliding-log members repeat; replay a
    /// token bucket or GCRA policy for a like-for-like ceiling.
    pub fn script_call(&self, items: &[RedisItem<'_>]) -> ScriptCall {
        let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut args = Vec::with_capacity(2 + items.len() * 6);
        args.push(format!("{:016x}.{seq}", self.instance));
        args.push(self.config.max_keys_per_identity.to_string());
        let mut keys: Vec<String> = items
            .iter()
            .map(|item| self.redis_key(item.namespace, item.key, item.limit))
            .collect();
        for item in items {
            args.push(item.limit.algorithm().code().to_owned());
            args.push(item.limit.limit().to_string());
            args.push(item.limit.window_us().to_string());
            args.push(item.limit.burst().to_string());
            args.push(item.cost.to_string());
            // The index's position in KEYS; descriptors of one owner share it.
            let position = match self.index_key(item.owner, item.key) {
                None => 0,
                Some(index) => match keys[items.len()..].iter().position(|k| *k == index) {
                    Some(at) => items.len() + at + 1,
                    None => {
                        keys.push(index);
                        keys.len()
                    }
                },
            };
            args.push(position.to_string());
        }
        ScriptCall { keys, args }
    }

    /// Decides all items or none in one script call.
    pub async fn check_many(&self, items: &[RedisItem<'_>]) -> Result<RedisDecisions, RedisError> {
        if self.is_degraded() {
            return Err(RedisError::CircuitOpen);
        }
        let call = self.script_call(items);
        let reply = match tokio::time::timeout(self.config.timeout, self.eval(&call)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.trip();
                return Err(e);
            }
            Err(_) => {
                self.trip();
                return Err(RedisError::Timeout(self.config.timeout));
            }
        };
        if let [REFUSED, at] = reply[..] {
            let identity = usize::try_from(at)
                .ok()
                .and_then(|at| items.get(at.checked_sub(1)?))
                .and_then(|item| match item.owner {
                    Owner::Identity(identity) => Some(identity),
                    Owner::Server => None,
                })
                .ok_or(RedisError::Reply(reply.len(), 1 + 4 * items.len()))?;
            return Ok(Err(CapacityError::RedisIdentityQuota {
                identity: identity.to_owned(),
                quota: self.config.max_keys_per_identity,
            }));
        }
        let expected = 1 + 4 * items.len();
        if reply.len() != expected {
            return Err(RedisError::Reply(reply.len(), expected));
        }
        let decisions = items
            .iter()
            .zip(reply[1..].chunks_exact(4))
            .map(|(item, r)| Decision::from_us(r[0] == 1, item.limit.limit(), r[1], r[2], r[3]))
            .collect();
        Ok(Ok((reply[0] == 1, decisions)))
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let slot = &self.slots[self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(conn) = slot.load_full() {
            return Ok(MultiplexedConnection::clone(&conn));
        }
        let pooled = self
            .pool
            .get()
            .await
            .map_err(|e| RedisError::Pool(e.to_string()))?;
        let conn = deadpool_redis::Connection::take(pooled);
        slot.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    async fn eval(&self, call: &ScriptCall) -> Result<Vec<u64>, RedisError> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.sha)
            .arg(call.keys.len())
            .arg(&call.keys)
            .arg(&call.args);
        match cmd.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.code() == Some("NOSCRIPT") => {
                // Redis restarted or flushed its script cache: EVAL loads the script again.
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(DECIDE_SCRIPT)
                    .arg(call.keys.len())
                    .arg(&call.keys)
                    .arg(&call.args);
                Ok(cmd.query_async(&mut conn).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a key's state under every algorithm, and unlists it from the index of the
    /// identity that its hash tag names, which lists it when that identity created it.
    /// A key that an admin created under another identity's tag stays in the admin's
    /// index, taking room from its quota, until the key's expiry passes.
    pub async fn reset(
        &self,
        namespace: &str,
        key: &str,
        limits: &[Limit],
    ) -> Result<(), RedisError> {
        let keys: Vec<String> = limits
            .iter()
            .map(|l| self.redis_key(namespace, key, l))
            .collect();
        let del = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| RedisError::Pool(e.to_string()))?;
            let tag = hash_tag(key);
            redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(&keys)
                .ignore()
                .cmd("ZREM")
                .arg(self.index_name(tag, tag))
                .arg(&keys)
                .ignore()
                .query_async::<()>(&mut *conn)
                .await?;
            Ok::<_, RedisError>(())
        };
        match tokio::time::timeout(self.config.timeout, del).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::Timeout(self.config.timeout)),
        }
    }

    /// Opens the breaker and, if it was closed, starts the probe that will close it.
    fn trip(&self) {
        // Cached connections may be dead (a restarted server); new ones come from the pool,
        // which checks them, once the probe has reached Redis.
        for slot in &*self.slots {
            slot.store(None);
        }
        if self.breaker.open.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(url = %self.config.url, "redis unreachable; rate-limit policies use their failure mode");
        let pool = self.pool.clone();
        let breaker = Arc::clone(&self.breaker);
        let (interval, timeout) = (self.config.probe_interval, self.config.timeout);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let ping = async {
                    let mut conn = pool.get().await.ok()?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut *conn)
                        .await
                        .ok()
                };
                if let Ok(Some(_)) = tokio::time::timeout(timeout, ping).await {
                    breaker.open.store(false, Ordering::Release);
                    tracing::info!("redis reachable again");
                    return;
                }
            }
        });
    }
}
