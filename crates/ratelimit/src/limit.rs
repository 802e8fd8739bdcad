//! Validated limits and the decisions made against them.

use std::time::Duration;

use serde::Deserialize;

/// Largest value of `(limit + burst) * window_in_microseconds`.
///
/// Every algorithm does exact integer arithmetic on this product, and the Redis
/// script does the same arithmetic on Lua doubles, which are exact only up to 2^53.
pub const MAX_SCALED: u64 = 1 << 53;

/// Largest limit of a sliding-window log, which stores one entry per admitted unit.
pub const MAX_LOG_LIMIT: u64 = 100_000;

/// How a limit counts requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Exact: remembers every admitted request inside the trailing window.
    SlidingWindowLog,
    /// Approximate in O(1) memory: weights the previous fixed window by its overlap.
    SlidingWindowCounter,
    /// Refills `limit` tokens per window into a bucket of `limit + burst` tokens.
    TokenBucket,
    /// The generic cell rate algorithm: the token bucket's decisions from a single timestamp.
    Gcra,
    /// Counts per aligned window; admits up to twice the limit across a window boundary.
    FixedWindow,
}

impl Algorithm {
    /// One-letter code used in storage keys and in the Redis script arguments.
    pub fn code(self) -> &'static str {
        match self {
            Self::SlidingWindowLog => "l",
            Self::SlidingWindowCounter => "c",
            Self::TokenBucket => "b",
            Self::Gcra => "g",
            Self::FixedWindow => "f",
        }
    }

    /// Whether `burst` means anything for this algorithm.
    pub fn uses_burst(self) -> bool {
        matches!(self, Self::TokenBucket | Self::Gcra)
    }
}

/// Why a limit was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    #[error("limit must be at least 1")]
    ZeroLimit,
    #[error("window must be at least 1 ms")]
    WindowTooShort,
    #[error("burst is only meaningful for token_bucket and gcra")]
    BurstNotSupported,
    #[error("(limit + burst) * window in microseconds must not exceed 2^53")]
    TooLarge,
    #[error("a sliding_window_log limit must not exceed {MAX_LOG_LIMIT}")]
    LogTooLarge,
}

/// A validated limit: `limit` units per `window`, plus `burst` extra capacity for the
/// bucket algorithms. Backends never re-check these invariants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    algorithm: Algorithm,
    limit: u64,
    window_us: u64,
    burst: u64,
}

impl Limit {
    /// Builds a limit, checking that every backend can compute it exactly.
    pub fn new(
        algorithm: Algorithm,
        limit: u64,
        window: Duration,
        burst: u64,
    ) -> Result<Self, LimitError> {
        if limit == 0 {
            return Err(LimitError::ZeroLimit);
        }
        if window < Duration::from_millis(1) {
            return Err(LimitError::WindowTooShort);
        }
        if burst != 0 && !algorithm.uses_burst() {
            return Err(LimitError::BurstNotSupported);
        }
        if algorithm == Algorithm::SlidingWindowLog && limit > MAX_LOG_LIMIT {
            return Err(LimitError::LogTooLarge);
        }
        let window_us = u64::try_from(window.as_micros()).map_err(|_| LimitError::TooLarge)?;
        let scaled = limit
            .checked_add(burst)
            .and_then(|c| c.checked_mul(window_us))
            .ok_or(LimitError::TooLarge)?;
        if scaled > MAX_SCALED {
            return Err(LimitError::TooLarge);
        }
        Ok(Self {
            algorithm,
            limit,
            window_us,
            burst,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        Duration::from_micros(self.window_us)
    }

    pub fn window_us(&self) -> u64 {
        self.window_us
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The largest cost a single request can ever be granted.
    pub fn capacity(&self) -> u64 {
        self.limit + self.burst
    }
}

/// The answer to one check. A denied request never consumes quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The configured limit (units per window, without burst).
    pub limit: u64,
    /// Units that could still be spent right now.
    pub remaining: u64,
    /// Time until the key is back to its full quota.
    pub reset_after: Duration,
    /// When denied: time until the same request would be admitted; zero when allowed.
    pub retry_after: Duration,
}

impl Decision {
    pub(crate) fn from_us(
        allowed: bool,
        limit: u64,
        remaining: u64,
        reset_after_us: u64,
        retry_after_us: u64,
    ) -> Self {
        Self {
            allowed,
            limit,
            remaining,
            reset_after: Duration::from_micros(reset_after_us),
            retry_after: Duration::from_micros(retry_after_us),
        }
    }
}
