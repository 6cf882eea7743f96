//! `tenants:`: one trusted issuer each. A tenant is resolved one decision at a time:
//! its identity, its policy keys over `defaults:`, where its keys come from, which
//! Entra tenant ids a `{tenantid}` issuer accepts, and introspection; then the rules
//! between tenants (unique ids, one implicit tenant per issuer).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use serde::Deserialize;

use super::{
    ConfigError, EnvLookup, TENANT_ID_PLACEHOLDER, check_url,
    introspection::{self, IntrospectionFile, IntrospectionSettings},
    key_source::{self, B2cSettings, KeySource},
    policy::{
        self, PolicyFile, RefreshSettings, ResolvedPolicy, ValidationPolicy, with_policy_keys,
    },
};
use crate::jwt::claims::is_guid;

/// One trusted tenant, with the defaults merged in.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Unique id, used in requests and metrics.
    pub id: String,
    /// The issuer; may hold `{tenantid}`.
    pub issuer: String,
    /// Audiences accepted when a request names none.
    pub audiences: Vec<String>,
    /// For `{tenantid}` issuers (required there, `None` elsewhere): the Entra ID tenants
    /// whose tokens are accepted.
    pub allowed_tenant_ids: Option<AllowedTenantIds>,
    /// Only used when a request names this tenant.
    pub explicit: bool,
    /// Token checks.
    pub policy: ValidationPolicy,
    /// Refresh schedule and limits.
    pub refresh: RefreshSettings,
    /// Where the keys come from.
    pub keys: KeySource,
    /// RFC 7662 introspection of opaque tokens.
    pub introspection: Option<IntrospectionSettings>,
}

/// The Entra ID tenants a `{tenantid}` issuer accepts. Entra's common keys sign the
/// tokens of every Entra tenant, so there is no default: the operator lists the tenant
/// ids, or writes `["*"]` to accept any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedTenantIds {
    /// `["*"]`: every Entra ID tenant (a multi-tenant application), chosen explicitly.
    Any,
    /// These tenant ids (GUIDs, lower case).
    Only(Vec<String>),
}

/// The `allowed_tenant_ids` entry that accepts every Entra ID tenant.
pub const ANY_TENANT_ID: &str = "*";

impl AllowedTenantIds {
    /// Whether a token's `tid` (already known to be a GUID) is accepted.
    pub fn allows(&self, tid: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(ids) => ids.iter().any(|i| i.eq_ignore_ascii_case(tid)),
        }
    }
}

impl TenantSettings {
    /// A tenant trusting `issuer` with keys from `keys`, and every other setting at its
    /// default.
    pub fn new(id: impl Into<String>, issuer: impl Into<String>, keys: KeySource) -> Self {
        Self {
            id: id.into(),
            issuer: issuer.into(),
            audiences: Vec::new(),
            allowed_tenant_ids: None,
            explicit: false,
            policy: ValidationPolicy::default(),
            refresh: RefreshSettings::default(),
            keys,
            introspection: None,
        }
    }

    /// True when `issuer` holds the `{tenantid}` placeholder.
    pub fn is_templated(&self) -> bool {
        self.issuer.contains(TENANT_ID_PLACEHOLDER)
    }

    /// For a `{tenantid}` issuer, which Entra ID tenants it accepts, in words (for
    /// `check-config` and the start-up log); `None` for other issuers.
    pub fn entra_trust(&self) -> Option<String> {
        match self.allowed_tenant_ids.as_ref()? {
            AllowedTenantIds::Any => {
                Some("accepts tokens of every Entra ID tenant (allowed_tenant_ids: [\"*\"])".into())
            }
            AllowedTenantIds::Only(ids) => Some(format!(
                "accepts tokens of {} Entra ID tenant(s): {}",
                ids.len(),
                ids.join(", ")
            )),
        }
    }
}

with_policy_keys! {
    /// One entry of `tenants:`, as written.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a mapping of tenant keys")]
    pub(super) struct TenantFile {
        pub(super) id: String,
        pub(super) issuer: String,
        pub(super) metadata_url: Option<String>,
        #[serde(default)]
        pub(super) audiences: Vec<String>,
        pub(super) allowed_tenant_ids: Option<Vec<String>>,
        #[serde(default)]
        pub(super) explicit: bool,
        pub(super) b2c: Option<B2cSettings>,
        pub(super) hmac_secret_env: Option<String>,
        pub(super) hmac_secret_encoding: Option<String>,
        pub(super) jwks_file: Option<PathBuf>,
        pub(super) introspection: Option<IntrospectionFile>,
    }
}

impl TenantFile {
    fn key_source(&self) -> key_source::Written<'_> {
        key_source::Written {
            issuer: &self.issuer,
            metadata_url: self.metadata_url.as_deref(),
            b2c: self.b2c.as_ref(),
            hmac_secret_env: self.hmac_secret_env.as_deref(),
            hmac_secret_encoding: self.hmac_secret_encoding.as_deref(),
            jwks_file: self.jwks_file.as_deref(),
        }
    }
}

