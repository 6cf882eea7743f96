//! Tower layers on the gRPC server: per-call metrics (the status read from the response
//! headers of a trailers-only answer, else from the trailers at the end of the body, so a
//! stream that fails is not counted OK and its handling time runs to its end), and the
//! global limit on in-flight unary calls that answers RESOURCE_EXHAUSTED at once instead
//! of queueing, taken only once the request message has arrived.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use super::{BoundaryError, to_status};
use crate::metrics::{CODE_INTERNAL, CODE_UNKNOWN, CallKind, GrpcCall, GrpcMethods, Metrics};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The service whose calls the concurrency limit never rejects, so that probes keep
/// answering under overload.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()) as i32)
}

/// Records `grpc_server_*` metrics for every call.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MetricsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    ResBody: Default,
{
    type Response = http::Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let call = self.metrics.start_call(req.uri().path());
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => match grpc_status(resp.headers()) {
                    // Trailers-only: the outcome is already known.
                    Some(code) => {
                        call.finish(code);
                        Ok(resp.map(|b| MetricsBody {
                            inner: b,
                            call: None,
                        }))
                    }
                    None => Ok(resp.map(|b| MetricsBody {
                        inner: b,
                        call: Some(call),
                    })),
                },
                // Answer the error here, as tonic's own recovery would, so that the code
                // the client sees is the code counted.
                Err(err) => {
                    let status = tonic::Status::from_error(err.into());
                    call.finish(status.code() as i32);
                    Ok(status.into_http::<ResBody>().map(|b| MetricsBody {
                        inner: b,
                        call: None,
                    }))
                }
            }
        })
    }
}

/// A response body that records the call's outcome when its trailers go by, when it
/// ends without them (Unknown), fails (Internal), or is dropped early (Cancelled).
#[derive(Debug)]
pub struct MetricsBody<B> {
    inner: B,
    call: Option<GrpcCall>,
}

impl<B> Body for MetricsBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let code = match &frame {
            Some(Ok(f)) => f
                .trailers_ref()
                .map(|t| grpc_status(t).unwrap_or(CODE_UNKNOWN)),
            Some(Err(_)) => Some(CODE_INTERNAL),
            None => Some(CODE_UNKNOWN),
        };
        if let Some(code) = code
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A global cap on in-flight unary calls: beyond it a call is answered
/// RESOURCE_EXHAUSTED at once. Streaming calls (WatchKeys, health Watch, reflection) and
/// the health service are never limited.
///
/// The permit is taken only once the whole request message has arrived (the body is
/// read first, at most `max_request_bytes`, and replayed to the handler as it came): a
/// stream that sends its headers and never its message holds no permit, so streams
/// opened and left hanging cannot lock other callers out. They cost only their own
/// connection's stream slots, until the call's deadline.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
    methods: Arc<GrpcMethods>,
    max_request_bytes: usize,
}

impl ConcurrencyLimitLayer {
    /// At most `limit` unary calls at once; request bodies are read up to
    /// `max_message_bytes` (plus the gRPC frame header) before a permit is taken.
    pub fn new(limit: usize, methods: Arc<GrpcMethods>, max_message_bytes: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))),
            methods,
            max_request_bytes: max_message_bytes.saturating_add(GRPC_FRAME_HEADER),
        }
    }
}

/// The length-prefixed message header of gRPC: one flag byte, four length bytes.
const GRPC_FRAME_HEADER: usize = 5;

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            permits: self.permits.clone(),
            methods: self.methods.clone(),
            max_request_bytes: self.max_request_bytes,
        }
    }
}

/// See [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    methods: Arc<GrpcMethods>,
    max_request_bytes: usize,
}

impl<S> ConcurrencyLimit<S> {
    fn limited(&self, path: &str) -> bool {
        match self.methods.get(path) {
            Some(m) => m.kind == CallKind::Unary && &*m.service != HEALTH_SERVICE,
            // Unknown paths are answered UNIMPLEMENTED right away; limiting them is harmless.
            None => true,
        }
    }
}

impl<S, ResBody> Service<http::Request<tonic::body::Body>> for ConcurrencyLimit<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if !self.limited(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The readied service goes with this call; a clone stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let permits = self.permits.clone();
        let max = self.max_request_bytes;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = Replay::read(body, max).await;
            let Ok(permit) = permits.try_acquire_owned() else {
                let status = to_status(&BoundaryError::Exhausted(
                    "the server is at its limit of concurrent calls; retry with backoff".into(),
                ));
                return Ok(status.into_http());
            };
            let r = inner
                .call(http::Request::from_parts(
                    parts,
                    tonic::body::Body::new(body),
                ))
                .await;
            drop(permit);
            r
        })
    }
}

