//! The closed-loop HTTP load generator: `in_flight` callers over keep-alive HTTP/1.1
//! connections to Envoy; each sends its next request as soon as the previous one is
//! answered, with the next of the distinct tokens (and, in the DPoP mode, a fresh DPoP
//! proof made for it), and records the latency.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::dpop_client::DpopClient;

/// One measured phase.
#[derive(Debug, Default)]
pub(crate) struct Phase {
    /// Requests answered 200.
    pub(crate) ok: u64,
    /// Requests answered otherwise, or failed.
    pub(crate) failures: u64,
    /// Wall time of the phase.
    pub(crate) elapsed: Duration,
    /// Latencies of the 200s, microseconds, sorted.
    pub(crate) latencies_us: Vec<u32>,
}

impl Phase {
    /// The latency at quantile `q` (0..=1), microseconds.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return f64::NAN;
        }
        let i = ((n as f64 - 1.0) * q).round() as usize;
        f64::from(self.latencies_us[i.min(n - 1)])
    }

    /// Requests per second.
    pub(crate) fn per_sec(&self) -> f64 {
        (self.ok + self.failures) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `in_flight` callers against `url` for `duration` (or, with `once`, until every
/// token was sent once), cycling through `tokens`; with `dpop`, each request uses the
/// `DPoP` scheme and carries a fresh proof (signed by the caller, outside introspectd).
pub(crate) async fn run(
    client: &reqwest::Client,
    url: &str,
    tokens: Arc<Vec<String>>,
    in_flight: usize,
    duration: Duration,
    once: bool,
    dpop: Option<Arc<DpopClient>>,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let (client, url, tokens, next, dpop) = (
            client.clone(),
            url.to_string(),
            tokens.clone(),
            next.clone(),
            dpop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut phase = Phase::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if (once && i >= tokens.len()) || (!once && Instant::now() >= deadline) {
                    break;
                }
                let token = &tokens[i % tokens.len()];
                let request = match &dpop {
                    None => client
                        .get(&url)
                        .header("authorization", format!("Bearer {token}")),
                    Some(d) => match d.proof(&url, token) {
                        Ok(proof) => client
                            .get(&url)
                            .header("authorization", format!("DPoP {token}"))
                            .header("dpop", proof),
                        Err(_) => {
                            phase.failures += 1;
                            continue;
                        }
                    },
                };
                let sent = Instant::now();
                let answer = request.send().await;
                let ok = match answer {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    phase.ok += 1;
                    let us = sent.elapsed().as_micros();
                    phase
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                } else {
                    phase.failures += 1;
                }
            }
            phase
        }));
    }
    let mut total = Phase::default();
    for t in tasks {
        if let Ok(p) = t.await {
            total.ok += p.ok;
            total.failures += p.failures;
            total.latencies_us.extend(p.latencies_us);
        }
    }
    total.elapsed = start.elapsed();
    total.latencies_us.sort_unstable();
    total
}
