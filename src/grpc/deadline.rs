//! The deadline of one gRPC call: the smaller of `server.request_timeout` and the
//! client's own `grpc-timeout`. A call whose answer has not begun by then is answered
//! CANCELLED ("Timeout expired"), as tonic's own server does; an answer that has begun
//! (a WatchKeys stream) is not cut. The request body counts: a stream that sends its
//! headers and never its message is answered at the deadline.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::HeaderMap;
use tower::{Layer, Service};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Longest `grpc-timeout` value: eight digits (gRPC over HTTP/2).
const MAX_DIGITS: usize = 8;

/// The client's `grpc-timeout`, when present and well-formed (else ignored, as tonic does).
pub fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n.saturating_mul(3600)),
        'M' => Duration::from_secs(n.saturating_mul(60)),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Applies the deadline; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    server: Option<Duration>,
}

impl DeadlineLayer {
    /// Calls get at most `server` (and at most what the client asks for).
    pub fn new(server: Option<Duration>) -> Self {
        Self { server }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            server: self.server,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    server: Option<Duration>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
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

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let limit = match (client_timeout(req.headers()), self.server) {
            (Some(c), Some(s)) => Some(c.min(s)),
            (c, s) => c.or(s),
        };
        let fut = self.inner.call(req);
        let Some(limit) = limit else {
            return Box::pin(fut);
        };
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Ok(tonic::Status::cancelled("Timeout expired").into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().expect("header"));
        h
    }

    #[test]
    fn grpc_timeout_values() {
        for (v, want) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("7u", Some(Duration::from_micros(7))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789S", None),
            ("S", None),
            ("1x", None),
            ("-1S", None),
            ("1.5S", None),
            ("", None),
        ] {
            assert_eq!(client_timeout(&headers(v)), want, "{v}");
        }
        assert_eq!(client_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_smaller_deadline_wins_and_answers_cancelled() {
        let slow = tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });
        let mut svc = DeadlineLayer::new(Some(Duration::from_secs(10))).layer(slow);
        let req = http::Request::builder()
            .header("grpc-timeout", "2S")
            .body(())
            .expect("request");
        let started = tokio::time::Instant::now();
        let resp = svc.call(req).await.expect("answer");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(
            resp.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let started = tokio::time::Instant::now();
        let _ = svc.call(http::Request::new(())).await.expect("answer");
        assert_eq!(started.elapsed(), Duration::from_secs(10), "the server's");
    }
}
