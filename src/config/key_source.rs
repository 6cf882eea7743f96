//! Where a tenant's verification keys come from: discovery metadata, one discovery
//! document per B2C policy, an HMAC secret from the environment, or a JWKS file; the
//! rules that choose exactly one, and the checks on each.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use super::{ConfigError, EnvLookup, Secret, TENANT_ID_PLACEHOLDER, check_url};

/// Placeholder for the B2C policy in a metadata address.
pub const POLICY_PLACEHOLDER: &str = "{policy}";
/// Default B2C policy claims, in order of preference.
pub const DEFAULT_POLICY_CLAIMS: [&str; 2] = ["tfp", "acr"];
/// Shortest HMAC secret accepted from `hmac_secret_env`, in bytes.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

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

impl KeySource {
    /// True when the keys come from discovery metadata (which may also name the
    /// introspection and token endpoints).
    pub fn has_metadata(&self) -> bool {
        matches!(self, KeySource::Discovery { .. } | KeySource::B2c(_))
    }
}

/// `tenants[].b2c:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of b2c keys")]
pub struct B2cSettings {
    /// Metadata address with `{policy}` in it.
    pub metadata_url: String,
    /// Allowed policies, as configured (compared case-insensitively).
    pub policies: Vec<String>,
    /// Claims read for the policy, first present wins.
    #[serde(default = "default_policy_claims")]
    pub policy_claims: Vec<String>,
}

fn default_policy_claims() -> Vec<String> {
    DEFAULT_POLICY_CLAIMS.map(String::from).to_vec()
}

/// A tenant's keys that decide where its verification keys come from, as written.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written<'a> {
    pub(super) issuer: &'a str,
    pub(super) metadata_url: Option<&'a str>,
    pub(super) b2c: Option<&'a B2cSettings>,
    pub(super) hmac_secret_env: Option<&'a str>,
    pub(super) hmac_secret_encoding: Option<&'a str>,
    pub(super) jwks_file: Option<&'a Path>,
}

fn has_hmac(algorithms: &[Algorithm]) -> bool {
    algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac)
}

/// The rules between the key-source keys, checked before any of them is read.
pub(super) fn check_choice(
    key: &str,
    t: Written<'_>,
    algorithms: &[Algorithm],
    algorithms_key: &str,
) -> Result<(), ConfigError> {
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
    if has_hmac(algorithms) && t.hmac_secret_env.is_none() {
        return Err(ConfigError::new(
            algorithms_key,
            "an HMAC algorithm (HS256/384/512) needs hmac_secret_env on this tenant",
        ));
    }
    if t.hmac_secret_encoding.is_some() && t.hmac_secret_env.is_none() {
        return Err(ConfigError::new(
            format!("{key}.hmac_secret_encoding"),
            "only applies together with hmac_secret_env",
        ));
    }
    if t.issuer.contains(TENANT_ID_PLACEHOLDER) && t.metadata_url.is_none() {
        return Err(ConfigError::new(
            format!("{key}.metadata_url"),
            "is required when the issuer holds {tenantid}",
        ));
    }
    Ok(())
}

/// The key source a tenant names (after [`check_choice`]).
pub(super) fn resolve(
    key: &str,
    t: Written<'_>,
    algorithms: &[Algorithm],
    algorithms_key: &str,
    require_https: bool,
    env: EnvLookup<'_>,
) -> Result<KeySource, ConfigError> {
    if let Some(b2c) = t.b2c {
        check_b2c(&format!("{key}.b2c"), b2c, require_https)?;
        return Ok(KeySource::B2c(b2c.clone()));
    }
    if let Some(var) = t.hmac_secret_env {
        let secret = hmac_secret(key, t, var, algorithms, algorithms_key, env)?;
        return Ok(KeySource::Hmac { secret });
    }
    if let Some(path) = t.jwks_file {
        return Ok(KeySource::JwksFile {
            path: path.to_path_buf(),
        });
    }
    let (mkey, url) = match t.metadata_url {
        Some(u) => (format!("{key}.metadata_url"), u.to_string()),
        None => (
            format!("{key}.issuer"),
            format!(
                "{}/.well-known/openid-configuration",
                t.issuer.trim_end_matches('/')
            ),
        ),
    };
    check_url(&mkey, &url, require_https)?;
    Ok(KeySource::Discovery { metadata_url: url })
}

fn check_b2c(key: &str, b2c: &B2cSettings, require_https: bool) -> Result<(), ConfigError> {
    let mkey = format!("{key}.metadata_url");
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
            format!("{key}.policies"),
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
                format!("{key}.policies[{j}]"),
                "a policy name uses only letters, digits, '_', '-' and '.'",
            ));
        }
        if !seen.insert(p.to_ascii_lowercase()) {
            return Err(ConfigError::new(
                format!("{key}.policies[{j}]"),
                format!("duplicate policy `{p}` (names compare case-insensitively)"),
            ));
        }
    }
    if b2c.policy_claims.is_empty() {
        return Err(ConfigError::new(
            format!("{key}.policy_claims"),
            "must name at least one claim",
        ));
    }
    Ok(())
}

/// Reads and checks the secret in `var`: decoded as `hmac_secret_encoding` says, and as
/// long as the strongest HMAC algorithm allowed needs.
fn hmac_secret(
    key: &str,
    t: Written<'_>,
    var: &str,
    algorithms: &[Algorithm],
    algorithms_key: &str,
    env: EnvLookup<'_>,
) -> Result<Secret, ConfigError> {
    let skey = format!("{key}.hmac_secret_env");
    if !has_hmac(algorithms) {
        return Err(ConfigError::new(
            algorithms_key,
            "hmac_secret_env is set, so algorithms must include HS256, HS384 or HS512",
        ));
    }
    let value = env(var)
        .ok_or_else(|| ConfigError::new(&skey, format!("environment variable {var} is not set")))?;
    let bytes = match t.hmac_secret_encoding {
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
    let hmac_algorithms: Vec<&Algorithm> = algorithms
        .iter()
        .filter(|a| a.family() == AlgorithmFamily::Hmac)
        .collect();
    let needed = hmac_algorithms
        .iter()
        .map(|a| crate::keys::min_hmac_key_bytes(**a))
        .max()
        .unwrap_or(MIN_HMAC_SECRET_BYTES)
        .max(MIN_HMAC_SECRET_BYTES);
    if bytes.len() < needed {
        return Err(ConfigError::new(
            &skey,
            format!(
                "the secret in {var} is {} bytes; at least {needed} are required for {hmac_algorithms:?}",
                bytes.len(),
            ),
        ));
    }
    Ok(Secret::new(bytes))
}
