//! The in-memory backend: sharded maps, a monotonic clock, and key caps that keep one
//! owner's keys from taking another's room.
//!
//! Every stored key has an [`Owner`]. Keys of the server's own limits live in capacity
//! of their own (`server_keys`), which no caller's key can take; a caller's keys count
//! against that identity's quota (`max_keys_per_identity`) and against the room shared
//! by all callers (`max_keys`). A key that does not fit is refused with a
//! [`CapacityError`], never with a denial: a denial would report a `retry_after` that
//! belongs to nobody's limit, and would be counted as the limit's work.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use parking_lot::{Mutex, MutexGuard};

use crate::algorithm::{RateAlgorithm, State};
use crate::limit::{Decision, Limit};

/// Tuning of the in-memory backend.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Number of independently locked shards; rounded up to a power of two.
    pub shards: usize,
    /// Most keys held at once for callers, all identities together.
    pub max_keys: usize,
    /// Most keys one identity may hold at once. Below `max_keys`, so that no single
    /// identity can take all the callers' room.
    pub max_keys_per_identity: usize,
    /// Keys set aside for the server's own limits ([`Owner::Server`]); callers' keys
    /// never use them.
    pub server_keys: usize,
    /// How often each shard drops keys whose state has returned to a fresh one.
    pub sweep_interval: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            shards: 64,
            max_keys: 1_000_000,
            max_keys_per_identity: 10_000,
            server_keys: 100_000,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// The table-wide sweep that a refused key triggers runs at most this often, so a flood
/// of new keys costs at most one scan of every shard per interval.
const FULL_SWEEP_GAP_US: u64 = 10_000;

/// Who a key is held for, which decides the capacity a new key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner<'a> {
    /// The server's own limits, such as Sandbox.Run's per-tool limits: keys that the
    /// server chooses, bounded by identities times tools, kept in reserved capacity.
    Server,
    /// A key chosen by a caller, counted against this identity's quota.
    Identity(&'a str),
}

/// Why a new key could not be stored. Keys already stored are decided as always.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapacityError {
    #[error("identity {identity:?} already holds its quota of {quota} rate-limit keys")]
    IdentityQuota { identity: String, quota: usize },
    #[error("the rate-limit store already holds its maximum of {max} keys for callers")]
    CallersFull { max: usize },
    #[error(
        "the rate-limit store already holds its maximum of {max} keys for the server's own limits"
    )]
    ServerFull { max: usize },
    /// Raised by the Redis backend, whose quota is a setting of its own.
    #[error("identity {identity:?} already holds its quota of {quota} rate-limit keys in redis")]
    RedisIdentityQuota { identity: String, quota: usize },
}

struct Entry {
    hash: u64,
    /// `namespace`, a unit separator, then the caller's key.
    key: Box<str>,
    state: State,
    expires_at: u64,
    /// The identity charged for this key; `None` for the server's own keys.
    owner: Option<Arc<str>>,
}

impl Entry {
    fn matches(&self, namespace: &str, key: &str) -> bool {
        let k = self.key.as_bytes();
        k.len() == namespace.len() + 1 + key.len()
            && k.starts_with(namespace.as_bytes())
            && k[namespace.len()] == SEPARATOR
            && k.ends_with(key.as_bytes())
    }
}

const SEPARATOR: u8 = 0x1f;

struct Table {
    map: HashTable<Entry>,
    next_sweep: u64,
}

/// How many keys each owner holds, across all shards.
#[derive(Default)]
struct Accounts {
    server: usize,
    callers: usize,
    per_identity: HashMap<Arc<str>, usize>,
}

/// The owners of keys a sweep or a reset removed, released from [`Accounts`] at once.
#[derive(Default)]
struct Released {
    server: usize,
    identities: Vec<Arc<str>>,
}

impl Released {
    fn add(&mut self, owner: Option<&Arc<str>>) {
        match owner {
            Some(identity) => self.identities.push(Arc::clone(identity)),
            None => self.server += 1,
        }
    }

    fn is_empty(&self) -> bool {
        self.server == 0 && self.identities.is_empty()
    }
}

/// How to roll back one item of a denied multi-key check: item index, guard index,
/// hash, and the entry's previous state and expiry (`None` if the item inserted it).
type Undo = (usize, usize, u64, Option<(State, u64)>);

