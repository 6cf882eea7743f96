//! `cargo bench --bench envoy_load`: HTTP load through a real Envoy in front of a small
//! upstream, in three setups: no authentication, Envoy's own `jwt_authn` (without and
//! with its JWT cache) and `ext_authz` asking introspectd, each with RS256 and ES256
//! tokens (distinct tokens, every one sent once as a warm-up before the measurement);
//! and the DPoP mode of issue 17: ext_authz with DPoP-bound tokens, each request carrying
//! a fresh ES256 proof, beside the same setup with Bearer tokens, with ES256 tokens each
//! sent once (every request a cache miss: one ES256 verification in introspectd under
//! this load), and the floor (one ES256 verification, timed in this process in the same
//! run). Prints calls/s, p50/p99 and
//! the CPU per request of Envoy and of introspectd, read from `/proc/<pid>/stat`. `benches/envoy_load/run.sh` installs Envoy and runs it;
//! `-- --help` lists the options.

#[path = "../common/dpop_client.rs"]
mod dpop_client;
mod envoy;
mod load;
#[path = "../common/perf.rs"]
mod perf;
mod procs;
// Shared with grpc_load, which also reads memory.
#[allow(dead_code)]
#[path = "../common/proc_stat.rs"]
mod proc_stat;
mod tokens;

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;

use crate::{
    dpop_client::{DpopClient, es256_floor_us},
    envoy::Setup,
    procs::Proc,
    tokens::{Alg, Keys},
};

/// HTTP load through Envoy: no auth, jwt_authn, ext_authz to introspectd.
#[derive(Debug, Parser)]
#[command(name = "envoy_load")]
struct Args {
    /// Seconds of measured load per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Runs of every scenario, one round after another; the table shows each figure's
    /// median over the rounds (and the failures of all of them).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Distinct tokens per algorithm.
    #[arg(long, default_value_t = 2000)]
    tokens: usize,
    /// ES256 tokens of the cache-miss scenario, each sent once (no warm-up, no time
    /// limit).
    #[arg(long, default_value_t = 40_000)]
    miss_tokens: usize,
    /// A few seconds in all, to check the harness works (small numbers, not figures).
    #[arg(long)]
    smoke: bool,
    /// Only scenarios whose label (as printed, e.g. `jwt_authn RS256`, `DPoP-bound`)
    /// contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Record a `perf` CPU profile (call graphs) of Envoy and introspectd during each
    /// scenario's measured phase into this folder (needs Debian's linux-perf).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Cargo passes `--bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The DPoP mode's setup, as printed.
const DPOP_LABEL: &str = "ext_authz, DPoP-bound";
/// The cache-miss scenario's setup, as printed.
const MISSES_LABEL: &str = "ext_authz, cache misses";

/// What the requests of a scenario carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Bearer tokens, every one sent once as a warm-up (cache hits in introspectd).
    Bearer,
    /// DPoP-bound tokens with a proof per request (warmed up the same way).
    Dpop,
    /// Bearer tokens each sent once, measured: every request a cache miss.
    Misses,
}

/// One row of the table.
struct Row {
    setup: Setup,
    mode: Mode,
    alg: Alg,
    calls_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    failures: u64,
    envoy_cpu_us: f64,
    introspectd_cpu_us: f64,
}

impl Row {
    /// Whether two rows measured the same scenario.
    fn same_scenario(&self, other: &Row) -> bool {
        (self.setup, self.mode, self.alg) == (other.setup, other.mode, other.alg)
    }

    /// The setup as printed.
    fn label(&self) -> &'static str {
        label(self.setup, self.mode)
    }

    /// Envoy's and introspectd's CPU per request.
    fn total_cpu_us(&self) -> f64 {
        self.envoy_cpu_us + self.introspectd_cpu_us
    }
}

