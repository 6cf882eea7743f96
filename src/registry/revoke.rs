//! `Revoke` as the core sees it: a target (a token, its digest, an `(iss, jti)`, or an
//! `(iss, sub)` issued before a time) turned into a rule with the expiry FLEET.md asks
//! for (the longest a matching token can still be valid), then recorded for the whole
//! fleet when `shared_state` is configured, or for this replica alone.

use std::time::{Duration, SystemTime};

use tracing::info;

use super::{Registry, Tenant, token_digest};
use crate::{
    config::DEFAULT_CLOCK_SKEW,
    jwt::{claims::Claims, jws},
    shared::{Revocation, RevocationRule, SharedError, unix_secs},
};

/// How long a rule lives when nothing bounds the lifetime of the tokens it matches
/// (no `exp`, no tenant `max_lifetime`).
pub const DEFAULT_REVOCATION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Furthest ahead a rule may expire (and a subject rule's `issued_before` may lie).
pub const MAX_REVOCATION_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
/// Longest issuer, `jti` or subject a rule may name, in bytes.
pub const MAX_RULE_FIELD_BYTES: usize = 1024;

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// A token (compact JWS or opaque); only its digest is kept.
    Token(String),
    /// A token's digest (see [`super::token_digest`]), hex.
    TokenDigest(String),
    /// One token by issuer and `jti`.
    Jti {
        /// `iss`.
        iss: String,
        /// `jti`.
        jti: String,
    },
    /// Every token of a subject issued before a time (default: now).
    Subject {
        /// `iss`.
        iss: String,
        /// `sub`.
        sub: String,
        /// Seconds since the epoch.
        issued_before: Option<i64>,
    },
}

/// A Revoke request, parsed at the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeInput {
    /// What to revoke.
    pub target: RevokeTarget,
    /// When the rule may be forgotten (seconds since the epoch); default per FLEET.md.
    pub expires_at: Option<i64>,
}

/// A recorded rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The rule and its expiry.
    pub revocation: Revocation,
    /// True when recorded for the whole fleet, false for this replica only.
    pub fleet_wide: bool,
}

/// Why a rule was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// The request is not usable.
    #[error("{0}")]
    Invalid(String),
    /// The fleet's shared state could not record it; nothing was recorded.
    #[error("the rule was not recorded: {0}")]
    Unavailable(String),
    /// The bound on rules is reached.
    #[error("{0}")]
    Full(String),
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn field<'a>(name: &str, value: &'a str) -> Result<&'a str, RevokeError> {
    if value.is_empty() {
        return Err(RevokeError::Invalid(format!("{name} is required")));
    }
    if value.len() > MAX_RULE_FIELD_BYTES {
        return Err(RevokeError::Invalid(format!(
            "{name} is longer than {MAX_RULE_FIELD_BYTES} bytes"
        )));
    }
    Ok(value)
}

/// Skew and longest lifetime of the tokens a tenant accepts (defaults without one).
fn limits(tenant: Option<&Tenant>) -> (i64, Option<i64>) {
    match tenant {
        Some(t) => (
            secs(t.settings.policy.clock_skew),
            t.settings.policy.max_lifetime.map(secs),
        ),
        None => (secs(DEFAULT_CLOCK_SKEW), None),
    }
}

impl Registry {
    fn trusted_tenant(&self, iss: &str) -> Result<std::sync::Arc<Tenant>, RevokeError> {
        self.tenant_for_issuer(field("issuer", iss)?)
            .ok_or_else(|| RevokeError::Invalid("no tenant trusts that issuer".into()))
    }

