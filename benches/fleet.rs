//! `cargo bench --features redis-tests --bench fleet` (after `bash .ci/redis.sh`): what
//! sharing replay detection costs one Validate call. It starts its own redis-server on a
//! free loopback port and measures, in one run: Validate of a replay-detecting HS256
//! tenant with the replica's own record, the same with the fleet's record in Redis, a
//! Redis PING on the same kind of connection (the floor a shared record cannot beat),
//! and the shared path with 64 calls in flight (throughput). Prints medians of timed
//! batches and the ratios; quote them from one run.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../tests/fleet/servers.rs"]
mod servers;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use aws_lc_rs::hmac;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::future::join_all;
use introspectd::{
    config,
    fleet::Fleet,
    registry::{Registry, ValidateInput},
    shared::{ReplayRecord, ReplayStore as _},
};
use serde_json::json;
use tokio::runtime::Runtime;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

const BATCHES: usize = 15;
const PER_BATCH: usize = 400;
const SECRET: &str = "a first-party secret of thirty-two bytes or more";

/// HS256 tokens with distinct `jti`s (each is accepted once).
fn tokens(n: usize) -> Vec<String> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let now = introspectd::shared::unix_secs(std::time::SystemTime::now());
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
    (0..n)
        .map(|i| {
            let claims = json!({"iss": "https://bench.example", "sub": "u", "aud": "api",
                "iat": now, "exp": now + 3600, "jti": format!("j{i}-{}", fastrand::u64(..))});
            let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
            let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, input.as_bytes()));
            format!("{input}.{sig}")
        })
        .collect()
}

fn registry() -> Registry {
    let yaml = "tenants:\n  - id: bench\n    issuer: \"https://bench.example\"\n    audiences: [api]\n    algorithms: [HS256]\n    hmac_secret_env: S\n    replay_detection: true\n";
    let settings = config::load_str(yaml, &|_| Some(SECRET.to_string()), &[]).expect("config");
    Registry::new(&settings).expect("registry")
}

/// Median nanoseconds per call over `BATCHES` batches, each validating fresh tokens.
fn median_validate(rt: &Runtime, registry: &Registry) -> f64 {
    let mut samples: Vec<f64> = (0..=BATCHES)
        .map(|_| {
            let batch = tokens(PER_BATCH);
            let start = Instant::now();
            for t in &batch {
                let input = ValidateInput {
                    token: t,
                    ..Default::default()
                };
                let r = rt.block_on(registry.validate(&input));
                assert!(r.is_ok(), "{r:?}");
                black_box(r.ok());
            }
            start.elapsed().as_nanos() as f64 / PER_BATCH as f64
        })
        .skip(1)
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[BATCHES / 2]
}

/// Calls per second with 64 calls in flight, over fresh tokens.
fn throughput(rt: &Runtime, registry: &Registry) -> f64 {
    let batch = tokens(PER_BATCH * 10);
    let start = Instant::now();
    rt.block_on(async {
        for chunk in batch.chunks(64) {
            let calls = chunk.iter().map(|t| {
                let registry = registry.clone();
                async move {
                    let input = ValidateInput {
                        token: t,
                        ..Default::default()
                    };
                    registry.validate(&input).await.is_ok()
                }
            });
            assert!(join_all(calls).await.into_iter().all(|ok| ok));
        }
    });
    batch.len() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    introspectd::install_crypto();
    let redis = servers::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let local = registry();
    let shared = registry();
    let settings = config::load_str(
        &format!("shared_state:\n  redis_url: \"{}\"\n", redis.url()),
        &|_| None,
        &[],
    )
    .expect("config");
    let fleet = Fleet::new(
        settings.shared_state.as_ref().expect("shared_state"),
        Vec::<String>::new(),
        shared.revocations().clone(),
    )
    .expect("fleet");
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    {
        let _in_runtime = rt.enter();
        fleet.spawn(&tasks, &cancel);
    }
    assert!(
        rt.block_on(fleet.wait_ready(Duration::from_secs(5))),
        "redis answers"
    );
    shared.attach_shared(fleet.shared());

    let client = redis::Client::open(redis.url()).expect("client");
    let mut ping_conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .expect("connection");
    let mut pings: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..PER_BATCH {
                let pong: String = rt
                    .block_on(redis::cmd("PING").query_async(&mut ping_conn))
                    .expect("ping");
                black_box(pong);
            }
            start.elapsed().as_nanos() as f64 / PER_BATCH as f64
        })
        .collect();
    pings.sort_by(|a, b| a.total_cmp(b));
    let ping = pings[BATCHES / 2];

    // The fleet's replay record alone (no token, no Validate): what the shared path adds
    // on top of the round trip.
    let mut records: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..PER_BATCH {
                let key = format!("iss\0{}", fastrand::u64(..));
                let expires = std::time::SystemTime::now() + Duration::from_secs(60);
                let record = ReplayRecord {
                    namespace: "jti",
                    key: &key,
                    expires,
                    peek: false,
                };
                let r = rt.block_on(fleet.record(record));
                black_box(r.expect("record"));
            }
            start.elapsed().as_nanos() as f64 / PER_BATCH as f64
        })
        .collect();
    records.sort_by(|a, b| a.total_cmp(b));
    let record = records[BATCHES / 2];

    let own = median_validate(&rt, &local);
    let fleet_record = median_validate(&rt, &shared);
    println!(
        "{:<58} {:>12}",
        "benchmark (HS256, replay_detection: true)", "median/call"
    );
    println!(
        "{:<58} {:>9.1} µs",
        "validate, the replica's own replay record",
        own / 1000.0
    );
    println!(
        "{:<58} {:>9.1} µs",
        "validate, the fleet's replay record (Redis on loopback)",
        fleet_record / 1000.0
    );
    println!(
        "{:<58} {:>9.1} µs",
        "the fleet's replay record alone (SET NX PX)",
        record / 1000.0
    );
    println!(
        "{:<58} {:>9.1} µs",
        "Redis PING round trip (the floor)",
        ping / 1000.0
    );
    println!(
        "sharing adds {:.1} µs per call = {:.2}x the PING floor",
        (fleet_record - own) / 1000.0,
        (fleet_record - own) / ping
    );
    println!(
        "64 in flight: {:.0} calls/s with the replica's record, {:.0} calls/s with the fleet's",
        throughput(&rt, &local),
        throughput(&rt, &shared)
    );
    cancel.cancel();
}
