//! The soak test's driver (`tests/soak/run.sh` builds and runs it): starts a provider that
//! rotates keys and fails now and then, runs the `introspectd` binary against it, offers
//! mixed load for the given duration, and prints false rejections (must be 0), the
//! service's RSS at the start and the end, and fetch counts. Exit status 1 when a check
//! fails.

// Tests and their tools: a failed assumption is a failed run, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../common/mod.rs"]
mod common;
mod load;
mod provider;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex, RwLock, atomic::Ordering},
    time::{Duration, Instant},
};

use clap::Parser;
use load::{AUDIENCE, Signer, Soak};
use provider::Provider;

/// Soak test driver.
#[derive(Debug, Parser)]
struct Args {
    /// The introspectd binary to run.
    #[arg(long)]
    binary: PathBuf,
    /// How long to offer load, in seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds between key rotations.
    #[arg(long, default_value_t = 30)]
    rotate: u64,
    /// Percent of provider requests that fail.
    #[arg(long, default_value_t = 5)]
    fault_percent: u32,
    /// Concurrent load workers.
    #[arg(long, default_value_t = 6)]
    workers: usize,
    /// Fail when RSS grows by more than this percent from the end of the warm-up to the
    /// end (not checked when absent).
    #[arg(long)]
    max_rss_growth: Option<f64>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The service's resident set, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn config(issuer: &str, grpc: u16, metrics: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{grpc}\"\n  metrics_listen: \"127.0.0.1:{metrics}\"\ntenants:\n  - id: soak\n    issuer: \"{issuer}\"\n    audiences: [\"{AUDIENCE}\"]\n    algorithms: [ES256]\n    require_https: false\n    refresh_interval: 15s\n    unknown_kid_cooldown: 5s\n    fetch_timeout: 2s\n    introspection:\n      client_id: soak\n      client_secret_env: SOAK_SECRET\n      cache_ttl: 5s\n      negative_cache_ttl: 2s\n"
    )
}

