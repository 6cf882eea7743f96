//! The closed-loop load generator: `in_flight` callers share `connections` HTTP/2
//! connections; each sends its next Validate as soon as the previous one is answered,
//! and records the latency into its own HDR histogram (merged at the end).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use introspectd::grpc::pb::{self, token_service_client::TokenServiceClient};
use tonic::transport::{Channel, Endpoint};

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
#[derive(Debug)]
pub struct Load {
    channels: Vec<Channel>,
    in_flight: usize,
}

impl Load {
    /// Opens `connections` connections to `addr`.
    pub async fn connect(
        addr: SocketAddr,
        connections: usize,
        in_flight: usize,
    ) -> anyhow::Result<Self> {
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let ch = Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            channels.push(ch);
        }
        Ok(Self {
            channels,
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
            let client = TokenServiceClient::new(self.channels[i % self.channels.len()].clone())
                .max_decoding_message_size(1 << 20);
            tasks.push(tokio::spawn(caller(
                client,
                feed.clone(),
                next.clone(),
                end,
            )));
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

async fn caller(
    mut client: TokenServiceClient<Channel>,
    feed: TokenFeed,
    next: Arc<AtomicUsize>,
    end: usize,
) -> anyhow::Result<Phase> {
    let mut p = Phase {
        calls: 0,
        elapsed: Duration::ZERO,
        latency: new_histogram()?,
        invalid: 0,
        errors: 0,
    };
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= end {
            return Ok(p);
        }
        let req = feed.request(i);
        let start = Instant::now();
        let r = client.validate(req).await;
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        p.latency.saturating_record(micros.max(1));
        p.calls += 1;
        match r {
            Ok(resp) if resp.get_ref().valid => {}
            Ok(_) => p.invalid += 1,
            Err(_) => p.errors += 1,
        }
    }
}
