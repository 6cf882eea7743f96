//! Revoked tokens: the rules a replica checks on every Validate (by token digest, by
//! `(iss, jti)`, by `(iss, sub)` issued before a time), held as an immutable snapshot
//! that readers load without a lock and writers replace whole. Rules are bounded in
//! number and forgotten once no matching token can still be valid. Where the rules come
//! from (a Revoke call on this replica, or the fleet's shared state) is not its concern;
//! a listener hears of every new rule (to purge cached verdicts).

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, OnceLock},
};

use super::token_cache::{digest_from_hex, sha256};
use crate::shared::{Revocation, RevocationRule};
use arc_swap::ArcSwap;

/// Most rules held; a Revoke beyond it is refused.
pub const MAX_REVOCATION_RULES: usize = 100_000;

/// SHA-256 (lower-case hex) by which a token-digest rule names a token: of the signed
/// part (`header.payload`) of a compact JWS, so that a re-encoded signature still
/// matches, or of the whole token otherwise.
pub fn token_digest(token: &str) -> String {
    signed_sha256(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// [`token_digest`] as bytes: the form rules are held in and a cached entry carries.
pub(crate) fn signed_sha256(token: &str) -> [u8; 32] {
    let signed = match token.rsplit_once('.') {
        Some((signed, _)) if token.bytes().filter(|b| *b == b'.').count() == 2 => signed,
        _ => token,
    };
    sha256(signed.as_bytes())
}

/// Why a rule could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_REVOCATION_RULES} revocation rules are in force; no more can be added")]
pub struct RevocationsFull;

#[derive(Debug, Default, Clone)]
struct RuleSet {
    /// By [`signed_sha256`]; a rule whose digest is not 64 hex digits matches nothing.
    tokens: HashMap<[u8; 32], i64>,
    jtis: HashMap<(String, String), i64>,
    /// `(iss, sub)` -> (issued_before, expires_at); several rules combine to the latest
    /// of each (revoking more, for longer: the safe side).
    subjects: HashMap<(String, String), (i64, i64)>,
}

impl RuleSet {
    fn len(&self) -> usize {
        self.tokens.len() + self.jtis.len() + self.subjects.len()
    }

    fn contains(&self, r: &Revocation) -> bool {
        match &r.rule {
            RevocationRule::Token { sha256 } => digest_from_hex(sha256)
                .and_then(|d| self.tokens.get(&d))
                .is_some_and(|e| *e >= r.expires_at),
            RevocationRule::Jti { iss, jti } => self
                .jtis
                .get(&(iss.clone(), jti.clone()))
                .is_some_and(|e| *e >= r.expires_at),
            RevocationRule::Subject {
                iss,
                sub,
                issued_before,
            } => self
                .subjects
                .get(&(iss.clone(), sub.clone()))
                .is_some_and(|(b, e)| *b >= *issued_before && *e >= r.expires_at),
        }
    }

    fn add(&mut self, r: &Revocation) {
        let exp = r.expires_at;
        match &r.rule {
            RevocationRule::Token { sha256 } => {
                if let Some(d) = digest_from_hex(sha256) {
                    let e = self.tokens.entry(d).or_insert(exp);
                    *e = (*e).max(exp);
                }
            }
            RevocationRule::Jti { iss, jti } => {
                let e = self.jtis.entry((iss.clone(), jti.clone())).or_insert(exp);
                *e = (*e).max(exp);
            }
            RevocationRule::Subject {
                iss,
                sub,
                issued_before,
            } => {
                let e = self
                    .subjects
                    .entry((iss.clone(), sub.clone()))
                    .or_insert((*issued_before, exp));
                *e = (e.0.max(*issued_before), e.1.max(exp));
            }
        }
    }

    fn rules(&self, now: i64) -> Vec<Revocation> {
        let tokens = self.tokens.iter().map(|(d, e)| Revocation {
            rule: RevocationRule::Token {
                sha256: d.iter().map(|b| format!("{b:02x}")).collect(),
            },
            expires_at: *e,
        });
        let jtis = self.jtis.iter().map(|((iss, jti), e)| Revocation {
            rule: RevocationRule::Jti {
                iss: iss.clone(),
                jti: jti.clone(),
            },
            expires_at: *e,
        });
        let subjects = self
            .subjects
            .iter()
            .map(|((iss, sub), (before, e))| Revocation {
                rule: RevocationRule::Subject {
                    iss: iss.clone(),
                    sub: sub.clone(),
                    issued_before: *before,
                },
                expires_at: *e,
            });
        tokens
            .chain(jtis)
            .chain(subjects)
            .filter(|r| r.expires_at > now)
            .collect()
    }

    fn prune(&mut self, now: i64) {
        self.tokens.retain(|_, e| *e > now);
        self.jtis.retain(|_, e| *e > now);
        self.subjects.retain(|_, (_, e)| *e > now);
    }
}

/// What a token offers to the revocation check.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The token as received (its digest is computed only if a digest rule exists).
    pub token: &'a str,
    /// Its [`signed_sha256`], when the caller already has it (a verified token does).
    pub digest: Option<[u8; 32]>,
    /// `iss`.
    pub iss: &'a str,
    /// `jti`, when present.
    pub jti: Option<&'a str>,
    /// `sub`, when present.
    pub sub: Option<&'a str>,
    /// `iat`, when present (seconds since the epoch).
    pub iat: Option<f64>,
}

type Listener = Box<dyn Fn(&Revocation) + Send + Sync>;

/// The rules in force on this replica.
pub struct Revocations {
    rules: ArcSwap<RuleSet>,
    write: Mutex<()>,
    listener: OnceLock<Listener>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("rules", &self.len())
            .finish()
    }
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            rules: ArcSwap::from_pointee(RuleSet::default()),
            write: Mutex::new(()),
            listener: OnceLock::new(),
        }
    }
}

