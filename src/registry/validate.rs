//! The Validate pipeline, in the order BEHAVIOUR.md fixes: structure, issuer, header,
//! type, time, audience/scope/nonce, B2C policy (none of which touches the network), then
//! the key (with at most one refresh on a kid miss, bounded by `fetch_timeout`), the
//! signature, revocation and replay.

use std::sync::Arc;

use jsonwebtoken::Algorithm;

use super::{KeySetId, KeySetState, Registry, RequestError, Tenant};
use crate::{
    jwt::{
        ErrorCode, Rejection,
        claims::{self, Claims, TimePolicy, TokenKind, now_secs},
        jws,
    },
    keys::{KeyLookup, VerifyingKey},
};

/// Why Validate did not accept a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    /// The request itself is bad.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The token is rejected.
    #[error("{rejection}")]
    Rejected {
        /// Why.
        rejection: Rejection,
        /// The tenant, once known.
        tenant: Option<String>,
        /// The B2C policy, once known.
        policy: Option<String>,
    },
}

impl ValidateError {
    /// A rejection attributed to a tenant and policy.
    pub fn rejected(rejection: Rejection, tenant: Option<String>, policy: Option<String>) -> Self {
        Self::Rejected {
            rejection,
            tenant,
            policy,
        }
    }

    /// The error code of a rejection.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Rejected { rejection, .. } => Some(rejection.code),
            Self::Request(_) => None,
        }
    }
}

/// One Validate request, parsed at the boundary.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateInput<'a> {
    /// The compact JWS, `Bearer ` already stripped.
    pub token: &'a str,
    /// Only this tenant may accept the token.
    pub tenant: Option<&'a str>,
    /// Accepted audiences; empty: the tenant's.
    pub audiences: &'a [String],
    /// Scopes that must all be granted.
    pub required_scopes: &'a [String],
    /// Expected `nonce`.
    pub nonce: Option<&'a str>,
    /// Check replay detection without recording the token (Introspect asks about a
    /// token; it does not use it).
    pub peek_replay: bool,
}

/// An accepted token.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The tenant that accepted it.
    pub tenant: Arc<Tenant>,
    /// The B2C policy, for B2C tenants.
    pub policy: Option<String>,
    /// Its claims.
    pub claims: Claims,
    /// The key that verified it.
    pub key: Arc<VerifyingKey>,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// `kid` from the header.
    pub kid: Option<String>,
}

impl Registry {
    /// Validates a token end to end.
    pub async fn validate(&self, input: &ValidateInput<'_>) -> Result<Validated, ValidateError> {
        let reject = |r: Rejection| ValidateError::rejected(r, None, None);
        // 2. structure
        let jws = jws::parse(input.token).map_err(reject)?;
        let claims = Claims::parse(&jws.payload).map_err(reject)?;
        // 3. issuer
        let Some(iss) = claims.iss.clone() else {
            return Err(reject(Rejection::new(
                ErrorCode::MissingClaim,
                "claim `iss` is required",
            )));
        };
        let tenant = self.route(&iss, &claims, input.tenant)?;
        let tenant_id = tenant.id().to_string();
        let at_tenant = |r: Rejection| ValidateError::rejected(r, Some(tenant_id.clone()), None);
        let settings = &tenant.settings;
        // 4. header
        let alg = jws
            .header
            .check(&settings.policy.algorithms)
            .map_err(at_tenant)?;
        // 5. typ
        claims::check_type(jws.header.typ.as_deref(), settings.policy.types.as_deref())
            .map_err(at_tenant)?;
        // 6. time and required claims
        let time_policy = TimePolicy {
            clock_skew: settings.policy.clock_skew,
            max_lifetime: settings.policy.max_lifetime,
            required_claims: &settings.policy.required_claims,
        };
        claims::check_time(&claims, now_secs(), &time_policy).map_err(at_tenant)?;
        // 7. audience, scopes, nonce
        let audiences = if input.audiences.is_empty() {
            &settings.audiences[..]
        } else {
            input.audiences
        };
        // A request nonce says the caller checks an ID token (OpenID Connect Core 3.1.3.7).
        let kind = match input.nonce {
            Some(_) => TokenKind::IdToken,
            None => tenant.token_kind(),
        };
        claims::check_audience(&claims, audiences, kind).map_err(at_tenant)?;
        claims::check_scopes(&claims, input.required_scopes).map_err(at_tenant)?;
        claims::check_nonce(&claims, input.nonce).map_err(at_tenant)?;
        // 8. B2C policy
        let policy = if tenant.is_b2c() {
            let p = tenant.policy_of(&claims).map_err(at_tenant)?;
            // An issuer in the `/tfp/{tenant}/{policy}/` form names its policy; the
            // token's claim must agree with it.
            if let Some(alias) = self.alias_of(&iss)
                && alias.policy.as_deref() != Some(p.as_str())
            {
                return Err(at_tenant(Rejection::new(
                    ErrorCode::UnknownPolicy,
                    "the token's policy claim differs from the policy in its issuer",
                )));
            }
            Some(p)
        } else {
            None
        };
        let at_policy =
            |r: Rejection| ValidateError::rejected(r, Some(tenant_id.clone()), policy.clone());
        let id = KeySetId {
            tenant: tenant_id.clone(),
            policy: policy.clone(),
        };
        let state = self.key_set(&id).ok_or_else(|| {
            at_policy(Rejection::new(
                ErrorCode::KeysUnavailable,
                "no key set is configured for this issuer",
            ))
        })?;
        // 9-10. key and signature
        let kid = jws.header.kid.clone();
        let key = verify_with_refresh(&state, kid.as_deref(), alg, &jws)
            .await
            .map_err(at_policy)?;
        // 10b. revocation, 11. replay
        self.check_revoked(input.token, &iss, &claims)
            .map_err(at_policy)?;
        self.check_replay(&tenant, &iss, &claims, input.peek_replay)
            .await
            .map_err(at_policy)?;
        Ok(Validated {
            tenant,
            policy,
            claims,
            key,
            algorithm: alg,
            kid,
        })
    }
}

