//! Ingestion of one JWK with the hygiene rules of SECURITY.md: the members checked, the
//! key bound to algorithms of the tenant's allow-list, RSA/EC/OKP/oct material parsed
//! once into an aws-lc-rs verifier, and its RFC 7638 thumbprint and public JWK.

use aws_lc_rs::signature as sig;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_json::{Map, Value, json};

use super::{
    IngestOptions, KeyError, KeyType, MAX_RSA_BITS, MIN_RSA_BITS, Verifier, VerifyingKey, roca,
    thumbprint,
};

/// JWK members that only a private or symmetric key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl VerifyingKey {
    /// Ingests one JWK, applying every hygiene rule.
    pub fn from_jwk(jwk: &Map<String, Value>, opts: &IngestOptions<'_>) -> Result<Self, KeyError> {
        let kty = match jwk.get("kty").and_then(Value::as_str) {
            Some("RSA") => KeyType::Rsa,
            Some("EC") => KeyType::Ec,
            Some("OKP") => KeyType::Okp,
            Some("oct") => KeyType::Oct,
            Some(other) => return Err(KeyError::UnsupportedKeyType(other.to_string())),
            None => return Err(KeyError::Missing("kty")),
        };
        let kid = match jwk.get("kid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(KeyError::KidNotString),
        };
        if let Some(u) = jwk.get("use")
            && u.as_str() != Some("sig")
        {
            return Err(KeyError::NotForSignatures);
        }
        if let Some(ops) = jwk.get("key_ops") {
            let verifies = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
            if !verifies {
                return Err(KeyError::NotForVerifying);
            }
        }
        let declared = match jwk.get("alg") {
            None => None,
            Some(Value::String(s)) => Some(
                s.parse::<Algorithm>()
                    .map_err(|_| KeyError::UnsupportedAlgorithm(s.clone()))?,
            ),
            Some(_) => return Err(KeyError::AlgorithmNotString),
        };
        if kty != KeyType::Oct
            && let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m))
        {
            return Err(KeyError::PrivateMember(m));
        }
        let j = Jwk {
            members: jwk,
            kid,
            declared,
            opts: *opts,
        };
        match kty {
            KeyType::Oct => oct_key(j),
            KeyType::Rsa => rsa_key(j),
            KeyType::Ec => ec_key(j),
            KeyType::Okp => okp_key(j),
        }
    }
}

/// One JWK past the checks every key type shares.
struct Jwk<'a> {
    members: &'a Map<String, Value>,
    kid: Option<String>,
    /// Its `alg`, when it has one.
    declared: Option<Algorithm>,
    opts: IngestOptions<'a>,
}

impl Jwk<'_> {
    /// A base64url key-material member.
    fn b64(&self, name: &'static str) -> Result<Vec<u8>, KeyError> {
        let s = self
            .members
            .get(name)
            .and_then(Value::as_str)
            .ok_or(KeyError::MissingMember(name))?;
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| KeyError::NotBase64url(name))
    }

    /// The `crv` member.
    fn crv(&self) -> Result<&str, KeyError> {
        self.members
            .get("crv")
            .and_then(Value::as_str)
            .ok_or(KeyError::Missing("crv"))
    }

    /// The algorithms of `family` this key is bound to, see [`bind`].
    fn bind(&self, family: AlgorithmFamily) -> Result<Vec<Algorithm>, KeyError> {
        bind(self.declared, family, self.opts.algorithms)
    }

    /// Completes a public key: the RFC 7638 thumbprint of its required `required`
    /// members (given in lexicographic order), and its public JWK (`required` plus
    /// `kid`, `use`, `alg`).
    fn finish(
        self,
        kty: KeyType,
        algorithms: Vec<Algorithm>,
        required: Value,
        verifier: Verifier,
    ) -> VerifyingKey {
        let thumbprint = thumbprint(&required);
        let mut public = Map::new();
        public.insert("kty".into(), kty.as_str().into());
        if let Some(k) = &self.kid {
            public.insert("kid".into(), k.clone().into());
        }
        public.insert("use".into(), "sig".into());
        // The JWK's own alg when it had one; a key bound to several algorithms shows none.
        if (self.declared.is_some() || algorithms.len() == 1)
            && let Some(a) = algorithms.first()
        {
            public.insert("alg".into(), format!("{a:?}").into());
        }
        if let Value::Object(m) = required {
            public.extend(m.into_iter().filter(|(k, _)| k != "kty"));
        }
        VerifyingKey {
            kid: self.kid,
            kty,
            algorithms,
            thumbprint,
            public_jwk: Some(public),
            verifier,
        }
    }
}

/// A symmetric key: only from a set the operator configured, never a fetched one.
fn oct_key(j: Jwk<'_>) -> Result<VerifyingKey, KeyError> {
    if !j.opts.allow_symmetric {
        return Err(KeyError::SymmetricFetched);
    }
    let k = j.b64("k")?;
    let algs = j.bind(AlgorithmFamily::Hmac)?;
    VerifyingKey::hmac(j.kid, &k, &algs)
}