impl Revocations {
    /// No rules.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Calls `f` for every rule that is new to this replica (set once).
    pub fn set_listener(&self, f: impl Fn(&Revocation) + Send + Sync + 'static) {
        let _ = self.listener.set(Box::new(f));
    }

    /// Rules held now (expired ones included until the next change).
    pub fn len(&self) -> usize {
        self.rules.load().len()
    }

    /// True when no rule is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live rule held (rules for one subject combined into one).
    pub fn snapshot(&self, now: i64) -> Vec<Revocation> {
        self.rules.load().rules(now)
    }

    /// Whether a live rule matches the token (lock-free; the digest is computed only
    /// when a digest rule exists). A subject rule matches tokens without `iat` too.
    pub fn is_revoked(&self, c: &Candidate<'_>, now: i64) -> bool {
        let rules = self.rules.load();
        if rules.len() == 0 {
            return false;
        }
        if !rules.tokens.is_empty()
            && rules
                .tokens
                .get(&c.digest.unwrap_or_else(|| signed_sha256(c.token)))
                .is_some_and(|e| *e > now)
        {
            return true;
        }
        if let Some(jti) = c.jti
            && rules
                .jtis
                .get(&(c.iss.to_string(), jti.to_string()))
                .is_some_and(|e| *e > now)
        {
            return true;
        }
        if let Some(sub) = c.sub
            && let Some((before, exp)) = rules.subjects.get(&(c.iss.to_string(), sub.to_string()))
            && *exp > now
        {
            return c.iat.is_none_or(|iat| iat < *before as f64);
        }
        false
    }

    /// Adds a rule; true when it was new (or extended one). Full when the bound is
    /// reached after dropping expired rules.
    pub fn insert(&self, r: &Revocation, now: i64) -> Result<bool, RevocationsFull> {
        let added = {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let current = self.rules.load();
            if current.contains(r) {
                return Ok(false);
            }
            let mut next = RuleSet::clone(&current);
            next.prune(now);
            if next.len() >= MAX_REVOCATION_RULES {
                return Err(RevocationsFull);
            }
            next.add(r);
            self.rules.store(Arc::new(next));
            true
        };
        if let Some(f) = self.listener.get() {
            f(r);
        }
        Ok(added)
    }

