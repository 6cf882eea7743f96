//! `sender_constraint:` of a tenant, or of `defaults:` (every tenant inherits it key by
//! key): DPoP and certificate binding (SENDER_CONSTRAINED.md). Type errors are reported
//! by serde at the key's path; the rules between keys name the key that was written,
//! the tenant's or `defaults:`'s.

use std::{fmt, time::Duration};

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::{Deserialize, Deserializer, de::Error as _};

use super::{ConfigError, EnvLookup, Secret, de};
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
/// Longest `dpop_nonce_window` accepted.
pub const MAX_DPOP_NONCE_WINDOW: Duration = Duration::from_secs(3600);
/// Shortest nonce secret accepted, in bytes.
pub const MIN_DPOP_NONCE_SECRET_BYTES: usize = 32;

/// The section as written (each key optional, so a tenant's wins over `defaults:`'s key
/// by key).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of sender_constraint keys")]
pub(super) struct SenderConstraintFile {
    #[serde(default, deserialize_with = "some_mode")]
    mode: Option<Mode>,
    #[serde(default)]
    dpop_algorithms: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de::some_duration")]
    dpop_max_age: Option<Duration>,
    #[serde(default)]
    dpop_nonce: Option<bool>,
    #[serde(default)]
    dpop_nonce_secret_env: Option<String>,
    #[serde(default, deserialize_with = "de::some_duration")]
    dpop_nonce_window: Option<Duration>,
}

fn some_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mode>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "off" => Ok(Some(Mode::Off)),
        "optional" => Ok(Some(Mode::Optional)),
        "required" => Ok(Some(Mode::Required)),
        other => Err(D::Error::custom(format!(
            "`{other}` is not one of off, optional, required"
        ))),
    }
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

/// The two layers a tenant sees: its own section and `defaults:`'s.
struct Layers<'a> {
    /// `tenants[i]`.
    tenant_key: &'a str,
    own: Option<&'a SenderConstraintFile>,
    defaults: Option<&'a SenderConstraintFile>,
}

