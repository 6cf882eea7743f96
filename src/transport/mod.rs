//! The gRPC listeners' connections, served by our own accept loop with hyper's HTTP/2
//! server, so that every limit that protects one caller from another is ours to set:
//!
//! - the cap on open connections ([`admission`]): at the cap the oldest connection that
//!   has not made a request yet is closed for the new one; when all are established the
//!   new one is refused, so established connections are never degraded;
//! - each TLS handshake in its own task with the current (hot-reloaded) certificate,
//!   bounded by `server.tls.handshake_timeout`, never stalling the accept loop;
//! - the deadline for the HTTP/2 preface and first request (`server.handshake_timeout`),
//!   counted from accept on plaintext and from the end of the TLS handshake under TLS;
//! - HTTP/2 settings: MAX_CONCURRENT_STREAMS advertised and enforced per connection, and
//!   h2's bound on streams it resets because of the peer (CVE-2025-8671) kept on (tonic's
//!   own server passes `None`, which turns it off);
//! - connection age: GOAWAY at `max_connection_age`, closed at `+ max_connection_age_grace`;
//! - graceful shutdown: GOAWAY on every connection, calls drained within the grace.
//!
//! Every request carries the connection's [`Peer`] and tonic's `TcpConnectInfo` (or
//! `TlsConnectInfo`) extension, so handlers see the peer address and, under mutual TLS,
//! the client's certificates, exactly as under tonic's own server.

pub mod admission;
mod coalesce;
mod conn;
pub mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, debug, debug_span, info_span, warn};

pub use admission::Admission;
pub use tls::TlsConfig;

use self::admission::Admitted;
use crate::metrics::Metrics;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// h2's own default bound on streams a connection may make the server reset (the peer's
/// protocol errors); past it the connection gets GOAWAY ENHANCE_YOUR_CALM.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// h2's own default bound on streams the peer resets before the server accepted them.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// How long connections may live.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionLimits {
    /// `server.max_connection_age`: when the connection gets GOAWAY.
    pub max_age: Option<Duration>,
    /// `server.max_connection_age_grace`: how long after that it is closed.
    pub grace: Duration,
}

impl ConnectionLimits {
    /// When a connection accepted now gets GOAWAY; `None`: never (no age, or one too long
    /// to add to an Instant).
    fn goaway_at(&self) -> Option<tokio::time::Instant> {
        tokio::time::Instant::now().checked_add(self.max_age?)
    }

    /// When a connection accepted now is closed, calls in flight and all: its age plus the
    /// grace; `None`: never.
    fn hard_end(&self) -> Option<tokio::time::Instant> {
        self.goaway_at()?.checked_add(self.grace)
    }
}

/// Everything a listener's connections are served with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// TLS, or plaintext when `None`.
    pub tls: Option<Arc<TlsConfig>>,
    /// Connection age.
    pub limits: ConnectionLimits,
    /// `server.handshake_timeout`: preface and first request.
    pub handshake_timeout: Duration,
    /// `server.max_connections`.
    pub max_connections: usize,
    /// `server.max_concurrent_streams`: advertised and enforced per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval (`None`: no pings).
    pub keepalive_interval: Option<Duration>,
    /// HTTP/2 keepalive ping timeout.
    pub keepalive_timeout: Duration,
    /// After shutdown begins, how long calls in flight get before connections close.
    pub shutdown_grace: Duration,
}

/// The connection a request came on, as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Unique per connection within the process.
    pub connection: u64,
    /// The client's address.
    pub addr: SocketAddr,
}

/// The service a listener serves: tonic's routes with our layers around them.
pub trait GrpcService:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<Self::Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
    /// The response body.
    type Body: http_body::Body<Data = Bytes, Error: Into<tower::BoxError>> + Send + 'static;
}

impl<S, B> GrpcService for S
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Body = B;
}

/// What every connection task of one listener shares.
struct Shared<S> {
    service: S,
    options: ServeOptions,
    http2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    metrics: Option<Arc<Metrics>>,
    /// Graceful shutdown: GOAWAY, then the calls in flight finish.
    shutdown: CancellationToken,
    /// The end of the grace period: connections still open are closed.
    force: CancellationToken,
}

/// Serves `service` on `listener` until `shutdown` fires; then stops accepting, sends
/// GOAWAY on every connection, waits for them to finish at most `shutdown_grace`, closes
/// the rest and returns.
pub async fn serve<S: GrpcService>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    metrics: Option<Arc<Metrics>>,
    shutdown: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    let span = info_span!("listener", addr = ?addr);
    let admission = Admission::new(options.max_connections);
    let shared = Arc::new(Shared {
        http2: conn::http2_builder(&options),
        service,
        options,
        metrics,
        shutdown: shutdown.clone(),
        force: CancellationToken::new(),
    });
    let tracker = TaskTracker::new();
    let mut next_id = 0u64;
    async {
        while let Some((stream, peer)) = accept(&listener, &shutdown).await {
            next_id += 1;
            admit(
                &shared,
                &admission,
                &tracker,
                stream,
                Peer {
                    connection: next_id,
                    addr: peer,
                },
            );
        }
        drop(listener);
        tracker.close();
        let grace = shared.options.shutdown_grace;
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                ?grace,
                open = tracker.len(),
                "grace period over; closing the remaining connections"
            );
            shared.force.cancel();
            tracker.wait().await;
        }
    }
    .instrument(span)
    .await
}

/// Gives a new connection its place and task, or refuses it.
fn admit<S: GrpcService>(
    shared: &Arc<Shared<S>>,
    admission: &Arc<Admission>,
    tracker: &TaskTracker,
    stream: TcpStream,
    peer: Peer,
) {
    let (slot, evicted) = match admission.admit() {
        Admitted::Yes { slot, evicted } => (slot, evicted),
        Admitted::Refused => {
            debug!(peer = %peer.addr, "refused: every connection place is held by an established connection");
            if let Some(m) = &shared.metrics {
                m.record_connection_closed("max_connections");
            }
            drop(stream);
            return;
        }
    };
    if evicted && let Some(m) = &shared.metrics {
        m.record_connection_closed("evicted");
    }
    let shared = shared.clone();
    tracker.spawn(
        conn::run(shared, stream, peer, slot)
            .instrument(debug_span!("connection", peer = %peer.addr, id = peer.connection)),
    );
}

/// The next connection, or `None` once shutdown began.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
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
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_never_overflow() {
        let limits = |max_age, grace| ConnectionLimits { max_age, grace };
        assert!(limits(None, Duration::MAX).hard_end().is_none());
        assert!(limits(None, Duration::ZERO).goaway_at().is_none());
        let huge = limits(Some(Duration::MAX), Duration::ZERO);
        assert!(huge.goaway_at().is_none() && huge.hard_end().is_none());
        assert!(
            limits(Some(Duration::from_secs(1)), Duration::MAX)
                .hard_end()
                .is_none()
        );
        let l = limits(Some(Duration::from_secs(60)), Duration::from_secs(30));
        let soon = tokio::time::Instant::now() + Duration::from_secs(59);
        assert!(l.goaway_at().is_some_and(|t| t > soon));
        assert!(
            l.hard_end()
                .is_some_and(|t| t > soon + Duration::from_secs(30))
        );
    }
}
