//! `tenants[].introspection:`: RFC 7662 introspection of opaque tokens: the endpoints,
//! the client's credentials (the secret read from the environment), and the answer
//! cache and concurrency limits.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, EnvLookup, Secret, check_url, de, key_source::KeySource};

/// Default lifetime of a cached active introspection answer.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default lifetime of a cached inactive introspection answer.
pub const DEFAULT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(10);
/// Default cap on concurrent upstream introspection calls per tenant.
pub const DEFAULT_INTROSPECTION_MAX_CONCURRENCY: usize = 64;
/// Default cap on cached introspection answers per tenant.
pub const DEFAULT_INTROSPECTION_CACHE_ENTRIES: usize = 100_000;

/// Client authentication towards an introspection endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionAuth {
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A client-credentials access token from the token endpoint.
    Bearer,
}

/// `tenants[].introspection:` settings.
#[derive(Debug, Clone)]
pub struct IntrospectionSettings {
    /// Endpoint; `None`: `introspection_endpoint` from the metadata.
    pub endpoint: Option<String>,
    /// Token endpoint for `bearer`; `None`: `token_endpoint` from the metadata.
    pub token_endpoint: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client secret, read from the environment at start-up.
    pub client_secret: Secret,
    /// Authentication method.
    pub auth: IntrospectionAuth,
    /// Scope requested with the client-credentials grant (`bearer`).
    pub scope: Option<String>,
    /// Longest life of a cached active answer.
    pub cache_ttl: Duration,
    /// Life of a cached inactive answer.
    pub negative_cache_ttl: Duration,
    /// Cap on cached answers.
    pub cache_entries: usize,
    /// Cap on concurrent upstream calls.
    pub max_concurrency: usize,
}

/// `tenants[].introspection:` as written: the secret is named by a variable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of introspection keys")]
pub(super) struct IntrospectionFile {
    endpoint: Option<String>,
    token_endpoint: Option<String>,
    client_id: String,
    client_secret_env: String,
    auth: Option<String>,
    scope: Option<String>,
    #[serde(default = "default_cache_ttl", deserialize_with = "de::duration")]
    cache_ttl: Duration,
    #[serde(
        default = "default_negative_cache_ttl",
        deserialize_with = "de::duration"
    )]
    negative_cache_ttl: Duration,
    #[serde(default = "default_cache_entries")]
    cache_entries: usize,
    #[serde(default = "default_max_concurrency")]
    max_concurrency: usize,
}

fn default_cache_ttl() -> Duration {
    DEFAULT_CACHE_TTL
}

fn default_negative_cache_ttl() -> Duration {
    DEFAULT_NEGATIVE_CACHE_TTL
}

fn default_cache_entries() -> usize {
    DEFAULT_INTROSPECTION_CACHE_ENTRIES
}

fn default_max_concurrency() -> usize {
    DEFAULT_INTROSPECTION_MAX_CONCURRENCY
}

/// Checks the section and reads the client secret from the environment.
pub(super) fn resolve(
    key: &str,
    i: IntrospectionFile,
    keys: &KeySource,
    require_https: bool,
    env: EnvLookup<'_>,
) -> Result<IntrospectionSettings, ConfigError> {
    if let Some(e) = &i.endpoint {
        check_url(&format!("{key}.endpoint"), e, require_https)?;
    }
    if let Some(e) = &i.token_endpoint {
        check_url(&format!("{key}.token_endpoint"), e, require_https)?;
    }
    let auth = match i.auth.as_deref() {
        None | Some("client_secret_basic") => IntrospectionAuth::ClientSecretBasic,
        Some("client_secret_post") => IntrospectionAuth::ClientSecretPost,
        Some("bearer") => IntrospectionAuth::Bearer,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{key}.auth"),
                format!("`{other}` is not one of client_secret_basic, client_secret_post, bearer"),
            ));
        }
    };
    if i.client_id.is_empty() {
        return Err(ConfigError::new(
            format!("{key}.client_id"),
            "must not be empty",
        ));
    }
    let secret = env(&i.client_secret_env).ok_or_else(|| {
        ConfigError::new(
            format!("{key}.client_secret_env"),
            format!("environment variable {} is not set", i.client_secret_env),
        )
    })?;
    if i.max_concurrency == 0 {
        return Err(ConfigError::new(
            format!("{key}.max_concurrency"),
            "must be greater than 0",
        ));
    }
    let settings = IntrospectionSettings {
        endpoint: i.endpoint,
        token_endpoint: i.token_endpoint,
        client_id: i.client_id,
        client_secret: Secret::new(secret.into_bytes()),
        auth,
        scope: i.scope,
        cache_ttl: i.cache_ttl,
        negative_cache_ttl: i.negative_cache_ttl,
        cache_entries: i.cache_entries,
        max_concurrency: i.max_concurrency,
    };
    check_endpoints(key, &settings, keys)?;
    Ok(settings)
}

/// Without discovery metadata (HMAC, `jwks_file`), nothing can name the endpoints, so the
/// configuration has to.
fn check_endpoints(
    key: &str,
    i: &IntrospectionSettings,
    keys: &KeySource,
) -> Result<(), ConfigError> {
    if keys.has_metadata() {
        return Ok(());
    }
    let why = "is required when the tenant's keys do not come from discovery metadata";
    if i.endpoint.is_none() {
        return Err(ConfigError::new(format!("{key}.endpoint"), why));
    }
    if i.auth == IntrospectionAuth::Bearer && i.token_endpoint.is_none() {
        return Err(ConfigError::new(format!("{key}.token_endpoint"), why));
    }
    Ok(())
}
