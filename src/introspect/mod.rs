//! RFC 7662 token introspection: JWTs validated locally by the Validate pipeline, opaque
//! tokens sent to their tenant's introspection endpoint (the RFC 7662 client, with the
//! cached client-credentials token of `bearer` mode and the answer cache), tenant
//! selection, bounded upstream work, and the classification of upstream faults.
//!
//! Calls upstream through [`crate::upstream`], never tonic: `grpc` turns an
//! [`IntrospectError`] into a status and an [`Answer`] into a response.

pub mod answer;
pub mod cache;
pub mod client;
mod shared_answers;
pub mod token;

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Semaphore, time::Instant};
use tracing::{debug, error, warn};

pub use answer::Answer;
pub use cache::{AnswerCache, answer_ttl};
pub use client::Failure;
pub use token::{ClientCredentials, renew_at, renewal_margin};

use self::{
    client::{ClientAuth, Endpoint},
    token::ClientCredentialsConfig,
};
use crate::{
    config::{IntrospectionAuth, IntrospectionSettings, TenantSettings},
    jwt::{
        ErrorCode,
        claims::now_secs,
        dpop::{AccessToken, Presentation},
        jws,
    },
    registry::{
        Metadata, Presented, Registry, RequestError, Revocations, ValidateError, ValidateInput,
    },
    shared::Shared,
    upstream::{FetchError, HttpClient},
};

/// The `token_type_hint` that marks a token as not locally verifiable (RFC 7662 2.1).
pub const REFRESH_TOKEN_HINT: &str = "refresh_token";
/// At most one log line per this period and kind of upstream fault, per tenant.
pub const FAULT_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Why Introspect gave no answer. Messages are terse and never hold a token or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectError {
    /// The request named a tenant that is not configured.
    #[error("tenant `{0}` is not configured")]
    UnknownTenant(String),
    /// An opaque token was sent to a tenant without `introspection`.
    #[error(
        "tenant `{0}` has no introspection configured, so it cannot introspect an opaque (non-JWT) token"
    )]
    NoIntrospection(String),
    /// An opaque token without `tenant`, and several tenants introspect.
    #[error("several tenants introspect opaque tokens ({0}); name one in `tenant`")]
    TenantRequired(String),
    /// An opaque token, and no tenant introspects.
    #[error(
        "no tenant has introspection configured, so opaque (non-JWT) tokens cannot be introspected"
    )]
    NotConfigured,
    /// The tenant's cap on concurrent upstream calls is reached.
    #[error("tenant `{tenant}`: too many concurrent introspection calls (limit {limit})")]
    Busy {
        /// Tenant id.
        tenant: String,
        /// `introspection.max_concurrency`.
        limit: usize,
    },
    /// The provider could not answer.
    #[error("tenant `{tenant}`: introspection unavailable: {reason}")]
    Unavailable {
        /// Tenant id.
        tenant: String,
        /// What happened.
        reason: String,
    },
    /// The provider's answer is active, but the call did not prove the token's binding
    /// (its `cnf`): Introspect answers `active: false`; ext_authz denies with this
    /// refusal (its code and DPoP challenge).
    #[error("{0}")]
    Unbound(Box<ValidateError>),
    /// The provider refused the configured client, or no endpoint is known.
    #[error("tenant `{tenant}`: introspection unavailable (configuration fault): {reason}")]
    Misconfigured {
        /// Tenant id.
        tenant: String,
        /// What happened.
        reason: String,
    },
}

/// One Introspect request, parsed at the boundary.
#[derive(Debug, Clone, Copy, Default)]
pub struct IntrospectInput<'a> {
    /// The token, `Bearer ` already stripped.
    pub token: &'a str,
    /// RFC 7662 `token_type_hint`, forwarded upstream unchanged.
    pub token_type_hint: Option<&'a str>,
    /// The tenant that answers.
    pub tenant: Option<&'a str>,
    /// What the resource server received beside the token; `None` is a plain `Bearer`
    /// call.
    pub presentation: Option<&'a Presentation>,
}

/// Whether a token goes to a provider's introspection endpoint rather than to local
/// validation: it is not a compact JWS, or the caller hints it is a refresh token and the
/// tenant that would introspect it has no keys to verify it with.
pub fn goes_upstream(
    is_jws: bool,
    hint: Option<&str>,
    introspecting_tenant_has_no_keys: bool,
) -> bool {
    !is_jws || (hint == Some(REFRESH_TOKEN_HINT) && introspecting_tenant_has_no_keys)
}

