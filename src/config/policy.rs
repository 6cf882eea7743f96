//! The policy keys: the checks on every token (clock skew, algorithms, required claims,
//! types, lifetime, token kind, replay and its cache size) and the refresh schedule.
//! `defaults:` holds them, every tenant may override them; a tenant's value wins over
//! `defaults:`, which wins over the built-in constants, and an error names the key that
//! was actually written.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::ConfigError;
use crate::jwt::claims::{TokenKind, normalize_type};

/// Default clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Default period of the scheduled metadata and JWKS refresh.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(12 * 3600);
/// Shortest `refresh_interval` accepted.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Default minimum time between two unknown-kid refreshes of one key set.
pub const DEFAULT_UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// Shortest `unknown_kid_cooldown` accepted: anything shorter lets every unknown kid an
/// attacker makes up cause a fetch.
pub const MIN_UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(1);
/// Default timeout of one metadata, JWKS or introspection request.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default algorithm allow-list: every asymmetric algorithm, no HMAC.
pub const DEFAULT_ALGORITHMS: [Algorithm; 9] = crate::keys::ASYMMETRIC_ALGORITHMS;
/// Default required claims.
pub const DEFAULT_REQUIRED_CLAIMS: [&str; 1] = ["exp"];
/// Default cap on replay-detection entries per tenant (`replay_cache_entries`).
pub const DEFAULT_REPLAY_CACHE_ENTRIES: usize = 1_000_000;
/// Largest `replay_cache_entries` accepted (about 20 GB of entries at most).
pub const MAX_REPLAY_CACHE_ENTRIES: usize = 100_000_000;

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
    /// Most `(iss, jti)` entries the replay cache holds.
    pub replay_cache_entries: usize,
    /// What tokens are checked as when a request carries no nonce.
    pub token_kind: TokenKind,
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        Self {
            clock_skew: DEFAULT_CLOCK_SKEW,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            required_claims: DEFAULT_REQUIRED_CLAIMS.map(String::from).to_vec(),
            types: None,
            max_lifetime: None,
            replay_detection: false,
            replay_cache_entries: DEFAULT_REPLAY_CACHE_ENTRIES,
            token_kind: TokenKind::AccessToken,
        }
    }
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

impl Default for RefreshSettings {
    fn default() -> Self {
        Self {
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            unknown_kid_cooldown: DEFAULT_UNKNOWN_KID_COOLDOWN,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            require_https: true,
        }
    }
}

/// Declares a struct with the fields given plus every policy key (each optional, as
/// written), and its conversion into [`PolicyFile`]. serde's `flatten` would share the
/// keys without this, but cannot be combined with `deny_unknown_fields`, which is what
/// names a misspelt key. A new policy key is one field here.
macro_rules! with_policy_keys {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty,)*
            #[serde(default, deserialize_with = "crate::config::de::some_duration")]
            pub(super) clock_skew: Option<std::time::Duration>,
            #[serde(default, deserialize_with = "crate::config::de::some_duration")]
            pub(super) refresh_interval: Option<std::time::Duration>,
            #[serde(default, deserialize_with = "crate::config::de::some_duration")]
            pub(super) unknown_kid_cooldown: Option<std::time::Duration>,
            #[serde(default, deserialize_with = "crate::config::de::some_duration")]
            pub(super) fetch_timeout: Option<std::time::Duration>,
            #[serde(default)]
            pub(super) require_https: Option<bool>,
            #[serde(default)]
            pub(super) algorithms: Option<Vec<String>>,
            #[serde(default)]
            pub(super) required_claims: Option<Vec<String>>,
            #[serde(default)]
            pub(super) types: Option<Vec<String>>,
            #[serde(default, deserialize_with = "crate::config::de::some_long_duration")]
            pub(super) max_lifetime: Option<std::time::Duration>,
            #[serde(default)]
            pub(super) replay_detection: Option<bool>,
            #[serde(default)]
            pub(super) replay_cache_entries: Option<usize>,
            #[serde(default)]
            pub(super) token_kind: Option<String>,
        }

        impl From<&$name> for $crate::config::policy::PolicyFile {
            fn from(s: &$name) -> Self {
                Self {
                    clock_skew: s.clock_skew,
                    refresh_interval: s.refresh_interval,
                    unknown_kid_cooldown: s.unknown_kid_cooldown,
                    fetch_timeout: s.fetch_timeout,
                    require_https: s.require_https,
                    algorithms: s.algorithms.clone(),
                    required_claims: s.required_claims.clone(),
                    types: s.types.clone(),
                    max_lifetime: s.max_lifetime,
                    replay_detection: s.replay_detection,
                    replay_cache_entries: s.replay_cache_entries,
                    token_kind: s.token_kind.clone(),
                }
            }
        }
    };
}
pub(super) use with_policy_keys;

