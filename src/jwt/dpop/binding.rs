//! The binding decision: given the token's `cnf` (from its claims, or from an upstream
//! introspection answer), the tenant's `sender_constraint` policy and what the request
//! presented, either the binding that was proven or the refusal, with whether the
//! challenge is a DPoP one and the nonce to hand the client. The replay rule is left to
//! the caller (its store may be remote): an accepted DPoP call carries the [`ProofUse`]
//! to record.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::{
    AccessToken, BindingError, NonceCheck, NonceKey, Presentation, Scheme,
    htu::Htu,
    is_sha256_b64url,
    proof::{self, ProofKeys, ProofRules},
    sha256_b64url,
};
use crate::jwt::echo;

/// The `cnf` member holding a DPoP key thumbprint (RFC 9449 6.1).
pub const CNF_JKT: &str = "jkt";
/// The `cnf` member holding a certificate thumbprint (RFC 8705 3.1).
pub const CNF_X5T_S256: &str = "x5t#S256";

/// `sender_constraint.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// `cnf` is ignored.
    Off,
    /// A token with `cnf` must prove its binding; one without passes as a bearer token.
    #[default]
    Optional,
    /// A token without `cnf` is refused.
    Required,
}

/// What the tenant's `sender_constraint` section decides.
#[derive(Debug, Clone, Copy)]
pub struct SenderPolicy<'a> {
    /// The mode.
    pub mode: Mode,
    /// `dpop_algorithms`.
    pub algorithms: &'a [Algorithm],
    /// `dpop_max_age`.
    pub max_age: Duration,
    /// The tenant's `clock_skew`.
    pub clock_skew: Duration,
    /// The nonce key, when `dpop_nonce` is on.
    pub nonce: Option<&'a NonceKey>,
}

/// Which binding a token had and the call proved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BindingKind {
    /// None: a bearer token (or `mode: off`).
    #[default]
    None,
    /// A DPoP key (and, if `x5t_s256` is set too, a certificate).
    Dpop,
    /// A client certificate.
    Mtls,
}

/// The binding that was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// Its kind.
    pub kind: BindingKind,
    /// The DPoP key thumbprint, for DPoP.
    pub jkt: Option<String>,
    /// The certificate thumbprint, for mTLS.
    pub x5t_s256: Option<String>,
}

/// A token's `cnf`, with its thumbprints checked for form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// `cnf.jkt`.
    pub jkt: Option<String>,
    /// `cnf["x5t#S256"]`.
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    /// Reads a token's `cnf` claim (or an introspection answer's), `None` when absent.
    /// An empty `cnf` binds nothing; a member other than `jkt` and `x5t#S256` is a
    /// confirmation method this service cannot check, which is refused rather than
    /// ignored.
    pub fn from_cnf(cnf: Option<&Value>) -> Result<Self, BindingError> {
        let cnf = match cnf {
            None => return Ok(Self::default()),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(BindingError::MalformedConfirmation("(not an object)")),
        };
        if let Some(other) = cnf.keys().find(|k| *k != CNF_JKT && *k != CNF_X5T_S256) {
            return Err(BindingError::UnsupportedConfirmation(echo(other)));
        }
        let thumbprint = |name: &'static str| match cnf.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if is_sha256_b64url(s) => Ok(Some(s.clone())),
            Some(_) => Err(BindingError::MalformedConfirmation(name)),
        };
        Ok(Self {
            jkt: thumbprint(CNF_JKT)?,
            x5t_s256: thumbprint(CNF_X5T_S256)?,
        })
    }

    /// True when the token is bound to nothing.
    pub fn is_empty(&self) -> bool {
        self.jkt.is_none() && self.x5t_s256.is_none()
    }
}

/// A proof to record in the replay store: `key` names (htu, jti), `expires` is when the
/// proof stops being acceptable anyway (seconds since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct ProofUse {
    /// Digest of the normalised `htu` and the `jti`.
    pub key: String,
    /// Seconds since the epoch.
    pub expires: f64,
}

/// The replay-store key of a proof: a digest, so entries are small whatever the client
/// sends.
pub fn replay_key(htu: &Htu, jti: &str) -> String {
    sha256_b64url(format!("{htu}\n{jti}").as_bytes())
}

/// A call whose binding held.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accepted {
    /// What was proven.
    pub binding: Binding,
    /// The proof to record before answering (DPoP only).
    pub proof_use: Option<ProofUse>,
    /// A fresh nonce for the `DPoP-Nonce` header (nonce-requiring tenants).
    pub nonce: Option<String>,
}

