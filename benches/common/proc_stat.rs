//! What `/proc` says of a process, shared by the benchmarks (each includes this file
//! with `#[path]`): its CPU time (`/proc/<pid>/stat`) and resident memory
//! (`/proc/<pid>/status`), and the calling thread's CPU time to the nanosecond.

use std::{fs, process::Command, sync::OnceLock};

use anyhow::Context as _;

fn clock_ticks_per_sec() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU seconds process `pid` ("self" for this one) has run.
pub(crate) fn cpu_secs(pid: &str) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields are counted after its `)`.
    let rest = stat.rsplit_once(')').context("no ) in /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc stat line")?
            .parse::<u64>()? as f64)
    };
    // utime and stime are fields 14 and 15 of proc(5); `rest` starts at field 3.
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_sec())
}

/// Resident set size of process `pid` in bytes (`VmRSS`; 0 when absent).
pub(crate) fn rss_bytes(pid: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(kib * 1024)
}

/// CPU nanoseconds the calling thread has run (`/proc/thread-self/schedstat`):
/// preemption by other processes does not count. The kernel brings that sum up to date
/// only at scheduler events and ticks (4 ms at 250 Hz, which made per-call figures come
/// out in steps of several µs), so this yields first: `sched_yield` updates the running
/// thread's sum, making it exact to the nanosecond.
pub(crate) fn thread_cpu_ns() -> anyhow::Result<u64> {
    std::thread::yield_now();
    let stat = fs::read_to_string("/proc/thread-self/schedstat")?;
    Ok(stat
        .split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()?)
}
