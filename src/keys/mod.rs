//! Verification keys: JWK ingestion with the hygiene rules of SECURITY.md, one key at a
//! time (one bad key never discards the others); each key parsed once into an aws-lc-rs
//! verifier bound to its algorithms; RFC 7638 thumbprints; and [`KeySet`], the immutable
//! snapshot that validation reads lock-free through an `Arc`.

mod error;
mod jwk;
mod roca;
#[cfg(test)]
pub(crate) mod testing;

pub use error::KeyError;
pub use jwk::private_member;

use std::{collections::HashMap, fmt, sync::Arc};

use aws_lc_rs::{digest, hmac, signature as sig};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_json::{Map, Value, json};

/// The HMAC algorithms (first-party keys configured by the operator).
pub const HMAC_ALGORITHMS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
/// The asymmetric signature algorithms this service can verify.
pub const ASYMMETRIC_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
/// Every signature algorithm this service can verify (jsonwebtoken's closed set): the
/// HMAC ones, then the asymmetric ones.
pub const SUPPORTED_ALGORITHMS: [Algorithm; 12] = {
    let mut all = [Algorithm::HS256; 12];
    let mut i = 0;
    while i < all.len() {
        all[i] = if i < HMAC_ALGORITHMS.len() {
            HMAC_ALGORITHMS[i]
        } else {
            ASYMMETRIC_ALGORITHMS[i - HMAC_ALGORITHMS.len()]
        };
        i += 1;
    }
    all
};

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (aws-lc's verification limit).
pub const MAX_RSA_BITS: usize = 8192;
/// Most keys a token without `kid` may be tried against.
pub const MAX_KIDLESS_CANDIDATES: usize = 4;
/// Most keys ingested from one document; the rest are skipped.
pub const MAX_KEYS_PER_SET: usize = 100;

/// Smallest HMAC key for an algorithm, in bytes: the hash output size (RFC 7518 3.2).
pub fn min_hmac_key_bytes(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS256 => 32,
        Algorithm::HS384 => 48,
        _ => 64,
    }
}

/// Where a key set comes from, which decides what it may contain.
#[derive(Debug, Clone, Copy)]
pub struct IngestOptions<'a> {
    /// Accept `oct` keys (only for sets the operator configured, never fetched ones).
    pub allow_symmetric: bool,
    /// The tenant's algorithm allow-list; a key is bound to algorithms in it.
    pub algorithms: &'a [Algorithm],
}

/// Why a key of a document was not ingested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Position in the document.
    pub index: usize,
    /// Its `kid`, when it had a readable one.
    pub kid: Option<String>,
    /// Why.
    pub reason: KeyError,
}

/// Key type, as in the JWK `kty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA.
    Rsa,
    /// Elliptic curve (P-256, P-384).
    Ec,
    /// Octet key pair (Ed25519).
    Okp,
    /// Symmetric secret.
    Oct,
}

impl KeyType {
    /// The JWK `kty` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa => "RSA",
            KeyType::Ec => "EC",
            KeyType::Okp => "OKP",
            KeyType::Oct => "oct",
        }
    }
}

enum Verifier {
    Hmac(Vec<(Algorithm, hmac::Key)>),
    Public(Vec<(Algorithm, sig::ParsedPublicKey)>),
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The key is not bound to the token's algorithm.
    AlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
}

/// The bytes a signature is over, with their SHA-256 when the caller has it already
/// (Validate hashes a token's signing input once, for the signature and for revocation
/// by token digest), so that RS256, PS256 and ES256 verify that digest instead of
/// hashing the bytes again.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    bytes: &'a [u8],
    sha256: Option<&'a digest::Digest>,
}

