//! Typed configuration: the YAML file described by `config.example.yaml`, `INTROSPECTD_*`
//! environment overrides, defaults as named constants, and validation errors that name
//! the offending key.
//!
//! Loading happens in two steps. The file (plus overrides) is deserialized into `Raw*`
//! structs that reject unknown keys, with [`serde_path_to_error`] recording where a type
//! error happened. Those are then resolved into [`Settings`]: defaults merged into every
//! tenant, durations and algorithms parsed, secrets read from the environment, and every
//! cross-field rule checked. Each failure is a [`ConfigError`] whose `key` is the dotted
//! path an operator would edit (`tenants[2].clock_skew`).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

mod shared_state;

pub use shared_state::{
    DEFAULT_KEY_PREFIX, DEFAULT_OP_TIMEOUT, OnUnavailable, RedisEndpoints, SharedStateSettings,
};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";
/// Default Prometheus listen address.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9464";
/// Default cap on a token's size, in bytes, after stripping `Bearer `.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Default cap on concurrent `WatchKeys` streams.
pub const DEFAULT_MAX_WATCHERS: usize = 1024;
/// Default clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Default period of the scheduled metadata and JWKS refresh.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Default minimum time between two unknown-kid refreshes of one key set.
pub const DEFAULT_UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// Default timeout of one metadata, JWKS or introspection request.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default algorithm allow-list (asymmetric only).
pub const DEFAULT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
/// Default required claims.
pub const DEFAULT_REQUIRED_CLAIMS: [&str; 1] = ["exp"];
/// Default B2C policy claims, in order of preference.
pub const DEFAULT_POLICY_CLAIMS: [&str; 2] = ["tfp", "acr"];
/// Default lifetime of a cached active introspection answer.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default lifetime of a cached inactive introspection answer.
pub const DEFAULT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(10);
/// Default cap on concurrent upstream introspection calls per tenant.
pub const DEFAULT_INTROSPECTION_MAX_CONCURRENCY: usize = 64;
/// Default cap on cached introspection answers per tenant.
pub const DEFAULT_INTROSPECTION_CACHE_ENTRIES: usize = 100_000;
/// Shortest HMAC secret accepted from `hmac_secret_env`, in bytes.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Default time given to in-flight calls after shutdown begins.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Default cap on in-flight unary calls across all connections (0 = unlimited); calls
/// beyond it are answered RESOURCE_EXHAUSTED at once, never queued.
pub const DEFAULT_CONCURRENCY_LIMIT: usize = 1024;
/// Default deadline of one unary call.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default HTTP/2 keepalive ping interval.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default HTTP/2 keepalive ping timeout.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on a decoded gRPC message, in bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default time a connection past `max_connection_age` gets to finish its calls.
pub const DEFAULT_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
/// Default period at which the TLS certificate, key and client CA files are re-read.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Default bound on one TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on replay-detection entries per tenant.
pub const DEFAULT_REPLAY_CACHE_ENTRIES: usize = 1_000_000;
/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "INTROSPECTD_";

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
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listener and limits.
    pub server: ServerSettings,
    /// Every trusted tenant, in file order.
    pub tenants: Vec<TenantSettings>,
    /// State shared by a fleet of replicas (Redis); `None`: everything per replica.
    pub shared_state: Option<SharedStateSettings>,
}

/// `server:` settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus listen address; `None` turns metrics off.
    pub metrics_listen: Option<SocketAddr>,
    /// A plaintext listener serving only grpc.health.v1 (for kubelet gRPC probes when
    /// `tls` is on); `None`: none.
    pub health_listen: Option<SocketAddr>,
    /// Larger tokens are INVALID_ARGUMENT, never parsed.
    pub max_token_bytes: usize,
    /// Cap on concurrent `WatchKeys` streams.
    pub max_watchers: usize,
    /// Serve `introspect.v1.AdminService`.
    pub admin: bool,
    /// TLS on the gRPC listener; plaintext when `None`.
    pub tls: Option<TlsSettings>,
    /// In-flight unary calls, across all connections, beyond which a call is answered
    /// RESOURCE_EXHAUSTED at once (0: unlimited). Streams and health checks are exempt.
    pub concurrency_limit: usize,
    /// Deadline of one unary call.
    pub request_timeout: Duration,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    pub keepalive_timeout: Duration,
    /// Cap on one decoded gRPC message.
    pub max_message_bytes: usize,
    /// Connections older than this are asked to reconnect (GOAWAY); `None`: never.
    pub max_connection_age: Option<Duration>,
    /// Time a connection past its age gets to finish its calls before it is closed.
    pub max_connection_age_grace: Duration,
    /// Time in-flight calls get after shutdown begins.
    pub shutdown_grace: Duration,
}

/// `server.tls:` settings.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca_file: Option<PathBuf>,
    /// How often the three files are re-read; a change is applied without a restart.
    pub reload_interval: Duration,
    /// Bound on one TLS handshake; slower clients are disconnected.
    pub handshake_timeout: Duration,
}

/// The checks applied to every token of a tenant.
#[derive(Debug, Clone)]
pub struct ValidationPolicy {
    /// Tolerance on `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// Allowed `alg` values.
    pub algorithms: Vec<Algorithm>,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
    /// Accepted `typ` values, normalised (lower case, no `application/`); `None`: any.
    pub types: Option<Vec<String>>,
    /// Upper bound on `exp - iat`.
    pub max_lifetime: Option<Duration>,
    /// Reject a `jti` seen before.
    pub replay_detection: bool,
}

