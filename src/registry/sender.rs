//! Sender constraints in the Validate path: the key checker DPoP proofs use (the token
//! key hygiene rules and aws-lc verifiers of `keys`), and the tenant's policy as the
//! pure binding decision of `jwt::dpop` takes it.

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::{
    jwt::dpop::{KeyFault, ProofKeys},
    keys::{self, IngestOptions, VerifyingKey},
};

/// Longest key-hygiene reason passed on in a refusal; longer ones (which could quote
/// attacker-chosen member values) are replaced by a fixed text.
const MAX_REASON_CHARS: usize = 96;

/// Checks a proof's embedded `jwk` exactly as a token key from a fetched key set is
/// checked: no private members, no symmetric keys, RSA of at least 2048 bits, EC points
/// on their curve, the key bound to the proof's `alg`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbeddedKeys;

impl ProofKeys for EmbeddedKeys {
    fn verify(
        &self,
        jwk: &Map<String, Value>,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<String, KeyFault> {
        if let Some(m) = keys::private_member(jwk) {
            return Err(KeyFault::Private(m.to_string()));
        }
        let opts = IngestOptions {
            allow_symmetric: false,
            algorithms: &[alg],
        };
        let key = VerifyingKey::from_jwk(jwk, &opts).map_err(|why| {
            if why.chars().count() <= MAX_REASON_CHARS && !why.chars().any(char::is_control) {
                KeyFault::Unusable(why)
            } else {
                KeyFault::Unusable("the key fails the key hygiene rules".into())
            }
        })?;
        key.verify(alg, message, signature)
            .map_err(|_| KeyFault::BadSignature)?;
        Ok(key.thumbprint.clone())
    }
}