/// A call whose binding failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// Why.
    pub error: BindingError,
    /// Challenge with the `DPoP` scheme rather than `Bearer`.
    pub dpop_challenge: bool,
    /// A fresh nonce for the `DPoP-Nonce` header.
    pub nonce: Option<String>,
}

/// Decides a call's binding. `cnf` is the token's `cnf` claim, `token` the access token
/// as presented (for `ath`), `now` seconds since the epoch.
pub fn decide(
    cnf: Option<&Value>,
    token: AccessToken<'_>,
    presentation: &Presentation,
    policy: &SenderPolicy<'_>,
    now: f64,
    keys: &dyn ProofKeys,
) -> Result<Accepted, Refused> {
    if policy.mode == Mode::Off {
        return Ok(Accepted::default());
    }
    let dpop_scheme = presentation.scheme == Scheme::Dpop;
    let nonce = policy.nonce.filter(|_| dpop_scheme).map(|k| k.mint(now));
    let refuse = |error: BindingError, dpop: bool| Refused {
        error,
        dpop_challenge: dpop || dpop_scheme,
        nonce: nonce.clone(),
    };
    let cnf = Confirmation::from_cnf(cnf).map_err(|e| refuse(e, false))?;
    if cnf.is_empty() {
        return match (policy.mode, dpop_scheme) {
            (Mode::Required, _) => Err(refuse(BindingError::BindingRequired, false)),
            (_, true) => Err(refuse(BindingError::UnboundTokenAsDpop, false)),
            _ => Ok(Accepted::default()),
        };
    }
    let bound_to_key = cnf.jkt.is_some();
    if let Some(x5t) = &cnf.x5t_s256 {
        match &presentation.certificate {
            None => return Err(refuse(BindingError::MissingCertificate, bound_to_key)),
            Some(c) if c != x5t => {
                return Err(refuse(BindingError::CertificateMismatch, bound_to_key));
            }
            Some(_) => {}
        }
    }
    let Some(jkt) = cnf.jkt else {
        if dpop_scheme {
            return Err(refuse(BindingError::UnboundTokenAsDpop, false));
        }
        return Ok(Accepted {
            binding: Binding {
                kind: BindingKind::Mtls,
                jkt: None,
                x5t_s256: cnf.x5t_s256,
            },
            proof_use: None,
            nonce,
        });
    };
    if !dpop_scheme {
        return Err(refuse(BindingError::BoundTokenAsBearer, true));
    }
    let proof_use =
        check_dpop(&jkt, token, presentation, policy, now, keys).map_err(|e| refuse(e, true))?;
    Ok(Accepted {
        binding: Binding {
            kind: BindingKind::Dpop,
            jkt: Some(jkt),
            x5t_s256: cnf.x5t_s256,
        },
        proof_use: Some(proof_use),
        nonce,
    })
}

/// The DPoP part: exactly one proof, its rules, its key against `cnf.jkt`, the nonce.
fn check_dpop(
    jkt: &str,
    token: AccessToken<'_>,
    presentation: &Presentation,
    policy: &SenderPolicy<'_>,
    now: f64,
    keys: &dyn ProofKeys,
) -> Result<ProofUse, BindingError> {
    let proof = match presentation.proofs.as_slice() {
        [] => return Err(BindingError::MissingProof),
        [one] => one,
        many => return Err(BindingError::MultipleProofs(many.len())),
    };
    // The boundary requires method and URI with the DPoP scheme; without them no proof
    // can match.
    let request = presentation
        .request
        .as_ref()
        .ok_or(BindingError::MethodMismatch)?;
    let rules = ProofRules {
        request,
        access_token: token,
        algorithms: policy.algorithms,
        max_age: policy.max_age,
        clock_skew: policy.clock_skew,
        now,
    };
    let checked = proof::check(proof, &rules, keys)?;
    if checked.jkt != jkt {
        return Err(BindingError::KeyMismatch);
    }
    if let Some(key) = policy.nonce {
        match checked.nonce.as_deref().map(|n| key.check(n, now)) {
            None => return Err(BindingError::NonceRequired),
            Some(NonceCheck::Valid) => {}
            Some(NonceCheck::Stale) => return Err(BindingError::NonceStale),
            Some(NonceCheck::Forged) => return Err(BindingError::NonceInvalid),
        }
    }
    Ok(ProofUse {
        key: replay_key(&request.uri, &checked.jti),
        expires: checked.iat + policy.max_age.as_secs_f64() + 1.0,
    })
}