with_policy_keys! {
    /// `defaults:`, and the policy keys of one tenant, as written.
    #[derive(Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a mapping of policy keys")]
    pub(super) struct PolicyFile {}
}

/// The two layers of policy keys a tenant sees.
struct Layers<'a> {
    /// `tenants[i]`.
    tenant_key: &'a str,
    own: &'a PolicyFile,
    defaults: &'a PolicyFile,
}

impl Layers<'_> {
    /// The value that applies and the key that set it: the tenant's, else `defaults:`
    /// (an unset key is named on the tenant).
    fn pick<T: Clone>(
        &self,
        field: &str,
        get: impl Fn(&PolicyFile) -> &Option<T>,
    ) -> (String, Option<T>) {
        match (get(self.own), get(self.defaults)) {
            (Some(v), _) => (format!("{}.{field}", self.tenant_key), Some(v.clone())),
            (None, Some(v)) => (format!("defaults.{field}"), Some(v.clone())),
            (None, None) => (format!("{}.{field}", self.tenant_key), None),
        }
    }

    /// A duration that must be at least `min`; an error names the key that set it.
    fn at_least(
        &self,
        (field, get): (&str, fn(&PolicyFile) -> &Option<Duration>),
        default: Duration,
        (min, message): (Duration, &str),
    ) -> Result<Duration, ConfigError> {
        let (key, value) = self.pick(field, get);
        let value = value.unwrap_or(default);
        if value < min {
            return Err(ConfigError::new(key, message));
        }
        Ok(value)
    }

    fn value<T: Clone>(&self, get: impl Fn(&PolicyFile) -> &Option<T>) -> Option<T> {
        get(self.own).clone().or_else(|| get(self.defaults).clone())
    }
}

/// A tenant's policy keys resolved: the checks, the refresh schedule, and the key that
/// set `algorithms` (for the rules about HMAC secrets).
pub(super) struct ResolvedPolicy {
    pub(super) policy: ValidationPolicy,
    pub(super) refresh: RefreshSettings,
    pub(super) algorithms_key: String,
}

/// Checks `defaults:` on its own, so that a bad value there is named even while no
/// tenant uses it (the chart's default values have no tenants).
pub(super) fn check_defaults(defaults: &PolicyFile) -> Result<(), ConfigError> {
    resolve("defaults", &PolicyFile::default(), defaults).map(drop)
}

/// Merges a tenant's policy keys over `defaults:` over the built-in values.
pub(super) fn resolve(
    tenant_key: &str,
    own: &PolicyFile,
    defaults: &PolicyFile,
) -> Result<ResolvedPolicy, ConfigError> {
    let layers = Layers {
        tenant_key,
        own,
        defaults,
    };
    let refresh = refresh(&layers)?;
    let (algorithms_key, algorithms) = algorithms(&layers)?;
    let builtin = ValidationPolicy::default();
    let policy = ValidationPolicy {
        clock_skew: layers
            .value(|p| &p.clock_skew)
            .unwrap_or(builtin.clock_skew),
        algorithms,
        required_claims: layers
            .value(|p| &p.required_claims)
            .unwrap_or(builtin.required_claims),
        types: types(&layers)?,
        max_lifetime: layers.value(|p| &p.max_lifetime),
        replay_detection: layers
            .value(|p| &p.replay_detection)
            .unwrap_or(builtin.replay_detection),
        replay_cache_entries: replay_cache_entries(&layers)?,
        token_kind: token_kind(&layers)?,
    };
    Ok(ResolvedPolicy {
        policy,
        refresh,
        algorithms_key,
    })
}

