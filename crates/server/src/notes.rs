//! Facts about one call that layers and services learn along the way (who
//! called, which tool, whether it was sandboxed or rate limited) and that the
//! audit layer records when the call ends.
//!
//! The audit layer puts a [`CallNotes`] into the request extensions before
//! anything else runs; without it (for example in a server built without
//! audit) every update is a no-op.

use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone)]
pub(crate) struct Notes {
    pub(crate) identity: Option<String>,
    pub(crate) auth_method: Option<&'static str>,
    pub(crate) tool: Option<String>,
    pub(crate) sandboxed: bool,
    pub(crate) rate_limited: bool,
    pub(crate) trust_level: Option<String>,
    /// A short, argument-free description of the outcome.
    pub(crate) summary: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CallNotes(Arc<Mutex<Notes>>);

impl CallNotes {
    pub(crate) fn update(&self, change: impl FnOnce(&mut Notes)) {
        // A poisoned lock only means another writer panicked mid-update; the
        // notes are still worth recording.
        let mut notes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut notes);
    }

    pub(crate) fn snapshot(&self) -> Notes {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Updates the notes of the call `request` belongs to, if it has any.
pub(crate) fn note<T>(request: &tonic::Request<T>, change: impl FnOnce(&mut Notes)) {
    if let Some(notes) = request.extensions().get::<CallNotes>() {
        notes.update(change);
    }
}