impl<'a> Signed<'a> {
    /// `bytes`, which the verifier hashes.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            sha256: None,
        }
    }

    /// `bytes` with `sha256`, which must be their SHA-256 (checked in debug builds).
    pub fn with_sha256(bytes: &'a [u8], sha256: &'a digest::Digest) -> Self {
        debug_assert_eq!(
            digest::digest(&digest::SHA256, bytes).as_ref(),
            sha256.as_ref(),
            "the digest is not the SHA-256 of the bytes"
        );
        let sha256 = (sha256.algorithm() == &digest::SHA256).then_some(sha256);
        Self { bytes, sha256 }
    }

    /// The digest to verify for `alg` instead of the bytes, when there is one.
    fn digest_for(&self, alg: Algorithm) -> Option<&'a digest::Digest> {
        match alg {
            Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256 => self.sha256,
            _ => None,
        }
    }
}

/// One ingested key, parsed once.
pub struct VerifyingKey {
    /// `kid`, when present.
    pub kid: Option<String>,
    /// Key type.
    pub kty: KeyType,
    /// The algorithms this key verifies (one, unless the JWK had no `alg`).
    pub algorithms: Vec<Algorithm>,
    /// RFC 7638 SHA-256 thumbprint, base64url.
    pub thumbprint: String,
    /// The public JWK (no private member); `None` for symmetric keys.
    pub public_jwk: Option<Map<String, Value>>,
    verifier: Verifier,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("kty", &self.kty)
            .field("algorithms", &self.algorithms)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// The algorithm shown for this key: its only one, or the first it is bound to.
    pub fn algorithm_name(&self) -> String {
        self.algorithms
            .first()
            .map(|a| format!("{a:?}"))
            .unwrap_or_default()
    }

    /// True when this key is bound to `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// Verifies `signature` over `message` with `alg`.
    pub fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        self.verify_signed(alg, Signed::new(message), signature)
    }

    /// Verifies `signature` over `message` with `alg`, from its digest when it has one.
    pub fn verify_signed(
        &self,
        alg: Algorithm,
        message: Signed<'_>,
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        match &self.verifier {
            Verifier::Hmac(keys) => {
                let (_, key) = keys
                    .iter()
                    .find(|(a, _)| *a == alg)
                    .ok_or(VerifyError::AlgorithmMismatch)?;
                hmac::verify(key, message.bytes, signature).map_err(|_| VerifyError::BadSignature)
            }
            Verifier::Public(keys) => {
                let (_, key) = keys
                    .iter()
                    .find(|(a, _)| *a == alg)
                    .ok_or(VerifyError::AlgorithmMismatch)?;
                match message.digest_for(alg) {
                    Some(d) => key.verify_digest_sig(d, signature),
                    None => key.verify_sig(message.bytes, signature),
                }
                .map_err(|_| VerifyError::BadSignature)
            }
        }
    }

    /// Builds an HMAC key from raw secret bytes, bound to the HMAC algorithms in `algorithms`.
    pub fn hmac(
        kid: Option<String>,
        secret: &[u8],
        algorithms: &[Algorithm],
    ) -> Result<Self, KeyError> {
        let mut bound = Vec::new();
        let mut keys = Vec::new();
        for alg in algorithms
            .iter()
            .copied()
            .filter(|a| a.family() == AlgorithmFamily::Hmac)
        {
            if secret.len() < min_hmac_key_bytes(alg) {
                return Err(KeyError::HmacTooShort {
                    alg,
                    min: min_hmac_key_bytes(alg),
                    got: secret.len(),
                });
            }
            let h = match alg {
                Algorithm::HS256 => hmac::HMAC_SHA256,
                Algorithm::HS384 => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            bound.push(alg);
            keys.push((alg, hmac::Key::new(h, secret)));
        }
        if bound.is_empty() {
            return Err(KeyError::NoHmacAlgorithm);
        }
        let thumbprint = thumbprint(&json!({"k": URL_SAFE_NO_PAD.encode(secret), "kty": "oct"}));
        Ok(Self {
            kid,
            kty: KeyType::Oct,
            algorithms: bound,
            thumbprint,
            public_jwk: None,
            verifier: Verifier::Hmac(keys),
        })
    }
}

