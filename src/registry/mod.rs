//! The multi-tenant registry: configured tenants, routing of a token to a tenant by `iss`
//! (exact, or `{tenantid}` template plus `tid`) and to a B2C policy by `tfp`/`acr`, and
//! the per-key-set state (current `Arc<KeySet>` snapshot, fetch status, refresh control)
//! held in a `DashMap`. A claim is only ever a lookup key into configuration here: no
//! claim creates an entry or names a URL.

mod operator;
pub mod proof_keys;
mod refresh;
mod replay;
mod revocation;
mod revoke;
pub mod sender;
mod state_checks;
pub mod token_cache;
mod validate;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;
use jsonwebtoken::Algorithm;
use tokio::sync::broadcast;

pub use operator::{RefreshError, RefreshOutcome, RefreshReport};
pub use refresh::{Forced, RefreshControl, RefreshKind};
pub use replay::ReplayCache;
pub use revocation::{Candidate, MAX_REVOCATION_RULES, Revocations, RevocationsFull, token_digest};
pub use revoke::{
    DEFAULT_REVOCATION_LIFETIME, MAX_REVOCATION_LIFETIME, MAX_RULE_FIELD_BYTES, RevokeError,
    RevokeInput, RevokeTarget, Revoked,
};
pub use sender::{DpopHint, SenderState};
pub use token_cache::{TokenCache, TokenCacheStats, TokenHash, VerifiedToken};
pub use validate::{Presented, ValidateError, ValidateInput, Validated};

use crate::{
    config::{
        KeySource, POLICY_PLACEHOLDER, RefreshSettings, Settings, TENANT_ID_PLACEHOLDER,
        TenantSettings,
    },
    events::{self, EventBus, KeyEvent, KeyEventKind, KeyInfo, Origin},
    jwt::{
        ErrorCode, Rejection,
        claims::{Claims, TokenKind, is_guid},
        echo,
    },
    keys::{IngestOptions, KeySet, SkippedKey, VerifyingKey},
    shared::Shared,
};

/// A request problem (gRPC INVALID_ARGUMENT), as opposed to a rejected token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request named a tenant that is not configured.
    #[error("tenant `{0}` is not configured")]
    UnknownTenant(String),
    /// The request named a key set that does not exist.
    #[error("no key set `{0}`")]
    UnknownKeySet(String),
    /// The tenant has no key set (cannot happen for a configured tenant).
    #[error("tenant `{0}` has no key set")]
    NoKeySet(String),
    /// A policy was named for a tenant that is not B2C.
    #[error("tenant `{tenant}` is not a B2C tenant; policy {} does not apply", echo(.policy))]
    NotB2c {
        /// Tenant id.
        tenant: String,
        /// The policy named.
        policy: String,
    },
    /// A B2C tenant was named without one of its policies.
    #[error("tenant `{tenant}` is a B2C tenant: name one of its policies ({policies})")]
    PolicyRequired {
        /// Tenant id.
        tenant: String,
        /// Its policies, comma-separated.
        policies: String,
    },
    /// A B2C tenant was named with a policy it does not have.
    #[error("tenant `{tenant}` has no policy {}", echo(.policy))]
    UnknownPolicy {
        /// Tenant id.
        tenant: String,
        /// The policy named.
        policy: String,
    },
}

/// Identifies one key set: a tenant, and for B2C one of its policies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeySetId {
    /// Tenant id.
    pub tenant: String,
    /// Configured B2C policy name.
    pub policy: Option<String>,
}

impl fmt::Display for KeySetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            Some(p) => write!(f, "{}/{}", self.tenant, p),
            None => f.write_str(&self.tenant),
        }
    }
}

/// What the discovery document said, kept for refreshes and for introspection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `issuer` of the document.
    pub issuer: String,
    /// `jwks_uri`.
    pub jwks_uri: String,
    /// `introspection_endpoint`, when advertised.
    pub introspection_endpoint: Option<String>,
    /// `token_endpoint`, when advertised.
    pub token_endpoint: Option<String>,
}

