//! The servers under load, each its own process so that its CPU time and memory can be
//! read from `/proc/<pid>`: introspectd (the release binary Cargo built beside this
//! benchmark), the floor (this benchmark re-executed with `--serve-floor`) and the
//! Node.js peer (`benches/node-peer`, installed with `npm ci`).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How long a server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A server process, killed when dropped.
#[derive(Debug)]
pub struct Server {
    /// Its gRPC address on loopback.
    pub addr: SocketAddr,
    /// Its Prometheus address, for introspectd.
    pub metrics: Option<SocketAddr>,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time and memory of a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU seconds since the process started.
    pub cpu_secs: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads `utime + stime` from `/proc/<pid>/stat` and `VmRSS` from `/proc/<pid>/status`
/// (`pid` "self" for this process).
pub fn usage(pid: &str) -> anyhow::Result<Usage> {
    Ok(Usage {
        cpu_secs: crate::proc_stat::cpu_secs(pid)?,
        rss_bytes: crate::proc_stat::rss_bytes(pid)?,
    })
}

impl Server {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This server's CPU time and memory now.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        usage(&self.child.id().to_string())
    }

    /// Starts introspectd with `config`, logging JSON lines to `log`, and waits for its
    /// "serving gRPC" line.
    pub fn introspectd(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let file = fs::File::create(log)?;
        let child = Command::new(bin)
            .args(["serve", "--log-format", "json", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
            child,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("introspectd exited ({status}); see {}", log.display());
            }
            let text = fs::read_to_string(log).unwrap_or_default();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let addr = v["addr"].as_str().and_then(|a| a.parse().ok());
                match (v["message"].as_str(), addr) {
                    (Some("serving gRPC"), Some(a)) => server.addr = a,
                    (Some(m), Some(a)) if m.starts_with("serving Prometheus") => {
                        server.metrics = Some(a)
                    }
                    _ => {}
                }
            }
            if server.addr.port() != 0 {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("introspectd did not start; see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a process that prints `listening PORT` on stdout when it serves.
    fn announced(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting the {name} server"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let port = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(line)) => line
                .strip_prefix("listening ")
                .and_then(|p| p.trim().parse::<u16>().ok()),
            _ => None,
        };
        let server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0))),
            metrics: None,
            child,
        };
        if port.is_none() {
            bail!("the {name} server did not start; see {}", log.display());
        }
        Ok(server)
    }

    /// Re-executes this benchmark as the floor server.
    pub fn floor(log: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--serve-floor");
        Self::announced("floor", cmd, log)
    }

    /// Starts the Node.js peer (installed by [`install_node_peer`]).
    pub fn node(peer: &Path, jwks: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new("node");
        cmd.arg(peer.join("server.mjs"))
            .arg(repo_root().join("proto"))
            .arg(jwks)
            .arg(crate::tokens::ISSUER)
            .arg(crate::tokens::AUDIENCE);
        Self::announced("node", cmd, log)
    }

    /// Reads one sample's value from introspectd's `/metrics` (the sum over its series).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let addr = self.metrics?;
        let text = scrape(addr).await.ok()?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The repository root (this benchmark's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the Node.js peer's pinned packages (`npm ci` from its committed lock file)
/// into its git-ignored `node_modules`, unless they are there already.
pub fn install_node_peer() -> anyhow::Result<PathBuf> {
    let dir = repo_root().join("benches/node-peer");
    let stamp = dir.join("node_modules/.package-lock.json");
    let fresh = match (
        fs::metadata(&stamp),
        fs::metadata(dir.join("package-lock.json")),
    ) {
        (Ok(installed), Ok(lock)) => installed.modified()? >= lock.modified()?,
        _ => false,
    };
    if !fresh {
        eprintln!(
            "installing the Node.js peer (npm ci in {})...",
            dir.display()
        );
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .context(
                "running npm (Node.js and npm are needed for the Node peer; --no-node skips it)",
            )?;
        if !status.success() {
            bail!("npm ci failed in {}", dir.display());
        }
    }
    Ok(dir)
}