/// RFC 7638 SHA-256 thumbprint of the required members (already in lexicographic order
/// in `required`, since `serde_json::json!` with `preserve_order` keeps insertion order).
pub fn thumbprint(required: &Value) -> String {
    let canonical = serde_json::to_string(required).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
}

/// An immutable set of keys; validation holds an `Arc` to one while a refresh builds the
/// next.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    by_kid: HashMap<String, usize>,
}

impl KeySet {
    /// An empty set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds a set from keys; a `kid` held by two different keys is ambiguous and both
    /// are dropped (a token naming it could be verified against either), while an exact
    /// duplicate (same thumbprint) is kept once.
    pub fn from_keys(keys: Vec<VerifyingKey>) -> (Self, Vec<SkippedKey>) {
        let mut skipped = Vec::new();
        let mut kept: Vec<(usize, VerifyingKey)> = Vec::new();
        let mut ambiguous: Vec<String> = Vec::new();
        for (index, key) in keys.into_iter().enumerate() {
            if let Some(kid) = &key.kid
                && let Some((_, other)) = kept.iter().find(|(_, k)| k.kid.as_deref() == Some(kid))
            {
                if other.thumbprint == key.thumbprint && other.algorithms == key.algorithms {
                    skipped.push(SkippedKey {
                        index,
                        kid: Some(kid.clone()),
                        reason: KeyError::Duplicate,
                    });
                } else if !ambiguous.contains(kid) {
                    ambiguous.push(kid.clone());
                }
                continue;
            }
            kept.push((index, key));
        }
        let mut set = KeySet::default();
        for (index, key) in kept {
            if let Some(kid) = &key.kid {
                if ambiguous.contains(kid) {
                    skipped.push(SkippedKey {
                        index,
                        kid: Some(kid.clone()),
                        reason: KeyError::AmbiguousKid,
                    });
                    continue;
                }
                set.by_kid.insert(kid.clone(), set.keys.len());
            }
            set.keys.push(Arc::new(key));
        }
        (set, skipped)
    }

    /// Ingests a JWKS document key by key. A symmetric key in a set that also has
    /// public keys is dropped: such a mixed set is ambiguous.
    pub fn from_jwks(
        doc: &Value,
        opts: &IngestOptions<'_>,
    ) -> Result<(Self, Vec<SkippedKey>), KeyError> {
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(KeyError::NoKeysArray)?;
        // A kid named by two different entries is ambiguous even when one of them is
        // unusable: which key the publisher meant cannot be known.
        let mut entries_by_kid: HashMap<&str, Vec<&Value>> = HashMap::new();
        for item in list.iter().take(MAX_KEYS_PER_SET) {
            if let Some(kid) = item.get("kid").and_then(Value::as_str) {
                let seen = entries_by_kid.entry(kid).or_default();
                if !seen.contains(&item) {
                    seen.push(item);
                }
            }
        }
        let ambiguous: Vec<&str> = entries_by_kid
            .into_iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(k, _)| k)
            .collect();
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, item) in list.iter().enumerate() {
            let kid = item.get("kid").and_then(Value::as_str).map(str::to_owned);
            if index >= MAX_KEYS_PER_SET {
                skipped.push(SkippedKey {
                    index,
                    kid,
                    reason: KeyError::TooManyKeys,
                });
                continue;
            }
            if kid.as_deref().is_some_and(|k| ambiguous.contains(&k)) {
                skipped.push(SkippedKey {
                    index,
                    kid,
                    reason: KeyError::AmbiguousKid,
                });
                continue;
            }
            let Some(obj) = item.as_object() else {
                skipped.push(SkippedKey {
                    index,
                    kid,
                    reason: KeyError::NotAnObject,
                });
                continue;
            };
            match VerifyingKey::from_jwk(obj, opts) {
                Ok(k) => keys.push((index, k)),
                Err(reason) => skipped.push(SkippedKey { index, kid, reason }),
            }
        }
        let has_public = keys.iter().any(|(_, k)| k.kty != KeyType::Oct);
        let mut accepted = Vec::new();
        for (index, k) in keys {
            if has_public && k.kty == KeyType::Oct {
                skipped.push(SkippedKey {
                    index,
                    kid: k.kid.clone(),
                    reason: KeyError::SymmetricBesidePublic,
                });
            } else {
                accepted.push(k);
            }
        }
        let (set, more) = KeySet::from_keys(accepted);
        skipped.extend(more);
        Ok((set, skipped))
    }

    /// The key with this kid.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.by_kid.get(kid).map(|i| &self.keys[*i])
    }

    /// Keys bound to `alg`, for tokens without a kid.
    pub fn candidates(&self, alg: Algorithm) -> Vec<&Arc<VerifyingKey>> {
        self.keys.iter().filter(|k| k.supports(alg)).collect()
    }

    /// Every key.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<VerifyingKey>> {
        self.keys.iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How a signature check ended, for the caller to map to an error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup {
    /// Verified with this key.
    Verified(Arc<VerifyingKey>),
    /// No key with the kid (or no candidate for a kid-less token).
    NotFound,
    /// A kid-less token had more candidates than [`MAX_KIDLESS_CANDIDATES`].
    TooManyCandidates,
    /// The key with the kid is not bound to the token's algorithm.
    AlgorithmMismatch,
    /// The signature did not verify.
    BadSignature,
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid
            && self.thumbprint == other.thumbprint
            && self.algorithms == other.algorithms
    }
}
impl Eq for VerifyingKey {}