/// Outcome counters and times of a key set's fetches, for health, metrics and operators.
#[derive(Debug, Clone, Default)]
pub struct FetchStatus {
    /// Last successful fetch.
    pub last_success: Option<SystemTime>,
    /// Last failure and when.
    pub last_error: Option<(String, SystemTime)>,
    /// When the next scheduled refresh is due.
    pub next_refresh: Option<SystemTime>,
    /// Successful fetches.
    pub successes: u64,
    /// Failed fetches.
    pub failures: u64,
    /// Failures since the last success (drives the backoff).
    pub consecutive_failures: u32,
    /// True when the most recent fetch failed.
    pub last_failed: bool,
    /// The replica that fetched the keys in use, with a fleet (this one or another).
    pub fetched_by: Option<String>,
    /// When the keys in use were fetched, by whichever replica.
    pub fetched_at: Option<SystemTime>,
    /// Generation of the fleet's publication in use (0: none).
    pub shared_generation: u64,
    /// Fetches this replica did not make because the fleet had one (taken, or within
    /// the fleet's cooldown).
    pub avoided: u64,
}

/// Where one key set's keys come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A discovery document.
    Discovery {
        /// Its address.
        metadata_url: String,
    },
    /// A JWKS file.
    JwksFile {
        /// Its path.
        path: std::path::PathBuf,
    },
    /// Fixed keys (HMAC secret, `--dev`).
    Static,
}

/// One key set's state: the snapshot validation reads, and what refreshes it.
pub struct KeySetState {
    /// Which key set.
    pub id: KeySetId,
    /// The issuer its metadata must declare (may hold `{tenantid}`).
    pub issuer: String,
    /// Where its keys come from.
    pub source: Source,
    /// Refresh schedule and limits.
    pub settings: RefreshSettings,
    /// The tenant's algorithm allow-list (keys are bound to these).
    pub algorithms: Vec<Algorithm>,
    /// Single-flight refresh handshake.
    pub refresh: RefreshControl,
    keys: ArcSwap<KeySet>,
    metadata: ArcSwapOption<Metadata>,
    status: Mutex<FetchStatus>,
}

impl fmt::Debug for KeySetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySetState")
            .field("id", &self.id)
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl KeySetState {
    /// The current snapshot (lock-free).
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// The last good metadata.
    pub fn metadata(&self) -> Option<Arc<Metadata>> {
        self.metadata.load_full()
    }

    /// Replaces the metadata.
    pub fn set_metadata(&self, m: Metadata) {
        self.metadata.store(Some(Arc::new(m)));
    }

    /// A copy of the fetch status.
    pub fn status(&self) -> FetchStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Updates the fetch status.
    pub fn update_status<R>(&self, f: impl FnOnce(&mut FetchStatus) -> R) -> R {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Options for ingesting this set's documents.
    pub fn ingest_options(&self) -> IngestOptions<'_> {
        IngestOptions {
            allow_symmetric: false,
            algorithms: &self.algorithms,
        }
    }

    fn origin(&self) -> Origin<'_> {
        Origin {
            tenant: &self.id.tenant,
            policy: self.id.policy.as_deref(),
            issuer: &self.issuer,
        }
    }
}

/// A configured tenant with its routing data precomputed, and the handles of its key
/// sets resolved once at start-up (validation never builds a `KeySetId` to find them).
#[derive(Debug)]
pub struct Tenant {
    /// Its settings.
    pub settings: TenantSettings,
    /// Its position in the configuration (metrics keep per-tenant series by it).
    pub index: usize,
    template: Option<(String, String)>,
    /// One key set, or one per B2C policy in configuration order.
    key_sets: Vec<Arc<KeySetState>>,
    replay: Option<ReplayCache>,
    sender: SenderState,
}

impl Tenant {
    fn new(settings: TenantSettings, index: usize, key_sets: Vec<Arc<KeySetState>>) -> Self {
        let template = settings
            .issuer
            .split_once(TENANT_ID_PLACEHOLDER)
            .map(|(a, b)| (a.to_string(), b.to_string()));
        let replay = settings
            .policy
            .replay_detection
            .then(|| ReplayCache::new(&settings.id, settings.policy.replay_cache_entries));
        Self {
            sender: SenderState::new(&settings),
            settings,
            index,
            template,
            key_sets,
            replay,
        }
    }