/// How and how often a tenant's keys are refreshed.
#[derive(Debug, Clone, Copy)]
pub struct RefreshSettings {
    /// Period of the scheduled refresh.
    pub refresh_interval: Duration,
    /// Minimum time between two unknown-kid refreshes.
    pub unknown_kid_cooldown: Duration,
    /// Timeout of one fetch, and bound on a caller waiting for a refresh.
    pub fetch_timeout: Duration,
    /// Metadata and keys only over https.
    pub require_https: bool,
}

/// Where a tenant's verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// OpenID Connect discovery document, then its `jwks_uri`.
    Discovery {
        /// Address of the discovery document.
        metadata_url: String,
    },
    /// Azure AD B2C: one discovery document per policy.
    B2c(B2cSettings),
    /// A shared secret from the environment (first-party HS256/384/512).
    Hmac {
        /// The secret bytes.
        secret: Secret,
    },
    /// Public keys from a JWKS file, re-read when it changes.
    JwksFile {
        /// Path of the file.
        path: PathBuf,
    },
    /// Public keys given in memory (the `--dev` issuer).
    Static {
        /// A JWKS document.
        jwks: serde_json::Value,
    },
}

/// `tenants[].b2c:` settings.
#[derive(Debug, Clone)]
pub struct B2cSettings {
    /// Metadata address with `{policy}` in it.
    pub metadata_url: String,
    /// Allowed policies, as configured (compared case-insensitively).
    pub policies: Vec<String>,
    /// Claims read for the policy, first present wins.
    pub policy_claims: Vec<String>,
}

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

/// One trusted tenant, with the defaults merged in.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Unique id, used in requests and metrics.
    pub id: String,
    /// The issuer; may hold `{tenantid}`.
    pub issuer: String,
    /// Audiences accepted when a request names none.
    pub audiences: Vec<String>,
    /// For `{tenantid}` issuers: allowed `tid` values (lower case); `None`: any GUID.
    pub allowed_tenant_ids: Option<Vec<String>>,
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

impl TenantSettings {
    /// True when `issuer` holds the `{tenantid}` placeholder.
    pub fn is_templated(&self) -> bool {
        self.issuer.contains(TENANT_ID_PLACEHOLDER)
    }
}

/// Placeholder for the Entra ID tenant id in an issuer.
pub const TENANT_ID_PLACEHOLDER: &str = "{tenantid}";
/// Placeholder for the B2C policy in a metadata address.
pub const POLICY_PLACEHOLDER: &str = "{policy}";

// ---------------------------------------------------------------------------------------
// Raw, as written in the file.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    defaults: RawPolicy,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    shared_state: Option<shared_state::RawSharedState>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    metrics_listen: Option<String>,
    health_listen: Option<String>,
    max_token_bytes: Option<usize>,
    max_watchers: Option<usize>,
    admin: Option<bool>,
    tls: Option<RawTls>,
    concurrency_limit: Option<usize>,
    request_timeout: Option<String>,
    keepalive_interval: Option<String>,
    keepalive_timeout: Option<String>,
    max_message_bytes: Option<usize>,
    max_connection_age: Option<String>,
    max_connection_age_grace: Option<String>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    reload_interval: Option<String>,
    handshake_timeout: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    clock_skew: Option<String>,
    refresh_interval: Option<String>,
    unknown_kid_cooldown: Option<String>,
    fetch_timeout: Option<String>,
    require_https: Option<bool>,
    algorithms: Option<Vec<String>>,
    required_claims: Option<Vec<String>>,
    types: Option<Vec<String>>,
    max_lifetime: Option<String>,
    replay_detection: Option<bool>,
}

// serde's `flatten` cannot be combined with `deny_unknown_fields`, so the policy keys a
// tenant may override are spelled out again here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    issuer: String,
    metadata_url: Option<String>,
    audiences: Option<Vec<String>>,
    allowed_tenant_ids: Option<Vec<String>>,
    explicit: Option<bool>,
    b2c: Option<RawB2c>,
    hmac_secret_env: Option<String>,
    hmac_secret_encoding: Option<String>,
    jwks_file: Option<PathBuf>,
    introspection: Option<RawIntrospection>,
    clock_skew: Option<String>,
    refresh_interval: Option<String>,
    unknown_kid_cooldown: Option<String>,
    fetch_timeout: Option<String>,
    require_https: Option<bool>,
    algorithms: Option<Vec<String>>,
    required_claims: Option<Vec<String>>,
    types: Option<Vec<String>>,
    max_lifetime: Option<String>,
    replay_detection: Option<bool>,
}

impl RawTenant {
    fn policy(&self) -> RawPolicy {
        RawPolicy {
            clock_skew: self.clock_skew.clone(),
            refresh_interval: self.refresh_interval.clone(),
            unknown_kid_cooldown: self.unknown_kid_cooldown.clone(),
            fetch_timeout: self.fetch_timeout.clone(),
            require_https: self.require_https,
            algorithms: self.algorithms.clone(),
            required_claims: self.required_claims.clone(),
            types: self.types.clone(),
            max_lifetime: self.max_lifetime.clone(),
            replay_detection: self.replay_detection,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawB2c {
    metadata_url: String,
    policies: Vec<String>,
    policy_claims: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    endpoint: Option<String>,
    token_endpoint: Option<String>,
    client_id: String,
    client_secret_env: String,
    auth: Option<String>,
    scope: Option<String>,
    cache_ttl: Option<String>,
    negative_cache_ttl: Option<String>,
    cache_entries: Option<usize>,
    max_concurrency: Option<usize>,
}

// ---------------------------------------------------------------------------------------
// Loading.

/// Reads, overrides from the process environment, and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
    })?;
    load_str(&text, &|name| std::env::var(name).ok(), &env_overrides())
}