/// Cache-line aligned so that two shards' locks never share a line.
#[repr(align(128))]
struct Shard(Mutex<Table>);

/// One item of an all-or-nothing in-memory check.
#[derive(Debug, Clone, Copy)]
pub struct MemoryItem<'a> {
    pub owner: Owner<'a>,
    pub namespace: &'a str,
    pub key: &'a str,
    pub limit: &'a Limit,
    pub cost: u64,
}

/// Sharded in-memory state for every key. There is no global lock on the decision
/// path: a check locks the one shard its key hashes to, and only storing or dropping a
/// key also takes the lock of the key counts, after the shard's.
pub struct MemoryBackend {
    shards: Box<[Shard]>,
    mask: usize,
    hasher: DefaultHashBuilder,
    accounts: Mutex<Accounts>,
    max_callers: usize,
    max_per_identity: usize,
    max_server: usize,
    sweep_us: u64,
    next_full_sweep: AtomicU64,
    clock: quanta::Clock,
    start: quanta::Instant,
    overflowed: AtomicU64,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("shards", &self.shards.len())
            .field("max_keys", &self.max_callers)
            .field("max_keys_per_identity", &self.max_per_identity)
            .field("server_keys", &self.max_server)
            .finish_non_exhaustive()
    }
}

impl MemoryBackend {
    pub fn new(config: &MemoryConfig) -> Self {
        let n = config.shards.max(1).next_power_of_two();
        // quanta reads the TSC where it is invariant (several times cheaper than
        // `Instant::now`, which dominates a decision otherwise) and guarantees that one
        // `Clock` never goes backwards.
        let clock = quanta::Clock::new();
        let shards = (0..n)
            .map(|_| {
                Shard(Mutex::new(Table {
                    map: HashTable::new(),
                    next_sweep: 0,
                }))
            })
            .collect();
        Self {
            shards,
            mask: n - 1,
            hasher: DefaultHashBuilder::default(),
            accounts: Mutex::default(),
            max_callers: config.max_keys,
            max_per_identity: config.max_keys_per_identity,
            max_server: config.server_keys,
            sweep_us: u64::try_from(config.sweep_interval.as_micros()).unwrap_or(u64::MAX),
            next_full_sweep: AtomicU64::new(0),
            start: clock.now(),
            clock,
            overflowed: AtomicU64::new(0),
        }
    }

    /// Microseconds on this backend's monotonic clock.
    #[inline]
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.clock.now().duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    #[inline]
    fn locate(&self, namespace: &str, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one((namespace, key));
        // hashbrown uses the low bits for the bucket and the top seven as a tag, so the
        // shard comes from bits in between.
        (hash, (hash >> 32) as usize & self.mask)
    }

    /// Decides one request. A cost above the limit's capacity can never be admitted:
    /// it is denied with `retry_after` of `Duration::MAX` and consumes nothing. A new
    /// key that its owner has no room for is refused with a [`CapacityError`].
    #[inline]
    pub fn check(
        &self,
        owner: Owner<'_>,
        namespace: &str,
        key: &str,
        limit: &Limit,
        cost: u64,
    ) -> Result<Decision, CapacityError> {
        let now = self.now_us();
        let oversized = cost > limit.capacity();
        let cost = if oversized { 0 } else { cost };
        let (hash, shard) = self.locate(namespace, key);
        let mut table = self.shards[shard].0.lock();
        if let Some(e) = table.map.find_mut(hash, |e| e.matches(namespace, key)) {
            if e.state.algorithm() != limit.algorithm() {
                e.state = State::new(limit.algorithm());
            }
            let d = e.state.decide(limit, now, cost);
            e.expires_at = e.state.expires_at(limit);
            return Ok(deny_oversized(d, oversized));
        }
        let mut state = State::new(limit.algorithm());
        let d = state.decide(limit, now, cost);
        // A fresh state that consumed nothing is still fresh: no need to store it.
        if cost == 0 || !d.allowed {
            return Ok(deny_oversized(d, oversized));
        }
        let owner = self.admit_new_key(&mut table, now, owner)?;
        let expires_at = state.expires_at(limit);
        table.map.insert_unique(
            hash,
            Entry {
                hash,
                key: join(namespace, key),
                state,
                expires_at,
                owner,
            },
            |e| e.hash,
        );
        Ok(d)
    }

