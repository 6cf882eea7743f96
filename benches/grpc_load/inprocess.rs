//! The in-process pipeline: `Registry::validate` on the same tokens, one thread, no
//! RPC, so that each server's CPU per call can be set against floor + pipeline.

use std::time::Instant;

use introspectd::{
    config::{self, KeySource},
    registry::{Registry, ValidateInput},
};

use crate::tokens::{AUDIENCE, ISSUER, Material};

/// Median microseconds per validation of `tokens` (each validated once per batch).
pub fn median_micros(material: &Material, tokens: &[String]) -> anyhow::Result<f64> {
    let yaml = format!(
        "tenants:\n  - id: bench\n    issuer: \"{ISSUER}\"\n    audiences: [\"{AUDIENCE}\"]\n"
    );
    let mut settings = config::load_str(&yaml, &|_| None, &[])?;
    settings.tenants[0].keys = KeySource::Static {
        jwks: material.keys.jwks(),
    };
    let registry = Registry::new(&settings)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples = Vec::new();
    for chunk in tokens.chunks(tokens.len().div_ceil(16).max(1)).skip(1) {
        let start = Instant::now();
        for t in chunk {
            let input = ValidateInput {
                token: t,
                ..Default::default()
            };
            if let Err(e) = rt.block_on(registry.validate(&input)) {
                anyhow::bail!("in-process validation failed: {e}");
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6 / chunk.len() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN))
}
