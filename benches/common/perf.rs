//! A `perf record` of some processes during a benchmark's measured phase, shared by the
//! load benchmarks (each includes this file with `#[path]`).

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

/// A `perf record` of some processes, stopped (and its file written) by
/// [`Profiler::stop`].
#[derive(Debug)]
pub(crate) struct Profiler {
    child: Child,
}

impl Profiler {
    /// Starts sampling the processes `pids` (CPU clock, call graphs) into `out`.
    pub(crate) fn start(pids: &[u32], out: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = out.parent() {
            fs::create_dir_all(dir)?;
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "4999", "-g", "-p"])
            .arg(pids.join(","))
            .arg("-o")
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting perf (Debian's linux-perf)")?;
        // perf attaches asynchronously; give it a moment before the load starts.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self { child })
    }

    /// Stops sampling (SIGINT, as perf expects) and waits for the file.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "could not stop perf");
        self.child.wait()?;
        Ok(())
    }
}
