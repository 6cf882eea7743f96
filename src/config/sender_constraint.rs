//! The `sender_constraint:` section of a tenant (or of `defaults:`, which every tenant
//! inherits key by key): DPoP and certificate binding (SENDER_CONSTRAINED.md).

use std::{fmt, time::Duration};

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use super::{ConfigError, Secret};
use crate::jwt::dpop::Mode;

/// Default `sender_constraint.mode`.
pub const DEFAULT_SENDER_MODE: Mode = Mode::Optional;
/// Default `sender_constraint.dpop_algorithms`.
pub const DEFAULT_DPOP_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::ES256, Algorithm::PS256, Algorithm::EdDSA];
/// Default `sender_constraint.dpop_max_age`.
pub const DEFAULT_DPOP_MAX_AGE: Duration = Duration::from_secs(60);
/// Longest `dpop_max_age` accepted (a proof is a one-request credential).
pub const MAX_DPOP_MAX_AGE: Duration = Duration::from_secs(600);
/// Default `sender_constraint.dpop_nonce_window`: a nonce is valid for this window and
/// the next, so between one and two of them.
pub const DEFAULT_DPOP_NONCE_WINDOW: Duration = Duration::from_secs(60);
/// Shortest nonce secret accepted, in bytes.
pub const MIN_DPOP_NONCE_SECRET_BYTES: usize = 32;

/// The section as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSenderConstraint {
    mode: Option<String>,
    dpop_algorithms: Option<Vec<String>>,
    dpop_max_age: Option<String>,
    dpop_nonce: Option<bool>,
    dpop_nonce_secret_env: Option<String>,
    dpop_nonce_window: Option<String>,
}

/// Server-issued DPoP nonces.
#[derive(Clone)]
pub struct DpopNonceSettings {
    /// The HMAC secret (from `dpop_nonce_secret_env`); the same on every replica.
    pub secret: Secret,
    /// `dpop_nonce_window`.
    pub window: Duration,
}

impl fmt::Debug for DpopNonceSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopNonceSettings")
            .field("secret", &self.secret)
            .field("window", &self.window)
            .finish()
    }
}

/// A tenant's sender-constraint policy.
#[derive(Debug, Clone)]
pub struct SenderConstraintSettings {
    /// `mode`: off, optional (default), required.
    pub mode: Mode,
    /// `dpop_algorithms`: asymmetric only (default ES256, PS256, EdDSA).
    pub dpop_algorithms: Vec<Algorithm>,
    /// `dpop_max_age`: how old a proof's `iat` may be (default 60s).
    pub dpop_max_age: Duration,
    /// `dpop_nonce: true`: the nonce secret and window; `None` when off (default).
    pub dpop_nonce: Option<DpopNonceSettings>,
}

impl Default for SenderConstraintSettings {
    fn default() -> Self {
        Self {
            mode: DEFAULT_SENDER_MODE,
            dpop_algorithms: DEFAULT_DPOP_ALGORITHMS.to_vec(),
            dpop_max_age: DEFAULT_DPOP_MAX_AGE,
            dpop_nonce: None,
        }
    }
}

/// Picks the tenant's value of a key, else the default's, naming the key written.
fn pick<'a, T>(
    key: &str,
    field: &str,
    own: Option<&'a RawSenderConstraint>,
    defaults: Option<&'a RawSenderConstraint>,
    get: impl Fn(&'a RawSenderConstraint) -> Option<&'a T>,
) -> (String, Option<&'a T>) {
    if let Some(v) = own.and_then(&get) {
        return (format!("{key}.sender_constraint.{field}"), Some(v));
    }
    match defaults.and_then(&get) {
        Some(v) => (format!("defaults.sender_constraint.{field}"), Some(v)),
        None => (format!("{key}.sender_constraint.{field}"), None),
    }
}

fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| ConfigError::new(key, format!("`{s}` is not a duration like \"30s\": {e}")))
}

fn parse_mode(key: &str, s: &str) -> Result<Mode, ConfigError> {
    match s.trim() {
        "off" => Ok(Mode::Off),
        "optional" => Ok(Mode::Optional),
        "required" => Ok(Mode::Required),
        other => Err(ConfigError::new(
            key,
            format!("`{other}` is not one of off, optional, required"),
        )),
    }
}

