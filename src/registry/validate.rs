//! The Validate pipeline, in the order BEHAVIOUR.md fixes: structure, issuer, header,
//! type, time, audience/scope/nonce, B2C policy (none of which touches the network), then
//! the key (with at most one refresh on a kid miss, bounded by `fetch_timeout`), the
//! signature, the sender constraint (DPoP proof or certificate against `cnf`),
//! revocation and replay.
//!
//! The verified-token cache replaces only steps 2 and 9-10: a token found there is
//! routed and checked like any other (steps 3-8, [`Registry::route_and_check`]), its key
//! must still be in the key set it was verified with, and the checks after the
//! signature ([`Registry::after_signature`]: the sender constraint, revocation, then
//! replay, the fleet's when it shares state) run on every call. A DPoP proof is never
//! cached: every call proves its binding again.

use std::sync::Arc;

use aws_lc_rs::digest;
use jsonwebtoken::Algorithm;

use super::{
    KeySetState, Registry, RequestError, Tenant,
    sender::DpopHint,
    token_cache::{self, Lookup, TokenHash, VerifiedToken},
};
use crate::{
    jwt::compact::ValueRef,
    jwt::dpop::{Accepted, AccessToken, Binding, Presentation, Scheme},
    jwt::{
        ErrorCode, Rejection,
        claims::{self, Claims, TimePolicy, TokenKind, now_secs},
        jws::{self, CompactJws},
    },
    keys::{KeyLookup, KeySet, Signed, VerifyingKey},
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
        /// Set when the client is to be challenged with the `DPoP` scheme.
        dpop: Option<Box<DpopHint>>,
    },
}

impl ValidateError {
    /// A rejection attributed to a tenant and policy.
    pub fn rejected(rejection: Rejection, tenant: Option<String>, policy: Option<String>) -> Self {
        Self::Rejected {
            rejection,
            tenant,
            policy,
            dpop: None,
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
    /// What the resource server received beside the token (scheme, DPoP proofs, method
    /// and URI, client certificate); `None` is a plain `Bearer` call.
    pub presentation: Option<&'a Presentation>,
}

/// An accepted token.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The tenant that accepted it.
    pub tenant: Arc<Tenant>,
    /// What parsing and verification produced (shared with the cache).
    pub token: Arc<VerifiedToken>,
    /// True when the signature was not verified again: the token was in the cache.
    pub cached: bool,
    /// The sender constraint that was proven (on this call: never cached).
    pub binding: Binding,
    /// A fresh nonce for the `DPoP-Nonce` header (nonce-requiring tenants, DPoP calls).
    pub dpop_nonce: Option<String>,
}

impl Validated {
    /// Its claims.
    pub fn claims(&self) -> &Claims {
        &self.token.claims
    }

    /// The B2C policy, for B2C tenants.
    pub fn policy(&self) -> Option<&str> {
        self.token.key_set.id.policy.as_deref()
    }

    /// The key that verified it.
    pub fn key(&self) -> &Arc<VerifyingKey> {
        &self.token.key
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.token.algorithm
    }

    /// `kid` from the header.
    pub fn kid(&self) -> Option<&str> {
        self.token.kid()
    }
}

/// A token as presented: its hash and what the cache holds for it (looked up once), and
/// its parse once something needed it.
#[derive(Debug)]
pub struct Presented<'a> {
    token: &'a str,
    hash: Option<TokenHash>,
    cached: Lookup,
    parsed: Option<Result<CompactJws<'a>, Rejection>>,
}

impl Presented<'_> {
    /// Whether the token is a compact JWS (a verified one in the cache is; anything else
    /// is parsed, once).
    pub fn is_jws(&mut self) -> bool {
        if matches!(self.cached, Lookup::Verified(_)) {
            return true;
        }
        let token = self.token;
        self.parsed.get_or_insert_with(|| jws::parse(token)).is_ok()
    }
}

/// Where steps 3-8 sent a token.
struct Routed {
    tenant: Arc<Tenant>,
    key_set: Arc<KeySetState>,
    alg: Algorithm,
}

