//! The closed-loop load generator: `in_flight` callers share `connections` HTTP/2
//! connections (the h2 crate, no gRPC client library); each sends its next Validate as
//! soon as the previous one is answered, and records the latency into its own HDR
//! histogram (merged at the end).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use h2::client::SendRequest;
use hdrhistogram::Histogram;
use introspectd::grpc::pb;
use prost::Message as _;
use tokio::net::TcpStream;

/// The request URI the DPoP mode's proofs name (`htu`, with `htm` GET).
pub const DPOP_URI: &str = "https://api.bench.example/v1/items";

/// Which tokens the callers send.
#[derive(Debug, Clone)]
pub struct TokenFeed {
    tokens: Arc<Vec<String>>,
    repeated: bool,
    /// The DPoP mode: call `i` sends proof `i` with the token.
    proofs: Option<Arc<Vec<String>>>,
}

impl TokenFeed {
    /// Call `i` sends token `i` (the pool must be long enough).
    pub fn distinct(tokens: Arc<Vec<String>>) -> Self {
        Self {
            tokens,
            repeated: false,
            proofs: None,
        }
    }

    /// Every call sends the first token.
    pub fn repeated(tokens: Arc<Vec<String>>) -> Self {
        Self {
            tokens,
            repeated: true,
            proofs: None,
        }
    }

    /// Every call sends `token` as a DPoP-bound token, call `i` with proof `i`.
    pub fn dpop(token: String, proofs: Arc<Vec<String>>) -> Self {
        Self {
            tokens: Arc::new(vec![token]),
            repeated: true,
            proofs: Some(proofs),
        }
    }

    /// The request of call `i`.
    fn request(&self, i: usize) -> pb::ValidateRequest {
        let token = self.get(i).to_string();
        match self.proofs.as_ref().and_then(|p| p.get(i)) {
            Some(proof) => pb::ValidateRequest {
                token,
                authorization_scheme: "DPoP".into(),
                dpop_proofs: vec![proof.clone()],
                http_method: "GET".into(),
                http_uri: DPOP_URI.into(),
                ..Default::default()
            },
            None => pb::ValidateRequest {
                token,
                ..Default::default()
            },
        }
    }

    fn get(&self, i: usize) -> &str {
        let i = if self.repeated {
            0
        } else {
            i % self.tokens.len().max(1)
        };
        self.tokens.get(i).map_or("", String::as_str)
    }
}

/// One phase's outcome.
#[derive(Debug)]
pub struct Phase {
    /// Calls answered (valid or not) and failed.
    pub calls: u64,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// Latency of every call, microseconds.
    pub latency: Histogram<u64>,
    /// Answers with `valid: false`.
    pub invalid: u64,
    /// RPC errors.
    pub errors: u64,
}

/// Open connections to one server.
///
/// The generator speaks gRPC over the h2 crate directly, not through tonic's client:
/// tonic's `Channel` hands every call to a buffer task and decodes the whole answer,
/// claims included, and all of that CPU is taken from the same two cores the servers
/// run on. Here a call is one h2 stream: its request encoded once, its answer read for
/// the `valid` field and the `grpc-status` trailer only.
#[derive(Debug)]
pub struct Load {
    connections: Vec<SendRequest<Bytes>>,
    uri: http::Uri,
    in_flight: usize,
}

impl Load {
    /// Opens `connections` connections to `addr`.
    pub async fn connect(
        addr: SocketAddr,
        connections: usize,
        in_flight: usize,
    ) -> anyhow::Result<Self> {
        let mut senders = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                .await
                .with_context(|| format!("connecting to {addr}: timed out"))?
                .with_context(|| format!("connecting to {addr}"))?;
            tcp.set_nodelay(true)?;
            let (send, connection) = h2::client::handshake(tcp)
                .await
                .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
            tokio::spawn(async move {
                // The connection ends when the benchmark drops its senders.
                let _ = connection.await;
            });
            senders.push(send);
        }
        let uri = format!("http://{addr}/introspect.v1.TokenService/Validate").parse()?;
        Ok(Self {
            connections: senders,
            uri,
            in_flight: in_flight.max(1),
        })
    }

    /// Sends calls `first..first + calls` of `feed` and waits for all of them.
    pub async fn phase(
        &self,
        feed: &TokenFeed,
        first: usize,
        calls: usize,
    ) -> anyhow::Result<Phase> {
        let next = Arc::new(AtomicUsize::new(first));
        let end = first + calls;
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(self.in_flight);
        for i in 0..self.in_flight {
            let send = self.connections[i % self.connections.len()].clone();
            let caller = Caller {
                send,
                uri: self.uri.clone(),
                feed: feed.clone(),
            };
            tasks.push(tokio::spawn(caller.run(next.clone(), end)));
        }
        let mut total = Phase {
            calls: 0,
            elapsed: Duration::ZERO,
            latency: new_histogram()?,
            invalid: 0,
            errors: 0,
        };
        for t in tasks {
            let p = t.await.context("a caller panicked")??;
            total.calls += p.calls;
            total.invalid += p.invalid;
            total.errors += p.errors;
            total.latency.add(&p.latency)?;
        }
        total.elapsed = started.elapsed();
        Ok(total)
    }
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// The one field of `ValidateResponse` the generator reads; prost skips the others
/// (claims included) without building them.
#[derive(Clone, PartialEq, prost::Message)]
struct Answer {
    #[prost(bool, tag = "1")]
    valid: bool,
}

/// One of the `in_flight` callers.
struct Caller {
    send: SendRequest<Bytes>,
    uri: http::Uri,
    feed: TokenFeed,
}

impl Caller {
    async fn run(mut self, next: Arc<AtomicUsize>, end: usize) -> anyhow::Result<Phase> {
        let mut p = Phase {
            calls: 0,
            elapsed: Duration::ZERO,
            latency: new_histogram()?,
            invalid: 0,
            errors: 0,
        };
        let mut buf = BytesMut::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= end {
                return Ok(p);
            }
            let body = grpc_frame(&self.feed.request(i), &mut buf);
            let start = Instant::now();
            let r = self.call(body).await;
            let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            p.latency.saturating_record(micros.max(1));
            p.calls += 1;
            match r {
                Ok(true) => {}
                Ok(false) => p.invalid += 1,
                Err(_) => p.errors += 1,
            }
        }
    }

    /// One Validate: `Ok(valid)` when the server answered with status 0.
    async fn call(&mut self, body: Bytes) -> anyhow::Result<bool> {
        let request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())?;
        std::future::poll_fn(|cx| self.send.poll_ready(cx)).await?;
        let (response, mut stream) = self.send.send_request(request, false)?;
        stream.send_data(body, true)?;
        let mut body = response.await?.into_body();
        let mut answer = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            body.flow_control().release_capacity(chunk.len())?;
            answer.extend_from_slice(&chunk);
        }
        let status = body.trailers().await?;
        let ok = status
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|s| s == "0");
        anyhow::ensure!(ok, "grpc-status is not 0: {status:?}");
        // A gRPC message: compression flag, 4-byte length, the message.
        let message = answer.get(5..).context("short gRPC message")?;
        Ok(Answer::decode(message)?.valid)
    }
}

/// `request` as one uncompressed gRPC message (flag, big-endian length, bytes).
fn grpc_frame(request: &pb::ValidateRequest, buf: &mut BytesMut) -> Bytes {
    let len = request.encoded_len();
    buf.reserve(len + 5);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Cannot fail: the buffer was reserved for the whole message.
    let _ = request.encode(buf);
    buf.split().freeze()
}
