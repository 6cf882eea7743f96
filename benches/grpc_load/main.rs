//! `cargo bench --bench grpc_load`: the gRPC load benchmark. A closed-loop load generator
//! (N calls in flight over M HTTP/2 connections, distinct or repeated RS256/ES256 tokens,
//! a warm-up, an HDR histogram) against, in one run and each as its own process on
//! loopback: introspectd (the release build), the floor (a tonic TokenService that
//! answers `valid: true` without looking) and a Node.js peer (grpc-js + jose). Prints
//! calls/s, p50/p99, each server's CPU per call (from `/proc/<pid>/stat`), the ratios,
//! the in-process pipeline, the verified-token cache's real cost per entry, and idle
//! memory with 100 tenants. `-- --help` lists the options.

// Benches: shared helpers are `pub` inside private modules, as in the other bench.
#![allow(unreachable_pub)]

#[path = "../common/dpop_client.rs"]
mod dpop_client;
mod floor;
mod inprocess;
mod load;
#[path = "../common/perf.rs"]
mod perf;
#[path = "../common/proc_stat.rs"]
mod proc_stat;
mod report;
mod servers;
mod tokens;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;

use crate::{
    dpop_client::DpopClient,
    load::{Load, TokenFeed},
    report::Row,
    servers::Server,
    tokens::{Alg, Material},
};

/// The gRPC load benchmark of introspectd.
#[derive(Debug, Parser)]
#[command(name = "grpc_load")]
pub struct Args {
    /// HTTP/2 connections per server.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight (closed loop: each caller sends its next call on an answer).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Measured calls per scenario.
    #[arg(long, default_value_t = 50_000)]
    calls: usize,
    /// Warm-up calls per scenario, before the measurement starts.
    #[arg(long, default_value_t = 10_000)]
    warmup: usize,
    /// Runs of every scenario (interleaved); the table shows medians.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Tenants of the idle-memory measurement (0: skip it).
    #[arg(long, default_value_t = 100)]
    tenants: usize,
    /// Also load this introspectd binary (e.g. one built with other features, or from
    /// another commit), in the same run, as "introspectd (baseline)".
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Skip the Node.js peer (no npm needed).
    #[arg(long)]
    no_node: bool,
    /// Only scenarios whose label contains this text (e.g. `RS256`, `introspectd`).
    #[arg(long)]
    only: Option<String>,
    /// Record a `perf` CPU profile of each scenario's measured phase (the floor's too,
    /// to compare with) into this folder (`perf report -i FILE` reads it; needs Debian's linux-perf).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// A few seconds in all, to check that the harness works (small numbers, not figures).
    #[arg(long)]
    smoke: bool,
    /// Internal: serve the floor and print `listening PORT`.
    #[arg(long, hide = true)]
    serve_floor: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Which server a scenario loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The trivial tonic server.
    Floor,
    /// The release build of introspectd.
    Introspectd,
    /// Another introspectd binary (`--baseline-bin`).
    Baseline,
    /// grpc-js + jose.
    Node,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// The server.
    pub target: Target,
    /// The tokens' algorithm.
    pub alg: Alg,
    /// One token for every call, or a new one for each.
    pub repeated: bool,
    /// The DPoP mode: the one token is bound to a DPoP key, each call carries a fresh
    /// proof (made before the measurement).
    pub dpop: bool,
}

impl Scenario {
    /// The table's label.
    pub fn label(&self) -> String {
        let server = match self.target {
            Target::Floor => "floor (tonic, answers without looking)",
            Target::Introspectd => "introspectd",
            Target::Baseline => "introspectd (baseline)",
            Target::Node => "Node (grpc-js + jose)",
        };
        let tokens = match (self.repeated, self.dpop) {
            (_, true) => "one DPoP-bound token repeated, a fresh proof per call",
            (true, false) => "one token repeated",
            (false, false) => "distinct tokens",
        };
        format!("{server}, {} {tokens}", self.alg.name())
    }
}

impl Scenario {
    /// A name for its files.
    pub fn file_name(&self) -> String {
        let tokens = match (self.repeated, self.dpop) {
            (_, true) => "dpop",
            (true, false) => "repeated",
            (false, false) => "distinct",
        };
        format!("{:?}-{}-{tokens}", self.target, self.alg.name())
    }
}

fn scenarios(args: &Args) -> Vec<Scenario> {
    let s = |target, alg, repeated| Scenario {
        target,
        alg,
        repeated,
        dpop: false,
    };
    let dpop = |alg| Scenario {
        dpop: true,
        ..s(Target::Introspectd, alg, true)
    };
    let mut all = vec![
        s(Target::Floor, Alg::Rs256, true),
        s(Target::Introspectd, Alg::Rs256, false),
        s(Target::Introspectd, Alg::Rs256, true),
        dpop(Alg::Rs256),
        s(Target::Introspectd, Alg::Es256, false),
        s(Target::Introspectd, Alg::Es256, true),
        dpop(Alg::Es256),
    ];
    if args.baseline_bin.is_some() {
        for alg in [Alg::Rs256, Alg::Es256] {
            all.push(s(Target::Baseline, alg, false));
            all.push(s(Target::Baseline, alg, true));
        }
    }
    if !args.no_node {
        all.push(s(Target::Node, Alg::Rs256, false));
        all.push(s(Target::Node, Alg::Es256, false));
    }
    all.retain(|s| {
        args.only
            .as_ref()
            .is_none_or(|o| s.label().contains(o.as_str()))
    });
    // The floor is always measured: every ratio is taken against it.
    if !all.iter().any(|s| s.target == Target::Floor) {
        all.insert(0, s(Target::Floor, Alg::Rs256, true));
    }
    all
}

