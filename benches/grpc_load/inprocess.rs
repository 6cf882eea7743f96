//! The in-process pipeline: `Registry::validate` on the same tokens, one thread, no
//! RPC, so that each server's CPU per call can be set against floor + pipeline. Timed
//! in the thread's own CPU time (`proc_stat::thread_cpu_ns`), which other work on a
//! shared machine disturbs far less than wall time.

use aws_lc_rs::signature as sig;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use introspectd::{
    config::{self, KeySource},
    registry::{Registry, ValidateInput},
};

use crate::{
    proc_stat::thread_cpu_ns,
    tokens::{AUDIENCE, ISSUER, Material},
};

/// A registry of the bench's tenant, its verified-token cache on or off.
fn registry(material: &Material, token_cache: bool) -> anyhow::Result<Registry> {
    let yaml = format!(
        "tenants:\n  - id: bench\n    issuer: \"{ISSUER}\"\n    audiences: [\"{AUDIENCE}\"]\n"
    );
    let mut settings = config::load_str(&yaml, &|_| None, &[])?;
    settings.tenants[0].keys = KeySource::Static {
        jwks: material.keys.jwks(),
    };
    settings.token_cache.enabled = token_cache;
    Ok(Registry::new(&settings)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// This thread's CPU microseconds per token for `f` run over every token of `chunk`.
fn per_token(
    chunk: &[String],
    mut f: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let start = thread_cpu_ns()?;
    for t in chunk {
        f(t)?;
    }
    let spent = thread_cpu_ns()?.saturating_sub(start);
    Ok(spent as f64 / 1e3 / chunk.len() as f64)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

fn validate(rt: &tokio::runtime::Runtime, registry: &Registry, token: &str) -> anyhow::Result<()> {
    let input = ValidateInput {
        token,
        ..Default::default()
    };
    match rt.block_on(registry.validate(&input)) {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!("in-process validation failed: {e}"),
    }
}

/// The batches `tokens` is timed in (the first, which warms up, is left out).
fn batches(tokens: &[String]) -> impl Iterator<Item = &[String]> {
    tokens.chunks(tokens.len().div_ceil(16).max(1)).skip(1)
}

/// Median CPU microseconds per validation of `tokens` (each validated once per batch).
pub fn median_micros(material: &Material, tokens: &[String]) -> anyhow::Result<f64> {
    // The pipeline itself: parse and verify on every call, no verified-token cache.
    let registry = registry(material, false)?;
    let rt = runtime()?;
    let samples = batches(tokens)
        .map(|chunk| per_token(chunk, |t| validate(&rt, &registry, t)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(median(samples))
}

/// What a cache miss costs beyond a cache hit and the signature's verification, in
/// CPU microseconds (median of batches), for distinct ES256 `tokens`: each batch is
/// validated once with the verified-token cache on (misses: parse, verify, insert),
/// again (hits), and its signatures verified with aws-lc alone (the signing input
/// hashed, the key parsed once). Subtracted from the server's distinct-minus-repeated
/// CPU per call, it leaves what one ES256 verification costs the server under load.
pub fn es256_miss_beyond_verification(
    material: &Material,
    tokens: &[String],
) -> anyhow::Result<f64> {
    let registry = registry(material, true)?;
    let rt = runtime()?;
    let key =
        sig::ParsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, material.keys.es256_public())
            .map_err(|e| anyhow::anyhow!("ES256 key: {e}"))?;
    let mut samples = Vec::new();
    for chunk in batches(tokens) {
        let signed = chunk
            .iter()
            .map(|t| {
                let (input, sig) = t
                    .rsplit_once('.')
                    .ok_or_else(|| anyhow::anyhow!("no signature"))?;
                Ok((input, URL_SAFE_NO_PAD.decode(sig)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let miss = per_token(chunk, |t| validate(&rt, &registry, t))?;
        let hit = per_token(chunk, |t| validate(&rt, &registry, t))?;
        let start = thread_cpu_ns()?;
        for (input, signature) in &signed {
            key.verify_sig(input.as_bytes(), signature)
                .map_err(|_| anyhow::anyhow!("an ES256 signature does not verify"))?;
        }
        let verify = thread_cpu_ns()?.saturating_sub(start) as f64 / 1e3 / signed.len() as f64;
        samples.push(miss - hit - verify);
    }
    Ok(median(samples))
}
