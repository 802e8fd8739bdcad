//! Security events that happen outside any RPC: refused TLS handshakes and
//! failed authentications. They are logged as structured events so that an
//! operator can alert on them, counted in the metrics, and appended to the
//! audit log (kind `tls_handshake` or `authentication`, the reason in the
//! summary) when auditing is on.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use audit::{AuditLog, Entry, Kind};

use crate::layers::audit::{append, clip};

#[derive(Debug)]
pub(crate) enum SecurityEvent {
    HandshakeRefused {
        peer: SocketAddr,
        reason: String,
    },
    AuthenticationFailed {
        peer: Option<SocketAddr>,
        method: String,
        reason: String,
    },
}

/// Where security events go. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Events {
    audit: Option<AuditLog>,
}

impl Events {
    /// Events that also go to `audit`, when it is set.
    pub(crate) fn with_audit(audit: Option<AuditLog>) -> Self {
        Self { audit }
    }

    pub(crate) fn record(&self, event: SecurityEvent) {
        self.audit(&event);
        match event {
            SecurityEvent::HandshakeRefused { peer, reason } => {
                tracing::warn!(target: "cordon::security", %peer, %reason, "tls handshake refused");
            }
            SecurityEvent::AuthenticationFailed {
                peer,
                method,
                reason,
            } => {
                tracing::warn!(
                    target: "cordon::security",
                    peer = ?peer,
                    %method,
                    %reason,
                    "authentication failed"
                );
            }
        }
    }

    /// Counts the event and appends it to the audit log on a task of its
    /// own: nobody waits for an acknowledgement of a refusal.
    fn audit(&self, event: &SecurityEvent) {
        let (kind, peer, method, reason) = match event {
            SecurityEvent::HandshakeRefused { peer, reason } => {
                metrics::counter!("cordon_tls_handshake_failures_total").increment(1);
                (Kind::TlsHandshake, Some(*peer), "", reason)
            }
            SecurityEvent::AuthenticationFailed {
                peer,
                method,
                reason,
            } => {
                metrics::counter!("cordon_authentication_failures_total").increment(1);
                (Kind::Authentication, *peer, method.as_str(), reason)
            }
        };
        let Some(log) = &self.audit else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let entry = Entry {
            time_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            identity: "anonymous".to_owned(),
            auth_method: String::new(),
            method: clip(method),
            tool: String::new(),
            request_sha256: String::new(),
            status: "UNAUTHENTICATED".to_owned(),
            summary: clip(reason),
            duration_us: 0,
            peer: peer.map(|p| p.to_string()).unwrap_or_default(),
            sandboxed: false,
            rate_limited: false,
            trust_level: String::new(),
            kind,
        };
        let log = log.clone();
        runtime.spawn(async move { append(&log, entry).await });
    }
}