    /// The tenant's sender-constraint state (DPoP and certificate binding).
    pub fn sender(&self) -> &SenderState {
        &self.sender
    }

    /// The replay cache, when the tenant has replay detection on.
    pub fn replay_cache(&self) -> Option<&ReplayCache> {
        self.replay.as_ref()
    }

    /// What Validate checks this tenant's tokens as when the request carries no nonce.
    pub fn token_kind(&self) -> TokenKind {
        self.settings.policy.token_kind
    }

    /// Tenant id.
    pub fn id(&self) -> &str {
        &self.settings.id
    }

    /// True for a B2C tenant.
    pub fn is_b2c(&self) -> bool {
        matches!(self.settings.keys, KeySource::B2c(_))
    }

    /// The key set of a tenant that is not B2C.
    pub fn key_set(&self) -> Option<&Arc<KeySetState>> {
        self.key_sets.first().filter(|_| !self.is_b2c())
    }

    /// Whether this tenant trusts `iss`, given the token's claims (`tid` for templates).
    pub fn trusts(&self, iss: &str, claims: &Claims) -> bool {
        match &self.template {
            None => self.settings.issuer == iss,
            Some((prefix, suffix)) => {
                let Some(tid) = claims.str("tid") else {
                    return false;
                };
                if !is_guid(tid) {
                    return false;
                }
                // A `{tenantid}` issuer always has its list (configuration requires it).
                let allowed = self
                    .settings
                    .allowed_tenant_ids
                    .as_ref()
                    .is_some_and(|ids| ids.allows(tid));
                allowed
                    && iss.len() == prefix.len() + tid.len() + suffix.len()
                    && iss.starts_with(prefix.as_str())
                    && iss.ends_with(suffix.as_str())
                    && &iss[prefix.len()..prefix.len() + tid.len()] == tid
            }
        }
    }

    /// Whether a `{tenantid}` template of this tenant matches `iss` with an allowed
    /// GUID in its place.
    fn trusts_templated(&self, iss: &str) -> bool {
        let Some((prefix, suffix)) = &self.template else {
            return false;
        };
        let Some(tid) = iss
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_suffix(suffix.as_str()))
        else {
            return false;
        };
        // As in `trusts`: a `{tenantid}` issuer always has its list.
        is_guid(tid)
            && self
                .settings
                .allowed_tenant_ids
                .as_ref()
                .is_some_and(|ids| ids.allows(tid))
    }

    /// The key set of the configured B2C policy a token claims (first present of
    /// `policy_claims`, compared case-insensitively as B2C compares them).
    pub fn policy_key_set(&self, claims: &Claims) -> Result<&Arc<KeySetState>, Rejection> {
        let KeySource::B2c(b2c) = &self.settings.keys else {
            return Err(Rejection::new(ErrorCode::UnknownPolicy, "not a B2C tenant"));
        };
        let claimed = b2c.policy_claims.iter().find_map(|c| claims.str(c));
        let Some(claimed) = claimed else {
            return Err(Rejection::new(
                ErrorCode::UnknownPolicy,
                format!(
                    "token has none of the policy claims {}",
                    b2c.policy_claims.join(", ")
                ),
            ));
        };
        self.key_sets
            .iter()
            .find(|s| {
                s.id.policy
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case(claimed))
            })
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::UnknownPolicy,
                    format!("policy {} is not allowed", echo(claimed)),
                )
            })
    }
}

struct Inner {
    tenants: Vec<Arc<Tenant>>,
    by_id: HashMap<String, Arc<Tenant>>,
    by_issuer: HashMap<String, Arc<Tenant>>,
    templated: Vec<Arc<Tenant>>,
    key_sets: DashMap<KeySetId, Arc<KeySetState>>,
    /// The verified-token cache (`token_cache.enabled`); shared with the revocation
    /// listener that purges it.
    cache: Option<Arc<TokenCache>>,
    /// Issuers a B2C policy's own metadata declares in the older `/tfp/.../{policy}/`
    /// form. Filled only from configured metadata, never from a token.
    aliases: DashMap<String, KeySetId>,
    events: EventBus,
    revocations: Arc<Revocations>,
    /// The fleet's shared state, when `shared_state` is configured (set once, at
    /// start-up, before serving).
    shared: OnceLock<Shared>,
}

