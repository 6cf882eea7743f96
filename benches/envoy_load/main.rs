//! `cargo bench --bench envoy_load`: HTTP load through a real Envoy in front of a small
//! upstream, in three setups: no authentication, Envoy's own `jwt_authn` (without and
//! with its JWT cache) and `ext_authz` asking introspectd, each with RS256 and ES256
//! tokens (distinct tokens, every one sent once as a warm-up before the measurement).
//! Prints calls/s, p50/p99 and the CPU per request of Envoy and of introspectd, read
//! from `/proc/<pid>/stat`. `benches/envoy_load/run.sh` installs Envoy and runs it;
//! `-- --help` lists the options.

mod envoy;
mod load;
mod procs;
// Shared with grpc_load, which also reads memory.
#[allow(dead_code)]
#[path = "../common/proc_stat.rs"]
mod proc_stat;
mod tokens;

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;

use crate::{
    envoy::Setup,
    tokens::{Alg, Keys},
};

/// HTTP load through Envoy: no auth, jwt_authn, ext_authz to introspectd.
#[derive(Debug, Parser)]
#[command(name = "envoy_load")]
struct Args {
    /// Seconds of measured load per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Distinct tokens per algorithm.
    #[arg(long, default_value_t = 2000)]
    tokens: usize,
    /// A few seconds in all, to check the harness works (small numbers, not figures).
    #[arg(long)]
    smoke: bool,
    /// Cargo passes `--bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One row of the table.
struct Row {
    setup: Setup,
    alg: Alg,
    phase: load::Phase,
    envoy_cpu_us: f64,
    introspectd_cpu_us: f64,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.seconds, args.tokens) = (1, 50);
    }
    introspectd::install_crypto();
    tokio::runtime::Runtime::new()?.block_on(run(&args))
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = root.join("target/envoy-load");
    std::fs::create_dir_all(&work)?;
    let keys = Keys::generate()?;
    let jwks = keys.jwks();
    let upstream = envoy::spawn_upstream().await?;
    let (mut introspectd, grpc) = envoy::start_introspectd(&work, &jwks).await?;
    let (mut envoy_proc, ports) = envoy::start_envoy(
        &procs::envoy_binary(&root)?,
        &work,
        &jwks,
        upstream,
        grpc,
        args.tokens,
    )
    .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.in_flight)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut rows = Vec::new();
    for alg in [Alg::Rs256, Alg::Es256] {
        let tokens = Arc::new(keys.tokens(alg, args.tokens)?);
        for setup in Setup::ALL {
            let url = format!("http://127.0.0.1:{}/", ports.port(setup));
            let warm = load::run(
                &client,
                &url,
                tokens.clone(),
                args.in_flight,
                Duration::ZERO,
                true,
            )
            .await;
            anyhow::ensure!(
                warm.failures == 0,
                "{} {}: {} warm-up requests failed",
                setup.name(),
                alg.name(),
                warm.failures
            );
            let (e0, i0) = (envoy_proc.cpu_secs()?, introspectd.cpu_secs()?);
            let phase = load::run(
                &client,
                &url,
                tokens.clone(),
                args.in_flight,
                Duration::from_secs(args.seconds),
                false,
            )
            .await;
            let (e1, i1) = (envoy_proc.cpu_secs()?, introspectd.cpu_secs()?);
            envoy_proc.check_alive()?;
            introspectd.check_alive()?;
            let n = (phase.ok + phase.failures).max(1) as f64;
            rows.push(Row {
                setup,
                alg,
                envoy_cpu_us: (e1 - e0) * 1e6 / n,
                introspectd_cpu_us: (i1 - i0) * 1e6 / n,
                phase,
            });
        }
    }
    report(args, &rows);
    Ok(())
}

fn report(args: &Args, rows: &[Row]) {
    println!(
        "\nenvoy_load: {} s per scenario, {} in flight, {} distinct tokens per algorithm, Envoy --concurrency 1",
        args.seconds, args.in_flight, args.tokens
    );
    println!(
        "{:<22} {:<6} {:>9} {:>8} {:>8} {:>11} {:>13} {:>10} {:>8}",
        "setup",
        "alg",
        "calls/s",
        "p50 µs",
        "p99 µs",
        "Envoy µs/req",
        "introspectd µs",
        "total µs",
        "failed"
    );
    for r in rows {
        println!(
            "{:<22} {:<6} {:>9.0} {:>8.0} {:>8.0} {:>11.1} {:>13.1} {:>10.1} {:>8}",
            r.setup.name(),
            r.alg.name(),
            r.phase.per_sec(),
            r.phase.quantile_us(0.5),
            r.phase.quantile_us(0.99),
            r.envoy_cpu_us,
            r.introspectd_cpu_us,
            r.envoy_cpu_us + r.introspectd_cpu_us,
            r.phase.failures
        );
    }
    for alg in [Alg::Rs256, Alg::Es256] {
        let find = |s: Setup| rows.iter().find(|r| r.setup == s && r.alg == alg);
        if let (Some(ext), Some(jwt)) = (find(Setup::ExtAuthz), find(Setup::JwtAuthn)) {
            let total = |r: &Row| r.envoy_cpu_us + r.introspectd_cpu_us;
            println!(
                "{}: ext_authz / jwt_authn CPU per request {:.2}x; p99 ext_authz - jwt_authn {:+.0} µs",
                alg.name(),
                total(ext) / total(jwt),
                ext.phase.quantile_us(0.99) - jwt.phase.quantile_us(0.99)
            );
        }
    }
}