/// Every `INTROSPECTD_*` variable of the process environment.
pub fn env_overrides() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

/// Parses YAML text, applies `overrides` (`INTROSPECTD_SERVER__LISTEN`-style pairs) and
/// resolves it; `env` looks up the variables that hold secrets.
pub fn load_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &[(String, String)],
) -> Result<Settings, ConfigError> {
    let mut doc: Yaml = if text.trim().is_empty() {
        Yaml::Mapping(Default::default())
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
    for (name, value) in overrides {
        apply_override(&mut doc, name, value)?;
    }
    let raw: RawConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
        let key = display_path(&e.path().to_string());
        ConfigError::new(key, e.into_inner().to_string())
    })?;
    resolve(raw, env)
}

fn display_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        "<root>".into()
    } else {
        path.to_string()
    }
}

/// Top-level keys an environment override may start with. Anything else under the
/// prefix (Kubernetes injects `INTROSPECTD_SERVICE_HOST` for a Service of that name) is
/// not configuration and is ignored.
const OVERRIDABLE_ROOTS: [&str; 4] = ["server", "defaults", "tenants", "shared_state"];

fn apply_override(doc: &mut Yaml, name: &str, value: &str) -> Result<(), ConfigError> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(());
    };
    let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if !OVERRIDABLE_ROOTS.contains(&segments[0].as_str()) || segments.len() < 2 {
        return Ok(());
    }
    let parsed = parse_override_value(value);
    let mut node = doc;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match node {
            Yaml::Sequence(seq) => {
                let idx: usize = seg.parse().map_err(|_| {
                    ConfigError::new(name, format!("`{seg}` is not an index into a list"))
                })?;
                let len = seq.len();
                let slot = seq.get_mut(idx).ok_or_else(|| {
                    ConfigError::new(
                        name,
                        format!("index {idx} is past the end of a list of {len}"),
                    )
                })?;
                if last {
                    *slot = parsed.clone();
                    return Ok(());
                }
                node = slot;
            }
            Yaml::Mapping(map) => {
                let key = Yaml::String(seg.clone());
                if last {
                    map.insert(key, parsed.clone());
                    return Ok(());
                }
                if !map.contains_key(&key) {
                    let child = if segments[i + 1].parse::<usize>().is_ok() {
                        Yaml::Sequence(Vec::new())
                    } else {
                        Yaml::Mapping(Default::default())
                    };
                    map.insert(key.clone(), child);
                }
                node = map
                    .get_mut(&key)
                    .ok_or_else(|| ConfigError::new(name, "cannot apply override"))?;
            }
            Yaml::Null => {
                *node = Yaml::Mapping(Default::default());
                // Re-run this segment against the fresh mapping.
                return apply_override_from(node, &segments[i..], name, parsed);
            }
            _ => {
                return Err(ConfigError::new(
                    name,
                    format!("`{seg}` does not name a key inside a scalar value"),
                ));
            }
        }
    }
    Ok(())
}

fn apply_override_from(
    node: &mut Yaml,
    segments: &[String],
    name: &str,
    parsed: Yaml,
) -> Result<(), ConfigError> {
    let mut cur = node;
    for (i, seg) in segments.iter().enumerate() {
        let map = cur
            .as_mapping_mut()
            .ok_or_else(|| ConfigError::new(name, "cannot apply override"))?;
        let key = Yaml::String(seg.clone());
        if i + 1 == segments.len() {
            map.insert(key, parsed);
            return Ok(());
        }
        map.entry(key.clone())
            .or_insert_with(|| Yaml::Mapping(Default::default()));
        cur = map
            .get_mut(&key)
            .ok_or_else(|| ConfigError::new(name, "cannot apply override"))?;
    }
    Ok(())
}

/// Environment values are strings; lists, maps, booleans and integers are read as YAML so
/// that `INTROSPECTD_DEFAULTS__ALGORITHMS='[RS256]'` and `..._ADMIN=false` work, while
/// anything else (addresses, durations, URLs) stays a string.
fn parse_override_value(value: &str) -> Yaml {
    let t = value.trim();
    let structured = t.starts_with('[')
        || t.starts_with('{')
        || t == "true"
        || t == "false"
        || (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
    if structured && let Ok(v) = serde_yaml_ng::from_str::<Yaml>(t) {
        return v;
    }
    Yaml::String(value.to_string())
}

// ---------------------------------------------------------------------------------------
// Resolution and validation.

fn duration(key: &str, value: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) => parse_duration(key, s),
    }
}

fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        ConfigError::new(
            key,
            format!("`{s}` is not a duration like \"30s\" or \"5m\": {e}"),
        )
    })
}

fn opt_duration(key: &str, value: &Option<String>) -> Result<Option<Duration>, ConfigError> {
    value.as_deref().map(|s| parse_duration(key, s)).transpose()
}

