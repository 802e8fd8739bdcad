use super::{RateAlgorithm, ceil_div};
use crate::limit::{Decision, Limit};

/// Token bucket holding `limit + burst` tokens, refilled at `limit` per window.
///
/// The state is the bucket's debt (tokens missing from a full bucket) scaled by the
/// window in microseconds, so refilling `limit` tokens per window is exactly `limit`
/// scaled units per microsecond. A fresh bucket is full.
#[derive(Debug, Clone, Default)]
pub struct TokenBucket {
    last_us: u64,
    debt: u64,
    window_us: u64,
}

impl RateAlgorithm for TokenBucket {
    fn decide(&mut self, limit: &Limit, now: u64, cost: u64) -> Decision {
        let w = limit.window_us();
        let rate = limit.limit();
        if self.window_us != w {
            // Rescale the debt after a reload changed the window, keeping the tokens.
            if self.window_us != 0 {
                self.debt = ceil_div(self.debt, self.window_us) * w;
            }
            self.window_us = w;
        }
        let full = limit.capacity() * w;
        let refill = now.saturating_sub(self.last_us).saturating_mul(rate);
        self.debt = self.debt.saturating_sub(refill).min(full);
        self.last_us = now.max(self.last_us);
        let allowed = self.debt + cost * w <= full;
        let retry = if allowed {
            self.debt += cost * w;
            0
        } else {
            ceil_div(self.debt + cost * w - full, rate)
        };
        let remaining = (full - self.debt) / w;
        Decision::from_us(allowed, rate, remaining, ceil_div(self.debt, rate), retry)
    }

    fn expires_at(&self, limit: &Limit) -> u64 {
        self.last_us + ceil_div(self.debt, limit.limit())
    }
}