fn parse_algorithms(key: &str, names: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    let mut out = Vec::new();
    for n in names {
        let alg = super::parse_algorithm(n.trim()).ok_or_else(|| {
            ConfigError::new(
                key,
                format!("`{n}` is not a supported algorithm (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"),
            )
        })?;
        if alg.family() == AlgorithmFamily::Hmac {
            return Err(ConfigError::new(
                key,
                format!("`{n}` is symmetric; a DPoP proof is signed with the client's private key"),
            ));
        }
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    if out.is_empty() {
        return Err(ConfigError::new(key, "must name at least one algorithm"));
    }
    Ok(out)
}

/// Resolves the section of tenant `key` (e.g. `tenants[0]`) over `defaults:`'s.
pub fn resolve(
    key: &str,
    own: Option<&RawSenderConstraint>,
    defaults: Option<&RawSenderConstraint>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SenderConstraintSettings, ConfigError> {
    let mut out = SenderConstraintSettings::default();
    if let (k, Some(m)) = pick(key, "mode", own, defaults, |r| r.mode.as_ref()) {
        out.mode = parse_mode(&k, m)?;
    }
    if let (k, Some(names)) = pick(key, "dpop_algorithms", own, defaults, |r| {
        r.dpop_algorithms.as_ref()
    }) {
        out.dpop_algorithms = parse_algorithms(&k, names)?;
    }
    if let (k, Some(v)) = pick(key, "dpop_max_age", own, defaults, |r| {
        r.dpop_max_age.as_ref()
    }) {
        out.dpop_max_age = parse_duration(&k, v)?;
        if out.dpop_max_age < Duration::from_secs(1) || out.dpop_max_age > MAX_DPOP_MAX_AGE {
            return Err(ConfigError::new(k, "must be between 1s and 10m"));
        }
    }
    let (nonce_key, nonce) = pick(key, "dpop_nonce", own, defaults, |r| r.dpop_nonce.as_ref());
    let (wk, window) = pick(key, "dpop_nonce_window", own, defaults, |r| {
        r.dpop_nonce_window.as_ref()
    });
    let window = match window {
        None => DEFAULT_DPOP_NONCE_WINDOW,
        Some(v) => parse_duration(&wk, v)?,
    };
    if window < Duration::from_secs(1) || window > Duration::from_secs(3600) {
        return Err(ConfigError::new(wk, "must be between 1s and 1h"));
    }
    if nonce.copied().unwrap_or(false) {
        let (sk, var) = pick(key, "dpop_nonce_secret_env", own, defaults, |r| {
            r.dpop_nonce_secret_env.as_ref()
        });
        let Some(var) = var else {
            return Err(ConfigError::new(
                sk,
                format!(
                    "is required with {nonce_key}: true (nonces are HMACs under a secret every replica shares)"
                ),
            ));
        };
        let value = env(var).ok_or_else(|| {
            ConfigError::new(&sk, format!("environment variable {var} is not set"))
        })?;
        if value.len() < MIN_DPOP_NONCE_SECRET_BYTES {
            return Err(ConfigError::new(
                sk,
                format!("{var} must hold at least {MIN_DPOP_NONCE_SECRET_BYTES} bytes"),
            ));
        }
        out.dpop_nonce = Some(DpopNonceSettings {
            secret: Secret::new(value.into_bytes()),
            window,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawSenderConstraint {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "GOOD" => Some("n".repeat(32)),
            "SHORT" => Some("n".repeat(31)),
            _ => None,
        }
    }

    fn err(own: &str, defaults: Option<&str>) -> ConfigError {
        let d = defaults.map(raw);
        resolve("tenants[0]", Some(&raw(own)), d.as_ref(), &env).expect_err("invalid")
    }

    #[test]
    fn defaults() {
        let s = resolve("tenants[0]", None, None, &env).expect("ok");
        assert_eq!(s.mode, Mode::Optional);
        assert_eq!(s.dpop_algorithms, DEFAULT_DPOP_ALGORITHMS.to_vec());
        assert_eq!(s.dpop_max_age, Duration::from_secs(60));
        assert!(s.dpop_nonce.is_none());
    }

    #[test]
    fn tenant_overrides_defaults_key_by_key() {
        let d = raw("mode: required\ndpop_max_age: 30s\n");
        let s = resolve(
            "tenants[0]",
            Some(&raw("dpop_algorithms: [ES256]\n")),
            Some(&d),
            &env,
        )
        .expect("ok");
        assert_eq!(s.mode, Mode::Required);
        assert_eq!(s.dpop_max_age, Duration::from_secs(30));
        assert_eq!(s.dpop_algorithms, vec![Algorithm::ES256]);
        let s = resolve("tenants[0]", Some(&raw("mode: off\n")), Some(&d), &env).expect("ok");
        assert_eq!(s.mode, Mode::Off);
        let s = resolve(
            "tenants[0]",
            Some(&raw(
                "dpop_nonce: true\ndpop_nonce_secret_env: GOOD\ndpop_nonce_window: 2m\n",
            )),
            None,
            &env,
        )
        .expect("ok");
        let n = s.dpop_nonce.expect("nonce");
        assert_eq!(
            (n.secret.expose().len(), n.window),
            (32, Duration::from_secs(120))
        );
        assert!(!format!("{n:?}").contains("nnnn"), "the secret is redacted");
    }

    #[test]
    fn errors_name_the_key() {
        for (own, defaults, key) in [
            ("mode: strict\n", None, "tenants[0].sender_constraint.mode"),
            (
                "{}",
                Some("mode: strict\n"),
                "defaults.sender_constraint.mode",
            ),
            (
                "dpop_algorithms: [HS256]\n",
                None,
                "tenants[0].sender_constraint.dpop_algorithms",
            ),
            (
                "dpop_algorithms: [none]\n",
                None,
                "tenants[0].sender_constraint.dpop_algorithms",
            ),
            (
                "dpop_algorithms: []\n",
                None,
                "tenants[0].sender_constraint.dpop_algorithms",
            ),
            (
                "dpop_max_age: 0s\n",
                None,
                "tenants[0].sender_constraint.dpop_max_age",
            ),
            (
                "dpop_max_age: 1h\n",
                None,
                "tenants[0].sender_constraint.dpop_max_age",
            ),
            (
                "dpop_max_age: soon\n",
                None,
                "tenants[0].sender_constraint.dpop_max_age",
            ),
            (
                "dpop_nonce: true\n",
                None,
                "tenants[0].sender_constraint.dpop_nonce_secret_env",
            ),
            (
                "dpop_nonce: true\ndpop_nonce_secret_env: MISSING\n",
                None,
                "tenants[0].sender_constraint.dpop_nonce_secret_env",
            ),
            (
                "dpop_nonce: true\ndpop_nonce_secret_env: SHORT\n",
                None,
                "tenants[0].sender_constraint.dpop_nonce_secret_env",
            ),
            (
                "dpop_nonce_window: 0s\n",
                None,
                "tenants[0].sender_constraint.dpop_nonce_window",
            ),
        ] {
            assert_eq!(err(own, defaults).key, key, "{own}");
        }
        assert!(serde_yaml_ng::from_str::<RawSenderConstraint>("dpop_noncе: true\n").is_err());
    }
}