    /// Replaces every rule with `rules` (the fleet's full list); returns how many were
    /// new to this replica. Rules past the bound are dropped (the fleet enforces it too).
    pub fn replace_all(&self, rules: &[Revocation], now: i64) -> usize {
        let fresh: Vec<&Revocation> = {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let current = self.rules.load();
            let mut next = RuleSet::default();
            let mut fresh = Vec::new();
            for r in rules.iter().filter(|r| r.expires_at > now) {
                if next.len() >= MAX_REVOCATION_RULES {
                    break;
                }
                if !current.contains(r) {
                    fresh.push(r);
                }
                next.add(r);
            }
            self.rules.store(Arc::new(next));
            fresh
        };
        if let Some(f) = self.listener.get() {
            for r in &fresh {
                f(r);
            }
        }
        fresh.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jti(iss: &str, jti: &str, exp: i64) -> Revocation {
        Revocation {
            rule: RevocationRule::Jti {
                iss: iss.into(),
                jti: jti.into(),
            },
            expires_at: exp,
        }
    }

    fn candidate<'a>(token: &'a str, jti: Option<&'a str>, iat: Option<f64>) -> Candidate<'a> {
        Candidate {
            token,
            digest: None,
            iss: "https://i",
            jti,
            sub: Some("alice"),
            iat,
        }
    }

    #[test]
    fn digest_covers_the_signed_part_of_a_jws() {
        assert_eq!(token_digest("h.p.sig1"), token_digest("h.p.sig2"));
        assert_ne!(token_digest("h.p.sig1"), token_digest("h.q.sig1"));
        assert_eq!(token_digest("opaque"), token_digest("opaque"));
        assert_ne!(
            token_digest("a.b"),
            token_digest("a.c"),
            "not a JWS: whole token"
        );
        assert_eq!(token_digest("abc").len(), 64);
    }

    #[test]
    fn each_kind_of_rule_matches_until_it_expires() {
        let r = Revocations::new();
        assert!(!r.is_revoked(&candidate("h.p.s", Some("j1"), Some(50.0)), 10));
        r.insert(&jti("https://i", "j1", 100), 10).expect("room");
        assert!(r.is_revoked(&candidate("h.p.s", Some("j1"), Some(50.0)), 10));
        assert!(!r.is_revoked(&candidate("h.p.s", Some("j2"), Some(50.0)), 10));
        assert!(
            !r.is_revoked(&candidate("h.p.s", Some("j1"), Some(50.0)), 100),
            "expired"
        );

        r.insert(
            &Revocation {
                rule: RevocationRule::Token {
                    sha256: token_digest("h.p.s"),
                },
                expires_at: 100,
            },
            10,
        )
        .expect("room");
        assert!(r.is_revoked(&candidate("h.p.other-signature", None, None), 10));

        r.insert(
            &Revocation {
                rule: RevocationRule::Subject {
                    iss: "https://i".into(),
                    sub: "alice".into(),
                    issued_before: 60,
                },
                expires_at: 100,
            },
            10,
        )
        .expect("room");
        assert!(r.is_revoked(&candidate("x.y.z", None, Some(59.0)), 10));
        assert!(
            !r.is_revoked(&candidate("x.y.z", None, Some(60.0)), 10),
            "issued after"
        );
        assert!(
            r.is_revoked(&candidate("x.y.z", None, None), 10),
            "no iat: refused"
        );
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn listener_hears_new_rules_once_and_replace_all_reports_only_new_ones() {
        let r = Revocations::new();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        r.set_listener(move |rev| h.lock().expect("lock").push(rev.clone()));
        assert_eq!(r.insert(&jti("i", "a", 100), 0), Ok(true));
        assert_eq!(r.insert(&jti("i", "a", 100), 0), Ok(false), "known");
        assert_eq!(r.insert(&jti("i", "a", 200), 0), Ok(true), "extended");
        let n = r.replace_all(
            &[jti("i", "a", 200), jti("i", "b", 100), jti("i", "old", 5)],
            10,
        );
        assert_eq!(n, 1, "only b is new; old has expired");
        assert_eq!(heard.lock().expect("lock").len(), 3);
        assert_eq!(r.len(), 2);
        let mut kept = r.snapshot(10);
        kept.sort_by_key(|k| format!("{:?}", k.rule));
        assert_eq!(kept, vec![jti("i", "a", 200), jti("i", "b", 100)]);
        assert!(r.snapshot(200).is_empty(), "expired rules are not kept");
    }

    #[test]
    fn bounded() {
        let r = Revocations::new();
        let rules: Vec<Revocation> = (0..MAX_REVOCATION_RULES)
            .map(|i| jti("i", &i.to_string(), 100))
            .collect();
        r.replace_all(&rules, 0);
        assert_eq!(r.len(), MAX_REVOCATION_RULES);
        assert_eq!(
            r.insert(&jti("i", "one-more", 100), 0),
            Err(RevocationsFull)
        );
        assert_eq!(
            r.insert(&jti("i", "one-more", 100), 100),
            Ok(true),
            "expired ones make room"
        );
    }
}