fn socket_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    SocketAddr::from_str(s.trim())
        .map_err(|_| ConfigError::new(key, format!("`{s}` is not an address like 0.0.0.0:50051")))
}

/// Parses an algorithm name from the closed set jsonwebtoken supports.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Algorithm::from_str(name).ok()
}

/// Lower-cases a `typ` value and removes an `application/` prefix (RFC 7515 4.1.9).
pub fn normalize_type(typ: &str) -> String {
    let lower = typ.trim().to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

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

fn is_guid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

fn resolve(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
    let server = resolve_server(raw.server)?;
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    let mut ids = HashSet::new();
    for (i, t) in raw.tenants.into_iter().enumerate() {
        let key = format!("tenants[{i}]");
        if !ids.insert(t.id.clone()) {
            return Err(ConfigError::new(
                format!("{key}.id"),
                format!("duplicate tenant id `{}`", t.id),
            ));
        }
        tenants.push(resolve_tenant(&key, t, &raw.defaults, env)?);
    }
    check_shared_issuers(&tenants)?;
    let shared_state = raw
        .shared_state
        .map(|s| shared_state::resolve(s, env))
        .transpose()?;
    Ok(Settings {
        server,
        tenants,
        shared_state,
    })
}

fn resolve_server(s: RawServer) -> Result<ServerSettings, ConfigError> {
    let listen = socket_addr(
        "server.listen",
        s.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
    )?;
    let metrics_listen = match s.metrics_listen.as_deref() {
        None => Some(socket_addr(
            "server.metrics_listen",
            DEFAULT_METRICS_LISTEN,
        )?),
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some(socket_addr("server.metrics_listen", v)?),
    };
    let health_listen = match s.health_listen.as_deref() {
        None => None,
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some(socket_addr("server.health_listen", v)?),
    };
    let max_token_bytes = s.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if max_token_bytes == 0 {
        return Err(ConfigError::new(
            "server.max_token_bytes",
            "must be greater than 0",
        ));
    }
    let max_message_bytes = s
        .max_message_bytes
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES.max(max_token_bytes + 1024));
    if max_message_bytes < max_token_bytes {
        return Err(ConfigError::new(
            "server.max_message_bytes",
            "must be at least server.max_token_bytes",
        ));
    }
    let tls = s.tls.map(resolve_tls).transpose()?;
    Ok(ServerSettings {
        listen,
        metrics_listen,
        health_listen,
        max_token_bytes,
        max_watchers: s.max_watchers.unwrap_or(DEFAULT_MAX_WATCHERS),
        admin: s.admin.unwrap_or(true),
        tls,
        concurrency_limit: s.concurrency_limit.unwrap_or(DEFAULT_CONCURRENCY_LIMIT),
        request_timeout: duration(
            "server.request_timeout",
            &s.request_timeout,
            DEFAULT_REQUEST_TIMEOUT,
        )?,
        keepalive_interval: duration(
            "server.keepalive_interval",
            &s.keepalive_interval,
            DEFAULT_KEEPALIVE_INTERVAL,
        )?,
        keepalive_timeout: duration(
            "server.keepalive_timeout",
            &s.keepalive_timeout,
            DEFAULT_KEEPALIVE_TIMEOUT,
        )?,
        max_message_bytes,
        max_connection_age: opt_duration("server.max_connection_age", &s.max_connection_age)?,
        max_connection_age_grace: duration(
            "server.max_connection_age_grace",
            &s.max_connection_age_grace,
            DEFAULT_MAX_CONNECTION_AGE_GRACE,
        )?,
        shutdown_grace: duration(
            "server.shutdown_grace",
            &s.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
        )?,
    })
}

fn resolve_tls(t: RawTls) -> Result<TlsSettings, ConfigError> {
    let positive = |key: &str, value: &Option<String>, default: Duration| {
        let d = duration(key, value, default)?;
        if d.is_zero() {
            return Err(ConfigError::new(key, "must be greater than 0"));
        }
        Ok(d)
    };
    Ok(TlsSettings {
        cert_file: t.cert_file,
        key_file: t.key_file,
        client_ca_file: t.client_ca_file,
        reload_interval: positive(
            "server.tls.reload_interval",
            &t.reload_interval,
            DEFAULT_TLS_RELOAD_INTERVAL,
        )?,
        handshake_timeout: positive(
            "server.tls.handshake_timeout",
            &t.handshake_timeout,
            DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        )?,
    })
}