impl KeySet {
    /// Finds the key for a token and verifies its signature.
    pub fn verify(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        message: Signed<'_>,
        signature: &[u8],
    ) -> KeyLookup {
        match kid {
            Some(kid) => match self.get(kid) {
                None => KeyLookup::NotFound,
                Some(key) => match key.verify_signed(alg, message, signature) {
                    Ok(()) => KeyLookup::Verified(key.clone()),
                    Err(VerifyError::AlgorithmMismatch) => KeyLookup::AlgorithmMismatch,
                    Err(VerifyError::BadSignature) => KeyLookup::BadSignature,
                },
            },
            None => {
                let candidates = self.candidates(alg);
                if candidates.is_empty() {
                    return KeyLookup::NotFound;
                }
                if candidates.len() > MAX_KIDLESS_CANDIDATES {
                    return KeyLookup::TooManyCandidates;
                }
                for key in candidates {
                    if key.verify_signed(alg, message, signature).is_ok() {
                        return KeyLookup::Verified(key.clone());
                    }
                }
                KeyLookup::BadSignature
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        jwk::{modulus_bits, rsa_public_key_der},
        *,
    };

    const ALL: [Algorithm; 12] = SUPPORTED_ALGORITHMS;

    #[test]
    fn supported_is_hmac_then_asymmetric_each_once() {
        assert_eq!(ALL[..3], HMAC_ALGORITHMS);
        assert_eq!(ALL[3..], ASYMMETRIC_ALGORITHMS);
        assert!(
            HMAC_ALGORITHMS
                .iter()
                .all(|a| a.family() == AlgorithmFamily::Hmac)
        );
        assert!(
            ASYMMETRIC_ALGORITHMS
                .iter()
                .all(|a| a.family() != AlgorithmFamily::Hmac)
        );
        for (i, a) in ALL.iter().enumerate() {
            assert!(!ALL[i + 1..].contains(a), "{a:?} twice");
        }
    }

    fn remote() -> IngestOptions<'static> {
        IngestOptions {
            allow_symmetric: false,
            algorithms: &ALL,
        }
    }

    fn ec_jwk() -> Value {
        json!({"kty":"EC","crv":"P-256","kid":"e1",
            "x":"04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY",
            "y":"UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw"})
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let t = thumbprint(&json!({"e":"AQAB","kty":"RSA","n":n}));
        assert_eq!(t, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn ec_key_on_curve_is_ingested_and_off_curve_is_not() {
        let k =
            VerifyingKey::from_jwk(ec_jwk().as_object().expect("obj"), &remote()).expect("valid");
        assert_eq!(k.algorithms, vec![Algorithm::ES256]);
        let mut bad = ec_jwk();
        bad["y"] = "UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgnw".into();
        assert!(VerifyingKey::from_jwk(bad.as_object().expect("obj"), &remote()).is_err());
        let mut wrong_crv = ec_jwk();
        wrong_crv["crv"] = "P-384".into();
        assert!(VerifyingKey::from_jwk(wrong_crv.as_object().expect("obj"), &remote()).is_err());
    }

    #[test]
    fn hygiene_rules_skip_one_key_at_a_time() {
        let mut enc = ec_jwk();
        enc["use"] = "enc".into();
        enc["kid"] = "enc".into();
        let mut ops = ec_jwk();
        ops["key_ops"] = json!(["encrypt"]);
        ops["kid"] = "ops".into();
        let mut private = ec_jwk();
        private["d"] = "AAAA".into();
        private["kid"] = "priv".into();
        let oct =
            json!({"kty":"oct","k":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","kid":"oct"});
        let doc = json!({"keys":[ec_jwk(), enc, ops, private, oct, 7]});
        let (set, skipped) = KeySet::from_jwks(&doc, &remote()).expect("doc");
        assert_eq!(set.len(), 1);
        assert!(set.get("e1").is_some());
        assert_eq!(skipped.len(), 5);
    }

    #[test]
    fn duplicate_kids_are_deterministic() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("keygen");
        let pair =
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .expect("parse");
        let point = aws_lc_rs::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        let mut other = ec_jwk();
        other["x"] = URL_SAFE_NO_PAD.encode(&point[1..33]).into();
        other["y"] = URL_SAFE_NO_PAD.encode(&point[33..65]).into();
        let (set, _) =
            KeySet::from_jwks(&json!({"keys":[ec_jwk(), ec_jwk()]}), &remote()).expect("doc");
        assert!(set.get("e1").is_some(), "an exact duplicate is kept once");
        assert_eq!(set.len(), 1);
        let (set, skipped) =
            KeySet::from_jwks(&json!({"keys":[ec_jwk(), other]}), &remote()).expect("doc");
        assert!(set.get("e1").is_none(), "an ambiguous kid is dropped");
        assert!(!skipped.is_empty());
    }

    #[test]
    fn generated_rsa_key_is_not_flagged_as_roca() {
        let kp =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("keygen");
        let public = aws_lc_rs::signature::KeyPair::public_key(&kp);
        let n = public.modulus().big_endian_without_leading_zero();
        assert_eq!(n.len(), 256);
        assert!(!roca::is_vulnerable(n));
    }

    #[test]
    fn empty_and_zero_moduli_are_refused_not_underflowed() {
        assert_eq!(modulus_bits(&[]), None);
        assert_eq!(modulus_bits(&[1]), Some(1));
        assert_eq!(modulus_bits(&[0x80, 0]), Some(16));
        for n in ["", "AA", "AAAA", "AAAAAAAAAAA"] {
            let jwk = json!({"kty": "RSA", "kid": "r", "n": n, "e": "AQAB"});
            let err =
                VerifyingKey::from_jwk(jwk.as_object().expect("obj"), &remote()).expect_err(n);
            assert_eq!(err, KeyError::RsaEmptyModulus, "{n:?}");
        }
    }

    #[test]
    fn der_encoding_round_trips_through_aws_lc() {
        let n = [0xC5u8; 256];
        let mut n = n.to_vec();
        n[255] |= 1;
        let der = rsa_public_key_der(&n, &[1, 0, 1]);
        assert!(sig::ParsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, &der).is_ok());
    }
}