/// A cheap-clone handle on the registry.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("tenants", &self.inner.tenants.len())
            .field("key_sets", &self.inner.key_sets.len())
            .finish()
    }
}

/// A registry could not be built from valid settings (a static key was unusable).
#[derive(Debug, thiserror::Error)]
#[error("tenant `{tenant}`: {message}")]
pub struct BuildError {
    /// Tenant id.
    pub tenant: String,
    /// What failed.
    pub message: String,
}

impl KeySetState {
    /// An empty key set of `tenant`, for `policy` when B2C.
    fn new(tenant: &TenantSettings, policy: Option<String>, source: Source) -> Self {
        let refreshable = !matches!(source, Source::Static);
        Self {
            id: KeySetId {
                tenant: tenant.id.clone(),
                policy,
            },
            issuer: tenant.issuer.clone(),
            source,
            settings: tenant.refresh,
            algorithms: tenant.policy.algorithms.clone(),
            refresh: RefreshControl::new(refreshable),
            keys: ArcSwap::from_pointee(KeySet::empty()),
            metadata: ArcSwapOption::empty(),
            status: Mutex::new(FetchStatus::default()),
        }
    }

    /// Installs keys that never change, as if fetched once at start-up.
    fn with_static_keys(self, set: KeySet) -> Self {
        self.keys.store(Arc::new(set));
        self.update_status(|s| {
            s.last_success = Some(SystemTime::now());
            s.successes = 1;
        });
        self
    }
}

/// The key sets of one tenant: one per B2C policy, else one; static keys ingested now,
/// fetched ones left empty for their refreshers.
fn key_sets_of(ts: &TenantSettings) -> Result<Vec<KeySetState>, String> {
    let sets = match &ts.keys {
        KeySource::Discovery { metadata_url } => {
            let source = Source::Discovery {
                metadata_url: metadata_url.clone(),
            };
            vec![KeySetState::new(ts, None, source)]
        }
        KeySource::B2c(b2c) => b2c
            .policies
            .iter()
            .map(|p| {
                let metadata_url = b2c.metadata_url.replace(POLICY_PLACEHOLDER, p);
                KeySetState::new(ts, Some(p.clone()), Source::Discovery { metadata_url })
            })
            .collect(),
        KeySource::JwksFile { path } => {
            vec![KeySetState::new(
                ts,
                None,
                Source::JwksFile { path: path.clone() },
            )]
        }
        KeySource::Hmac { secret } => {
            let key = VerifyingKey::hmac(None, secret.expose(), &ts.policy.algorithms)
                .map_err(|e| e.to_string())?;
            let (set, _) = KeySet::from_keys(vec![key]);
            vec![KeySetState::new(ts, None, Source::Static).with_static_keys(set)]
        }
        KeySource::Static { jwks } => {
            let state = KeySetState::new(ts, None, Source::Static);
            let (set, skipped) =
                KeySet::from_jwks(jwks, &state.ingest_options()).map_err(|e| e.to_string())?;
            if let Some(s) = skipped.first() {
                return Err(format!("static key {} skipped: {}", s.index, s.reason));
            }
            vec![state.with_static_keys(set)]
        }
    };
    Ok(sets)
}