fn refresh(layers: &Layers<'_>) -> Result<RefreshSettings, ConfigError> {
    let builtin = RefreshSettings::default();
    Ok(RefreshSettings {
        refresh_interval: layers.at_least(
            ("refresh_interval", |p| &p.refresh_interval),
            builtin.refresh_interval,
            (MIN_REFRESH_INTERVAL, "must be at least 1s"),
        )?,
        unknown_kid_cooldown: layers.at_least(
            ("unknown_kid_cooldown", |p| &p.unknown_kid_cooldown),
            builtin.unknown_kid_cooldown,
            (
                MIN_UNKNOWN_KID_COOLDOWN,
                "must be at least 1s (a shorter cooldown lets every made-up kid cause a fetch)",
            ),
        )?,
        fetch_timeout: layers.at_least(
            ("fetch_timeout", |p| &p.fetch_timeout),
            builtin.fetch_timeout,
            (Duration::from_nanos(1), "must be greater than 0"),
        )?,
        require_https: layers
            .value(|p| &p.require_https)
            .unwrap_or(builtin.require_https),
    })
}

/// The allow-list, without duplicates, and the key that set it.
fn algorithms(layers: &Layers<'_>) -> Result<(String, Vec<Algorithm>), ConfigError> {
    let (key, names) = layers.pick("algorithms", |p| &p.algorithms);
    let Some(names) = names else {
        return Ok((key, DEFAULT_ALGORITHMS.to_vec()));
    };
    let mut out = Vec::new();
    for n in &names {
        let alg = n.parse::<Algorithm>().map_err(|_| {
            ConfigError::new(
                &key,
                format!("`{n}` is not a supported algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"),
            )
        })?;
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    if out.is_empty() {
        return Err(ConfigError::new(&key, "must name at least one algorithm"));
    }
    Ok((key, out))
}

/// `replay_cache_entries`: 1 to [`MAX_REPLAY_CACHE_ENTRIES`].
fn replay_cache_entries(layers: &Layers<'_>) -> Result<usize, ConfigError> {
    let (key, value) = layers.pick("replay_cache_entries", |p| &p.replay_cache_entries);
    let n = value.unwrap_or(DEFAULT_REPLAY_CACHE_ENTRIES);
    if !(1..=MAX_REPLAY_CACHE_ENTRIES).contains(&n) {
        return Err(ConfigError::new(
            key,
            format!("must be between 1 and {MAX_REPLAY_CACHE_ENTRIES}"),
        ));
    }
    Ok(n)
}

/// `token_kind`: `access_token` (the default) or `id_token`.
fn token_kind(layers: &Layers<'_>) -> Result<TokenKind, ConfigError> {
    let (key, value) = layers.pick("token_kind", |p| &p.token_kind);
    match value.as_deref() {
        None | Some("access_token") => Ok(TokenKind::AccessToken),
        Some("id_token") => Ok(TokenKind::IdToken),
        Some(other) => Err(ConfigError::new(
            key,
            format!("`{other}` is not one of access_token, id_token"),
        )),
    }
}

/// `types`, normalised; a type with surrounding whitespace is refused, since a token's
/// `typ` is never trimmed and so could never match it.
fn types(layers: &Layers<'_>) -> Result<Option<Vec<String>>, ConfigError> {
    let (key, written) = layers.pick("types", |p| &p.types);
    if let Some(t) = written.iter().flatten().find(|t| t.trim() != t.as_str()) {
        return Err(ConfigError::new(
            key,
            format!("`{t}` has surrounding whitespace; a token's typ is compared without trimming"),
        ));
    }
    let types = written.map(|v| v.iter().map(|t| normalize_type(t)).collect::<Vec<_>>());
    if let Some(ts) = &types
        && (ts.is_empty() || ts.iter().any(|t| t.is_empty()))
    {
        return Err(ConfigError::new(
            key,
            "must list at least one non-empty type (remove the key to accept any)",
        ));
    }
    Ok(types)
}