fn resolve_tenant(
    key: &str,
    t: RawTenant,
    defaults: &RawPolicy,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TenantSettings, ConfigError> {
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
    let own = t.policy();
    // A tenant value wins over `defaults:`, which wins over the built-in constants. The
    // key named in an error is the one that was actually written.
    let pick =
        |field: &str, tv: &Option<String>, dv: &Option<String>| -> (String, Option<String>) {
            if tv.is_some() {
                (format!("{key}.{field}"), tv.clone())
            } else {
                (format!("defaults.{field}"), dv.clone())
            }
        };
    let (k, v) = pick("clock_skew", &own.clock_skew, &defaults.clock_skew);
    let clock_skew = duration(&k, &v, DEFAULT_CLOCK_SKEW)?;
    let (k, v) = pick(
        "refresh_interval",
        &own.refresh_interval,
        &defaults.refresh_interval,
    );
    let refresh_interval = duration(&k, &v, DEFAULT_REFRESH_INTERVAL)?;
    if refresh_interval < Duration::from_secs(1) {
        return Err(ConfigError::new(k, "must be at least 1s"));
    }
    let (k, v) = pick(
        "unknown_kid_cooldown",
        &own.unknown_kid_cooldown,
        &defaults.unknown_kid_cooldown,
    );
    let unknown_kid_cooldown = duration(&k, &v, DEFAULT_UNKNOWN_KID_COOLDOWN)?;
    let (k, v) = pick("fetch_timeout", &own.fetch_timeout, &defaults.fetch_timeout);
    let fetch_timeout = duration(&k, &v, DEFAULT_FETCH_TIMEOUT)?;
    if fetch_timeout.is_zero() {
        return Err(ConfigError::new(k, "must be greater than 0"));
    }
    let (k, v) = pick("max_lifetime", &own.max_lifetime, &defaults.max_lifetime);
    let max_lifetime = opt_duration(&k, &v)?;
    let require_https = own.require_https.or(defaults.require_https).unwrap_or(true);
    let replay_detection = own
        .replay_detection
        .or(defaults.replay_detection)
        .unwrap_or(false);

    let (alg_key, alg_names) = match (&own.algorithms, &defaults.algorithms) {
        (Some(a), _) => (format!("{key}.algorithms"), Some(a.clone())),
        (None, Some(a)) => ("defaults.algorithms".to_string(), Some(a.clone())),
        (None, None) => (format!("{key}.algorithms"), None),
    };
    let algorithms = match alg_names {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(names) => {
            let mut out = Vec::new();
            for n in &names {
                let alg = parse_algorithm(n).ok_or_else(|| {
                    ConfigError::new(
                        &alg_key,
                        format!("`{n}` is not a supported algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"),
                    )
                })?;
                if !out.contains(&alg) {
                    out.push(alg);
                }
            }
            if out.is_empty() {
                return Err(ConfigError::new(
                    &alg_key,
                    "must name at least one algorithm",
                ));
            }
            out
        }
    };
    let required_claims = own
        .required_claims
        .clone()
        .or_else(|| defaults.required_claims.clone())
        .unwrap_or_else(|| {
            DEFAULT_REQUIRED_CLAIMS
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
    let types = own
        .types
        .clone()
        .or_else(|| defaults.types.clone())
        .map(|v| v.iter().map(|t| normalize_type(t)).collect::<Vec<_>>());
    if let Some(ts) = &types
        && (ts.is_empty() || ts.iter().any(|t| t.is_empty()))
    {
        return Err(ConfigError::new(
            format!("{key}.types"),
            "must list at least one non-empty type (remove the key to accept any)",
        ));
    }

    let templated = t.issuer.contains(TENANT_ID_PLACEHOLDER);
    let has_hmac_alg = algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac);
    let sources = [
        t.b2c.is_some(),
        t.hmac_secret_env.is_some(),
        t.jwks_file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources > 1 {
        return Err(ConfigError::new(
            key,
            "choose one of b2c, hmac_secret_env and jwks_file",
        ));
    }
    if t.metadata_url.is_some() && sources > 0 {
        return Err(ConfigError::new(
            format!("{key}.metadata_url"),
            "cannot be combined with b2c, hmac_secret_env or jwks_file",
        ));
    }
    if has_hmac_alg && t.hmac_secret_env.is_none() {
        return Err(ConfigError::new(
            &alg_key,
            "an HMAC algorithm (HS256/384/512) needs hmac_secret_env on this tenant",
        ));
    }
    if t.hmac_secret_encoding.is_some() && t.hmac_secret_env.is_none() {
        return Err(ConfigError::new(
            format!("{key}.hmac_secret_encoding"),
            "only applies together with hmac_secret_env",
        ));
    }
    if templated && t.metadata_url.is_none() {
        return Err(ConfigError::new(
            format!("{key}.metadata_url"),
            "is required when the issuer holds {tenantid}",
        ));
    }
    if t.allowed_tenant_ids.is_some() && !templated {
        return Err(ConfigError::new(
            format!("{key}.allowed_tenant_ids"),
            "only applies to an issuer that holds {tenantid}",
        ));
    }
    let allowed_tenant_ids = match &t.allowed_tenant_ids {
        None => None,
        Some(ids) => {
            let mut out = Vec::new();
            for (j, id) in ids.iter().enumerate() {
                if !is_guid(id) {
                    return Err(ConfigError::new(
                        format!("{key}.allowed_tenant_ids[{j}]"),
                        format!("`{id}` is not a GUID"),
                    ));
                }
                out.push(id.to_ascii_lowercase());
            }
            Some(out)
        }
    };

    let keys = if let Some(b2c) = &t.b2c {
        let mkey = format!("{key}.b2c.metadata_url");
        if !b2c.metadata_url.contains(POLICY_PLACEHOLDER) {
            return Err(ConfigError::new(mkey, "must contain {policy}"));
        }
        check_url(
            &mkey,
            &b2c.metadata_url.replace(POLICY_PLACEHOLDER, "p"),
            require_https,
        )?;
        if b2c.policies.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.b2c.policies"),
                "must list at least one policy",
            ));
        }
        let mut seen = HashSet::new();
        for (j, p) in b2c.policies.iter().enumerate() {
            let ok = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(ConfigError::new(
                    format!("{key}.b2c.policies[{j}]"),
                    "a policy name uses only letters, digits, '_', '-' and '.'",
                ));
            }
            if !seen.insert(p.to_ascii_lowercase()) {
                return Err(ConfigError::new(
                    format!("{key}.b2c.policies[{j}]"),
                    format!("duplicate policy `{p}` (names compare case-insensitively)"),
                ));
            }
        }
        let policy_claims = b2c.policy_claims.clone().unwrap_or_else(|| {
            DEFAULT_POLICY_CLAIMS
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        if policy_claims.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.b2c.policy_claims"),
                "must name at least one claim",
            ));
        }
        KeySource::B2c(B2cSettings {
            metadata_url: b2c.metadata_url.clone(),
            policies: b2c.policies.clone(),
            policy_claims,
        })
    } else if let Some(var) = &t.hmac_secret_env {
        let skey = format!("{key}.hmac_secret_env");
        if !has_hmac_alg {
            return Err(ConfigError::new(
                &alg_key,
                "hmac_secret_env is set, so algorithms must include HS256, HS384 or HS512",
            ));
        }
        let value = env(var).ok_or_else(|| {
            ConfigError::new(&skey, format!("environment variable {var} is not set"))
        })?;
        let bytes = match t.hmac_secret_encoding.as_deref() {
            None | Some("raw") => value.into_bytes(),
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value.trim()))
                .map_err(|_| ConfigError::new(&skey, format!("{var} is not valid base64")))?,
            Some(other) => {
                return Err(ConfigError::new(
                    format!("{key}.hmac_secret_encoding"),
                    format!("`{other}` is not one of raw, base64"),
                ));
            }
        };
        let needed = algorithms
            .iter()
            .filter(|a| a.family() == AlgorithmFamily::Hmac)
            .map(|a| crate::keys::min_hmac_key_bytes(*a))
            .max()
            .unwrap_or(MIN_HMAC_SECRET_BYTES)
            .max(MIN_HMAC_SECRET_BYTES);
        if bytes.len() < needed {
            return Err(ConfigError::new(
                &skey,
                format!(
                    "the secret in {var} is {} bytes; at least {needed} are required for {:?}",
                    bytes.len(),
                    algorithms
                        .iter()
                        .filter(|a| a.family() == AlgorithmFamily::Hmac)
                        .collect::<Vec<_>>()
                ),
            ));
        }
        KeySource::Hmac {
            secret: Secret::new(bytes),
        }
    } else if let Some(path) = &t.jwks_file {
        KeySource::JwksFile { path: path.clone() }
    } else {
        let (mkey, url) = match &t.metadata_url {
            Some(u) => (format!("{key}.metadata_url"), u.clone()),
            None => (
                format!("{key}.issuer"),
                format!(
                    "{}/.well-known/openid-configuration",
                    t.issuer.trim_end_matches('/')
                ),
            ),
        };
        check_url(&mkey, &url, require_https)?;
        KeySource::Discovery { metadata_url: url }
    };
    if matches!(keys, KeySource::Discovery { .. } | KeySource::B2c(_)) && !templated {
        check_url(&format!("{key}.issuer"), &t.issuer, require_https)?;
    }

    let introspection = match t.introspection {
        None => None,
        Some(i) => Some(resolve_introspection(
            &format!("{key}.introspection"),
            i,
            require_https,
            env,
        )?),
    };
    if let Some(i) = &introspection {
        check_introspection_endpoints(&format!("{key}.introspection"), i, &keys)?;
    }

    Ok(TenantSettings {
        id: t.id,
        issuer: t.issuer,
        audiences: t.audiences.unwrap_or_default(),
        allowed_tenant_ids,
        explicit: t.explicit.unwrap_or(false),
        policy: ValidationPolicy {
            clock_skew,
            algorithms,
            required_claims,
            types,
            max_lifetime,
            replay_detection,
        },
        refresh: RefreshSettings {
            refresh_interval,
            unknown_kid_cooldown,
            fetch_timeout,
            require_https,
        },
        keys,
        introspection,
    })
}