impl Registry {
    /// Builds every tenant and key set; static keys are ingested now, fetched ones are
    /// left empty for their refreshers.
    pub fn new(settings: &Settings) -> Result<Self, BuildError> {
        let mut inner = Inner {
            tenants: Vec::new(),
            by_id: HashMap::new(),
            by_issuer: HashMap::new(),
            templated: Vec::new(),
            key_sets: DashMap::new(),
            cache: settings
                .token_cache
                .enabled
                .then(|| Arc::new(TokenCache::new(settings.token_cache))),
            aliases: DashMap::new(),
            events: EventBus::default(),
            revocations: Revocations::new(),
            shared: OnceLock::new(),
        };
        for (index, ts) in settings.tenants.iter().enumerate() {
            let sets: Vec<Arc<KeySetState>> = key_sets_of(ts)
                .map_err(|message| BuildError {
                    tenant: ts.id.clone(),
                    message,
                })?
                .into_iter()
                .map(Arc::new)
                .collect();
            for s in &sets {
                inner.key_sets.insert(s.id.clone(), s.clone());
            }
            let tenant = Arc::new(Tenant::new(ts.clone(), index, sets));
            if !ts.explicit {
                if tenant.template.is_some() {
                    inner.templated.push(tenant.clone());
                } else {
                    inner.by_issuer.insert(ts.issuer.clone(), tenant.clone());
                }
            }
            inner.by_id.insert(ts.id.clone(), tenant.clone());
            inner.tenants.push(tenant);
        }
        if let Some(cache) = &inner.cache {
            // Every new rule, from a Revoke here or from the fleet, purges what it matches
            // (a cached token is also checked against the rules on every call).
            let cache = cache.clone();
            inner.revocations.set_listener(move |r| {
                let purged = cache.purge_revoked(&r.rule);
                tracing::debug!(purged, "a revocation purged the verified-token cache");
            });
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Every tenant, in configuration order.
    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.inner.tenants
    }

    /// A tenant by id.
    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.inner.by_id.get(id)
    }

    /// A key set by id.
    pub fn key_set(&self, id: &KeySetId) -> Option<Arc<KeySetState>> {
        self.inner.key_sets.get(id).map(|e| e.value().clone())
    }