/// Paths and material shared by every scenario.
#[derive(Debug)]
pub struct Bench {
    args: Args,
    work: PathBuf,
    material: Material,
    node_peer: Option<PathBuf>,
}

impl Bench {
    fn config(&self, tenants: usize) -> anyhow::Result<PathBuf> {
        let jwks = self.material.jwks_file.display().to_string();
        let mut yaml = String::from(
            "server:\n  listen: \"127.0.0.1:0\"\n  metrics_listen: \"127.0.0.1:0\"\ntenants:\n",
        );
        for i in 0..tenants.max(1) {
            let (id, issuer) = if i == 0 {
                ("bench".to_string(), tokens::ISSUER.to_string())
            } else {
                (format!("bench-{i}"), format!("{}/t{i}", tokens::ISSUER))
            };
            yaml.push_str(&format!(
                "  - id: {id}\n    issuer: \"{issuer}\"\n    audiences: [\"{}\"]\n    algorithms: [RS256, ES256]\n    jwks_file: \"{jwks}\"\n",
                tokens::AUDIENCE
            ));
        }
        let path = self.work.join(format!("introspectd-{tenants}.yaml"));
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    fn start(&self, scenario: &Scenario, round: usize) -> anyhow::Result<Server> {
        let log = self
            .work
            .join(format!("{}-{round}.log", scenario.file_name()));
        match scenario.target {
            Target::Floor => Server::floor(&log),
            Target::Introspectd => Server::introspectd(
                &PathBuf::from(env!("CARGO_BIN_EXE_introspectd")),
                &self.config(1)?,
                &log,
            ),
            Target::Baseline => Server::introspectd(
                self.args
                    .baseline_bin
                    .as_ref()
                    .context("no --baseline-bin")?,
                &self.config(1)?,
                &log,
            ),
            Target::Node => {
                let peer = self
                    .node_peer
                    .as_ref()
                    .context("the Node peer is not installed")?;
                Server::node(peer, &self.material.jwks_file, &log)
            }
        }
    }

    async fn run(&self, scenario: &Scenario, round: usize) -> anyhow::Result<Row> {
        let server = self.start(scenario, round)?;
        if matches!(scenario.target, Target::Introspectd | Target::Baseline) {
            report::wait_serving(server.addr).await?;
        }
        let feed = self.feed(scenario)?;
        let load = Load::connect(server.addr, self.args.connections, self.args.in_flight).await?;
        load.phase(&feed, 0, self.args.warmup).await?;
        let before = (server.usage()?, servers::usage("self")?);
        let entries_before = server.metric(report::CACHE_ENTRIES).await;
        let profile = match &self.args.perf {
            Some(dir) => Some(perf::Profiler::start(
                &[server.pid()],
                &dir.join(format!("{}.perf.data", scenario.file_name())),
            )?),
            None => None,
        };
        let phase = load.phase(&feed, self.args.warmup, self.args.calls).await?;
        if let Some(p) = profile {
            p.stop()?;
        }
        let after = (server.usage()?, servers::usage("self")?);
        let entries_after = server.metric(report::CACHE_ENTRIES).await;
        Ok(Row::new(
            &phase,
            before,
            after,
            entries_before.zip(entries_after),
        ))
    }

    /// What the callers of `scenario` send. The DPoP mode's proofs are made here, just
    /// before the load, so that their `iat` is within the tenant's `dpop_max_age`.
    fn feed(&self, scenario: &Scenario) -> anyhow::Result<TokenFeed> {
        if scenario.dpop {
            let client = DpopClient::generate()?;
            let token = self.material.keys.bound_token(scenario.alg, &client.jkt)?;
            let proofs = (0..self.args.warmup + self.args.calls)
                .map(|_| client.proof(load::DPOP_URI, &token))
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok(TokenFeed::dpop(token, Arc::new(proofs)));
        }
        let pool = Arc::new(self.material.pool(scenario.alg).to_vec());
        Ok(if scenario.repeated {
            TokenFeed::repeated(pool)
        } else {
            TokenFeed::distinct(pool)
        })
    }

    /// Idle RSS of introspectd (`bin`) with `n` tenants, after start-up.
    async fn idle_rss(&self, bin: &Path, n: usize) -> anyhow::Result<u64> {
        let server = Server::introspectd(
            bin,
            &self.config(n)?,
            &self.work.join(format!("idle-{n}.log")),
        )?;
        report::wait_serving(server.addr).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(server.usage()?.rss_bytes)
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.serve_floor {
        return floor::serve();
    }
    if args.smoke {
        (args.connections, args.in_flight) = (2, 8);
        (args.calls, args.warmup, args.rounds) = (1_000, 200, 1);
        args.tenants = args.tenants.min(10);
    }
    introspectd::install_crypto();
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grpc_load");
    let material = tokens::prepare(&work.join("pool"), args.warmup + args.calls)?;
    let node_peer = if args.no_node {
        None
    } else {
        Some(servers::install_node_peer()?)
    };
    let bench = Bench {
        args,
        work,
        material,
        node_peer,
    };
    let pipeline = report::pipeline(&bench)?;
    let scenarios = scenarios(&bench.args);
    let dpop_floor = if scenarios.iter().any(|s| s.dpop) {
        Some(dpop_client::es256_floor_us()?)
    } else {
        None
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(report::run_all(&bench, &scenarios, &pipeline, dpop_floor))
}