/// One row per scenario, in the order first measured: each figure the median of the
/// scenario's rounds, the failures summed.
fn medians(rows: Vec<Row>) -> Vec<Row> {
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for row in rows {
        match groups.iter_mut().find(|g| g[0].same_scenario(&row)) {
            Some(g) => g.push(row),
            None => groups.push(vec![row]),
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let median = |f: fn(&Row) -> f64| {
                let mut v: Vec<f64> = g.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            Row {
                setup: g[0].setup,
                mode: g[0].mode,
                alg: g[0].alg,
                calls_per_sec: median(|r| r.calls_per_sec),
                p50_us: median(|r| r.p50_us),
                p99_us: median(|r| r.p99_us),
                failures: g.iter().map(|r| r.failures).sum(),
                envoy_cpu_us: median(|r| r.envoy_cpu_us),
                introspectd_cpu_us: median(|r| r.introspectd_cpu_us),
            }
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.seconds, args.tokens, args.miss_tokens) = (1, 50, 200);
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
    let dpop = Arc::new(DpopClient::generate()?);
    let mut rows = Vec::new();
    for alg in [Alg::Rs256, Alg::Es256].repeat(args.rounds.max(1)) {
        let bearer = Arc::new(keys.tokens(alg, args.tokens, None)?);
        let bound = Arc::new(keys.tokens(alg, args.tokens, Some(&dpop.jkt))?);
        let mut procs = Procs {
            envoy: &mut envoy_proc,
            introspectd: &mut introspectd,
        };
        for setup in Setup::ALL {
            let url = format!("http://127.0.0.1:{}/", ports.port(setup));
            let s = Scenario {
                setup,
                alg,
                url,
                tokens: bearer.clone(),
                mode: Mode::Bearer,
                dpop: None,
            };
            rows.extend(s.measure(&client, args, &mut procs).await?);
        }
        let url = format!("http://127.0.0.1:{}/", ports.port(Setup::ExtAuthz));
        let s = Scenario {
            setup: Setup::ExtAuthz,
            alg,
            url: url.clone(),
            tokens: bound,
            mode: Mode::Dpop,
            dpop: Some(dpop.clone()),
        };
        rows.extend(s.measure(&client, args, &mut procs).await?);
        // ES256 only: its verification is the DPoP budget's. New tokens every round
        // (ECDSA signatures are randomised), so that none is in introspectd's cache;
        // signed only when the scenario is selected.
        if alg == Alg::Es256 && selected(args, Setup::ExtAuthz, Mode::Misses, alg) {
            let s = Scenario {
                setup: Setup::ExtAuthz,
                alg,
                url,
                tokens: Arc::new(keys.tokens(alg, args.miss_tokens, None)?),
                mode: Mode::Misses,
                dpop: None,
            };
            rows.extend(s.measure(&client, args, &mut procs).await?);
        }
    }
    report(args, &medians(rows), es256_floor_us()?);
    Ok(())
}

/// The two processes whose CPU time is read.
struct Procs<'a> {
    envoy: &'a mut Proc,
    introspectd: &'a mut Proc,
}

/// One row's load: a setup, an algorithm, its tokens and, in the DPoP mode, the client.
struct Scenario {
    setup: Setup,
    alg: Alg,
    url: String,
    tokens: Arc<Vec<String>>,
    mode: Mode,
    dpop: Option<Arc<DpopClient>>,
}

/// A scenario's setup as printed.
fn label(setup: Setup, mode: Mode) -> &'static str {
    match mode {
        Mode::Bearer => setup.name(),
        Mode::Dpop => DPOP_LABEL,
        Mode::Misses => MISSES_LABEL,
    }
}

impl Scenario {
    /// Every token once (warm-up, all must pass), then `args.seconds` of measured load;
    /// in the cache-miss mode, every token once, measured.
    async fn measure(
        self,
        client: &reqwest::Client,
        args: &Args,
        procs: &mut Procs<'_>,
    ) -> anyhow::Result<Option<Row>> {
        let (url, tokens, dpop) = (&self.url, &self.tokens, &self.dpop);
        if !self.selected(args) {
            return Ok(None);
        }
        let misses = self.mode == Mode::Misses;
        if !misses {
            let warm = load::run(
                client,
                url,
                tokens.clone(),
                args.in_flight,
                Duration::ZERO,
                true,
                dpop.clone(),
            )
            .await;
            anyhow::ensure!(
                warm.failures == 0,
                "{}: {} warm-up requests failed",
                self.label(),
                warm.failures
            );
        }
        let profile = match &args.perf {
            Some(dir) => Some(perf::Profiler::start(
                &[procs.envoy.pid(), procs.introspectd.pid()],
                &dir.join(format!(
                    "{}.perf.data",
                    self.label().replace([' ', ','], "_")
                )),
            )?),
            None => None,
        };
        let (e0, i0) = (procs.envoy.cpu_secs()?, procs.introspectd.cpu_secs()?);
        let phase = load::run(
            client,
            url,
            tokens.clone(),
            args.in_flight,
            Duration::from_secs(args.seconds),
            misses,
            dpop.clone(),
        )
        .await;
        let (e1, i1) = (procs.envoy.cpu_secs()?, procs.introspectd.cpu_secs()?);
        if let Some(p) = profile {
            p.stop()?;
        }
        procs.envoy.check_alive()?;
        procs.introspectd.check_alive()?;
        let n = (phase.ok + phase.failures).max(1) as f64;
        Ok(Some(Row {
            setup: self.setup,
            mode: self.mode,
            alg: self.alg,
            calls_per_sec: phase.per_sec(),
            p50_us: phase.quantile_us(0.5),
            p99_us: phase.quantile_us(0.99),
            failures: phase.failures,
            envoy_cpu_us: (e1 - e0) * 1e6 / n,
            introspectd_cpu_us: (i1 - i0) * 1e6 / n,
        }))
    }