    /// Charges one more key to `owner`, or says whose capacity is used up.
    ///
    /// Refusing new keys keeps every stored key's count intact: evicting a live key
    /// instead would hand its owner a fresh quota. Keys whose windows have passed still
    /// count until a sweep drops them, so a refusal first sweeps every shard it can lock
    /// without waiting (at most once per [`FULL_SWEEP_GAP_US`]) and tries again.
    fn admit_new_key(
        &self,
        table: &mut Table,
        now: u64,
        owner: Owner<'_>,
    ) -> Result<Option<Arc<str>>, CapacityError> {
        if now >= table.next_sweep {
            self.sweep_table(table, now);
        }
        let refused = match self.charge(owner) {
            Ok(charged) => return Ok(charged),
            Err(e) => e,
        };
        let gap = self.next_full_sweep.load(Ordering::Relaxed);
        if now >= gap
            && self
                .next_full_sweep
                .compare_exchange(
                    gap,
                    now + FULL_SWEEP_GAP_US,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.sweep_table(table, now);
            // `try_lock` cannot wait for a shard this thread already holds (the caller's,
            // or another one of a multi-key check), nor for one whose holder waits for us.
            for shard in &self.shards {
                if let Some(mut other) = shard.0.try_lock() {
                    self.sweep_table(&mut other, now);
                }
            }
            if let Ok(charged) = self.charge(owner) {
                return Ok(charged);
            }
        }
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        Err(refused)
    }

