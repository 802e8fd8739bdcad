//! The in-memory backend: sharded maps, a monotonic clock, and a key cap.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, MutexGuard};

use crate::algorithm::{RateAlgorithm, State};
use crate::limit::{Decision, Limit};

/// Tuning of the in-memory backend.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Number of independently locked shards; rounded up to a power of two.
    pub shards: usize,
    /// Most keys held at once, across all shards.
    pub max_keys: usize,
    /// How often each shard drops keys whose state has returned to a fresh one.
    pub sweep_interval: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            shards: 64,
            max_keys: 1_000_000,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// A shard never rescans a full table more often than this, so a flood of new keys
/// costs at most one scan per shard per interval.
const FULL_SWEEP_GAP_US: u64 = 10_000;

struct Entry {
    hash: u64,
    /// `namespace`, a unit separator, then the caller's key.
    key: Box<str>,
    state: State,
    expires_at: u64,
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
    next_full_sweep: u64,
    earliest_expiry: u64,
}

impl Table {
    fn sweep(&mut self, now: u64) {
        let mut earliest = u64::MAX;
        self.map.retain(|e| {
            let keep = e.expires_at > now;
            if keep {
                earliest = earliest.min(e.expires_at);
            }
            keep
        });
        self.earliest_expiry = earliest;
        // Give memory back after a flood instead of keeping the high-water mark.
        if self.map.capacity() > 64 && self.map.len() * 4 < self.map.capacity() {
            self.map.shrink_to(self.map.len() * 2, |e| e.hash);
        }
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
    pub namespace: &'a str,
    pub key: &'a str,
    pub limit: &'a Limit,
    pub cost: u64,
}

/// Sharded in-memory state for every key. There is no global lock: a check locks the
/// one shard its key hashes to.
pub struct MemoryBackend {
    shards: Box<[Shard]>,
    mask: usize,
    hasher: DefaultHashBuilder,
    per_shard_cap: usize,
    sweep_us: u64,
    clock: quanta::Clock,
    start: quanta::Instant,
    overflowed: AtomicU64,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("shards", &self.shards.len())
            .field("per_shard_cap", &self.per_shard_cap)
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
                    next_full_sweep: 0,
                    earliest_expiry: 0,
                }))
            })
            .collect();
        Self {
            shards,
            mask: n - 1,
            hasher: DefaultHashBuilder::default(),
            per_shard_cap: config.max_keys.div_ceil(n).max(1),
            sweep_us: u64::try_from(config.sweep_interval.as_micros()).unwrap_or(u64::MAX),
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
    /// it is denied with `retry_after` of `Duration::MAX` and consumes nothing.
    #[inline]
    pub fn check(&self, namespace: &str, key: &str, limit: &Limit, cost: u64) -> Decision {
        let now = self.now_us();
        self.check_at(namespace, key, limit, cost, now)
    }

    fn check_at(&self, namespace: &str, key: &str, limit: &Limit, cost: u64, now: u64) -> Decision {
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
            return deny_oversized(d, oversized);
        }
        let mut state = State::new(limit.algorithm());
        let d = state.decide(limit, now, cost);
        // A fresh state that consumed nothing is still fresh: no need to store it.
        if cost == 0 || !d.allowed {
            return deny_oversized(d, oversized);
        }
        match self.admit_new_key(&mut table, now) {
            Ok(()) => {
                let expires_at = state.expires_at(limit);
                table.map.insert_unique(
                    hash,
                    Entry {
                        hash,
                        key: join(namespace, key),
                        state,
                        expires_at,
                    },
                    |e| e.hash,
                );
                d
            }
            Err(retry_us) => self.overflow(limit, retry_us),
        }
    }

    /// Makes room for one more key, or says how long until room may appear.
    fn admit_new_key(&self, table: &mut MutexGuard<'_, Table>, now: u64) -> Result<(), u64> {
        let full = table.map.len() >= self.per_shard_cap;
        if now >= table.next_sweep || (full && now >= table.next_full_sweep) {
            table.sweep(now);
            table.next_sweep = now.saturating_add(self.sweep_us);
            table.next_full_sweep = now + FULL_SWEEP_GAP_US;
        }
        if table.map.len() < self.per_shard_cap {
            return Ok(());
        }
        let until_sweep = table.next_full_sweep.saturating_sub(now);
        Err(table.earliest_expiry.saturating_sub(now).max(until_sweep))
    }

    fn overflow(&self, limit: &Limit, retry_us: u64) -> Decision {
        // Refusing new keys while full keeps every stored key's count intact; evicting a
        // live key instead would hand its owner a fresh quota.
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        Decision::from_us(false, limit.limit(), 0, retry_us, retry_us)
    }

    /// Decides all items or none: either every item is admitted and consumed, or nothing
    /// is consumed. Items are decided in order, so two items on one key add up.
    pub fn check_many(&self, items: &[MemoryItem<'_>]) -> (bool, Vec<Decision>) {
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
                deny_oversized(d, oversized)
            } else {
                match self.admit_new_key(table, now) {
                    Ok(()) => {
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
                            },
                            |e| e.hash,
                        );
                        undo.push((index, g, hash, None));
                        deny_oversized(d, oversized)
                    }
                    Err(retry) => self.overflow(limit, retry),
                }
            };
            all &= d.allowed;
            decisions.push(d);
        }
        if !all {
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
                        entry.remove();
                    }
                }
            }
        }
        (all, decisions)
    }

    /// Forgets a key's state.
    pub fn reset(&self, namespace: &str, key: &str) {
        let (hash, shard) = self.locate(namespace, key);
        let mut table = self.shards[shard].0.lock();
        if let Ok(e) = table.map.find_entry(hash, |e| e.matches(namespace, key)) {
            e.remove();
        }
    }

    /// Drops every key whose state is back to fresh, in every shard.
    pub fn sweep(&self) {
        let now = self.now_us();
        for shard in &self.shards {
            let mut t = shard.0.lock();
            t.sweep(now);
            t.next_sweep = now.saturating_add(self.sweep_us);
        }
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests denied because every slot of their shard held a live key.
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