/// Whether a fault seen at `now` is logged, given when one was last logged.
pub fn fault_log_due(last: Option<Instant>, now: Instant, period: Duration) -> bool {
    last.is_none_or(|l| now >= l + period)
}

/// Rate-limits the log lines of one kind of fault: one per period, the rest counted and
/// reported with the next line.
#[derive(Debug, Default)]
pub struct FaultLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl FaultLog {
    /// `Some(suppressed since the last line)` when this occurrence is to be logged.
    pub fn admit(&self, period: Duration) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if fault_log_due(*last, now, period) {
            *last = Some(now);
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The RFC 7662 client of one tenant: endpoint, client authentication, answer cache,
/// concurrency cap, fault log.
pub struct Introspector {
    tenant: String,
    settings: IntrospectionSettings,
    timeout: Duration,
    require_https: bool,
    http: HttpClient,
    endpoint: Endpoint,
    tokens: Option<ClientCredentials>,
    cache: AnswerCache,
    permits: Arc<Semaphore>,
    config_faults: FaultLog,
    outages: FaultLog,
    /// The fleet's shared state, when configured.
    shared: Option<Shared>,
    revocations: Arc<Revocations>,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `settings` holds the secret; its `Debug` redacts it.
        f.debug_struct("Introspector")
            .field("tenant", &self.tenant)
            .field("settings", &self.settings)
            .field("endpoint", &self.endpoint)
            .field("tokens", &self.tokens)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

fn introspection_endpoint(m: &Metadata) -> Option<&str> {
    m.introspection_endpoint.as_deref()
}

fn token_endpoint(m: &Metadata) -> Option<&str> {
    m.token_endpoint.as_deref()
}

impl Introspector {
    /// The client of `tenant`, when it has `introspection`; metadata comes from its
    /// first key set (for B2C, the first policy's).
    pub fn new(tenant: &TenantSettings, registry: &Registry, http: &HttpClient) -> Option<Self> {
        let settings = tenant.introspection.clone()?;
        let key_set = registry
            .key_sets()
            .into_iter()
            .find(|s| s.id.tenant == tenant.id);
        let endpoint = Endpoint {
            what: "introspection endpoint",
            key: "introspection.endpoint",
            configured: settings.endpoint.clone(),
            key_set: key_set.clone(),
            from_metadata: introspection_endpoint,
        };
        let tokens = (settings.auth == IntrospectionAuth::Bearer).then(|| {
            ClientCredentials::new(
                ClientCredentialsConfig {
                    tenant: tenant.id.clone(),
                    client_id: settings.client_id.clone(),
                    secret: settings.client_secret.clone(),
                    scope: settings.scope.clone(),
                    endpoint: Endpoint {
                        what: "token endpoint",
                        key: "introspection.token_endpoint",
                        configured: settings.token_endpoint.clone(),
                        key_set: key_set.clone(),
                        from_metadata: token_endpoint,
                    },
                    timeout: tenant.refresh.fetch_timeout,
                    require_https: tenant.refresh.require_https,
                },
                http.clone(),
            )
        });
        Some(Self {
            tenant: tenant.id.clone(),
            cache: AnswerCache::new(settings.cache_entries),
            permits: Arc::new(Semaphore::new(settings.max_concurrency)),
            timeout: tenant.refresh.fetch_timeout,
            require_https: tenant.refresh.require_https,
            http: http.clone(),
            endpoint,
            tokens,
            settings,
            config_faults: FaultLog::default(),
            outages: FaultLog::default(),
            shared: registry.shared().cloned(),
            revocations: registry.revocations().clone(),
        })
    }

    /// Tenant id.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The answer cache, for its hit and miss counters.
    pub fn cache(&self) -> &AnswerCache {
        &self.cache
    }

    /// True when the tenant has no verification key at all (every key set empty).
    pub fn has_no_keys(&self, registry: &Registry) -> bool {
        registry
            .key_sets()
            .iter()
            .filter(|s| s.id.tenant == self.tenant)
            .all(|s| s.keys().is_empty())
    }

    /// Introspects an opaque token: from the cache (the fleet's, with `shared_state`),
    /// else from the provider (within the concurrency cap); the answer is cached per
    /// [`answer_ttl`]. A revoked token is inactive, whatever the provider says.
    pub async fn introspect(
        &self,
        token: &str,
        hint: Option<&str>,
    ) -> Result<Answer, IntrospectError> {
        let answer = match &self.shared {
            Some(shared) => self.introspect_shared(shared, token, hint).await?,
            None => self.introspect_local(token, hint).await?,
        };
        self.unless_revoked(token, answer)
    }

    /// The answer from this replica's cache, else from the provider.
    async fn introspect_local(
        &self,
        token: &str,
        hint: Option<&str>,
    ) -> Result<Answer, IntrospectError> {
        if let Some(a) = self.cache.get(token) {
            return Ok(Answer::clone(&a));
        }
        let (answer, ttl) = self.ask_upstream(token, hint).await?;
        self.cache.insert(token, Arc::new(answer.clone()), ttl);
        Ok(answer)
    }

    /// Asks the provider (within the concurrency cap); returns the answer and how long
    /// it may be cached.
    async fn ask_upstream(
        &self,
        token: &str,
        hint: Option<&str>,
    ) -> Result<(Answer, Duration), IntrospectError> {
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            debug!(tenant = %self.tenant, "introspection concurrency cap reached");
            return Err(IntrospectError::Busy {
                tenant: self.tenant.clone(),
                limit: self.settings.max_concurrency,
            });
        };
        match self.call(token, hint).await {
            Ok(answer) => {
                let now = now_secs();
                let ttl = answer_ttl(
                    &answer,
                    now,
                    self.settings.cache_ttl,
                    self.settings.negative_cache_ttl,
                );
                Ok((answer, ttl))
            }
            Err(failure) => Err(self.report(failure)),
        }
    }

    /// One upstream exchange; in `bearer` mode a 401 renews the client token once and
    /// retries once.
    async fn call(&self, token: &str, hint: Option<&str>) -> Result<Answer, Failure> {
        let url = self
            .endpoint
            .resolve(self.timeout, self.require_https)
            .await?;
        let mut pairs: Vec<(&str, &[u8])> = vec![("token", token.as_bytes())];
        if let Some(h) = hint {
            pairs.push(("token_type_hint", h.as_bytes()));
        }
        let s = &self.settings;
        let (status, body) = match (&self.tokens, s.auth) {
            (Some(tokens), _) => {
                let access = tokens.get().await?;
                let reply = self
                    .post(&url, &pairs, ClientAuth::Bearer(access.expose()))
                    .await?;
                if reply.0 == 401 {
                    debug!(tenant = %self.tenant, "client token rejected; renewing it and retrying once");
                    let renewed = tokens.renew_rejected(&access).await?;
                    let reply = self
                        .post(&url, &pairs, ClientAuth::Bearer(renewed.expose()))
                        .await?;
                    if (200..300).contains(&reply.0) {
                        tokens.accepted(&renewed);
                    }
                    reply
                } else {
                    if (200..300).contains(&reply.0) {
                        tokens.accepted(&access);
                    }
                    reply
                }
            }
            (None, IntrospectionAuth::ClientSecretPost) => {
                self.post(
                    &url,
                    &pairs,
                    ClientAuth::Post {
                        client_id: &s.client_id,
                        secret: &s.client_secret,
                    },
                )
                .await?
            }
            (None, _) => {
                self.post(
                    &url,
                    &pairs,
                    ClientAuth::Basic {
                        client_id: &s.client_id,
                        secret: &s.client_secret,
                    },
                )
                .await?
            }
        };
        client::answer_for(token, status, &body, &self.tenant)
    }

    async fn post(
        &self,
        url: &url::Url,
        pairs: &[(&str, &[u8])],
        auth: ClientAuth<'_>,
    ) -> Result<(u16, Vec<u8>), Failure> {
        client::post_form(
            &self.http,
            url.clone(),
            pairs,
            &auth,
            self.timeout,
            "introspection endpoint",
        )
        .await
        .map(|r| (r.status, r.body))
    }

    /// Logs a failure (at most once per [`FAULT_LOG_PERIOD`] and kind) and turns it into
    /// the caller's error.
    fn report(&self, failure: Failure) -> IntrospectError {
        match failure {
            Failure::Configuration { reason } => {
                if let Some(suppressed) = self.config_faults.admit(FAULT_LOG_PERIOD) {
                    error!(
                        tenant = %self.tenant,
                        %reason,
                        suppressed,
                        "introspection configuration fault: check the tenant's introspection client id, secret and endpoints"
                    );
                }
                IntrospectError::Misconfigured {
                    tenant: self.tenant.clone(),
                    reason,
                }
            }
            Failure::Unavailable { reason, detail } => {
                if let Some(suppressed) = self.outages.admit(FAULT_LOG_PERIOD) {
                    warn!(tenant = %self.tenant, error = %detail, suppressed, "introspection upstream unavailable");
                }
                IntrospectError::Unavailable {
                    tenant: self.tenant.clone(),
                    reason,
                }
            }
        }
    }
}

/// Introspect for every tenant: the registry for JWTs, one [`Introspector`] per tenant
/// with `introspection` for opaque tokens (cheap to clone).
#[derive(Clone)]
pub struct Introspection {
    registry: Registry,
    introspectors: Arc<Vec<Arc<Introspector>>>,
}

impl fmt::Debug for Introspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspection")
            .field("introspectors", &self.introspectors)
            .finish_non_exhaustive()
    }
}

