use super::{RateAlgorithm, ceil_div};
use crate::limit::{Decision, Limit};

/// GCRA: one theoretical arrival time per key.
///
/// Times are kept in units of `1 / limit` microseconds so that the emission interval
/// (`window / limit`) is the exact integer `window`. The scale is stored with the state
/// so that a reload changing the limit converts the arrival time instead of corrupting it.
#[derive(Debug, Clone, Default)]
pub struct Gcra {
    tat: u128,
    scale: u64,
}

/// Narrows a difference that validation bounds by `(limit + burst) * window <= 2^53`, so
/// divisions run on u64, several times faster than on u128.
fn narrow(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl RateAlgorithm for Gcra {
    fn decide(&mut self, limit: &Limit, now: u64, cost: u64) -> Decision {
        let rate = u128::from(limit.limit());
        if self.scale != limit.limit() {
            if self.scale != 0 {
                self.tat = (self.tat * rate).div_ceil(u128::from(self.scale));
            }
            self.scale = limit.limit();
        }
        let w = u128::from(limit.window_us());
        let tolerance = u128::from(limit.capacity()) * w;
        let now_s = u128::from(now) * rate;
        let base = self.tat.max(now_s);
        let next = base + u128::from(cost) * w;
        let allowed = next - now_s <= tolerance;
        let retry = if allowed {
            if cost > 0 {
                self.tat = next;
            }
            0
        } else {
            ceil_div(narrow(next - now_s - tolerance), limit.limit())
        };
        let backlog = self.tat.max(now_s) - now_s;
        let remaining = narrow(tolerance - backlog) / limit.window_us();
        Decision::from_us(
            allowed,
            limit.limit(),
            remaining,
            ceil_div(narrow(backlog), limit.limit()),
            retry,
        )
    }

    fn expires_at(&self, limit: &Limit) -> u64 {
        narrow(self.tat.div_ceil(u128::from(limit.limit())))
    }
}
