//! One connection's life: the TLS handshake (when TLS is on), the HTTP/2 connection with
//! hyper, the first-request deadline, eviction, connection age and shutdown. Also the
//! per-connection service that marks the first request and gives every request its
//! connection's extensions.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, time::Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tracing::debug;

use super::{
    GrpcService, MAX_LOCAL_ERROR_RESETS, MAX_PENDING_ACCEPT_RESETS, Peer, ServeOptions, Shared,
    admission::Slot, coalesce::Coalesced,
};

/// The HTTP/2 server settings of a listener.
pub(super) fn http2_builder(
    o: &ServeOptions,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(o.max_concurrent_streams)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
        .keep_alive_interval(o.keepalive_interval)
        .keep_alive_timeout(o.keepalive_timeout);
    b
}

/// The connect info tonic's handlers look for, by transport.
#[derive(Clone)]
enum Info {
    Tcp(TcpConnectInfo),
    Tls(TlsConnectInfo<TcpConnectInfo>),
}

/// Serves one accepted connection until it ends, is evicted, misses its deadline, ages
/// out, or the listener shuts down.
pub(super) async fn run<S: GrpcService>(
    shared: Arc<Shared<S>>,
    stream: TcpStream,
    peer: Peer,
    slot: Slot,
) {
    let _open = shared.metrics.as_ref().map(|m| m.connection());
    let o = &shared.options;
    let hard_end = o.limits.hard_end();
    match &o.tls {
        None => {
            let info = Info::Tcp(stream.connect_info());
            serve_http2(&shared, stream, info, peer, &slot, hard_end).await;
        }
        Some(tls) => {
            let acceptor = TlsAcceptor::from(tls.current());
            let timeout = tls.handshake_timeout();
            let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
            let outcome = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = slot.evicted() => {
                    debug!("evicted during the TLS handshake");
                    return;
                }
                r = handshake => r,
            };
            let stream = match outcome {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    if let Some(m) = &shared.metrics {
                        m.record_tls_handshake_failure();
                    }
                    return;
                }
                Err(_) => {
                    debug!(?timeout, "TLS handshake timed out");
                    if let Some(m) = &shared.metrics {
                        m.record_tls_handshake_failure();
                    }
                    return;
                }
            };
            let info = Info::Tls(stream.connect_info());
            serve_http2(&shared, stream, info, peer, &slot, hard_end).await;
        }
    }
}

/// Sleeps until `at`, or forever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn serve_http2<S, IO>(
    shared: &Shared<S>,
    io: IO,
    info: Info,
    peer: Peer,
    slot: &Slot,
    hard_end: Option<Instant>,
) where
    S: GrpcService,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let o = &shared.options;
    let first_request = CancellationToken::new();
    let svc = ConnService {
        inner: shared.service.clone(),
        info,
        peer,
        first_request: first_request.clone(),
    };
    let conn = shared.http2.serve_connection(
        TokioIo::new(Coalesced(io)),
        hyper_util::service::TowerToHyperService::new(svc),
    );
    tokio::pin!(conn);
    let request_deadline = tokio::time::sleep(o.handshake_timeout);
    tokio::pin!(request_deadline);
    let goaway_at = o.limits.goaway_at();
    let (mut established, mut goaway_sent) = (false, false);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = first_request.cancelled(), if !established => {
                established = true;
                slot.established();
            }
            _ = &mut request_deadline, if !established => {
                debug!(timeout = ?o.handshake_timeout, "no request within the handshake timeout; closing");
                if let Some(m) = &shared.metrics {
                    m.record_connection_closed("handshake_timeout");
                }
                return;
            }
            _ = slot.evicted(), if !established => {
                debug!("evicted: a new connection needed the place of this idle one");
                return;
            }
            _ = until(goaway_at), if !goaway_sent => {
                goaway_sent = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = shared.shutdown.cancelled(), if !goaway_sent => {
                goaway_sent = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = until(hard_end) => {
                debug!("max_connection_age + max_connection_age_grace reached; closing");
                return;
            }
            _ = shared.force.cancelled() => return,
        }
    }
}

/// The per-connection service: marks the first request and adds the connection's
/// extensions to every request.
#[derive(Clone)]
struct ConnService<S> {
    inner: S,
    info: Info,
    peer: Peer,
    first_request: CancellationToken,
}

impl<S: GrpcService> tower::Service<http::Request<hyper::body::Incoming>> for ConnService<S> {
    type Response = http::Response<S::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.first_request.cancel();
        let mut req = req.map(tonic::body::Body::new);
        let ext = req.extensions_mut();
        match &self.info {
            Info::Tcp(i) => {
                ext.insert(i.clone());
            }
            Info::Tls(i) => {
                ext.insert(i.clone());
            }
        }
        ext.insert(self.peer);
        Box::pin(self.inner.call(req))
    }
}