    fn charge(&self, owner: Owner<'_>) -> Result<Option<Arc<str>>, CapacityError> {
        let mut accounts = self.accounts.lock();
        let identity = match owner {
            Owner::Server => {
                if accounts.server >= self.max_server {
                    return Err(CapacityError::ServerFull {
                        max: self.max_server,
                    });
                }
                accounts.server += 1;
                return Ok(None);
            }
            Owner::Identity(identity) => identity,
        };
        let held = accounts.per_identity.get(identity).copied().unwrap_or(0);
        if held >= self.max_per_identity {
            return Err(CapacityError::IdentityQuota {
                identity: identity.to_owned(),
                quota: self.max_per_identity,
            });
        }
        if accounts.callers >= self.max_callers {
            return Err(CapacityError::CallersFull {
                max: self.max_callers,
            });
        }
        accounts.callers += 1;
        // Every key of one identity shares one allocation of its name.
        let name = match accounts.per_identity.get_key_value(identity) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(identity),
        };
        *accounts.per_identity.entry(Arc::clone(&name)).or_insert(0) += 1;
        Ok(Some(name))
    }

    fn release(&self, released: Released) {
        if released.is_empty() {
            return;
        }
        let mut accounts = self.accounts.lock();
        accounts.server -= released.server;
        accounts.callers -= released.identities.len();
        for identity in released.identities {
            if let Some(count) = accounts.per_identity.get_mut(&identity) {
                *count -= 1;
                if *count == 0 {
                    // Identities that hold nothing are forgotten, so the quota table is
                    // bounded by the keys rather than by every identity ever seen.
                    accounts.per_identity.remove(&identity);
                }
            }
        }
    }

    /// Drops the table's keys whose state has returned to a fresh one.
    fn sweep_table(&self, table: &mut Table, now: u64) {
        let mut released = Released::default();
        table.map.retain(|e| {
            let keep = e.expires_at > now;
            if !keep {
                released.add(e.owner.as_ref());
            }
            keep
        });
        // Give memory back after a flood instead of keeping the high-water mark.
        if table.map.capacity() > 64 && table.map.len() * 4 < table.map.capacity() {
            table.map.shrink_to(table.map.len() * 2, |e| e.hash);
        }
        table.next_sweep = now.saturating_add(self.sweep_us);
        self.release(released);
    }

    /// Decides all items or none: either every item is admitted and consumed, or nothing
    /// is consumed. Items are decided in order, so two items on one key add up. A new key
    /// that its owner has no room for refuses the whole check, consuming nothing.
    pub fn check_many(
        &self,
        items: &[MemoryItem<'_>],
    ) -> Result<(bool, Vec<Decision>), CapacityError> {
        let now = self.now_us();
        let located: Vec<(u64, usize)> = items
            .iter()
            .map(|i| self.locate(i.namespace, i.key))
            .collect();
        let mut shard_ids: Vec<usize> = located.iter().map(|&(_, s)| s).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        // Locking in ascending shard order cannot deadlock with another check_many, and a
        // single check holds only one lock.
        let mut guards: Vec<MutexGuard<'_, Table>> =
            shard_ids.iter().map(|&s| self.shards[s].0.lock()).collect();
        let mut undo: Vec<Undo> = Vec::new();
        let mut decisions = Vec::with_capacity(items.len());
        let mut all = true;
        let mut refused = None;
        for (index, (item, &(hash, shard))) in items.iter().zip(&located).enumerate() {
            let g = shard_ids.binary_search(&shard).unwrap_or_default();
            let table = &mut guards[g];
            let (ns, key, limit) = (item.namespace, item.key, item.limit);
            let oversized = item.cost > limit.capacity();
            let cost = if oversized { 0 } else { item.cost };
            let d = if let Some(e) = table.map.find_mut(hash, |e| e.matches(ns, key)) {
                undo.push((index, g, hash, Some((e.state.clone(), e.expires_at))));
                if e.state.algorithm() != limit.algorithm() {
                    e.state = State::new(limit.algorithm());
                }
                let d = e.state.decide(limit, now, cost);
                e.expires_at = e.state.expires_at(limit);
                d
            } else {
                let owner = match self.admit_new_key(table, now, item.owner) {
                    Ok(owner) => owner,
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                };
                let mut state = State::new(limit.algorithm());
                let d = state.decide(limit, now, cost);
                let expires_at = state.expires_at(limit);
                table.map.insert_unique(
                    hash,
                    Entry {
                        hash,
                        key: join(ns, key),
                        state,
                        expires_at,
                        owner,
                    },
                    |e| e.hash,
                );
                undo.push((index, g, hash, None));
                d
            };
            let d = deny_oversized(d, oversized);
            all &= d.allowed;
            decisions.push(d);
        }
        if !all || refused.is_some() {
            let mut released = Released::default();
            for (index, g, hash, previous) in undo.into_iter().rev() {
                let item = &items[index];
                let table = &mut guards[g];
                let Ok(entry) = table
                    .map
                    .find_entry(hash, |e| e.matches(item.namespace, item.key))
                else {
                    continue;
                };
                match previous {
                    Some((state, expires_at)) => {
                        let e = entry.into_mut();
                        e.state = state;
                        e.expires_at = expires_at;
                    }
                    None => {
                        let (removed, _) = entry.remove();
                        released.add(removed.owner.as_ref());
                    }
                }
            }
            drop(guards);
            self.release(released);
        }
        match refused {
            Some(e) => Err(e),
            None => Ok((all, decisions)),
        }
    }

    /// Forgets a key's state.
    pub fn reset(&self, namespace: &str, key: &str) {
        let (hash, shard) = self.locate(namespace, key);
        let mut table = self.shards[shard].0.lock();
        if let Ok(e) = table.map.find_entry(hash, |e| e.matches(namespace, key)) {
            let (removed, _) = e.remove();
            let mut released = Released::default();
            released.add(removed.owner.as_ref());
            drop(table);
            self.release(released);
        }
    }

    /// Drops every key whose state is back to fresh, in every shard.
    pub fn sweep(&self) {
        let now = self.now_us();
        for shard in &self.shards {
            self.sweep_table(&mut shard.0.lock(), now);
        }
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys currently charged to one identity.
    pub fn keys_of(&self, identity: &str) -> usize {
        self.accounts
            .lock()
            .per_identity
            .get(identity)
            .copied()
            .unwrap_or(0)
    }

    /// New keys refused because their owner's capacity was used up.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

fn join(namespace: &str, key: &str) -> Box<str> {
    let mut s = String::with_capacity(namespace.len() + 1 + key.len());
    s.push_str(namespace);
    s.push(char::from(SEPARATOR));
    s.push_str(key);
    s.into_boxed_str()
}

fn deny_oversized(d: Decision, oversized: bool) -> Decision {
    if oversized {
        Decision {
            allowed: false,
            retry_after: Duration::MAX,
            ..d
        }
    } else {
        d
    }
}