/// A request body read ahead: the frames as they came, then (when reading stopped at the
/// size bound or at an error) the rest of the original body or the error.
#[derive(Debug)]
struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    error: Option<tonic::Status>,
    rest: Option<tonic::body::Body>,
}

impl Replay {
    /// Reads `body` to its end, or until more than `max` data bytes arrived.
    async fn read(mut body: tonic::body::Body, max: usize) -> Self {
        let mut frames = VecDeque::new();
        let mut size = 0usize;
        loop {
            if body.is_end_stream() {
                return Self::complete(frames);
            }
            let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match next {
                None => return Self::complete(frames),
                Some(Err(e)) => {
                    return Self {
                        frames,
                        error: Some(e),
                        rest: None,
                    };
                }
                Some(Ok(frame)) => {
                    size = size.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                    frames.push_back(frame);
                    if size > max {
                        // Too large: tonic refuses it (OUT_OF_RANGE) from what is here.
                        return Self {
                            frames,
                            error: None,
                            rest: Some(body),
                        };
                    }
                }
            }
        }
    }

    fn complete(frames: VecDeque<Frame<Bytes>>) -> Self {
        Self {
            frames,
            error: None,
            rest: None,
        }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if let Some(f) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, convert::Infallible};

    use super::*;
    use crate::{config, registry::Registry};

    /// A body yielding fixed frames.
    #[derive(Default)]
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn trailers(code: &str) -> Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", code.parse().expect("header"));
        Frame::trailers(t)
    }

    fn metrics() -> Arc<Metrics> {
        let settings = config::load_str(
            "tenants:\n  - id: demo\n    issuer: https://idp.example\n",
            &|_| None,
            &[],
        )
        .expect("config");
        let methods = GrpcMethods::from_descriptor_sets(&[tonic_health::pb::FILE_DESCRIPTOR_SET])
            .expect("descriptors");
        Arc::new(Metrics::new(
            &Registry::new(&settings).expect("registry"),
            &methods,
        ))
    }

    async fn drain(mut body: MetricsBody<Frames>) {
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let _ = f;
        }
    }

    const WATCH: &str =
        r#"grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch""#;

    async fn serve(metrics: &Arc<Metrics>, resp: http::Response<Frames>) -> MetricsBody<Frames> {
        let mut resp = Some(resp);
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            std::future::ready(Ok::<_, Infallible>(resp.take().expect("one call")))
        });
        let mut svc = MetricsLayer::new(metrics.clone()).layer(inner);
        let req = http::Request::builder()
            .uri("/grpc.health.v1.Health/Watch")
            .body(())
            .expect("request");
        svc.call(req).await.expect("response").into_body()
    }

    #[tokio::test]
    async fn stream_failing_in_its_trailers_is_not_ok() {
        let m = metrics();
        let frames = Frames(VecDeque::from([
            Frame::data(Bytes::from_static(b"x")),
            trailers("14"),
        ]));
        let body = serve(&m, http::Response::new(frames)).await;
        assert!(m.encode().contains(&format!(
            "grpc_server_handled_total{{{WATCH},grpc_code=\"Unavailable\"}} 0"
        )));
        drain(body).await;
        let text = m.encode();
        assert!(
            text.contains(&format!(
                "grpc_server_handled_total{{{WATCH},grpc_code=\"Unavailable\"}} 1"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "grpc_server_handled_total{{{WATCH},grpc_code=\"OK\"}} 0"
        )));
    }

    #[tokio::test]
    async fn trailers_only_and_dropped_and_unterminated_bodies() {
        let m = metrics();
        let mut resp = http::Response::new(Frames::default());
        resp.headers_mut()
            .insert("grpc-status", "5".parse().expect("header"));
        drain(serve(&m, resp).await).await;
        let body = serve(
            &m,
            http::Response::new(Frames(VecDeque::from([Frame::data(Bytes::new())]))),
        )
        .await;
        drop(body);
        drain(serve(&m, http::Response::new(Frames::default())).await).await;
        let text = m.encode();
        assert!(
            text.contains(&format!(
                "grpc_server_handled_total{{{WATCH},grpc_code=\"NotFound\"}} 1"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "grpc_server_handled_total{{{WATCH},grpc_code=\"Canceled\"}} 1"
        )));
        assert!(text.contains(&format!(
            "grpc_server_handled_total{{{WATCH},grpc_code=\"Unknown\"}} 1"
        )));
        assert!(text.contains(&format!("grpc_server_started_total{{{WATCH}}} 3")));
    }
}