impl Routed {
    fn reject(&self, r: Rejection) -> ValidateError {
        ValidateError::rejected(
            r,
            Some(self.tenant.id().to_string()),
            self.key_set.id.policy.clone(),
        )
    }
}

fn at_tenant(tenant: &Tenant) -> impl Fn(Rejection) -> ValidateError + '_ {
    |r| ValidateError::rejected(r, Some(tenant.id().to_string()), None)
}

fn unrouted(r: Rejection) -> ValidateError {
    ValidateError::rejected(r, None, None)
}

/// The presentation of a call that named none: `Bearer`, nothing else.
static BEARER: std::sync::LazyLock<Presentation> = std::sync::LazyLock::new(Presentation::default);

impl Registry {
    /// Hashes a token and looks it up in the verified-token cache.
    pub fn present<'a>(&self, token: &'a str) -> Presented<'a> {
        let now = now_secs();
        let (hash, cached) = match self.token_cache() {
            Some(cache) => {
                let hash = TokenHash::of(token);
                let cached = cache.get(&hash, now);
                (Some(hash), cached)
            }
            None => (None, Lookup::Miss),
        };
        Presented {
            token,
            hash,
            cached,
            parsed: None,
        }
    }

    /// Validates a token end to end.
    pub async fn validate(&self, input: &ValidateInput<'_>) -> Result<Validated, ValidateError> {
        let presented = self.present(input.token);
        self.validate_presented(presented, input).await
    }

    /// Validates a token already [presented](Registry::present), its sender constraint
    /// included; a refusal of a `DPoP` call carries the tenant's DPoP challenge data.
    pub async fn validate_presented(
        &self,
        presented: Presented<'_>,
        input: &ValidateInput<'_>,
    ) -> Result<Validated, ValidateError> {
        let result = self.validate_token(presented, input).await;
        match result {
            Err(ValidateError::Rejected {
                rejection,
                tenant,
                policy,
                dpop: None,
            }) if input.presentation.unwrap_or(&BEARER).scheme == Scheme::Dpop => {
                let dpop = Some(Box::new(self.dpop_hint(tenant.as_deref(), now_secs())));
                Err(ValidateError::Rejected {
                    rejection,
                    tenant,
                    policy,
                    dpop,
                })
            }
            other => other,
        }
    }

    /// The pipeline, from the cache when the token is there.
    async fn validate_token(
        &self,
        mut presented: Presented<'_>,
        input: &ValidateInput<'_>,
    ) -> Result<Validated, ValidateError> {
        if let Lookup::Verified(entry) = &presented.cached {
            if let Some(v) = self.validate_cached(entry, presented.hash, input).await? {
                return Ok(v);
            }
            // Verified with a key that has left its set, or routed elsewhere this time:
            // verify again.
            if let (Some(cache), Some(hash)) = (self.token_cache(), &presented.hash) {
                cache.purge_token(hash);
            }
            presented.cached = Lookup::Miss;
        }
        self.validate_uncached(presented, input).await
    }

    /// A cached token: every check but the signature. `None` when the entry cannot be
    /// used for this call.
    async fn validate_cached(
        &self,
        entry: &Arc<VerifiedToken>,
        hash: Option<TokenHash>,
        input: &ValidateInput<'_>,
    ) -> Result<Option<Validated>, ValidateError> {
        let header = |allowed: &[Algorithm]| entry.check_algorithm(allowed);
        let routed = self.route_and_check(header, entry.typ.as_deref(), &entry.claims, input)?;
        let usable = Arc::ptr_eq(&routed.key_set, &entry.key_set)
            && routed.alg == entry.algorithm
            && entry.key_is_current(&routed.key_set.keys.load());
        if !usable {
            return Ok(None);
        }
        let accepted = self.after_signature(&routed, entry, hash, input).await?;
        Ok(Some(Validated {
            tenant: routed.tenant,
            token: entry.clone(),
            cached: true,
            binding: accepted.binding,
            dpop_nonce: accepted.nonce,
        }))
    }

    /// The whole pipeline; a verified token is cached, a failed signature remembered.
    async fn validate_uncached(
        &self,
        mut presented: Presented<'_>,
        input: &ValidateInput<'_>,
    ) -> Result<Validated, ValidateError> {
        // 2. structure
        let token = presented.token;
        let jws = presented
            .parsed
            .take()
            .unwrap_or_else(|| jws::parse(token))
            .map_err(unrouted)?;
        let claims = Claims::parse(&jws.payload).map_err(unrouted)?;
        // 3-8
        let header = |allowed: &[Algorithm]| jws.header.check(allowed);
        let routed = self.route_and_check(header, jws.header.typ.as_deref(), &claims, input)?;
        // 9-10. key and signature, unless this very token failed against these keys
        let cache = self.token_cache().zip(presented.hash);
        if let Lookup::Forged(f) = &presented.cached
            && f.is_current(&routed.key_set.keys.load())
        {
            return Err(routed.reject(bad_signature()));
        }
        let kid = jws.header.kid.as_deref();
        // Hashed once: for the signature (RS256, PS256, ES256 verify this digest) and
        // for revocation by token digest.
        let signed_sha256 = digest::digest(&digest::SHA256, jws.signing_input.as_bytes());
        let (verified, snapshot) =
            verify_with_refresh(&routed.key_set, kid, routed.alg, &jws, &signed_sha256).await;
        let key = match verified {
            Ok(key) => key,
            Err(r) => {
                if let (Some((cache, hash)), ErrorCode::InvalidSignature) = (cache, r.code) {
                    cache.insert_forged(hash, &snapshot, now_secs());
                }
                return Err(routed.reject(r));
            }
        };
        let expires = match cache {
            Some((c, _)) => c.expiry(
                &claims,
                routed.tenant.settings.policy.clock_skew,
                now_secs(),
            ),
            None => 0.0,
        };
        let verified = VerifiedToken::new(
            jws.header,
            routed.alg,
            claims,
            key,
            routed.key_set.clone(),
            token_cache::bytes_of(&signed_sha256),
            expires,
        );
        let token = match cache {
            Some((c, hash)) => c.insert(hash, verified),
            None => Arc::new(verified),
        };
        // 10b-12.
        let accepted = self
            .after_signature(&routed, &token, presented.hash, input)
            .await?;
        Ok(Validated {
            tenant: routed.tenant,
            token,
            cached: false,
            binding: accepted.binding,
            dpop_nonce: accepted.nonce,
        })
    }

    /// Steps 3-8: routes the token by `iss`, then every check that needs no key (none
    /// touches the network). Runs on every call, cached token or not.
    fn route_and_check(
        &self,
        check_header: impl FnOnce(&[Algorithm]) -> Result<Algorithm, Rejection>,
        typ: Option<&str>,
        claims: &Claims,
        input: &ValidateInput<'_>,
    ) -> Result<Routed, ValidateError> {
        // 3. issuer
        let Some(iss) = claims.iss() else {
            return Err(unrouted(Rejection::new(
                ErrorCode::MissingClaim,
                "claim `iss` is required",
            )));
        };
        let tenant = self.route(iss, claims, input.tenant)?;
        let reject = at_tenant(&tenant);
        let policy = &tenant.settings.policy;
        // 4. header
        let alg = check_header(&policy.algorithms).map_err(&reject)?;
        // 5. typ
        claims::check_type(typ, policy.types.as_deref()).map_err(&reject)?;
        // 6. time and required claims
        let time_policy = TimePolicy {
            clock_skew: policy.clock_skew,
            max_lifetime: policy.max_lifetime,
            required_claims: &policy.required_claims,
        };
        claims::check_time(claims, now_secs(), &time_policy).map_err(&reject)?;
        // 7. audience, scopes, nonce
        let audiences = if input.audiences.is_empty() {
            &tenant.settings.audiences[..]
        } else {
            input.audiences
        };
        // A request nonce says the caller checks an ID token (OpenID Connect Core 3.1.3.7).
        let kind = match input.nonce {
            Some(_) => TokenKind::IdToken,
            None => tenant.token_kind(),
        };
        claims::check_audience(claims, audiences, kind).map_err(&reject)?;
        claims::check_scopes(claims, input.required_scopes).map_err(&reject)?;
        claims::check_nonce(claims, input.nonce).map_err(&reject)?;
        // 8. B2C policy
        let key_set = if tenant.is_b2c() {
            let set = tenant.policy_key_set(claims).map_err(&reject)?;
            // An issuer in the `/tfp/{tenant}/{policy}/` form names its policy; the
            // token's claim must agree with it.
            if !self.alias_agrees(iss, &set.id) {
                return Err(reject(Rejection::new(
                    ErrorCode::UnknownPolicy,
                    "the token's policy claim differs from the policy in its issuer",
                )));
            }
            set.clone()
        } else {
            tenant.key_set().cloned().ok_or_else(|| {
                reject(Rejection::new(
                    ErrorCode::KeysUnavailable,
                    "no key set is configured for this issuer",
                ))
            })?
        };
        drop(reject);
        Ok(Routed {
            tenant,
            key_set,
            alg,
        })
    }

    /// The checks after the signature, on every call, whether it was verified now or
    /// found in the cache: the sender constraint (10b: the `cnf` binding proven by this
    /// call's DPoP proof or certificate; a proof is never cached, and its replay record is
    /// the fleet's when it shares state), revocation (11: the rules are in memory, no
    /// round trip) and replay detection (12: the fleet's record when it shares state).
    async fn after_signature(
        &self,
        routed: &Routed,
        token: &VerifiedToken,
        hash: Option<TokenHash>,
        input: &ValidateInput<'_>,
    ) -> Result<Accepted, ValidateError> {
        let claims = &token.claims;
        // Routing needed `iss`; a token without one never gets here.
        let Some(iss) = claims.iss() else {
            return Err(routed.reject(Rejection::new(
                ErrorCode::MissingClaim,
                "claim `iss` is required",
            )));
        };
        let presentation = input.presentation.unwrap_or(&BEARER);
        let cnf = claims.cnf().map(ValueRef::to_json);
        let sender = routed.tenant.sender();
        let access_token = match &hash {
            Some(h) => AccessToken::with_sha256(input.token, &h.0),
            None => AccessToken::new(input.token),
        };
        let accepted = sender
            .check(
                cnf.as_ref(),
                access_token,
                presentation,
                now_secs(),
                self.shared(),
            )
            .await
            .map_err(|r| {
                let policy = routed.key_set.id.policy.clone();
                routed.tenant.binding_refusal(r, policy)
            })?;
        self.check_revoked(input.token, token.signed_sha256, iss, claims)
            .map_err(|r| routed.reject(r))?;
        self.check_replay(&routed.tenant, iss, claims, input.peek_replay)
            .await
            .map_err(|r| routed.reject(r))?;
        Ok(accepted)
    }
}

