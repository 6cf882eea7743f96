//! Typed configuration: the YAML file described by `config.example.yaml`, `INTROSPECTD_*`
//! environment overrides, defaults as named constants, and validation errors that name
//! the offending key.
//!
//! Loading reads the file into a YAML document, applies the overrides (`env`), drops
//! `null` values (they mean "not set"), and deserializes it with
//! [`serde_path_to_error`], so a type error or an unknown key is reported at its dotted
//! path. Sections whose keys map one to one onto settings ([`ServerSettings`]) are
//! deserialized directly, their defaults in one `Default`; tenants are then resolved one
//! decision at a time (`tenant`): `defaults:` merged in, secrets read from the
//! environment, and every rule between keys checked. Each failure is a [`ConfigError`]
//! whose `key` is the path an operator would edit (`tenants[2].clock_skew`).
//!
//! One file per section (`ext_authz:` is `ext_authz`). To add a top-level section
//! (`shared_state:`), give it a file with its settings type (`#[derive(Deserialize)]` with
//! `#[serde(default, deny_unknown_fields)]`, a `Default` built from its `DEFAULT_*`
//! constants, durations through `de::duration`, and a `validated(self)` for rules
//! between keys), then one field in `File`, one in [`Settings`] and one line in
//! `File::resolve`; environment overrides reach it without more (their roots are
//! `File`'s keys). A key of an existing section is one field of its type. A per-tenant
//! section or key (`introspection:`) is one field of `tenant::TenantFile`, one of
//! [`TenantSettings`] (with its default in `TenantSettings::new`) and one line in
//! `tenant::resolve`; a policy key (also allowed under `defaults:`) is one field of the
//! `with_policy_keys!` list in `policy`, and so is a per-tenant section `defaults:` may
//! hold too (`sender_constraint:`, merged key by key in its own file).
//!
//! A `null` value means "not set" everywhere (`de::drop_nulls`), so a new key gets that
//! for free; a new key without a default joins `de::KEYS_WITHOUT_DEFAULT` so that its
//! `null` is reported at the key itself.

mod admin;
mod de;
mod env;
mod ext_authz;
mod introspection;
mod key_source;
mod policy;
mod sender_constraint;
mod server;
mod shared_state;
mod tenant;
mod token_cache;

use std::{fmt, path::Path};

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

pub use admin::{AdminAuthSettings, check_exposure as check_admin_exposure};
pub use de::{MAX_DURATION, MAX_LONG_DURATION};
pub use env::{ENV_PREFIX, env_overrides};
pub use ext_authz::{
    DEFAULT_CLAIMS_HEADER, DEFAULT_HEADERS, DEFAULT_TOKEN_HEADER, ExtAuthzSettings, HeaderMapping,
};
pub use introspection::{
    DEFAULT_CACHE_TTL, DEFAULT_INTROSPECTION_CACHE_ENTRIES, DEFAULT_INTROSPECTION_MAX_CONCURRENCY,
    DEFAULT_NEGATIVE_CACHE_TTL, IntrospectionAuth, IntrospectionSettings,
};
pub use key_source::{
    B2cSettings, DEFAULT_POLICY_CLAIMS, KeySource, MIN_HMAC_SECRET_BYTES, POLICY_PLACEHOLDER,
};
pub use policy::{
    DEFAULT_ALGORITHMS, DEFAULT_CLOCK_SKEW, DEFAULT_FETCH_TIMEOUT, DEFAULT_REFRESH_INTERVAL,
    DEFAULT_REPLAY_CACHE_ENTRIES, DEFAULT_REQUIRED_CLAIMS, DEFAULT_UNKNOWN_KID_COOLDOWN,
    MAX_REPLAY_CACHE_ENTRIES, MIN_UNKNOWN_KID_COOLDOWN, RefreshSettings, ValidationPolicy,
};
pub use sender_constraint::{
    DEFAULT_DPOP_ALGORITHMS, DEFAULT_DPOP_MAX_AGE, DEFAULT_DPOP_NONCE_WINDOW, DEFAULT_SENDER_MODE,
    DpopNonceSettings, MAX_DPOP_MAX_AGE, MAX_DPOP_NONCE_WINDOW, MIN_DPOP_NONCE_SECRET_BYTES,
    SenderConstraintSettings,
};
pub use server::{
    DEFAULT_CONCURRENCY_LIMIT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_LISTEN, DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_CONNECTION_AGE_GRACE, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_TOKEN_BYTES, DEFAULT_MAX_WATCHERS, DEFAULT_MAX_WATCHERS_PER_CONNECTION,
    DEFAULT_MAX_WATCHERS_PER_PEER, DEFAULT_METRICS_LISTEN, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_TLS_HANDSHAKE_TIMEOUT, DEFAULT_TLS_RELOAD_INTERVAL,
    ServerSettings, TlsSettings,
};
pub use shared_state::{
    DEFAULT_KEY_PREFIX, DEFAULT_OP_TIMEOUT, MAX_KEY_PREFIX_BYTES, MAX_OP_TIMEOUT,
    MIN_INTEGRITY_KEY_BYTES, OnUnavailable, REPLICA_NAME_ENV, RedisEndpoints, SharedStateSettings,
};
pub use tenant::{ANY_TENANT_ID, AllowedTenantIds, TenantSettings};
pub use token_cache::{
    DEFAULT_TOKEN_CACHE_MAX_BYTES, DEFAULT_TOKEN_CACHE_MAX_ENTRIES, DEFAULT_TOKEN_CACHE_MAX_TTL,
    DEFAULT_TOKEN_CACHE_NEGATIVE_TTL, TokenCacheSettings,
};

