//! One DPoP proof against the rules of RFC 9449 section 4.3, in its order, each failure
//! its own [`BindingError`]: a compact JWS with strict JSON; `typ` `dpop+jwt`; `alg`
//! asymmetric and allowed; a public `jwk` that passes the token key hygiene rules and
//! verifies the signature; `jti`, `htm`, `htu`, `iat` present and typed; `htm` and `htu`
//! equal to the request's; `iat` within `dpop_max_age` (and `clock_skew` ahead); `ath`
//! the hash of the access token. The nonce, the key binding and the replay rule need
//! the token's `cnf`, the tenant's secret and the store: see [`super::binding`].

use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::{AccessToken, BindingError, HttpRequest, MAX_PROOF_BYTES, htu};
use crate::jwt::compact::{self, ObjectRef, ValueRef};
use crate::jwt::jws;

/// The `typ` of a DPoP proof.
pub const DPOP_TYP: &str = "dpop+jwt";
/// Longest `jti` accepted, in bytes (the replay store keeps a digest, but a bound keeps
/// the work per proof small).
pub const MAX_JTI_BYTES: usize = 256;
/// Longest `nonce` accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 256;

/// Why a proof's key was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFault {
    /// The `jwk` has a private member (named).
    Private(String),
    /// The `jwk` fails a hygiene rule (why).
    Unusable(String),
    /// The signature does not verify.
    BadSignature,
}

/// Checks a proof's embedded key: ingests the `jwk` for `alg` with the same hygiene rules
/// and aws-lc verifiers as token keys, verifies `signature` over `message`, and returns
/// the key's RFC 7638 SHA-256 thumbprint.
pub trait ProofKeys {
    /// See the trait.
    fn verify(
        &self,
        jwk: ObjectRef<'_>,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<String, KeyFault>;
}

/// What a proof is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ProofRules<'a> {
    /// The request the proof must name.
    pub request: &'a HttpRequest,
    /// The access token the proof must hash (`ath`).
    pub access_token: AccessToken<'a>,
    /// Accepted proof algorithms (never `none`, never HMAC).
    pub algorithms: &'a [Algorithm],
    /// `dpop_max_age`.
    pub max_age: Duration,
    /// `clock_skew`, tolerated for an `iat` in the future.
    pub clock_skew: Duration,
    /// Seconds since the epoch.
    pub now: f64,
}

/// A proof that passed every rule of this module.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedProof {
    /// RFC 7638 thumbprint of its key.
    pub jkt: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `iat`.
    pub iat: f64,
    /// Its `nonce`, when present.
    pub nonce: Option<String>,
}

fn malformed(msg: impl Into<String>) -> BindingError {
    BindingError::MalformedProof(msg.into())
}

/// `typ` rule: `dpop+jwt`, case-insensitively, with an optional `application/` prefix
/// (RFC 7515 4.1.9); nothing trimmed.
fn is_dpop_typ(typ: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    lower.strip_prefix("application/").unwrap_or(&lower) == DPOP_TYP
}

fn check_header<'a>(
    header: ObjectRef<'a>,
    algorithms: &[Algorithm],
) -> Result<(Algorithm, ObjectRef<'a>), BindingError> {
    let parsed = jws::header_from(header).map_err(|r| malformed(r.message))?;
    match parsed.typ.as_deref() {
        Some(t) if is_dpop_typ(t) => {}
        _ => return Err(BindingError::ProofType),
    }
    let alg = parsed
        .algorithm()
        .filter(|a| a.family() != AlgorithmFamily::Hmac && algorithms.contains(a))
        .ok_or_else(|| BindingError::ProofAlgorithm(crate::jwt::echo(&parsed.alg)))?;
    if let Some(p) = parsed.unsupported {
        return Err(BindingError::ProofHeader(p));
    }
    match header.get("jwk") {
        Some(ValueRef::Object(jwk)) => Ok((alg, jwk)),
        Some(_) => Err(malformed("jwk is not a JSON object")),
        None => Err(BindingError::MissingJwk),
    }
}

struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: f64,
    ath: Option<String>,
    nonce: Option<String>,
}

fn string_claim(
    map: ObjectRef<'_>,
    name: &'static str,
    max: usize,
) -> Result<Option<String>, BindingError> {
    match map.get(name) {
        None => Ok(None),
        Some(ValueRef::String(s)) if !s.is_empty() && s.len() <= max => Ok(Some(s.to_owned())),
        Some(_) => Err(BindingError::BadProofClaim(name)),
    }
}

fn claims_of(payload: &[u8]) -> Result<ProofClaims, BindingError> {
    let bytes = compact::parse_object(payload).map_err(|e| malformed(format!("claims: {e}")))?;
    let map = ObjectRef::new(&bytes);
    let need =
        |name: &'static str, v: Option<String>| v.ok_or(BindingError::MissingProofClaim(name));
    let jti = need("jti", string_claim(map, "jti", MAX_JTI_BYTES)?)?;
    let htm = need("htm", string_claim(map, "htm", 64)?)?;
    let htu = need("htu", string_claim(map, "htu", htu::MAX_URI_BYTES)?)?;
    let iat = match map.get("iat") {
        None => return Err(BindingError::MissingProofClaim("iat")),
        Some(ValueRef::Number(n)) if n.is_finite() => n,
        Some(_) => return Err(BindingError::BadProofClaim("iat")),
    };
    Ok(ProofClaims {
        jti,
        htm,
        htu,
        iat,
        ath: string_claim(map, "ath", 64)?,
        nonce: string_claim(map, "nonce", MAX_NONCE_BYTES)?,
    })
}

fn check_time(iat: f64, rules: &ProofRules<'_>) -> Result<(), BindingError> {
    let age = rules.now - iat;
    if age > rules.max_age.as_secs_f64() {
        return Err(BindingError::ProofTooOld {
            age: age.min(u64::MAX as f64) as u64,
            max: rules.max_age.as_secs(),
        });
    }
    if -age > rules.clock_skew.as_secs_f64() {
        return Err(BindingError::ProofFromFuture(
            (-age).min(u64::MAX as f64) as u64
        ));
    }
    Ok(())
}

/// Checks one proof against every rule of this module, in RFC 9449's order.
pub fn check(
    proof: &str,
    rules: &ProofRules<'_>,
    keys: &dyn ProofKeys,
) -> Result<CheckedProof, BindingError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(malformed(format!("longer than {MAX_PROOF_BYTES} bytes")));
    }
    let raw = jws::split(proof.trim()).map_err(|r| malformed(r.message))?;
    let (alg, jwk) = check_header(ObjectRef::new(&raw.header), rules.algorithms)?;
    let jkt = keys
        .verify(jwk, alg, raw.signing_input.as_bytes(), &raw.signature)
        .map_err(|f| match f {
            KeyFault::Private(m) => BindingError::PrivateJwk(m),
            KeyFault::Unusable(why) => BindingError::UnusableJwk(why),
            KeyFault::BadSignature => BindingError::ProofSignature,
        })?;
    let claims = claims_of(&raw.payload)?;
    if claims.htm != rules.request.method {
        return Err(BindingError::MethodMismatch);
    }
    match htu::normalise(&claims.htu) {
        Ok(u) if u == rules.request.uri => {}
        _ => return Err(BindingError::UriMismatch),
    }
    check_time(claims.iat, rules)?;
    let Some(ath) = claims.ath else {
        return Err(BindingError::MissingAth);
    };
    if ath != rules.access_token.ath() {
        return Err(BindingError::AthMismatch);
    }
    Ok(CheckedProof {
        jkt,
        jti: claims.jti,
        iat: claims.iat,
        nonce: claims.nonce,
    })
}