fn lookup_rejection(lookup: KeyLookup, state: &KeySetState, kid: Option<&str>) -> Rejection {
    match lookup {
        KeyLookup::Verified(_) => Rejection::new(ErrorCode::InvalidSignature, "unreachable"),
        KeyLookup::BadSignature => {
            Rejection::new(ErrorCode::InvalidSignature, "signature does not verify")
        }
        KeyLookup::AlgorithmMismatch => Rejection::new(
            ErrorCode::AlgorithmNotAllowed,
            "the key named by kid is bound to another algorithm",
        ),
        KeyLookup::TooManyCandidates => Rejection::new(
            ErrorCode::UnknownKey,
            "token has no kid and the issuer has too many keys of its algorithm to try",
        ),
        KeyLookup::NotFound => {
            let keys = state.keys();
            if keys.is_empty() && state.status().last_failed {
                Rejection::new(
                    ErrorCode::KeysUnavailable,
                    "the issuer's keys could not be fetched and none are known",
                )
            } else if keys.is_empty() && !state.refresh.first_done() {
                Rejection::new(
                    ErrorCode::KeysUnavailable,
                    "the issuer's keys are still being fetched",
                )
            } else {
                match kid {
                    Some(k) => Rejection::new(
                        ErrorCode::UnknownKey,
                        format!(
                            "no key with kid {}, even after a refresh",
                            crate::jwt::echo(k)
                        ),
                    ),
                    None => Rejection::new(
                        ErrorCode::UnknownKey,
                        "token has no kid and no key of its algorithm",
                    ),
                }
            }
        }
    }
}

/// Looks the key up in the current snapshot; on a miss, asks for (or joins) one refresh,
/// waits for it at most `fetch_timeout`, and looks again.
async fn verify_with_refresh(
    state: &KeySetState,
    kid: Option<&str>,
    alg: Algorithm,
    jws: &jws::CompactJws<'_>,
) -> Result<Arc<VerifyingKey>, Rejection> {
    let message = jws.signing_input.as_bytes();
    let first = state.keys().verify(kid, alg, message, &jws.signature);
    let lookup = match first {
        KeyLookup::Verified(k) => return Ok(k),
        KeyLookup::NotFound => match state.refresh.kid_miss(state.settings.unknown_kid_cooldown) {
            None => KeyLookup::NotFound,
            Some(generation) => {
                state
                    .refresh
                    .wait(generation, Registry::kid_miss_wait(state))
                    .await;
                state.keys().verify(kid, alg, message, &jws.signature)
            }
        },
        other => other,
    };
    match lookup {
        KeyLookup::Verified(k) => Ok(k),
        other => Err(lookup_rejection(other, state, kid)),
    }
}
