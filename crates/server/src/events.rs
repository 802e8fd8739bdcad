//! Security events that happen outside any RPC: refused TLS handshakes and
//! failed authentications. They are logged as structured events so that an
//! operator can alert on them.

use std::net::SocketAddr;

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
pub(crate) struct Events {}

impl Events {
    pub(crate) fn record(&self, event: SecurityEvent) {
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
}
