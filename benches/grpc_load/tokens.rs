//! Signing keys and token pools: an RSA-2048 and a P-256 key, and pools of distinct
//! RS256 and ES256 tokens signed with them. Signing 100,000 RS256 tokens takes about a
//! minute on two cores, so keys and pools are kept under `target/` between runs and
//! only grown (or re-made when their tokens come close to expiry).

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use aws_lc_rs::{
    encoding::AsDer as _,
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{self as sig, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// The benchmark tenant's issuer.
pub const ISSUER: &str = "https://bench.example";
/// The benchmark tenant's audience.
pub const AUDIENCE: &str = "api://bench";
/// Lifetime of pooled tokens; a pool within a day of expiry is made again.
const LIFETIME_SECS: u64 = 30 * 24 * 3600;
const RENEW_BEFORE_SECS: u64 = 24 * 3600;
/// Bump when the claims or the file layout change, so old pools are made again.
const POOL_VERSION: u64 = 1;

/// A token algorithm of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit key.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

impl Alg {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    fn kid(self) -> &'static str {
        match self {
            Alg::Rs256 => "bench-rs",
            Alg::Es256 => "bench-es",
        }
    }
}

/// The two signing keys.
pub struct Keys {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).context("generating RSA key")?;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .context("generating EC key")?;
        let ec = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .context("loading EC key")?;
        Ok(Self { rsa, ec, rng })
    }

    fn load(dir: &Path) -> anyhow::Result<Self> {
        let rsa = RsaKeyPair::from_pkcs8(&fs::read(dir.join("rsa.pk8"))?)
            .map_err(|e| anyhow::anyhow!("rsa.pk8: {e}"))?;
        let ec = EcdsaKeyPair::from_pkcs8(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            &fs::read(dir.join("ec.pk8"))?,
        )
        .map_err(|e| anyhow::anyhow!("ec.pk8: {e}"))?;
        Ok(Self {
            rsa,
            ec,
            rng: SystemRandom::new(),
        })
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let rsa = self.rsa.as_der().context("encoding RSA key")?;
        fs::write(dir.join("rsa.pk8"), rsa.as_ref())?;
        let ec = self.ec.to_pkcs8v1().context("encoding EC key")?;
        fs::write(dir.join("ec.pk8"), ec.as_ref())?;
        Ok(())
    }

    /// The public JWKS (both keys, each bound to its algorithm by `alg`).
    pub fn jwks(&self) -> Value {
        let public = self.rsa.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        let p = self.ec.public_key().as_ref();
        json!({"keys": [
            {"kty": "RSA", "kid": Alg::Rs256.kid(), "alg": "RS256", "use": "sig", "n": n, "e": e},
            {"kty": "EC", "kid": Alg::Es256.kid(), "alg": "ES256", "use": "sig", "crv": "P-256",
             "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])},
        ]})
    }

    /// The public key of `alg` (DER RSAPublicKey, or an uncompressed P-256 point), for
    /// aws-lc verification.
    pub fn public_key(&self, alg: Alg) -> &[u8] {
        match alg {
            Alg::Rs256 => self.rsa.public_key().as_ref(),
            Alg::Es256 => self.ec.public_key().as_ref(),
        }
    }

    /// The raw signature of `message` (what the JWS signature segment encodes).
    pub fn sign(&self, alg: Alg, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        match alg {
            Alg::Rs256 => {
                let mut out = vec![0; self.rsa.public_modulus_len()];
                self.rsa
                    .sign(&sig::RSA_PKCS1_SHA256, &self.rng, message, &mut out)
                    .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
                Ok(out)
            }
            Alg::Es256 => Ok(self
                .ec
                .sign(&self.rng, message)
                .map_err(|_| anyhow::anyhow!("ECDSA signing failed"))?
                .as_ref()
                .to_vec()),
        }
    }

    /// A signed token: a realistic access token of about 450 bytes of claims, distinct
    /// per `index` (`sub`, `jti`, `name`, `email`).
    pub fn token(&self, alg: Alg, index: usize, iat: u64, exp: u64) -> anyhow::Result<String> {
        self.signed(alg, &claims(alg, index, iat, exp))
    }

    /// Token 0's claims bound to the DPoP key whose RFC 7638 thumbprint is `jkt`
    /// (`cnf.jkt`), valid for a day.
    pub fn bound_token(&self, alg: Alg, jkt: &str) -> anyhow::Result<String> {
        let iat = now_secs();
        let mut claims = claims(alg, 0, iat, iat + RENEW_BEFORE_SECS);
        claims["cnf"] = json!({ "jkt": jkt });
        self.signed(alg, &claims)
    }

    /// `claims` as a compact JWS signed with the `alg` key.
    fn signed(&self, alg: Alg, claims: &Value) -> anyhow::Result<String> {
        let header = json!({"alg": alg.name(), "typ": "JWT", "kid": alg.kid()});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.sign(alg, input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// The claims of pooled token `index`.
pub fn claims(alg: Alg, index: usize, iat: u64, exp: u64) -> Value {
    json!({
        "iss": ISSUER,
        "sub": format!("user-{index:08}"),
        "aud": AUDIENCE,
        "azp": "bench-client",
        "client_id": "bench-client",
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "jti": format!("{}-{index:08}", alg.name().to_ascii_lowercase()),
        "scope": "openid profile email read write",
        "name": format!("Bench User {index}"),
        "preferred_username": format!("user{index}"),
        "email": format!("user{index}@bench.example"),
        "email_verified": true,
        "roles": ["reader", "writer"],
        "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    })
}

/// Keys, their JWKS written to a file, and one pool of tokens per algorithm.
#[derive(Debug)]
pub struct Material {
    /// The keys.
    pub keys: Keys,
    /// The JWKS file the servers load.
    pub jwks_file: PathBuf,
    /// Distinct RS256 tokens.
    pub rs256: Vec<String>,
    /// Distinct ES256 tokens.
    pub es256: Vec<String>,
    /// Mean size of a token's claims (the decoded payload JSON), bytes.
    pub claims_bytes: usize,
}

impl Material {
    /// The pool of `alg`.
    pub fn pool(&self, alg: Alg) -> &[String] {
        match alg {
            Alg::Rs256 => &self.rs256,
            Alg::Es256 => &self.es256,
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `(iat, exp)` of a usable pool in `dir`, if there is one.
fn usable_pool(dir: &Path) -> Option<(u64, u64)> {
    let meta: Value = serde_json::from_slice(&fs::read(dir.join("pool.json")).ok()?).ok()?;
    let (version, iat, exp) = (
        meta["version"].as_u64()?,
        meta["iat"].as_u64()?,
        meta["exp"].as_u64()?,
    );
    (version == POOL_VERSION && exp > now_secs() + RENEW_BEFORE_SECS).then_some((iat, exp))
}

fn read_pool(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Signs tokens `from..to` of `alg` on every core.
fn sign_range(
    keys: &Keys,
    alg: Alg,
    from: usize,
    to: usize,
    iat: u64,
    exp: u64,
) -> anyhow::Result<Vec<String>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = (to - from).div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (from..to)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(to);
                s.spawn(move || {
                    (start..end)
                        .map(|i| keys.token(alg, i, iat, exp))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(to - from);
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part?),
                Err(_) => bail!("a signing thread panicked"),
            }
        }
        Ok(out)
    })
}

/// Loads the pools in `dir`, growing each to at least `need` tokens (and making keys
/// and pools anew when there are none or they expire within a day).
pub fn prepare(dir: &Path, need: usize) -> anyhow::Result<Material> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (keys, iat, exp) = match usable_pool(dir).and_then(|t| Keys::load(dir).ok().map(|k| (k, t)))
    {
        Some((keys, (iat, exp))) => (keys, iat, exp),
        None => {
            let keys = Keys::generate()?;
            keys.save(dir)?;
            let iat = now_secs();
            let exp = iat + LIFETIME_SECS;
            for alg in [Alg::Rs256, Alg::Es256] {
                let _ = fs::remove_file(pool_file(dir, alg));
            }
            let meta = json!({"version": POOL_VERSION, "iat": iat, "exp": exp});
            fs::write(dir.join("pool.json"), meta.to_string())?;
            (keys, iat, exp)
        }
    };
    let mut pools = Vec::new();
    for alg in [Alg::Rs256, Alg::Es256] {
        let path = pool_file(dir, alg);
        let mut pool = read_pool(&path);
        if pool.len() < need {
            eprintln!(
                "signing {} {} tokens for the pool in {} (kept for later runs)...",
                need - pool.len(),
                alg.name(),
                dir.display()
            );
            pool.extend(sign_range(&keys, alg, pool.len(), need, iat, exp)?);
            fs::write(&path, pool.join("\n"))?;
        }
        pools.push(pool);
    }
    let jwks_file = dir.join("jwks.json");
    fs::write(&jwks_file, keys.jwks().to_string())?;
    let claims_bytes = claims(Alg::Rs256, need / 2, iat, exp).to_string().len();
    let es256 = pools.pop().unwrap_or_default();
    let rs256 = pools.pop().unwrap_or_default();
    Ok(Material {
        keys,
        jwks_file,
        rs256,
        es256,
        claims_bytes,
    })
}

fn pool_file(dir: &Path, alg: Alg) -> PathBuf {
    dir.join(format!("tokens-{}.txt", alg.name().to_ascii_lowercase()))
}