/// Placeholder for the Entra ID tenant id in an issuer.
pub const TENANT_ID_PLACEHOLDER: &str = "{tenantid}";

/// A configuration problem, naming the key an operator has to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration at `{key}`: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `tenants[0].issuer`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A secret value whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    /// The secret bytes; callers must not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([redacted; {} bytes])", self.0.len())
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Listener and limits.
    pub server: ServerSettings,
    /// Every trusted tenant, in file order.
    pub tenants: Vec<TenantSettings>,
    /// State shared by a fleet of replicas (Redis); `None`: everything per replica.
    pub shared_state: Option<SharedStateSettings>,
    /// The verified-token cache.
    pub token_cache: TokenCacheSettings,
    /// Envoy external authorization (`ext_authz:`).
    pub ext_authz: ExtAuthzSettings,
}

/// The file as written: one field per top-level section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of configuration sections")]
struct File {
    #[serde(default)]
    server: ServerSettings,
    #[serde(default)]
    defaults: policy::PolicyFile,
    #[serde(default)]
    tenants: Vec<tenant::TenantFile>,
    shared_state: Option<shared_state::SharedStateFile>,
    #[serde(default)]
    token_cache: TokenCacheSettings,
    #[serde(default)]
    ext_authz: ext_authz::ExtAuthzFile,
}

impl File {
    fn resolve(self, env: EnvLookup<'_>) -> Result<Settings, ConfigError> {
        let server = self.server.validated()?;
        policy::check_defaults(&self.defaults)?;
        let tenants = tenant::resolve_all(self.tenants, &self.defaults, env)?;
        admin::check_tenant(&server, &tenants)?;
        let is_tenant = |id: &str| tenants.iter().any(|t| t.id == id);
        let ext_authz = ext_authz::resolve(self.ext_authz, &is_tenant)?;
        Ok(Settings {
            server,
            tenants,
            shared_state: self.shared_state.map(|s| s.resolve(env)).transpose()?,
            token_cache: self.token_cache.validated()?,
            ext_authz,
        })
    }
}

/// Looks up an environment variable that holds a secret.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads, overrides from the process environment, and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
    })?;
    load_str(&text, &|name| std::env::var(name).ok(), &env_overrides())
}

/// Parses YAML text, applies `overrides` (`INTROSPECTD_SERVER__LISTEN`-style pairs) and
/// resolves it; `env` looks up the variables that hold secrets.
pub fn load_str(
    text: &str,
    env: EnvLookup<'_>,
    overrides: &[(String, String)],
) -> Result<Settings, ConfigError> {
    let mut doc: Yaml = if text.trim().is_empty() {
        Yaml::Null
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let key = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "<file>".into());
            ConfigError::new(key, format!("not valid YAML: {e}"))
        })?
    };
    if doc.is_null() {
        doc = Yaml::Mapping(Default::default());
    }
    let roots = de::keys_of::<File>();
    for (name, value) in overrides {
        env::apply(&mut doc, name, value, roots)?;
    }
    de::drop_nulls(&mut doc);
    let file: File = serde_path_to_error::deserialize(doc).map_err(|e| {
        let key = display_path(&e.path().to_string());
        ConfigError::new(key, e.into_inner().to_string())
    })?;
    file.resolve(env)
}

fn display_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        "<root>".into()
    } else {
        path.to_string()
    }
}

/// Checks a configured URL: parseable, http(s) with a host, and https unless
/// `require_https` is off.
fn check_url(key: &str, url: &str, require_https: bool) -> Result<url::Url, ConfigError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| ConfigError::new(key, format!("`{url}` is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if !require_https => {}
        "http" => {
            return Err(ConfigError::new(
                key,
                format!(
                    "`{url}` is http but require_https is true (set require_https: false for a test provider)"
                ),
            ));
        }
        other => {
            return Err(ConfigError::new(
                key,
                format!("scheme `{other}` is not http(s)"),
            ));
        }
    }
    if parsed.host_str().is_none() {
        return Err(ConfigError::new(key, "URL has no host"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