impl Introspection {
    /// Builds one introspector per tenant with `introspection`, in configuration order,
    /// sharing one HTTP client.
    pub fn new(registry: &Registry) -> Result<Self, FetchError> {
        let http = client::http_client()?;
        let http = &http;
        let introspectors = registry
            .tenants()
            .iter()
            .filter_map(|t| Introspector::new(&t.settings, registry, http))
            .map(Arc::new)
            .collect();
        Ok(Self {
            registry: registry.clone(),
            introspectors: Arc::new(introspectors),
        })
    }

    /// JWTs only: no tenant introspects opaque tokens.
    pub fn local_only(registry: Registry) -> Self {
        Self {
            registry,
            introspectors: Arc::new(Vec::new()),
        }
    }

    /// Every introspector, in configuration order (for metrics: their caches' counters).
    pub fn introspectors(&self) -> &[Arc<Introspector>] {
        &self.introspectors
    }

    /// The introspector of a tenant.
    pub fn introspector(&self, tenant: &str) -> Option<&Arc<Introspector>> {
        self.introspectors.iter().find(|i| i.tenant == tenant)
    }

    /// The introspector for an opaque token: the named tenant's, else the only one.
    pub fn select(&self, tenant: Option<&str>) -> Result<&Arc<Introspector>, IntrospectError> {
        match tenant {
            Some(t) => {
                if self.registry.tenant(t).is_none() {
                    return Err(IntrospectError::UnknownTenant(t.to_string()));
                }
                self.introspector(t)
                    .ok_or_else(|| IntrospectError::NoIntrospection(t.to_string()))
            }
            None => match self.introspectors.as_slice() {
                [] => Err(IntrospectError::NotConfigured),
                [only] => Ok(only),
                several => Err(IntrospectError::TenantRequired(
                    several
                        .iter()
                        .map(|i| i.tenant.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )),
            },
        }
    }

    /// Answers one request: a JWT with Validate's verdict (the tenant's own audiences
    /// apply), an opaque token with its provider's; an active upstream answer whose
    /// binding the call did not prove is [`IntrospectError::Unbound`].
    pub async fn introspect(&self, input: &IntrospectInput<'_>) -> Result<Answer, IntrospectError> {
        if let Some(t) = input.tenant
            && self.registry.tenant(t).is_none()
        {
            return Err(IntrospectError::UnknownTenant(t.to_string()));
        }
        let hint = input.token_type_hint;
        // Hashed and looked up in the verified-token cache once, parsed at most once.
        let mut presented = self.registry.present(input.token);
        let is_jws = presented.is_jws();
        if !is_jws && jws::is_jwt_shaped(input.token) {
            // RFC 7662: a token the server does not recognise is not active. It is not a
            // provider's opaque token either, so it is not sent anywhere.
            debug!("introspected token is JWT-shaped but not a valid JWS");
            return Ok(Answer::inactive());
        }
        let upstream = if is_jws && hint == Some(REFRESH_TOKEN_HINT) {
            self.select(input.tenant)
                .ok()
                .filter(|i| i.has_no_keys(&self.registry))
        } else {
            None
        };
        let no_keys = upstream.is_some();
        if goes_upstream(is_jws, hint, no_keys) {
            let introspector = match upstream {
                Some(i) => i,
                None => match self.select(input.tenant) {
                    Ok(i) => i,
                    // No tenant that could be asked: a token nobody here recognises.
                    Err(IntrospectError::NoIntrospection(_) | IntrospectError::NotConfigured) => {
                        debug!("no tenant introspects this opaque token");
                        return Ok(Answer::inactive());
                    }
                    Err(e) => return Err(e),
                },
            };
            let answer = introspector.introspect(input.token, hint).await?;
            return self.bound(introspector.tenant(), answer, input).await;
        }
        self.local(presented, input).await
    }

    /// An upstream answer after the sender-constraint check of its tenant: the binding
    /// comes from the answer's `cnf` (a DPoP proof's replay record is the fleet's when it
    /// shares state).
    async fn bound(
        &self,
        tenant: &str,
        answer: Answer,
        input: &IntrospectInput<'_>,
    ) -> Result<Answer, IntrospectError> {
        if !answer.active {
            return Ok(answer);
        }
        let Some(state) = self.registry.tenant(tenant) else {
            return Ok(Answer::inactive());
        };
        let bearer = Presentation::default();
        let presentation = input.presentation.unwrap_or(&bearer);
        state
            .sender()
            .check(
                answer.claims.get("cnf"),
                AccessToken::new(input.token),
                presentation,
                now_secs(),
                self.registry.shared(),
            )
            .await
            .map(|_| answer)
            .map_err(|r| IntrospectError::Unbound(Box::new(state.binding_refusal(r, None))))
    }

    async fn local(
        &self,
        presented: Presented<'_>,
        input: &IntrospectInput<'_>,
    ) -> Result<Answer, IntrospectError> {
        let validate = ValidateInput {
            token: input.token,
            tenant: input.tenant,
            peek_replay: true,
            presentation: input.presentation,
            ..ValidateInput::default()
        };
        match self.registry.validate_presented(presented, &validate).await {
            Ok(v) => Ok(answer::from_claims(
                v.claims(),
                v.tenant.id(),
                input.token_type_hint,
            )),
            Err(ValidateError::Request(RequestError::UnknownTenant(t))) => {
                Err(IntrospectError::UnknownTenant(t))
            }
            Err(e) if e.code() == Some(ErrorCode::StateUnavailable) => {
                Err(IntrospectError::Unavailable {
                    tenant: input.tenant.unwrap_or_default().to_string(),
                    reason: "the fleet's shared state is unavailable".into(),
                })
            }
            Err(e) => {
                debug!(error = %e, "introspected JWT is not active");
                Ok(Answer::inactive())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_rule() {
        assert!(goes_upstream(false, None, false), "not a JWS");
        assert!(goes_upstream(false, Some("access_token"), false));
        assert!(
            !goes_upstream(true, None, true),
            "a JWS is validated locally"
        );
        assert!(!goes_upstream(true, Some("access_token"), true));
        assert!(
            !goes_upstream(true, Some(REFRESH_TOKEN_HINT), false),
            "the tenant has keys"
        );
        assert!(goes_upstream(true, Some(REFRESH_TOKEN_HINT), true));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let yaml = "tenants:\n  - id: o\n    issuer: https://as.example\n    introspection:\n      client_id: c\n      client_secret_env: S\n      auth: bearer\n";
        let settings = crate::config::load_str(yaml, &|_| Some("hunter2-secret".to_string()), &[])
            .expect("config");
        let registry = Registry::new(&settings).expect("registry");
        let introspection = Introspection::new(&registry).expect("client");
        let shown = format!("{introspection:?}");
        assert!(shown.contains("tenant: \"o\""), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(introspection.introspectors().len(), 1);
        assert_eq!(
            introspection.introspector("o").map(|i| i.cache().hits()),
            Some(0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fault_log_is_rate_limited_per_period() {
        let period = Duration::from_secs(60);
        let t0 = Instant::now();
        assert!(fault_log_due(None, t0, period));
        assert!(!fault_log_due(
            Some(t0),
            t0 + Duration::from_secs(59),
            period
        ));
        assert!(fault_log_due(Some(t0), t0 + period, period));

        let log = FaultLog::default();
        assert_eq!(log.admit(period), Some(0));
        assert_eq!(log.admit(period), None);
        assert_eq!(log.admit(period), None);
        tokio::time::advance(period).await;
        assert_eq!(
            log.admit(period),
            Some(2),
            "the suppressed lines are counted"
        );
    }
}
