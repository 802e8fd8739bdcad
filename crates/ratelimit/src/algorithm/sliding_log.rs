use std::collections::VecDeque;

use super::RateAlgorithm;
use crate::limit::{Decision, Limit};

/// Exact sliding-window log: every admitted request inside the trailing window.
///
/// Requests admitted in the same microsecond share one entry, so memory is bounded by
/// the window in microseconds and by the limit, whichever is smaller.
#[derive(Debug, Clone, Default)]
pub struct SlidingLog {
    entries: VecDeque<(u64, u64)>,
    used: u64,
}

impl SlidingLog {
    fn reset_after(&self, window: u64, now: u64) -> u64 {
        self.entries
            .back()
            .map_or(0, |&(ts, _)| (ts + window).saturating_sub(now))
    }
}

impl RateAlgorithm for SlidingLog {
    fn decide(&mut self, limit: &Limit, now: u64, cost: u64) -> Decision {
        let window = limit.window_us();
        // An entry at `ts` covers the half-open interval [ts, ts + window).
        while let Some(&(ts, c)) = self.entries.front() {
            if ts + window > now {
                break;
            }
            self.entries.pop_front();
            self.used -= c;
        }
        let max = limit.limit();
        if self.used + cost <= max {
            if cost > 0 {
                match self.entries.back_mut() {
                    Some((ts, c)) if *ts == now => *c += cost,
                    _ => self.entries.push_back((now, cost)),
                }
                self.used += cost;
            }
            let reset = self.reset_after(window, now);
            return Decision::from_us(true, max, max - self.used, reset, 0);
        }
        let reset = self.reset_after(window, now);
        let need = self.used + cost - max;
        let mut freed = 0;
        let mut retry = reset;
        for &(ts, c) in &self.entries {
            freed += c;
            if freed >= need {
                retry = (ts + window).saturating_sub(now);
                break;
            }
        }
        Decision::from_us(false, max, max.saturating_sub(self.used), reset, retry)
    }

    fn expires_at(&self, limit: &Limit) -> u64 {
        self.entries
            .back()
            .map_or(0, |&(ts, _)| ts + limit.window_us())
    }
}
