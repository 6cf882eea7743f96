//! Sender constraints in the Validate path: the key checker DPoP proofs use (the token
//! key hygiene rules and aws-lc verifiers of `keys`), and each tenant's
//! [`SenderState`]: its policy as the pure decision of `jwt::dpop` takes it, its nonce
//! key and its proof replay store.

use std::{fmt, time::Duration};

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::replay::{ReplayCache, ReplayOutcome};
use crate::{
    config::{SenderConstraintSettings, TenantSettings},
    jwt::dpop::{
        Accepted, BindingError, KeyFault, Mode, NonceKey, Presentation, ProofKeys, Refused,
        SenderPolicy,
        binding::{self, ProofUse},
    },
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
        let key = VerifyingKey::from_jwk(jwk, &opts).map_err(|e| {
            let why = e.to_string();
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

/// Most proofs remembered per tenant for the replay rule; past it (after dropping
/// expired entries) new proofs are refused rather than memory growing.
pub const DEFAULT_DPOP_REPLAY_ENTRIES: usize = 1_000_000;

/// A tenant's sender-constraint state: its policy, nonce key and proof replay store.
pub struct SenderState {
    settings: SenderConstraintSettings,
    clock_skew: Duration,
    nonce: Option<NonceKey>,
    proofs: ReplayCache,
    algorithm_names: Vec<String>,
}

impl fmt::Debug for SenderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderState")
            .field("mode", &self.settings.mode)
            .field("nonce", &self.nonce)
            .field("proofs", &self.proofs.len())
            .finish_non_exhaustive()
    }
}

impl SenderState {
    /// The state of a tenant.
    pub fn new(tenant: &TenantSettings) -> Self {
        let settings = tenant.sender_constraint.clone();
        let nonce = settings
            .dpop_nonce
            .as_ref()
            .map(|n| NonceKey::new(n.secret.expose(), n.window, &tenant.id));
        let algorithm_names = settings
            .dpop_algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
        Self {
            clock_skew: tenant.policy.clock_skew,
            proofs: ReplayCache::new(DEFAULT_DPOP_REPLAY_ENTRIES),
            settings,
            nonce,
            algorithm_names,
        }
    }

    /// `mode`.
    pub fn mode(&self) -> Mode {
        self.settings.mode
    }

    /// The proof algorithms, as a DPoP challenge's `algs` lists them.
    pub fn algorithm_names(&self) -> &[String] {
        &self.algorithm_names
    }

    /// A fresh nonce, when the tenant requires them.
    pub fn mint_nonce(&self, now: f64) -> Option<String> {
        self.nonce.as_ref().map(|k| k.mint(now))
    }

    /// Proofs held by the replay store.
    pub fn remembered_proofs(&self) -> usize {
        self.proofs.len()
    }

    /// The binding decision for a token whose signature verified.
    pub fn decide(
        &self,
        claims: &Map<String, Value>,
        token: &str,
        presentation: &Presentation,
        now: f64,
    ) -> Result<Accepted, Refused> {
        let policy = SenderPolicy {
            mode: self.settings.mode,
            algorithms: &self.settings.dpop_algorithms,
            max_age: self.settings.dpop_max_age,
            clock_skew: self.clock_skew,
            nonce: self.nonce.as_ref(),
        };
        binding::decide(claims, token, presentation, &policy, now, &EmbeddedKeys)
    }

    /// The replay rule: records a proof's (htu, jti) until the proof expires; a second
    /// use within that time is refused.
    pub fn record(&self, proof: &ProofUse) -> Result<(), BindingError> {
        match self
            .proofs
            .check_and_record(DPOP_REPLAY_NAMESPACE, &proof.key, proof.expires)
        {
            ReplayOutcome::Fresh => Ok(()),
            ReplayOutcome::Replayed => Err(BindingError::ProofReplayed),
            ReplayOutcome::Full => Err(BindingError::ReplayStoreFull),
        }
    }
}

/// The namespace of DPoP proofs in a replay store shared with other kinds of entries.
pub const DPOP_REPLAY_NAMESPACE: &str = "dpop";
