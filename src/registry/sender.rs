//! Sender constraints in the Validate path: each tenant's [`SenderState`], its policy as
//! the pure decision of `jwt::dpop` takes it, its nonce key, its proof replay store and
//! the proof keys it has checked ([`super::proof_keys`]).

use std::{fmt, time::Duration};

use serde_json::Value;

use super::{
    Registry, Tenant, ValidateError,
    proof_keys::EmbeddedKeys,
    replay::{ReplayCache, ReplayOutcome},
    state_checks::{ReplayEntry, Unavailable, shared_replay},
};
use crate::{
    config::{DEFAULT_DPOP_ALGORITHMS, SenderConstraintSettings, TenantSettings},
    jwt::dpop::{
        Accepted, AccessToken, BindingError, Mode, NonceKey, Presentation, Refused, SenderPolicy,
        binding::{self, ProofUse},
    },
    shared::Shared,
};

/// What a DPoP client is told beside an answer (RFC 9449 7.1 and 9): the algorithms a
/// `DPoP` challenge advertises and a fresh nonce for the `DPoP-Nonce` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DpopHint {
    /// The proof algorithms accepted, for the challenge's `algs`.
    pub algorithms: Vec<String>,
    /// A fresh nonce for the `DPoP-Nonce` header, when the tenant requires nonces.
    pub nonce: Option<String>,
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
    keys: EmbeddedKeys,
    algorithm_names: Vec<String>,
}

impl fmt::Debug for SenderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderState")
            .field("mode", &self.settings.mode)
            .field("nonce", &self.nonce)
            .field("proofs", &self.proofs.len())
            .field("keys", &self.keys.remembered())
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
            proofs: ReplayCache::new(&tenant.id, DEFAULT_DPOP_REPLAY_ENTRIES),
            keys: EmbeddedKeys::default(),
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

    /// The binding decision for a token whose signature verified, `cnf` its `cnf` claim.
    pub fn decide(
        &self,
        cnf: Option<&Value>,
        token: AccessToken<'_>,
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
        binding::decide(cnf, token, presentation, &policy, now, &self.keys)
    }

    /// The binding decision, and the proof recorded by the replay rule when it holds:
    /// the whole sender-constraint step of a call. With a fleet (`shared`), the fleet's
    /// replay store decides, so a proof is accepted once across all replicas.
    pub async fn check(
        &self,
        cnf: Option<&Value>,
        token: AccessToken<'_>,
        presentation: &Presentation,
        now: f64,
        shared: Option<&Shared>,
    ) -> Result<Accepted, Refused> {
        let accepted = self.decide(cnf, token, presentation, now)?;
        if let Some(proof) = &accepted.proof_use {
            self.record(proof, shared).await.map_err(|error| Refused {
                error,
                dpop_challenge: true,
                nonce: accepted.nonce.clone(),
            })?;
        }
        Ok(accepted)
    }

    /// The DPoP challenge data of this tenant, with `nonce` for the `DPoP-Nonce` header.
    pub fn hint(&self, nonce: Option<String>) -> DpopHint {
        DpopHint {
            algorithms: self.algorithm_names.clone(),
            nonce,
        }
    }

    /// The replay rule: records a proof's (htu, jti) until the proof expires; a second
    /// use within that time is refused. Without `shared` this replica's store decides;
    /// with it, the fleet's (namespace [`DPOP_REPLAY_NAMESPACE`], key [`ProofUse::key`]),
    /// and `on_unavailable` while it cannot be reached.
    pub async fn record(
        &self,
        proof: &ProofUse,
        shared: Option<&Shared>,
    ) -> Result<(), BindingError> {
        let outcome = match shared {
            None => self
                .proofs
                .check_and_record(DPOP_REPLAY_NAMESPACE, &proof.key, proof.expires),
            Some(shared) => {
                let entry = ReplayEntry {
                    local: (DPOP_REPLAY_NAMESPACE, &proof.key),
                    namespace: DPOP_REPLAY_NAMESPACE,
                    key: &proof.key,
                    expires: proof.expires,
                };
                shared_replay(shared, &self.proofs, &entry, false)
                    .await
                    .map_err(|Unavailable| BindingError::ReplayStoreUnavailable)?
            }
        };
        match outcome {
            ReplayOutcome::Fresh => Ok(()),
            ReplayOutcome::Replayed => Err(BindingError::ProofReplayed),
            ReplayOutcome::Full => Err(BindingError::ReplayStoreFull),
        }
    }
}

impl Tenant {
    /// A refused binding as a rejection by this tenant, with its DPoP challenge data when
    /// the client is to use DPoP.
    pub fn binding_refusal(&self, r: Refused, policy: Option<String>) -> ValidateError {
        ValidateError::Rejected {
            rejection: r.error.rejection(),
            tenant: Some(self.id().to_string()),
            policy,
            dpop: r
                .dpop_challenge
                .then(|| Box::new(self.sender().hint(r.nonce))),
        }
    }
}

impl Registry {
    /// The DPoP challenge data for a refused `DPoP` call: the tenant's algorithms and a
    /// fresh nonce when it requires them; the default algorithms when no tenant is known.
    pub fn dpop_hint(&self, tenant: Option<&str>, now: f64) -> DpopHint {
        match tenant.and_then(|t| self.tenant(t)) {
            Some(t) => t.sender().hint(t.sender().mint_nonce(now)),
            None => DpopHint {
                algorithms: DEFAULT_DPOP_ALGORITHMS
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect(),
                nonce: None,
            },
        }
    }
}

/// The namespace of DPoP proofs in a replay store shared with other kinds of entries.
pub const DPOP_REPLAY_NAMESPACE: &str = "dpop";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::claims::now_secs;

    #[tokio::test]
    async fn expired_proofs_leave_the_store_as_new_ones_come() {
        let yaml = "tenants:\n  - id: t\n    issuer: https://as.example\n";
        let settings = crate::config::load_str(yaml, &|_| None, &[]).expect("config");
        let state = SenderState::new(&settings.tenants[0]);
        let now = now_secs();
        let proof = |key: &str, expires: f64| ProofUse {
            key: key.to_string(),
            expires,
        };
        for i in 0..100 {
            state
                .record(&proof(&format!("old{i}"), now - 1.0), None)
                .await
                .expect("fresh");
        }
        state
            .record(&proof("live", now + 60.0), None)
            .await
            .expect("fresh");
        assert!(
            state.remembered_proofs() <= 2,
            "{} proofs held",
            state.remembered_proofs()
        );
        assert_eq!(
            state.record(&proof("live", now + 60.0), None).await,
            Err(BindingError::ProofReplayed)
        );
    }
}
