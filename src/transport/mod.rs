//! The gRPC listener's connections: our own accept loop (so that each TLS handshake uses
//! the current, hot-reloaded certificate, runs in its own task bounded by a timeout, and
//! never stalls accepting), and the hard end of a connection's life at
//! `max_connection_age + max_connection_age_grace`. The GOAWAY at `max_connection_age`
//! itself is tonic's; tonic cannot combine it with a grace period, so the forced close
//! is done here, below HTTP/2, by failing the connection's reads and writes.
//!
//! This module knows tonic only for its `Connected` trait, so handlers still see the
//! peer address and (under mutual TLS) the client's certificates.

pub mod tls;

use std::{
    future::Future as _,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{Instrument, debug, debug_span, info_span, warn};

pub use tls::TlsConfig;

use crate::metrics::{GaugeGuard, Metrics};

/// Cap on TLS handshakes in progress at once; beyond it accepting waits (the kernel's
/// backlog holds new connections meanwhile).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Accepted connections waiting for the HTTP/2 server to pick them up.
const QUEUE: usize = 64;

/// How long connections may live.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionLimits {
    /// `server.max_connection_age`: when tonic sends GOAWAY.
    pub max_age: Option<Duration>,
    /// `server.max_connection_age_grace`: how long after that the connection is closed.
    pub grace: Duration,
}

impl ConnectionLimits {
    fn deadline(&self) -> Option<Instant> {
        self.max_age.map(|age| Instant::now() + age + self.grace)
    }
}

/// An accepted TCP connection that fails all I/O once its deadline has passed, which
/// makes hyper drop it, in-flight streams and all.
pub struct Conn {
    inner: TcpStream,
    deadline: Option<Pin<Box<Sleep>>>,
    _open: Option<GaugeGuard>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.inner.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Conn {
    fn new(inner: TcpStream, limits: &ConnectionLimits, open: Option<GaugeGuard>) -> Self {
        Self {
            inner,
            deadline: limits
                .deadline()
                .map(|d| Box::pin(tokio::time::sleep_until(d))),
            _open: open,
        }
    }

    /// Ready(error) once the deadline has passed; otherwise registers for the wake-up.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let deadline = self.deadline.as_mut()?;
        deadline.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "connection closed: max_connection_age + max_connection_age_grace reached",
            )
        })
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// The accepted connections, ready for `serve_with_incoming_shutdown`.
#[derive(Debug)]
pub enum Incoming {
    /// Plaintext.
    Plain(ReceiverStream<Conn>),
    /// After a successful TLS handshake.
    Tls(ReceiverStream<TlsStream<Conn>>),
}

/// Accepts on `listener` until `cancel` fires or the consumer goes away. With `tls`,
/// each connection is handshaken in its own task, bounded by the handshake timeout; a
/// failed or slow handshake only costs that connection.
pub fn spawn_incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsConfig>>,
    limits: ConnectionLimits,
    metrics: Option<Arc<Metrics>>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Incoming {
    let addr = listener.local_addr().ok();
    let span = info_span!("accept", addr = ?addr);
    match tls {
        None => {
            let (tx, rx) = mpsc::channel(QUEUE);
            tasks.spawn(
                async move {
                    while let Some((stream, _)) = accept(&listener, &tx, &cancel).await {
                        let conn =
                            Conn::new(stream, &limits, metrics.as_ref().map(|m| m.connection()));
                        if tx.send(conn).await.is_err() {
                            return;
                        }
                    }
                }
                .instrument(span),
            );
            Incoming::Plain(ReceiverStream::new(rx))
        }
        Some(tls) => {
            let (tx, rx) = mpsc::channel(QUEUE);
            let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
            let handshakes = tasks.clone();
            tasks.spawn(
                async move {
                    loop {
                        let permit = tokio::select! {
                            _ = cancel.cancelled() => return,
                            p = pending.clone().acquire_owned() => match p {
                                Ok(p) => p,
                                Err(_) => return,
                            },
                        };
                        let Some((stream, peer)) = accept(&listener, &tx, &cancel).await else {
                            return;
                        };
                        let conn =
                            Conn::new(stream, &limits, metrics.as_ref().map(|m| m.connection()));
                        let acceptor = TlsAcceptor::from(tls.current());
                        let timeout = tls.handshake_timeout();
                        let tx = tx.clone();
                        let metrics = metrics.clone();
                        let cancel = cancel.clone();
                        handshakes.spawn(
                            async move {
                                let outcome = tokio::select! {
                                    _ = cancel.cancelled() => return,
                                    r = tokio::time::timeout(timeout, acceptor.accept(conn)) => r,
                                };
                                drop(permit);
                                match outcome {
                                    Ok(Ok(stream)) => {
                                        let _ = tx.send(stream).await;
                                    }
                                    Ok(Err(e)) => {
                                        debug!(error = %e, "TLS handshake failed");
                                        if let Some(m) = &metrics {
                                            m.record_tls_handshake_failure();
                                        }
                                    }
                                    Err(_) => {
                                        debug!(?timeout, "TLS handshake timed out");
                                        if let Some(m) = &metrics {
                                            m.record_tls_handshake_failure();
                                        }
                                    }
                                }
                            }
                            .instrument(debug_span!("tls_handshake", %peer)),
                        );
                    }
                }
                .instrument(span),
            );
            Incoming::Tls(ReceiverStream::new(rx))
        }
    }
}

/// The next connection, or `None` once shutdown began or the consumer is gone.
async fn accept<T>(
    listener: &TcpListener,
    tx: &mpsc::Sender<T>,
    cancel: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tx.closed() => return None,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // gRPC messages are small and latency matters more than packet count.
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(error = %e, %peer, "cannot set TCP_NODELAY");
                }
                return Some((stream, peer));
            }
            Err(e) => {
                // Usually out of file descriptors: pause rather than spin.
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}