impl<'a> Layers<'a> {
    /// The value that applies and the key that set it: the tenant's, else `defaults:`'s
    /// (an unset key is named on the tenant).
    fn pick<T>(
        &self,
        field: &str,
        get: impl Fn(&'a SenderConstraintFile) -> Option<&'a T>,
    ) -> (String, Option<&'a T>) {
        if let Some(v) = self.own.and_then(&get) {
            return (
                format!("{}.sender_constraint.{field}", self.tenant_key),
                Some(v),
            );
        }
        match self.defaults.and_then(&get) {
            Some(v) => (format!("defaults.sender_constraint.{field}"), Some(v)),
            None => (
                format!("{}.sender_constraint.{field}", self.tenant_key),
                None,
            ),
        }
    }

    /// A duration between `min` and `max`, or `default` when unset.
    fn bounded(
        &self,
        field: &str,
        get: impl Fn(&'a SenderConstraintFile) -> Option<&'a Duration>,
        default: Duration,
        (min, max, message): (Duration, Duration, &str),
    ) -> Result<Duration, ConfigError> {
        let (key, value) = self.pick(field, get);
        let value = value.copied().unwrap_or(default);
        if value < min || value > max {
            return Err(ConfigError::new(key, message));
        }
        Ok(value)
    }
}

fn algorithms(key: &str, names: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    let mut out = Vec::new();
    for n in names {
        let alg = n.trim().parse::<Algorithm>().map_err(|_| {
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

/// `dpop_nonce: true`: the secret, read from the variable `dpop_nonce_secret_env` names.
fn nonce(
    layers: &Layers<'_>,
    window: Duration,
    env: EnvLookup<'_>,
) -> Result<Option<DpopNonceSettings>, ConfigError> {
    let (nonce_key, on) = layers.pick("dpop_nonce", |r| r.dpop_nonce.as_ref());
    if !on.copied().unwrap_or(false) {
        return Ok(None);
    }
    let (key, var) = layers.pick("dpop_nonce_secret_env", |r| {
        r.dpop_nonce_secret_env.as_ref()
    });
    let Some(var) = var else {
        return Err(ConfigError::new(
            key,
            format!(
                "is required with {nonce_key}: true (nonces are HMACs under a secret every replica shares)"
            ),
        ));
    };
    let value = env(var)
        .ok_or_else(|| ConfigError::new(&key, format!("environment variable {var} is not set")))?;
    if value.len() < MIN_DPOP_NONCE_SECRET_BYTES {
        return Err(ConfigError::new(
            key,
            format!("{var} must hold at least {MIN_DPOP_NONCE_SECRET_BYTES} bytes"),
        ));
    }
    Ok(Some(DpopNonceSettings {
        secret: Secret::new(value.into_bytes()),
        window,
    }))
}

/// Resolves the section of tenant `tenant_key` (e.g. `tenants[0]`) over `defaults:`'s.
pub(super) fn resolve(
    tenant_key: &str,
    own: Option<&SenderConstraintFile>,
    defaults: Option<&SenderConstraintFile>,
    env: EnvLookup<'_>,
) -> Result<SenderConstraintSettings, ConfigError> {
    let layers = Layers {
        tenant_key,
        own,
        defaults,
    };
    let dpop_algorithms = match layers.pick("dpop_algorithms", |r| r.dpop_algorithms.as_ref()) {
        (key, Some(names)) => algorithms(&key, names)?,
        (_, None) => DEFAULT_DPOP_ALGORITHMS.to_vec(),
    };
    let dpop_max_age = layers.bounded(
        "dpop_max_age",
        |r| r.dpop_max_age.as_ref(),
        DEFAULT_DPOP_MAX_AGE,
        (
            Duration::from_secs(1),
            MAX_DPOP_MAX_AGE,
            "must be between 1s and 10m",
        ),
    )?;
    let window = layers.bounded(
        "dpop_nonce_window",
        |r| r.dpop_nonce_window.as_ref(),
        DEFAULT_DPOP_NONCE_WINDOW,
        (
            Duration::from_secs(1),
            MAX_DPOP_NONCE_WINDOW,
            "must be between 1s and 1h",
        ),
    )?;
    Ok(SenderConstraintSettings {
        mode: layers
            .pick("mode", |r| r.mode.as_ref())
            .1
            .copied()
            .unwrap_or(DEFAULT_SENDER_MODE),
        dpop_algorithms,
        dpop_max_age,
        dpop_nonce: nonce(&layers, window, env)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> SenderConstraintFile {
        serde_yaml_ng::from_str(yaml).expect("yaml")
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "GOOD" => Some("n".repeat(32)),
            "SHORT" => Some("n".repeat(31)),
            _ => None,
        }
    }

    /// Loads a whole file with `own` as the tenant's section and `defaults` as
    /// `defaults:`'s, so type errors go through serde's paths as in production.
    fn err(own: &str, defaults: Option<&str>) -> ConfigError {
        let indent = |text: &str, by: &str| -> String {
            text.lines().map(|l| format!("{by}{l}\n")).collect()
        };
        let mut yaml = String::new();
        if let Some(d) = defaults {
            yaml += &format!("defaults:\n  sender_constraint:\n{}", indent(d, "    "));
        }
        yaml += "tenants:\n  - id: a\n    issuer: https://a.example\n    sender_constraint:\n";
        yaml += &indent(own, "      ");
        super::super::load_str(&yaml, &env, &[]).expect_err("invalid")
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
    fn environment_overrides_reach_the_section() {
        let yaml = "tenants:\n  - id: a\n    issuer: https://a.example\n";
        let overrides = [
            (
                "INTROSPECTD_TENANTS__0__SENDER_CONSTRAINT__MODE".to_string(),
                "required".to_string(),
            ),
            (
                "INTROSPECTD_DEFAULTS__SENDER_CONSTRAINT__DPOP_MAX_AGE".to_string(),
                "20s".to_string(),
            ),
        ];
        let s = super::super::load_str(yaml, &env, &overrides).expect("loads");
        let sc = &s.tenants[0].sender_constraint;
        assert_eq!(sc.mode, Mode::Required);
        assert_eq!(sc.dpop_max_age, Duration::from_secs(20));
    }

    #[test]
    fn errors_name_the_key() {
        for (own, defaults, key) in [
            ("mode: strict\n", None, "tenants[0].sender_constraint.mode"),
            (
                "{}\n",
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
            (
                "dpop_nonce_window: 2h\n",
                None,
                "tenants[0].sender_constraint.dpop_nonce_window",
            ),
            (
                "dpop_noncе: true\n",
                None,
                "tenants[0].sender_constraint.dpop_noncе",
            ),
            (
                "dpop_nonce: yes please\n",
                None,
                "tenants[0].sender_constraint.dpop_nonce",
            ),
        ] {
            assert_eq!(err(own, defaults).key, key, "{own}");
        }
    }
}