    /// The scenario's label: its setup (or the DPoP mode) and algorithm, as printed.
    fn label(&self) -> String {
        scenario_label(self.setup, self.mode, self.alg)
    }

    /// Whether `--only` leaves this scenario in.
    fn selected(&self, args: &Args) -> bool {
        selected(args, self.setup, self.mode, self.alg)
    }
}

/// Whether `--only` leaves the scenario of `setup`, `mode` and `alg` in.
fn selected(args: &Args, setup: Setup, mode: Mode, alg: Alg) -> bool {
    let label = scenario_label(setup, mode, alg);
    args.only.as_deref().is_none_or(|only| label.contains(only))
}

/// A scenario's label: its setup (or mode) and algorithm, as printed.
fn scenario_label(setup: Setup, mode: Mode, alg: Alg) -> String {
    format!("{} {}", label(setup, mode), alg.name())
}

fn report(args: &Args, rows: &[Row], floor_us: f64) {
    println!(
        "\nenvoy_load: {} s per scenario, {} round(s) (medians), {} in flight, {} distinct tokens per algorithm, Envoy --concurrency 1",
        args.seconds,
        args.rounds.max(1),
        args.in_flight,
        args.tokens
    );
    println!(
        "{:<24} {:<6} {:>9} {:>8} {:>8} {:>11} {:>13} {:>10} {:>8}",
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
            "{:<24} {:<6} {:>9.0} {:>8.0} {:>8.0} {:>11.1} {:>13.1} {:>10.1} {:>8}",
            r.label(),
            r.alg.name(),
            r.calls_per_sec,
            r.p50_us,
            r.p99_us,
            r.envoy_cpu_us,
            r.introspectd_cpu_us,
            r.total_cpu_us(),
            r.failures
        );
    }
    for alg in [Alg::Rs256, Alg::Es256] {
        let find = |s: Setup| {
            rows.iter()
                .find(|r| r.setup == s && r.alg == alg && r.mode == Mode::Bearer)
        };
        if let (Some(ext), Some(jwt)) = (find(Setup::ExtAuthz), find(Setup::JwtAuthn)) {
            println!(
                "{}: ext_authz / jwt_authn CPU per request {:.2}x; p99 ext_authz - jwt_authn {:+.0} µs",
                alg.name(),
                ext.total_cpu_us() / jwt.total_cpu_us(),
                ext.p99_us - jwt.p99_us
            );
        }
    }
    let find = |alg: Alg, mode: Mode| {
        rows.iter()
            .find(|r| r.setup == Setup::ExtAuthz && r.alg == alg && r.mode == mode)
    };
    // One ES256 token's verification in introspectd under this load: a miss minus a hit
    // (its parse and cache insert included, about 3 µs in process: grpc_load measures
    // that part).
    let loaded = match (
        find(Alg::Es256, Mode::Misses),
        find(Alg::Es256, Mode::Bearer),
    ) {
        (Some(miss), Some(hit)) => {
            let cost = miss.introspectd_cpu_us - hit.introspectd_cpu_us;
            println!(
                "one ES256 token's verification in introspectd under this load: cache miss - hit = {:.1} - {:.1} = {cost:.1} µs CPU per request (parse and cache insert included)",
                miss.introspectd_cpu_us, hit.introspectd_cpu_us
            );
            Some(cost)
        }
        _ => None,
    };
    for alg in [Alg::Rs256, Alg::Es256] {
        if let (Some(bound), Some(bearer)) = (find(alg, Mode::Dpop), find(alg, Mode::Bearer)) {
            let extra = bound.introspectd_cpu_us - bearer.introspectd_cpu_us;
            println!(
                "{} token, DPoP-bound over Bearer: introspectd {:+.1} µs CPU per request = floor (one ES256 verification, {:.1} µs in this process) {:+.1} µs",
                alg.name(),
                extra,
                floor_us,
                extra - floor_us
            );
            if let Some(loaded) = loaded {
                println!(
                    "{} token, DPoP-bound over Bearer: introspectd {extra:+.1} µs = one ES256 token's verification in introspectd under this load {:+.1} µs",
                    alg.name(),
                    extra - loaded
                );
            }
        }
    }
}
