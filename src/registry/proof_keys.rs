//! The keys DPoP proofs carry: each checked exactly as a token key from a fetched key set
//! is checked, and remembered once it passed, so that a client presenting the same key
//! on every request (as DPoP clients do) pays for the key hygiene checks (the EC point
//! check, RSA modulus size) and its RFC 7638 thumbprint once, not per proof. The
//! signature of every proof is still verified.

use std::{
    hash::{Hash, Hasher},
    sync::{Arc, OnceLock},
};

use jsonwebtoken::Algorithm;
use quick_cache::{Equivalent, sync::Cache};

use crate::{
    jwt::{
        compact::ObjectRef,
        dpop::{KeyFault, ProofKeys},
    },
    keys::{self, IngestOptions, VerifyingKey},
};

/// Longest key-hygiene reason passed on in a refusal; longer ones (which could quote
/// attacker-chosen member values) are replaced by a fixed text.
const MAX_REASON_CHARS: usize = 96;

/// Proof keys remembered per tenant. A client keeps its key for many proofs; past this
/// many distinct keys the least used are dropped (and checked again when they return).
pub const PROOF_KEYS_REMEMBERED: usize = 4096;

/// A key as a proof carried it: the `alg` it signed with and the `jwk` object's members
/// as parsed (so two spellings of the same JSON object are one key).
#[derive(Debug, PartialEq, Eq, Hash)]
struct KeyId {
    alg: Algorithm,
    jwk: Box<[u8]>,
}

/// [`KeyId`] borrowed from the proof being checked: looking a key up allocates nothing.
struct KeyIdRef<'a> {
    alg: Algorithm,
    jwk: &'a [u8],
}

impl Hash for KeyIdRef<'_> {
    // Field for field as `KeyId`'s derived `Hash` (a boxed slice hashes as its slice).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.alg.hash(state);
        self.jwk.hash(state);
    }
}

impl Equivalent<KeyId> for KeyIdRef<'_> {
    fn equivalent(&self, key: &KeyId) -> bool {
        self.alg == key.alg && self.jwk == &*key.jwk
    }
}

/// Checks a proof's embedded `jwk` exactly as a token key from a fetched key set is
/// checked: no private members, no symmetric keys, RSA of at least 2048 bits, EC points
/// on their curve, the key bound to the proof's `alg`. Keys that passed are remembered
/// (at most [`PROOF_KEYS_REMEMBERED`]); keys that failed are checked again each time.
#[derive(Debug, Default)]
pub struct EmbeddedKeys {
    /// Made on the first proof, so tenants without DPoP traffic hold nothing.
    passed: OnceLock<Cache<KeyId, Arc<VerifyingKey>>>,
}

impl EmbeddedKeys {
    /// Keys remembered now.
    pub fn remembered(&self) -> usize {
        self.passed.get().map_or(0, Cache::len)
    }

    fn ingest(jwk: ObjectRef<'_>, alg: Algorithm) -> Result<VerifyingKey, KeyFault> {
        let jwk = jwk.to_json();
        if let Some(m) = keys::private_member(&jwk) {
            return Err(KeyFault::Private(m.to_string()));
        }
        let opts = IngestOptions {
            allow_symmetric: false,
            algorithms: &[alg],
        };
        VerifyingKey::from_jwk(&jwk, &opts).map_err(|e| {
            let why = e.to_string();
            if why.chars().count() <= MAX_REASON_CHARS && !why.chars().any(char::is_control) {
                KeyFault::Unusable(why)
            } else {
                KeyFault::Unusable("the key fails the key hygiene rules".into())
            }
        })
    }
}

impl ProofKeys for EmbeddedKeys {
    fn verify(
        &self,
        jwk: ObjectRef<'_>,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<String, KeyFault> {
        let passed = self
            .passed
            .get_or_init(|| Cache::new(PROOF_KEYS_REMEMBERED));
        let id = KeyIdRef {
            alg,
            jwk: jwk.bytes(),
        };
        let key = match passed.get(&id) {
            Some(key) => key,
            None => {
                let key = Arc::new(Self::ingest(jwk, alg)?);
                let id = KeyId {
                    alg,
                    jwk: jwk.bytes().into(),
                };
                passed.insert(id, key.clone());
                key
            }
        };
        key.verify(alg, message, signature)
            .map_err(|_| KeyFault::BadSignature)?;
        Ok(key.thumbprint.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn a_borrowed_key_id_hashes_and_compares_as_the_owned_one() {
        let owned = KeyId {
            alg: Algorithm::ES256,
            jwk: b"abc".to_vec().into(),
        };
        let borrowed = KeyIdRef {
            alg: Algorithm::ES256,
            jwk: b"abc",
        };
        let h = std::hash::RandomState::new();
        assert_eq!(h.hash_one(&owned), h.hash_one(&borrowed));
        assert!(borrowed.equivalent(&owned));
        let other_alg = KeyIdRef {
            alg: Algorithm::ES384,
            jwk: b"abc",
        };
        assert!(!other_alg.equivalent(&owned));
        let other_jwk = KeyIdRef {
            alg: Algorithm::ES256,
            jwk: b"abd",
        };
        assert!(!other_jwk.equivalent(&owned));
    }
}