    /// Every key set, sorted by id.
    pub fn key_sets(&self) -> Vec<Arc<KeySetState>> {
        let mut v: Vec<Arc<KeySetState>> = self
            .inner
            .key_sets
            .iter()
            .map(|e| e.value().clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Waits until every key set's start-up fetch has finished.
    pub async fn wait_first_fetches(&self) {
        for s in self.key_sets() {
            s.refresh.wait_first().await;
        }
    }

    /// Routes a token: the tenant named by the request (which must trust the `iss`), or
    /// the tenant whose issuer is the `iss` (exact, then `{tenantid}` templates).
    pub fn route(
        &self,
        iss: &str,
        claims: &Claims,
        requested: Option<&str>,
    ) -> Result<Arc<Tenant>, ValidateError> {
        if let Some(id) = requested {
            let t = self.inner.by_id.get(id).ok_or_else(|| {
                ValidateError::Request(RequestError::UnknownTenant(id.to_string()))
            })?;
            return if t.trusts(iss, claims)
                || self.alias_of(iss).is_some_and(|a| a.tenant == t.id())
            {
                Ok(t.clone())
            } else {
                Err(ValidateError::rejected(
                    Rejection::new(
                        ErrorCode::UnknownIssuer,
                        format!("tenant `{id}` does not trust iss {}", echo(iss)),
                    ),
                    Some(t.id().to_string()),
                    None,
                ))
            };
        }
        if let Some(t) = self.inner.by_issuer.get(iss) {
            return Ok(t.clone());
        }
        if let Some(t) = self
            .alias_of(iss)
            .and_then(|a| self.inner.by_id.get(&a.tenant).cloned())
            && !t.settings.explicit
        {
            return Ok(t);
        }
        for t in &self.inner.templated {
            if t.trusts(iss, claims) {
                return Ok(t.clone());
            }
        }
        Err(ValidateError::rejected(
            Rejection::new(
                ErrorCode::UnknownIssuer,
                format!("no tenant trusts iss {}", echo(iss)),
            ),
            None,
            None,
        ))
    }

    /// Records that a B2C policy's metadata declares `issuer` (the `/tfp/` form).
    pub fn add_alias(&self, issuer: &str, id: &KeySetId) {
        if self
            .inner
            .aliases
            .get(issuer)
            .map(|e| e.value() != id)
            .unwrap_or(true)
        {
            self.inner.aliases.insert(issuer.to_string(), id.clone());
        }
    }

    /// True unless `iss` is an issuer in the B2C `/tfp/` form that names a policy other
    /// than `id`'s.
    pub(crate) fn alias_agrees(&self, iss: &str, id: &KeySetId) -> bool {
        self.inner
            .aliases
            .get(iss)
            .is_none_or(|a| a.value().policy == id.policy)
    }

    /// The key set whose metadata declared `issuer` as an alias.
    pub fn alias_of(&self, issuer: &str) -> Option<KeySetId> {
        self.inner.aliases.get(issuer).map(|e| e.value().clone())
    }

    /// Installs a new snapshot and publishes what changed; returns the events. Cached
    /// tokens verified by a key that left the set are purged.
    pub fn install_keys(&self, state: &KeySetState, new: KeySet) -> Vec<KeyEvent> {
        let mut removed = false;
        let events = self.inner.events.publish_with(|| {
            let new = Arc::new(new);
            let old = state.keys.swap(new.clone());
            removed = old.iter().any(|o| !new.iter().any(|n| n == o));
            events::diff(&state.origin(), &old, &new, SystemTime::now())
        });
        if removed {
            self.purge_removed_keys(state);
        }
        events
    }

    /// Publishes a REFRESH_FAILED event.
    pub fn publish_failure(&self, state: &KeySetState, message: String) {
        self.inner
            .events
            .publish_with(|| vec![state.origin().failure(message, SystemTime::now())]);
    }

    /// Subscribes to key events of `tenants` (all when empty) and returns the snapshot of
    /// EXISTING events, atomically.
    pub fn subscribe(
        &self,
        tenants: &[String],
    ) -> (broadcast::Receiver<Arc<KeyEvent>>, Vec<KeyEvent>) {
        self.inner.events.subscribe(|| self.snapshot(tenants))
    }

    /// One EXISTING event per key of `tenants` (all when empty).
    pub fn snapshot(&self, tenants: &[String]) -> Vec<KeyEvent> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        for s in self.key_sets() {
            if !tenants.is_empty() && !tenants.contains(&s.id.tenant) {
                continue;
            }
            for k in s.keys().iter() {
                if let Some(info) = KeyInfo::of(k) {
                    out.push(s.origin().key_event(KeyEventKind::Existing, info, now));
                }
            }
        }
        out
    }

    /// Log-friendly description of skipped keys.
    pub fn describe_skipped(skipped: &[SkippedKey]) -> String {
        skipped
            .iter()
            .map(|s| {
                format!(
                    "#{} ({}): {}",
                    s.index,
                    s.kid.as_deref().unwrap_or("no kid"),
                    s.reason
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The revocation rules this replica checks.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.inner.revocations
    }

    /// Hands the registry the fleet's shared state (once, before serving); false if
    /// it had one already.
    pub fn attach_shared(&self, shared: Shared) -> bool {
        self.inner.shared.set(shared).is_ok()
    }

    /// The fleet's shared state, when configured.
    pub fn shared(&self) -> Option<&Shared> {
        self.inner.shared.get()
    }

    /// The tenant that trusts `iss` as a plain issuer (exact, or a `{tenantid}` template
    /// with an allowed GUID in its place): used to pick settings for an issuer named by
    /// an operator, never to route a token.
    pub fn tenant_for_issuer(&self, iss: &str) -> Option<Arc<Tenant>> {
        if let Some(t) = self.inner.by_issuer.get(iss) {
            return Some(t.clone());
        }
        if let Some(a) = self.alias_of(iss) {
            return self.inner.by_id.get(&a.tenant).cloned();
        }
        self.inner
            .tenants
            .iter()
            .find(|t| t.settings.issuer == iss || t.trusts_templated(iss))
            .cloned()
    }

    /// The verified-token cache, unless `token_cache.enabled` is off.
    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.inner.cache.as_deref()
    }

    /// Longest a caller waits for a kid-miss refresh of `state`.
    pub fn kid_miss_wait(state: &KeySetState) -> Duration {
        state.settings.fetch_timeout
    }
}
