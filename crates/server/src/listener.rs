//! The accept loop: TCP accept, TLS handshakes off the loop with a timeout,
//! and a stream of established connections for tonic.
//!
//! A client that stalls mid-handshake or sends garbage only ever occupies its
//! own task, never the accept loop, so other clients keep being served.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::events::{Events, SecurityEvent};
use crate::tls::TlsState;

/// What the server knows about the other end of a connection.
#[derive(Debug)]
pub(crate) struct PeerInfo {
    pub(crate) remote: SocketAddr,
    /// The verified end-entity client certificate, when one was presented.
    pub(crate) client_cert: Option<CertificateDer<'static>>,
    /// The identity read from `client_cert`, parsed on first use and then
    /// reused by every call on the connection.
    pub(crate) parsed_identity: OnceLock<Result<certgen::ClientIdentity, String>>,
}

/// An established TLS connection carrying its peer information to tonic.
#[derive(Debug)]
pub(crate) struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: Arc<PeerInfo>,
}

impl Connected for TlsConn {
    type ConnectInfo = Arc<PeerInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections until `shutdown` resolves, handing established TLS
/// connections to the returned stream.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Arc<TlsState>,
    handshake_timeout: Duration,
    events: Events,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(accept_loop(
        listener,
        tls,
        handshake_timeout,
        events,
        shutdown,
        tx,
    ));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsState>,
    handshake_timeout: Duration,
    events: Events,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Running out of file descriptors must not spin the loop or
                // stop the server: back off briefly and keep accepting.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let tx = tx.clone();
        let events = events.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let client_cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| cert.clone().into_owned());
                    let peer = Arc::new(PeerInfo {
                        remote,
                        client_cert,
                        parsed_identity: OnceLock::new(),
                    });
                    let _ = tx.send(Ok(TlsConn { stream, peer })).await;
                }
                Ok(Err(error)) => events.record(SecurityEvent::HandshakeRefused {
                    peer: remote,
                    reason: error.to_string(),
                }),
                Err(_) => events.record(SecurityEvent::HandshakeRefused {
                    peer: remote,
                    reason: format!("handshake not finished within {handshake_timeout:?}"),
                }),
            }
        });
    }
}
