//! The in-process pipeline: `Registry::validate` on the same tokens, one thread, no
//! RPC, so that each server's CPU per call can be set against floor + pipeline. Timed
//! in the thread's own CPU time (`proc_stat::thread_cpu_ns`), which other work on a
//! shared machine disturbs far less than wall time.

use introspectd::{
    config::{self, KeySource},
    registry::{Registry, ValidateInput},
};

use crate::{
    proc_stat::thread_cpu_ns,
    tokens::{AUDIENCE, ISSUER, Material},
};

/// Median CPU microseconds per validation of `tokens` (each validated once per batch).
pub fn median_micros(material: &Material, tokens: &[String]) -> anyhow::Result<f64> {
    let yaml = format!(
        "tenants:\n  - id: bench\n    issuer: \"{ISSUER}\"\n    audiences: [\"{AUDIENCE}\"]\n"
    );
    let mut settings = config::load_str(&yaml, &|_| None, &[])?;
    settings.tenants[0].keys = KeySource::Static {
        jwks: material.keys.jwks(),
    };
    // The pipeline itself: parse and verify on every call, no verified-token cache.
    settings.token_cache.enabled = false;
    let registry = Registry::new(&settings)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples = Vec::new();
    for chunk in tokens.chunks(tokens.len().div_ceil(16).max(1)).skip(1) {
        let start = thread_cpu_ns()?;
        for t in chunk {
            let input = ValidateInput {
                token: t,
                ..Default::default()
            };
            if let Err(e) = rt.block_on(registry.validate(&input)) {
                anyhow::bail!("in-process validation failed: {e}");
            }
        }
        let spent = thread_cpu_ns()?.saturating_sub(start);
        samples.push(spent as f64 / 1e3 / chunk.len() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN))
}
