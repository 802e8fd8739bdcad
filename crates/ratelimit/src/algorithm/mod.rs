//! The five algorithms as pure state machines over a microsecond clock.
//!
//! Each algorithm is a small state type implementing [`RateAlgorithm`]. The state
//! machines never read a clock themselves, so the in-memory backend drives them with a
//! monotonic clock and the property tests drive them with arbitrary traces.

mod fixed_window;
mod gcra;
mod sliding_counter;
mod sliding_log;
mod token_bucket;

pub use fixed_window::FixedWindow;
pub use gcra::Gcra;
pub use sliding_counter::SlidingCounter;
pub use sliding_log::SlidingLog;
pub use token_bucket::TokenBucket;

use crate::limit::{Algorithm, Decision, Limit};

/// A rate-limiting algorithm's per-key state.
///
/// Callers guarantee that `now_us` never decreases for one state and that `cost` does
/// not exceed [`Limit::capacity`]. A cost of zero peeks: it reports the decision a
/// request would get without consuming anything. A denied request consumes nothing.
pub trait RateAlgorithm {
    /// Decides whether `cost` units may be spent at `now_us`, consuming them if so.
    fn decide(&mut self, limit: &Limit, now_us: u64, cost: u64) -> Decision;

    /// The time from which this state is indistinguishable from a fresh one, so the
    /// key may be forgotten.
    fn expires_at(&self, limit: &Limit) -> u64;
}

/// Divides rounding up; `d` is never zero because limits and windows are at least 1.
pub(crate) fn ceil_div(n: u64, d: u64) -> u64 {
    n.div_ceil(d)
}

/// The state of one key under whichever algorithm its limit uses.
#[derive(Debug, Clone)]
pub enum State {
    SlidingWindowLog(SlidingLog),
    SlidingWindowCounter(SlidingCounter),
    TokenBucket(TokenBucket),
    Gcra(Gcra),
    FixedWindow(FixedWindow),
}

impl State {
    /// A fresh state: full quota.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::SlidingWindowLog => Self::SlidingWindowLog(SlidingLog::default()),
            Algorithm::SlidingWindowCounter => {
                Self::SlidingWindowCounter(SlidingCounter::default())
            }
            Algorithm::TokenBucket => Self::TokenBucket(TokenBucket::default()),
            Algorithm::Gcra => Self::Gcra(Gcra::default()),
            Algorithm::FixedWindow => Self::FixedWindow(FixedWindow::default()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::SlidingWindowLog(_) => Algorithm::SlidingWindowLog,
            Self::SlidingWindowCounter(_) => Algorithm::SlidingWindowCounter,
            Self::TokenBucket(_) => Algorithm::TokenBucket,
            Self::Gcra(_) => Algorithm::Gcra,
            Self::FixedWindow(_) => Algorithm::FixedWindow,
        }
    }
}

impl RateAlgorithm for State {
    #[inline]
    fn decide(&mut self, limit: &Limit, now_us: u64, cost: u64) -> Decision {
        match self {
            Self::SlidingWindowLog(s) => s.decide(limit, now_us, cost),
            Self::SlidingWindowCounter(s) => s.decide(limit, now_us, cost),
            Self::TokenBucket(s) => s.decide(limit, now_us, cost),
            Self::Gcra(s) => s.decide(limit, now_us, cost),
            Self::FixedWindow(s) => s.decide(limit, now_us, cost),
        }
    }

    #[inline]
    fn expires_at(&self, limit: &Limit) -> u64 {
        match self {
            Self::SlidingWindowLog(s) => s.expires_at(limit),
            Self::SlidingWindowCounter(s) => s.expires_at(limit),
            Self::TokenBucket(s) => s.expires_at(limit),
            Self::Gcra(s) => s.expires_at(limit),
            Self::FixedWindow(s) => s.expires_at(limit),
        }
    }
}
