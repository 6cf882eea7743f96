//! The DPoP side of the load benchmarks (each includes this file with `#[path]`, and
//! `proc_stat.rs` beside it): a
//! client with one ES256 key that makes a fresh proof for every request, and the floor
//! a DPoP-bound call's extra cost is measured against, one ES256 verification of a
//! fresh proof.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{
    digest,
    rand::SystemRandom,
    signature::{self as sig, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::json;

/// A DPoP client: one ES256 key, a fresh proof for every request.
pub(crate) struct DpopClient {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    header_b64: String,
    /// The RFC 7638 thumbprint of its public key, the tokens' `cnf.jkt`.
    pub(crate) jkt: String,
    sent: AtomicU64,
}

impl DpopClient {
    /// A fresh key.
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?;
        let key = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())?;
        let p = key.public_key().as_ref();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&p[1..33]),
            URL_SAFE_NO_PAD.encode(&p[33..65]),
        );
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let jkt = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
        let header = json!({"typ": "dpop+jwt", "alg": "ES256",
            "jwk": {"kty": "EC", "crv": "P-256", "x": x, "y": y}});
        Ok(Self {
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            key,
            rng,
            jkt,
            sent: AtomicU64::new(0),
        })
    }

    /// The uncompressed public key point.
    pub(crate) fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// A proof for `GET url` carrying `token` (RFC 9449 4.2), with a `jti` never used
    /// before in this run.
    pub(crate) fn proof(&self, url: &str, token: &str) -> anyhow::Result<String> {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let ath = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, token.as_bytes()));
        let claims = json!({"jti": format!("bench-{n}"), "htm": "GET", "htu": url, "iat": now,
            "ath": ath});
        let input = format!(
            "{}.{}",
            self.header_b64,
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.key.sign(&self.rng, input.as_bytes())?;
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// The floor of a DPoP-bound call's extra cost: one ES256 verification with its key
/// parsed for the call (a proof carries its key), median CPU microseconds over batches
/// timed on this thread.
pub(crate) fn es256_floor_us() -> anyhow::Result<f64> {
    const BATCHES: usize = 11;
    const PER_BATCH: usize = 200;
    let client = DpopClient::generate()?;
    // Each call verifies another proof's signature, as each DPoP request does (the same
    // signature over and over runs faster: the CPU's branch predictors learn it).
    let mut proofs = Vec::with_capacity(BATCHES * PER_BATCH);
    for _ in 0..BATCHES * PER_BATCH {
        let proof = client.proof("http://127.0.0.1/", "token")?;
        let (input, signature) = proof.rsplit_once('.').unwrap_or_default();
        let signature = URL_SAFE_NO_PAD.decode(signature)?;
        proofs.push((input.as_bytes().to_vec(), signature));
    }
    let public = client.public_key();
    let mut batches = Vec::new();
    for batch in proofs.chunks(PER_BATCH) {
        let start = crate::proc_stat::thread_cpu_ns()?;
        for (input, signature) in batch {
            let key = UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, public.as_slice());
            anyhow::ensure!(
                key.verify(input, signature).is_ok(),
                "floor: a proof does not verify"
            );
        }
        let spent = crate::proc_stat::thread_cpu_ns()?.saturating_sub(start);
        batches.push(spent as f64 / 1e3 / PER_BATCH as f64);
    }
    batches.sort_by(f64::total_cmp);
    Ok(batches[batches.len() / 2])
}