fn bad_signature() -> Rejection {
    Rejection::new(ErrorCode::InvalidSignature, "signature does not verify")
}

fn lookup_rejection(lookup: KeyLookup, state: &KeySetState, kid: Option<&str>) -> Rejection {
    match lookup {
        KeyLookup::Verified(_) | KeyLookup::BadSignature => bad_signature(),
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
/// waits for it at most `fetch_timeout`, and looks again. Also returns the snapshot the
/// last attempt used (a failed signature is remembered against exactly that one).
async fn verify_with_refresh(
    state: &KeySetState,
    kid: Option<&str>,
    alg: Algorithm,
    jws: &CompactJws<'_>,
    sha256: &digest::Digest,
) -> (Result<Arc<VerifyingKey>, Rejection>, Arc<KeySet>) {
    let message = Signed::with_sha256(jws.signing_input.as_bytes(), sha256);
    let mut snapshot = state.keys();
    let first = snapshot.verify(kid, alg, message, &jws.signature);
    let lookup = match first {
        KeyLookup::NotFound => match state.refresh.kid_miss(state.settings.unknown_kid_cooldown) {
            None => KeyLookup::NotFound,
            Some(generation) => {
                state
                    .refresh
                    .wait(generation, Registry::kid_miss_wait(state))
                    .await;
                snapshot = state.keys();
                snapshot.verify(kid, alg, message, &jws.signature)
            }
        },
        other => other,
    };
    let verified = match lookup {
        KeyLookup::Verified(k) => Ok(k),
        other => Err(lookup_rejection(other, state, kid)),
    };
    (verified, snapshot)
}