async fn wait_ready(addr: &str) -> tonic::transport::Channel {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    for _ in 0..600 {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(addr.to_string())
            .expect("endpoint")
            .connect()
            .await
        {
            let status = HealthClient::new(c.clone())
                .check(HealthCheckRequest {
                    service: "introspect.v1.TokenService".into(),
                })
                .await
                .map(|r| r.into_inner().status);
            if matches!(status, Ok(1)) {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the service did not become SERVING");
}

/// A Prometheus sample, summed over every series of `name` whose labels contain `has`.
fn sum_metric(text: &str, name: &str, has: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(has))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let first = Signer::new("k1");
    let provider = Provider::start(vec![first.key.jwk.clone()], args.fault_percent).await;
    let (grpc, metrics) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("soak.yaml");
    std::fs::write(&config_path, config(provider.issuer(), grpc, metrics)).expect("config");
    let log_path = dir.path().join("introspectd.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = tokio::process::Command::new(&args.binary)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("SOAK_SECRET", "soak-secret")
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start introspectd");
    let pid = child.id().expect("pid");
    let channel = wait_ready(&format!("http://127.0.0.1:{grpc}")).await;

    let soak = Arc::new(Soak {
        channel,
        provider: provider.clone(),
        current: RwLock::new(first),
        known: Mutex::new(Default::default()),
        stats: Default::default(),
        stop: Default::default(),
    });
    let mut tasks = vec![
        tokio::spawn(soak.clone().observe()),
        tokio::spawn(soak.clone().rotate(Duration::from_secs(args.rotate))),
        tokio::spawn(soak.clone().watch_churn()),
    ];
    for _ in 0..args.workers {
        tasks.push(tokio::spawn(soak.clone().worker()));
    }

    let total = Duration::from_secs(args.duration);
    let warm_up = (total / 6).min(Duration::from_secs(60));
    let started = Instant::now();
    tokio::time::sleep(warm_up).await;
    let rss_start = rss_kib(pid).unwrap_or(0);
    println!("warm-up over after {warm_up:?}: RSS {rss_start} KiB");
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(10).min(total.saturating_sub(started.elapsed())))
            .await;
        let s = &soak.stats;
        println!(
            "{:>4}s valid {} rejected {} rotations {} rss {} KiB",
            started.elapsed().as_secs(),
            s.valid_ok.load(Ordering::Relaxed),
            s.false_rejections.load(Ordering::Relaxed),
            s.rotations.load(Ordering::Relaxed),
            rss_kib(pid).unwrap_or(0)
        );
    }
    let rss_end = rss_kib(pid).unwrap_or(0);
    soak.stop.store(true, Ordering::Relaxed);
    let metrics_text = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    for t in tasks {
        t.abort();
    }
    let ok = report(&args, &soak, rss_start, rss_end, &metrics_text);
    let _ = child.kill().await;
    if !ok {
        eprintln!(
            "the service's log: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Prints the figures and checks them; true when every check passes.
fn report(args: &Args, soak: &Soak, rss_start: u64, rss_end: u64, metrics: &str) -> bool {
    let s = &soak.stats;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let c = soak.provider.counters();
    let growth = (rss_end as f64 - rss_start as f64) * 100.0 / rss_start.max(1) as f64;
    let fetch_ok = sum_metric(
        metrics,
        "introspectd_key_fetches_total",
        "outcome=\"success\"",
    );
    let fetch_failed = sum_metric(
        metrics,
        "introspectd_key_fetches_total",
        "outcome=\"failure\"",
    );
    println!(
        "\n== soak: {} s, {} workers, rotation every {} s, {} % provider faults ==",
        args.duration, args.workers, args.rotate, args.fault_percent
    );
    println!("false rejections     {}", n(&s.false_rejections));
    println!("false acceptances    {}", n(&s.false_acceptances));
    println!("unexpected errors    {}", n(&s.unexpected));
    println!("valid accepted       {}", n(&s.valid_ok));
    println!("invalid refused      {}", n(&s.invalid_ok));
    println!("unknown kid refused  {}", n(&s.kid_miss));
    println!(
        "introspect answered  {} (+{} UNAVAILABLE during provider faults)",
        n(&s.introspect_ok),
        n(&s.introspect_unavailable)
    );
    println!("watch cycles         {}", n(&s.watch_cycles));
    println!("rotations            {}", n(&s.rotations));
    println!("REFRESH_FAILED seen  {}", n(&s.refresh_failed_events));
    println!("RSS start / end      {rss_start} KiB / {rss_end} KiB ({growth:+.1} %)");
    println!(
        "provider requests    discovery {}, jwks {}, introspect {}; faults injected {}",
        n(&c.discovery),
        n(&c.jwks),
        n(&c.introspect),
        n(&c.faults)
    );
    println!("service key fetches  {fetch_ok} ok, {fetch_failed} failed");
    // Kid-miss refreshes at most one per cooldown (5 s), periodic ones one per 15 s,
    // retries after failures with backoff: far below this unless something amplifies.
    let fetch_bound = (args.duration as f64 / 5.0 + args.duration as f64 / 15.0) * 2.0 + 20.0;
    let mut ok = true;
    let mut check = |pass: bool, what: String| {
        if !pass {
            println!("FAILED: {what}");
            ok = false;
        }
    };
    check(
        n(&s.false_rejections) == 0,
        "false rejections must be 0".into(),
    );
    check(
        n(&s.false_acceptances) == 0,
        "false acceptances must be 0".into(),
    );
    check(n(&s.unexpected) == 0, "unexpected errors must be 0".into());
    check(
        n(&s.valid_ok) > 0 && n(&s.watch_cycles) > 0,
        "load ran".into(),
    );
    check(
        args.duration < 2 * args.rotate || n(&s.rotations) > 0,
        "keys rotated".into(),
    );
    check(
        (n(&c.jwks) as f64) <= fetch_bound,
        format!("JWKS fetches {} within {fetch_bound:.0}", n(&c.jwks)),
    );
    if let Some(max) = args.max_rss_growth {
        check(
            growth <= max,
            format!("RSS growth {growth:.1} % within {max} %"),
        );
    }
    ok
}