    /// The rule for `target` and, when the request gives none, its default expiry.
    fn rule_of(
        &self,
        target: &RevokeTarget,
        now: i64,
    ) -> Result<(RevocationRule, i64), RevokeError> {
        let fallback = secs(DEFAULT_REVOCATION_LIFETIME);
        match target {
            RevokeTarget::Token(token) => {
                let token = field("token", token)?;
                let claims = jws::parse(token)
                    .ok()
                    .and_then(|j| Claims::parse(&j.payload).ok());
                let tenant = claims
                    .as_ref()
                    .and_then(|c| c.iss())
                    .and_then(|iss| self.tenant_for_issuer(iss));
                let (skew, max_lifetime) = limits(tenant.as_deref());
                let exp = claims.as_ref().and_then(|c| c.exp).map(|e| e as i64);
                let ends =
                    exp.unwrap_or_else(|| now.saturating_add(max_lifetime.unwrap_or(fallback)));
                let rule = RevocationRule::Token {
                    sha256: token_digest(token),
                };
                Ok((rule, ends.saturating_add(skew)))
            }
            RevokeTarget::TokenDigest(hex) => {
                let hex = hex.to_ascii_lowercase();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(RevokeError::Invalid(
                        "token_sha256 must be 64 hexadecimal digits".into(),
                    ));
                }
                let (skew, _) = limits(None);
                let rule = RevocationRule::Token { sha256: hex };
                Ok((rule, now.saturating_add(fallback).saturating_add(skew)))
            }
            RevokeTarget::Jti { iss, jti } => {
                let tenant = self.trusted_tenant(iss)?;
                let (skew, max_lifetime) = limits(Some(&tenant));
                let rule = RevocationRule::Jti {
                    iss: iss.clone(),
                    jti: field("jti", jti)?.to_string(),
                };
                let ends = now.saturating_add(max_lifetime.unwrap_or(fallback));
                Ok((rule, ends.saturating_add(skew)))
            }
            RevokeTarget::Subject {
                iss,
                sub,
                issued_before,
            } => {
                let tenant = self.trusted_tenant(iss)?;
                let (skew, max_lifetime) = limits(Some(&tenant));
                let before = issued_before.unwrap_or(now);
                if before > now.saturating_add(secs(MAX_REVOCATION_LIFETIME)) {
                    return Err(RevokeError::Invalid(
                        "issued_before is more than a year ahead".into(),
                    ));
                }
                let rule = RevocationRule::Subject {
                    iss: iss.clone(),
                    sub: field("subject", sub)?.to_string(),
                    issued_before: before,
                };
                // Tokens without `iat` match too, so the rule covers from now at least.
                let ends = before
                    .max(now)
                    .saturating_add(max_lifetime.unwrap_or(fallback));
                Ok((rule, ends.saturating_add(skew)))
            }
        }
    }

    /// Builds the rule a request asks for, with its expiry.
    pub fn revocation_of(&self, input: &RevokeInput, now: i64) -> Result<Revocation, RevokeError> {
        let (rule, default_expiry) = self.rule_of(&input.target, now)?;
        let latest = now.saturating_add(secs(MAX_REVOCATION_LIFETIME));
        let expires_at = match input.expires_at {
            Some(e) if e <= now => {
                return Err(RevokeError::Invalid("expires_at is in the past".into()));
            }
            Some(e) if e > latest => {
                return Err(RevokeError::Invalid(
                    "expires_at is more than a year ahead".into(),
                ));
            }
            Some(e) => e,
            None => default_expiry.clamp(now.saturating_add(1), latest),
        };
        Ok(Revocation { rule, expires_at })
    }

    /// Records a rule: for the fleet when `shared_state` is configured (nothing is
    /// recorded if it cannot be reached), else for this replica.
    pub async fn revoke(&self, input: &RevokeInput) -> Result<Revoked, RevokeError> {
        let now = unix_secs(SystemTime::now());
        let revocation = self.revocation_of(input, now)?;
        let kind = match &revocation.rule {
            RevocationRule::Token { .. } => "token",
            RevocationRule::Jti { .. } => "jti",
            RevocationRule::Subject { .. } => "subject",
        };
        let fleet_wide = match self.shared() {
            Some(shared) => {
                shared
                    .revocation
                    .add(&revocation)
                    .await
                    .map_err(|e| match e {
                        SharedError::Full(m) => RevokeError::Full(m),
                        other => RevokeError::Unavailable(other.to_string()),
                    })?;
                true
            }
            None => {
                self.revocations()
                    .insert(&revocation, now)
                    .map_err(|e| RevokeError::Full(e.to_string()))?;
                false
            }
        };
        info!(
            kind,
            fleet_wide,
            expires_at = revocation.expires_at,
            "revocation rule recorded"
        );
        Ok(Revoked {
            revocation,
            fleet_wide,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn registry() -> Registry {
        let yaml = "tenants:\n  - id: a\n    issuer: https://a.example\n    audiences: [x]\n    jwks_file: /nonexistent\n    max_lifetime: 1h\n    clock_skew: 30s\n  - id: b\n    issuer: https://b.example\n    audiences: [x]\n    jwks_file: /nonexistent\n  - id: entra\n    issuer: \"https://login.microsoftonline.com/{tenantid}/v2.0\"\n    metadata_url: https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration\n    audiences: [x]\n    allowed_tenant_ids: [\"775527ff-9a37-4307-8b3d-cc311f58d925\"]\n";
        let settings = config::load_str(yaml, &|_| None, &[]).expect("config");
        Registry::new(&settings).expect("registry")
    }

    fn input(target: RevokeTarget) -> RevokeInput {
        RevokeInput {
            target,
            expires_at: None,
        }
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn default_expiry_is_the_longest_a_matching_token_can_live() {
        let r = registry();
        let jti = |iss: &str| {
            r.revocation_of(
                &input(RevokeTarget::Jti {
                    iss: iss.into(),
                    jti: "j".into(),
                }),
                NOW,
            )
        };
        assert_eq!(
            jti("https://a.example").map(|r| r.expires_at),
            Ok(NOW + 3600 + 30)
        );
        assert_eq!(
            jti("https://b.example").map(|r| r.expires_at),
            Ok(NOW + 24 * 3600 + 60),
            "no max_lifetime: a day, plus the default skew"
        );
        assert!(
            jti("https://login.microsoftonline.com/775527ff-9a37-4307-8b3d-cc311f58d925/v2.0")
                .is_ok(),
            "an allowed Entra tenant"
        );
        assert!(matches!(
            jti("https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0"),
            Err(RevokeError::Invalid(_))
        ));
        assert!(matches!(
            jti("https://nobody.example"),
            Err(RevokeError::Invalid(_))
        ));

        let subject = r
            .revocation_of(
                &input(RevokeTarget::Subject {
                    iss: "https://a.example".into(),
                    sub: "alice".into(),
                    issued_before: Some(NOW + 600),
                }),
                NOW,
            )
            .expect("subject");
        assert_eq!(subject.expires_at, NOW + 600 + 3600 + 30);
    }

    #[test]
    fn token_rules_keep_only_the_digest_and_follow_exp() {
        let r = registry();
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            format!("{{\"iss\":\"https://a.example\",\"exp\":{}}}", NOW + 100),
        );
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        let rev = r
            .revocation_of(&input(RevokeTarget::Token(token.clone())), NOW)
            .expect("token");
        assert_eq!(rev.expires_at, NOW + 100 + 30);
        assert_eq!(
            rev.rule,
            RevocationRule::Token {
                sha256: token_digest(&token)
            }
        );
        assert!(!format!("{rev:?}").contains(&payload));
        let opaque = r
            .revocation_of(&input(RevokeTarget::Token("opaque-1".into())), NOW)
            .expect("opaque");
        assert_eq!(opaque.expires_at, NOW + 24 * 3600 + 60);
    }

    #[test]
    fn bad_requests() {
        let r = registry();
        let bad = |i: RevokeInput| matches!(r.revocation_of(&i, NOW), Err(RevokeError::Invalid(_)));
        assert!(bad(input(RevokeTarget::TokenDigest("abc".into()))));
        assert!(bad(input(RevokeTarget::Token(String::new()))));
        assert!(bad(input(RevokeTarget::Jti {
            iss: "https://a.example".into(),
            jti: String::new()
        })));
        assert!(bad(input(RevokeTarget::Jti {
            iss: "https://a.example".into(),
            jti: "j".repeat(MAX_RULE_FIELD_BYTES + 1)
        })));
        assert!(bad(RevokeInput {
            target: RevokeTarget::TokenDigest("ab".repeat(32)),
            expires_at: Some(NOW - 1),
        }));
        assert!(bad(RevokeInput {
            target: RevokeTarget::TokenDigest("ab".repeat(32)),
            expires_at: Some(NOW + 400 * 24 * 3600),
        }));
        let upper = r
            .revocation_of(&input(RevokeTarget::TokenDigest("AB".repeat(32))), NOW)
            .expect("digest");
        assert_eq!(
            upper.rule,
            RevocationRule::Token {
                sha256: "ab".repeat(32)
            }
        );
    }

    #[tokio::test]
    async fn without_a_fleet_the_rule_applies_to_this_replica() {
        let r = registry();
        let done = r
            .revoke(&input(RevokeTarget::Jti {
                iss: "https://a.example".into(),
                jti: "j1".into(),
            }))
            .await
            .expect("revoked");
        assert!(!done.fleet_wide);
        assert_eq!(r.revocations().len(), 1);
    }
}
