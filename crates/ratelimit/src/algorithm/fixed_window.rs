use super::RateAlgorithm;
use crate::limit::{Decision, Limit};

/// Fixed window: one counter per window aligned to multiples of the window length.
///
/// Kept for compatibility; across a window boundary it admits up to twice the limit.
#[derive(Debug, Clone, Default)]
pub struct FixedWindow {
    window_us: u64,
    index: u64,
    count: u64,
}

impl RateAlgorithm for FixedWindow {
    fn decide(&mut self, limit: &Limit, now: u64, cost: u64) -> Decision {
        let w = limit.window_us();
        let index = now / w;
        // A reload that changes the window changes what an index means, so start over.
        if index > self.index || w != self.window_us {
            *self = Self {
                window_us: w,
                index,
                count: 0,
            };
        }
        let max = limit.limit();
        let end = (index + 1) * w - now;
        if self.count + cost <= max {
            self.count += cost;
            let reset = if self.count > 0 { end } else { 0 };
            return Decision::from_us(true, max, max - self.count, reset, 0);
        }
        Decision::from_us(false, max, max.saturating_sub(self.count), end, end)
    }

    fn expires_at(&self, _limit: &Limit) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.index + 1) * self.window_us
        }
    }
}
