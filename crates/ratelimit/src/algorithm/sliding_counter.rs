use super::RateAlgorithm;
use crate::limit::{Decision, Limit};

/// Sliding-window counter: the current fixed window's count plus the previous one's,
/// weighted by how much of it still overlaps the trailing window.
///
/// All arithmetic is scaled by the window length so the estimate is an exact integer.
#[derive(Debug, Clone, Default)]
pub struct SlidingCounter {
    window_us: u64,
    index: u64,
    current: u64,
    previous: u64,
}

impl SlidingCounter {
    fn roll(&mut self, w: u64, index: u64) {
        if w != self.window_us {
            // A reload that changes the window changes what an index means.
            *self = Self {
                window_us: w,
                index,
                current: 0,
                previous: 0,
            };
        } else if index == self.index + 1 {
            self.previous = self.current;
            self.current = 0;
            self.index = index;
        } else if index > self.index {
            self.previous = 0;
            self.current = 0;
            self.index = index;
        }
    }
}

impl RateAlgorithm for SlidingCounter {
    fn decide(&mut self, limit: &Limit, now: u64, cost: u64) -> Decision {
        let w = limit.window_us();
        let index = now / w;
        self.roll(w, index);
        let elapsed = now - index * w;
        let max = limit.limit();
        let capacity = max * w;
        let estimate = self.previous * (w - elapsed) + self.current * w;
        let allowed = estimate + cost * w <= capacity;
        if allowed {
            self.current += cost;
        }
        let estimate = self.previous * (w - elapsed) + self.current * w;
        let remaining = capacity.saturating_sub(estimate) / w;
        let reset = if self.current > 0 {
            (index + 2) * w - now
        } else if self.previous > 0 {
            (index + 1) * w - now
        } else {
            0
        };
        if allowed {
            return Decision::from_us(true, max, remaining, reset, 0);
        }
        let to_next = w - elapsed;
        let retry = if self.current + cost <= max {
            // Waiting inside this window is enough: the previous window's weight fades.
            let room = (max - self.current - cost) * w;
            to_next.saturating_sub(room / self.previous.max(1))
        } else {
            // Only the next window helps; there this window's count becomes the weighted one.
            let room = max.saturating_sub(cost) * w;
            to_next + w.saturating_sub(room / self.current.max(1))
        };
        Decision::from_us(false, max, remaining, reset, retry)
    }

    fn expires_at(&self, _limit: &Limit) -> u64 {
        let w = self.window_us;
        if self.current > 0 {
            (self.index + 2) * w
        } else if self.previous > 0 {
            (self.index + 1) * w
        } else {
            0
        }
    }
}
