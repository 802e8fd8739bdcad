//! Per-policy counters, kept across reloads.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one policy.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) allowed: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) backend_errors: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn record(&self, allowed: bool) {
        let c = if allowed { &self.allowed } else { &self.denied };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, policy: &str) -> PolicyStats {
        PolicyStats {
            policy: policy.to_owned(),
            allowed: self.allowed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            backend_errors: self.backend_errors.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of one policy's counters since the limiter started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStats {
    pub policy: String,
    /// Decisions that admitted the request (including fail-open admissions).
    pub allowed: u64,
    /// Decisions that denied the request (including fail-closed denials).
    pub denied: u64,
    /// Decisions for which Redis gave no answer: an error, a timeout, or an open breaker.
    pub backend_errors: u64,
    /// Decisions made by the local in-memory limiter because Redis gave no answer.
    pub fallbacks: u64,
}