/// Resolves every tenant, in file order, and checks the rules between them.
pub(super) fn resolve_all(
    files: Vec<TenantFile>,
    defaults: &PolicyFile,
    env: EnvLookup<'_>,
) -> Result<Vec<TenantSettings>, ConfigError> {
    let mut tenants = Vec::with_capacity(files.len());
    let mut ids = HashSet::new();
    for (i, t) in files.into_iter().enumerate() {
        let key = format!("tenants[{i}]");
        if !ids.insert(t.id.clone()) {
            return Err(ConfigError::new(
                format!("{key}.id"),
                format!("duplicate tenant id `{}`", t.id),
            ));
        }
        tenants.push(resolve(&key, t, defaults, env)?);
    }
    check_shared_issuers(&tenants)?;
    Ok(tenants)
}

fn resolve(
    key: &str,
    t: TenantFile,
    defaults: &PolicyFile,
    env: EnvLookup<'_>,
) -> Result<TenantSettings, ConfigError> {
    check_identity(key, &t)?;
    let ResolvedPolicy {
        policy,
        refresh,
        algorithms_key,
    } = policy::resolve(key, &PolicyFile::from(&t), defaults)?;
    let written = t.key_source();
    key_source::check_choice(key, written, &policy.algorithms, &algorithms_key)?;
    let allowed_tenant_ids = allowed_tenant_ids(key, &t)?;
    let keys = key_source::resolve(
        key,
        written,
        &policy.algorithms,
        &algorithms_key,
        refresh.require_https,
        env,
    )?;
    if keys.has_metadata() && !t.issuer.contains(TENANT_ID_PLACEHOLDER) {
        check_url(&format!("{key}.issuer"), &t.issuer, refresh.require_https)?;
    }
    let introspection = t
        .introspection
        .map(|i| {
            let key = format!("{key}.introspection");
            introspection::resolve(&key, i, &keys, refresh.require_https, env)
        })
        .transpose()?;
    Ok(TenantSettings {
        id: t.id,
        issuer: t.issuer,
        audiences: t.audiences,
        allowed_tenant_ids,
        explicit: t.explicit,
        policy,
        refresh,
        keys,
        introspection,
    })
}

fn check_identity(key: &str, t: &TenantFile) -> Result<(), ConfigError> {
    let id_ok = !t.id.is_empty()
        && t.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !id_ok {
        return Err(ConfigError::new(
            format!("{key}.id"),
            "must be non-empty and use only letters, digits, '-', '_' and '.'",
        ));
    }
    if t.issuer.trim().is_empty() {
        return Err(ConfigError::new(
            format!("{key}.issuer"),
            "must not be empty",
        ));
    }
    Ok(())
}

/// `allowed_tenant_ids`: required for a `{tenantid}` issuer and only there; `["*"]`
/// alone, or GUIDs (kept in lower case).
fn allowed_tenant_ids(key: &str, t: &TenantFile) -> Result<Option<AllowedTenantIds>, ConfigError> {
    let templated = t.issuer.contains(TENANT_ID_PLACEHOLDER);
    let ids = match (&t.allowed_tenant_ids, templated) {
        (None, false) => return Ok(None),
        (Some(_), false) => {
            return Err(ConfigError::new(
                format!("{key}.allowed_tenant_ids"),
                "only applies to an issuer that holds {tenantid}",
            ));
        }
        (None, true) => {
            return Err(ConfigError::new(
                format!("{key}.allowed_tenant_ids"),
                "is required for an issuer that holds {tenantid}: Entra ID's common keys sign the \
                 tokens of every Entra tenant, so list the tenant ids (GUIDs) to accept, or write \
                 allowed_tenant_ids: [\"*\"] to accept every tenant",
            ));
        }
        (Some(ids), true) => ids,
    };
    if ids.iter().any(|id| id == ANY_TENANT_ID) {
        if ids.len() > 1 {
            return Err(ConfigError::new(
                format!("{key}.allowed_tenant_ids"),
                "\"*\" accepts every tenant and stands alone; remove it or the tenant ids",
            ));
        }
        return Ok(Some(AllowedTenantIds::Any));
    }
    if ids.is_empty() {
        return Err(ConfigError::new(
            format!("{key}.allowed_tenant_ids"),
            "must list at least one tenant id, or [\"*\"] for every tenant",
        ));
    }
    let mut out = Vec::with_capacity(ids.len());
    for (j, id) in ids.iter().enumerate() {
        if !is_guid(id) {
            return Err(ConfigError::new(
                format!("{key}.allowed_tenant_ids[{j}]"),
                format!("`{id}` is not a GUID (or \"*\" alone, for every tenant)"),
            ));
        }
        out.push(id.to_ascii_lowercase());
    }
    Ok(Some(AllowedTenantIds::Only(out)))
}

/// Several tenants may share an issuer only when a request's `tenant` tells them apart:
/// at most one of them may be routed by `iss` alone, the others must be `explicit`.
fn check_shared_issuers(tenants: &[TenantSettings]) -> Result<(), ConfigError> {
    let mut implicit: HashMap<&str, &TenantSettings> = HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        if t.explicit {
            continue;
        }
        if let Some(first) = implicit.insert(t.issuer.as_str(), t) {
            return Err(ConfigError::new(
                format!("tenants[{i}].issuer"),
                format!(
                    "tenants `{}` and `{}` both trust `{}`, so a token could not be routed by its iss; \
                     set `explicit: true` on all but one of them (an explicit tenant is only used when a request names it)",
                    first.id, t.id, t.issuer
                ),
            ));
        }
    }
    Ok(())
}