fn resolve_introspection(
    key: &str,
    i: RawIntrospection,
    require_https: bool,
    env: &dyn Fn(&str) -> Option<String>,
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
    let cache_entries = i
        .cache_entries
        .unwrap_or(DEFAULT_INTROSPECTION_CACHE_ENTRIES);
    let max_concurrency = i
        .max_concurrency
        .unwrap_or(DEFAULT_INTROSPECTION_MAX_CONCURRENCY);
    if max_concurrency == 0 {
        return Err(ConfigError::new(
            format!("{key}.max_concurrency"),
            "must be greater than 0",
        ));
    }
    Ok(IntrospectionSettings {
        endpoint: i.endpoint,
        token_endpoint: i.token_endpoint,
        client_id: i.client_id,
        client_secret: Secret::new(secret.into_bytes()),
        auth,
        scope: i.scope,
        cache_ttl: duration(&format!("{key}.cache_ttl"), &i.cache_ttl, DEFAULT_CACHE_TTL)?,
        negative_cache_ttl: duration(
            &format!("{key}.negative_cache_ttl"),
            &i.negative_cache_ttl,
            DEFAULT_NEGATIVE_CACHE_TTL,
        )?,
        cache_entries,
        max_concurrency,
    })
}

/// Without discovery metadata (HMAC, `jwks_file`), nothing can name the endpoints, so the
/// configuration has to.
fn check_introspection_endpoints(
    key: &str,
    i: &IntrospectionSettings,
    keys: &KeySource,
) -> Result<(), ConfigError> {
    if matches!(keys, KeySource::Discovery { .. } | KeySource::B2c(_)) {
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

/// Several tenants may share an issuer only when a request's `tenant` tells them apart:
/// at most one of them may be routed by `iss` alone, the others must be `explicit`.
fn check_shared_issuers(tenants: &[TenantSettings]) -> Result<(), ConfigError> {
    let mut implicit: HashMap<&str, usize> = HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        if t.explicit {
            continue;
        }
        if let Some(first) = implicit.insert(t.issuer.as_str(), i) {
            return Err(ConfigError::new(
                format!("tenants[{i}].issuer"),
                format!(
                    "tenants `{}` and `{}` both trust `{}`, so a token could not be routed by its iss; \
                     set `explicit: true` on all but one of them (an explicit tenant is only used when a request names it)",
                    tenants[first].id, t.id, t.issuer
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(text: &str) -> Result<Settings, ConfigError> {
        load_str(text, &no_env, &[])
    }

    const EXAMPLE: &str = include_str!("../tests/fixtures/config.example.yaml");

    #[test]
    fn example_config_loads_with_its_secrets() {
        let env = |name: &str| match name {
            "FIRST_PARTY_JWT_SECRET" => Some("0123456789abcdef0123456789abcdef".to_string()),
            "INTROSPECTION_CLIENT_SECRET" => Some("s3cret".to_string()),
            _ => None,
        };
        let s = load_str(EXAMPLE, &env, &[]).expect("example loads");
        assert_eq!(s.tenants.len(), 5);
        assert_eq!(s.server.max_token_bytes, 16384);
        let demo = &s.tenants[0];
        assert_eq!(demo.policy.clock_skew, Duration::from_secs(60));
        assert_eq!(
            demo.refresh.refresh_interval,
            Duration::from_secs(12 * 3600)
        );
        assert!(
            matches!(&demo.keys, KeySource::Discovery { metadata_url } if metadata_url == "https://idp.example.com/.well-known/openid-configuration")
        );
        assert!(s.tenants[1].is_templated());
        assert!(matches!(s.tenants[2].keys, KeySource::B2c(_)));
        assert!(matches!(s.tenants[3].keys, KeySource::Hmac { .. }));
        assert_eq!(s.tenants[3].policy.algorithms, vec![Algorithm::HS256]);
        let intro = s.tenants[4].introspection.as_ref().expect("introspection");
        assert_eq!(intro.auth, IntrospectionAuth::ClientSecretBasic);
        assert_eq!(intro.negative_cache_ttl, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("server:\n  listen: 127.0.0.1:1\n  lisen: x\n").unwrap_err();
        assert_eq!(err.key, "server.lisen");
        assert!(err.message.contains("lisen"), "{err}");
        let err =
            load("tenants:\n  - id: a\n    issuer: https://a\n    clock_skw: 5s\n").unwrap_err();
        assert_eq!(err.key, "tenants[0].clock_skw");
        assert!(err.message.contains("clock_skw"), "{err}");
    }

    #[test]
    fn missing_issuer_is_named() {
        let err = load("tenants:\n  - id: a\n").unwrap_err();
        assert_eq!(err.key, "tenants[0]");
        assert!(err.message.contains("issuer"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = load("tenants:\n  - id: a\n    issuer: https://a\n    clock_skew: 5 parsecs\n")
            .unwrap_err();
        assert_eq!(err.key, "tenants[0].clock_skew");
        let err =
            load("defaults:\n  fetch_timeout: soon\ntenants:\n  - id: a\n    issuer: https://a\n")
                .unwrap_err();
        assert_eq!(err.key, "defaults.fetch_timeout");
    }

    #[test]
    fn duplicate_tenant_id_is_named() {
        let err =
            load("tenants:\n  - id: a\n    issuer: https://a\n  - id: a\n    issuer: https://b\n")
                .unwrap_err();
        assert_eq!(err.key, "tenants[1].id");
    }

    #[test]
    fn http_issuer_needs_require_https_false() {
        let err = load("tenants:\n  - id: a\n    issuer: http://a\n").unwrap_err();
        assert_eq!(err.key, "tenants[0].issuer");
        assert!(err.message.contains("require_https"));
        load("tenants:\n  - id: a\n    issuer: http://a\n    require_https: false\n")
            .expect("allowed");
        let err =
            load("tenants:\n  - id: a\n    issuer: https://a\n    metadata_url: http://a/m\n")
                .unwrap_err();
        assert_eq!(err.key, "tenants[0].metadata_url");
    }

    #[test]
    fn hmac_algorithm_without_secret_is_an_error() {
        let err = load("tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [HS256]\n")
            .unwrap_err();
        assert_eq!(err.key, "tenants[0].algorithms");
    }

    #[test]
    fn short_hmac_secret_is_an_error() {
        let env = |_: &str| Some("short".to_string());
        let err = load_str(
            "tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [HS256]\n    hmac_secret_env: S\n",
            &env,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "tenants[0].hmac_secret_env");
    }

    #[test]
    fn hs512_needs_a_64_byte_secret() {
        let env = |_: &str| Some("x".repeat(40));
        let err = load_str(
            "tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [HS512]\n    hmac_secret_env: S\n",
            &env,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "tenants[0].hmac_secret_env");
        assert!(err.message.contains("64"), "{err}");
    }

    #[test]
    fn none_algorithm_is_rejected() {
        let err = load("tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [none]\n")
            .unwrap_err();
        assert_eq!(err.key, "tenants[0].algorithms");
    }

    #[test]
    fn env_overrides_apply_and_unrelated_vars_are_ignored() {
        let overrides = vec![
            (
                "INTROSPECTD_SERVER__LISTEN".to_string(),
                "127.0.0.1:6000".to_string(),
            ),
            ("INTROSPECTD_SERVER__ADMIN".to_string(), "false".to_string()),
            (
                "INTROSPECTD_TENANTS__0__CLOCK_SKEW".to_string(),
                "5s".to_string(),
            ),
            (
                "INTROSPECTD_DEFAULTS__ALGORITHMS".to_string(),
                "[ES256]".to_string(),
            ),
            (
                "INTROSPECTD_SERVICE_HOST".to_string(),
                "10.0.0.1".to_string(),
            ),
        ];
        let s = load_str(
            "tenants:\n  - id: a\n    issuer: https://a\n",
            &no_env,
            &overrides,
        )
        .expect("loads");
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:6000");
        assert!(!s.server.admin);
        assert_eq!(s.tenants[0].policy.clock_skew, Duration::from_secs(5));
        assert_eq!(s.tenants[0].policy.algorithms, vec![Algorithm::ES256]);
    }

    #[test]
    fn env_override_of_unknown_key_is_named() {
        let overrides = vec![("INTROSPECTD_SERVER__LISTN".to_string(), "x".to_string())];
        let err = load_str("", &no_env, &overrides).unwrap_err();
        assert!(err.message.contains("listn"), "{err}");
    }

    #[test]
    fn shared_issuer_needs_explicit_tenants() {
        let two = "tenants:\n  - id: a\n    issuer: https://a\n  - id: b\n    issuer: https://a\n";
        let err = load(two).unwrap_err();
        assert_eq!(err.key, "tenants[1].issuer");
        let ok = "tenants:\n  - id: a\n    issuer: https://a\n  - id: b\n    issuer: https://a\n    explicit: true\n";
        load(ok).expect("explicit tenant may share");
    }

    #[test]
    fn types_are_normalised() {
        let s = load(
            "tenants:\n  - id: a\n    issuer: https://a\n    types: [application/AT+JWT, JWT]\n",
        )
        .expect("loads");
        assert_eq!(
            s.tenants[0].policy.types,
            Some(vec!["at+jwt".to_string(), "jwt".to_string()])
        );
    }

    #[test]
    fn tls_settings_have_defaults_and_named_errors() {
        let s =
            load("server:\n  tls:\n    cert_file: /c.pem\n    key_file: /k.pem\n").expect("loads");
        let tls = s.server.tls.expect("tls");
        assert_eq!(tls.reload_interval, DEFAULT_TLS_RELOAD_INTERVAL);
        assert_eq!(tls.handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT);
        assert!(tls.client_ca_file.is_none());
        assert_eq!(
            s.server.max_connection_age_grace,
            DEFAULT_MAX_CONNECTION_AGE_GRACE
        );
        let s = load(
            "server:\n  tls:\n    cert_file: /c\n    key_file: /k\n    client_ca_file: /ca\n    reload_interval: 1s\n    handshake_timeout: 2s\n",
        )
        .expect("loads");
        let tls = s.server.tls.expect("tls");
        assert_eq!(tls.reload_interval, Duration::from_secs(1));
        assert_eq!(tls.handshake_timeout, Duration::from_secs(2));
        assert_eq!(tls.client_ca_file.as_deref(), Some(Path::new("/ca")));
        let err =
            load("server:\n  tls:\n    cert_file: /c\n    key_file: /k\n    reload_interval: 0s\n")
                .unwrap_err();
        assert_eq!(err.key, "server.tls.reload_interval");
        let err = load(
            "server:\n  tls:\n    cert_file: /c\n    key_file: /k\n    handshake_timeout: soon\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "server.tls.handshake_timeout");
        let err = load("server:\n  tls:\n    key_file: /k\n").unwrap_err();
        assert_eq!(err.key, "server.tls");
        assert!(err.message.contains("cert_file"), "{err}");
    }

    #[test]
    fn introspection_without_metadata_needs_its_endpoints() {
        let env = |_: &str| Some("0123456789abcdef0123456789abcdef".to_string());
        let base = "tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [HS256]\n    hmac_secret_env: S\n    introspection:\n      client_id: c\n      client_secret_env: C\n";
        let err = load_str(base, &env, &[]).unwrap_err();
        assert_eq!(err.key, "tenants[0].introspection.endpoint");
        let bearer = format!("{base}      endpoint: https://a/introspect\n      auth: bearer\n");
        let err = load_str(&bearer, &env, &[]).unwrap_err();
        assert_eq!(err.key, "tenants[0].introspection.token_endpoint");
        load_str(
            &format!("{bearer}      token_endpoint: https://a/token\n"),
            &env,
            &[],
        )
        .expect("both named");
        let discovery = "tenants:\n  - id: a\n    issuer: https://a\n    introspection:\n      client_id: c\n      client_secret_env: C\n      auth: bearer\n";
        load_str(discovery, &env, &[]).expect("metadata may name both");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new(b"hunter2hunter2".to_vec());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