/// Binds a key to one algorithm: its declared `alg` (which must fit the family and be
/// allowed), or every allowed algorithm of its family.
fn bind(
    declared: Option<Algorithm>,
    family: AlgorithmFamily,
    allowed: &[Algorithm],
) -> Result<Vec<Algorithm>, KeyError> {
    match declared {
        Some(alg) if alg.family() != family => Err(KeyError::AlgorithmMismatch(alg)),
        Some(alg) if !allowed.contains(&alg) => Err(KeyError::AlgorithmNotAllowed(alg)),
        Some(alg) => Ok(vec![alg]),
        None => {
            let algs: Vec<Algorithm> = allowed
                .iter()
                .copied()
                .filter(|a| a.family() == family)
                .collect();
            if algs.is_empty() {
                Err(KeyError::NoAllowedAlgorithm)
            } else {
                Ok(algs)
            }
        }
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

/// Bit length of a big-endian modulus without leading zero bytes; `None` for an empty
/// (or all-zero, once stripped) modulus, which is no key at all.
pub(super) fn modulus_bits(n: &[u8]) -> Option<usize> {
    let first = n.first()?;
    let unused = usize::try_from(first.leading_zeros()).ok()?;
    n.len().checked_mul(8)?.checked_sub(unused)
}

/// DER of a PKCS#1 `RSAPublicKey` (RFC 8017 A.1.1).
pub(super) fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let mut body = Vec::with_capacity(v.len() + 1);
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            body.push(0);
        }
        body.extend_from_slice(v);
        out.push(0x02);
        length(out, body.len());
        out.extend_from_slice(&body);
    }
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(bytes.len() - 1);
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    let mut body = Vec::new();
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = vec![0x30];
    length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn rsa_params(alg: Algorithm) -> &'static sig::RsaParameters {
    match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        _ => &sig::RSA_PSS_2048_8192_SHA512,
    }
}

fn rsa_key(j: Jwk<'_>) -> Result<VerifyingKey, KeyError> {
    let n_raw = j.b64("n")?;
    let e_raw = j.b64("e")?;
    let n = strip_leading_zeros(&n_raw);
    let e = strip_leading_zeros(&e_raw);
    let bits = modulus_bits(n).ok_or(KeyError::RsaEmptyModulus)?;
    if bits < MIN_RSA_BITS {
        return Err(KeyError::RsaTooSmall(bits));
    }
    if bits > MAX_RSA_BITS {
        return Err(KeyError::RsaTooLarge(bits));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err(KeyError::RsaEvenModulus);
    }
    let e_small = e.len() == 1 && e[0] < 3;
    if e.is_empty() || e_small || e.last().is_some_and(|b| b & 1 == 0) || e.len() > 8 {
        return Err(KeyError::RsaBadExponent);
    }
    if roca::is_vulnerable(n) {
        return Err(KeyError::RsaRoca);
    }
    let algs = j.bind(AlgorithmFamily::Rsa)?;
    let der = rsa_public_key_der(n, e);
    let mut parsed = Vec::with_capacity(algs.len());
    for alg in &algs {
        let key = sig::ParsedPublicKey::new(rsa_params(*alg), &der)
            .map_err(|e| KeyError::RsaRejected(e.to_string()))?;
        parsed.push((*alg, key));
    }
    let members =
        json!({"e": URL_SAFE_NO_PAD.encode(e), "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(n)});
    Ok(j.finish(KeyType::Rsa, algs, members, Verifier::Public(parsed)))
}

fn ec_key(j: Jwk<'_>) -> Result<VerifyingKey, KeyError> {
    let crv = j.crv()?;
    let (alg, size, verify_alg): (Algorithm, usize, &'static sig::EcdsaVerificationAlgorithm) =
        match crv {
            "P-256" => (Algorithm::ES256, 32, &sig::ECDSA_P256_SHA256_FIXED),
            "P-384" => (Algorithm::ES384, 48, &sig::ECDSA_P384_SHA384_FIXED),
            other => return Err(KeyError::UnsupportedCurve(other.to_string())),
        };
    if let Some(d) = j.declared
        && d != alg
    {
        return Err(KeyError::CurveMismatch {
            alg: d,
            crv: crv.to_string(),
        });
    }
    if !j.opts.algorithms.contains(&alg) {
        return Err(KeyError::AlgorithmNotAllowed(alg));
    }
    let x = j.b64("x")?;
    let y = j.b64("y")?;
    if x.len() != size || y.len() != size {
        return Err(KeyError::CoordinateLength {
            crv: crv.to_string(),
            size,
        });
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    // Parsing validates that the point is on the curve.
    let parsed = sig::ParsedPublicKey::new(verify_alg, &point)
        .map_err(|_| KeyError::NotOnCurve(crv.to_string()))?;
    let members = json!({"crv": crv, "kty": "EC", "x": URL_SAFE_NO_PAD.encode(&x), "y": URL_SAFE_NO_PAD.encode(&y)});
    let verifier = Verifier::Public(vec![(alg, parsed)]);
    Ok(j.finish(KeyType::Ec, vec![alg], members, verifier))
}

fn okp_key(j: Jwk<'_>) -> Result<VerifyingKey, KeyError> {
    let crv = j.crv()?;
    if crv != "Ed25519" {
        return Err(KeyError::UnsupportedCurve(crv.to_string()));
    }
    let algs = j.bind(AlgorithmFamily::Ed)?;
    let x = j.b64("x")?;
    if x.len() != 32 {
        return Err(KeyError::Ed25519Length);
    }
    let parsed =
        sig::ParsedPublicKey::new(&sig::ED25519, &x).map_err(|_| KeyError::Ed25519Invalid)?;
    let members = json!({"crv": crv, "kty": "OKP", "x": URL_SAFE_NO_PAD.encode(&x)});
    let verifier = Verifier::Public(vec![(Algorithm::EdDSA, parsed)]);
    Ok(j.finish(KeyType::Okp, algs, members, verifier))
}
