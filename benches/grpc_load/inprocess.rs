//! The in-process figures: `Registry::validate` on the same tokens, one thread, no RPC,
//! so that each server's CPU per call can be set against floor + pipeline; and what a
//! cache miss costs beyond a hit and the signature, so that the signature's cost in the
//! server under load can be told from the rest. Timed
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
    tokens::{AUDIENCE, Alg, ISSUER, Material},
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

/// The in-process figures of one algorithm, over the same distinct tokens.
#[derive(Debug, Clone, Copy)]
pub struct InProcess {
    /// The pipeline itself: `Registry::validate`, the verified-token cache off.
    pub pipeline: f64,
    /// What a miss costs beyond a hit and the signature's verification, the cache on.
    pub miss_beyond_verification: f64,
    /// The signature's verification alone (aws-lc, key parsed once).
    pub verification: f64,
}

/// Median CPU microseconds per token of each figure of [`InProcess`], for `alg`'s
/// distinct `tokens`, in batches (the first, a warm-up, left out). Each batch is
/// validated once with the cache off; then, with a second registry whose cache is on,
/// once (misses: parse, verify, insert) and again (hits); and its signatures verified
/// with aws-lc alone (the signing input hashed, the key parsed once).
pub fn measure(material: &Material, alg: Alg, tokens: &[String]) -> anyhow::Result<InProcess> {
    let uncached = registry(material, false)?;
    let cached = registry(material, true)?;
    let rt = runtime()?;
    let verifier: &'static dyn sig::VerificationAlgorithm = match alg {
        Alg::Rs256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Alg::Es256 => &sig::ECDSA_P256_SHA256_FIXED,
    };
    let key = sig::ParsedPublicKey::new(verifier, material.keys.public_key(alg))
        .map_err(|e| anyhow::anyhow!("{} key: {e}", alg.name()))?;
    let (mut pipeline, mut beyond, mut verification) = (Vec::new(), Vec::new(), Vec::new());
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
        pipeline.push(per_token(chunk, |t| validate(&rt, &uncached, t))?);
        let miss = per_token(chunk, |t| validate(&rt, &cached, t))?;
        let hit = per_token(chunk, |t| validate(&rt, &cached, t))?;
        let start = thread_cpu_ns()?;
        for (input, signature) in &signed {
            key.verify_sig(input.as_bytes(), signature)
                .map_err(|_| anyhow::anyhow!("a {} signature does not verify", alg.name()))?;
        }
        let verify = thread_cpu_ns()?.saturating_sub(start) as f64 / 1e3 / signed.len() as f64;
        beyond.push(miss - hit - verify);
        verification.push(verify);
    }
    Ok(InProcess {
        pipeline: median(pipeline),
        miss_beyond_verification: median(beyond),
        verification: median(verification),
    })
}
