//! The layout of every Redis key and channel under `key_prefix`. Keys that one script or
//! pipeline touches together share a Redis Cluster hash tag (`{...}`), so they live in
//! one slot; values chosen by callers (issuers, `jti`s, tokens) never appear in a key,
//! only their SHA-256.

use aws_lc_rs::digest;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

/// Builds the keys of one deployment.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

/// SHA-256 of `parts` joined by NUL bytes, base64url: a fixed-size key part that no
/// caller-chosen value can stretch or make collide with another part boundary.
pub fn digest_of(parts: &[&[u8]]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            ctx.update(&[0]);
        }
        ctx.update(p);
    }
    URL_SAFE_NO_PAD.encode(ctx.finish().as_ref())
}

/// Escapes the bytes that would change a hash tag (`{`, `}`) or the escaping itself.
fn tag_safe(s: &str) -> String {
    s.replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

impl Layout {
    /// The layout under `prefix` (checked by the configuration: no braces).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A replay record: `namespace` plus the digest of the caller's key.
    pub fn replay(&self, namespace: &str, key: &str) -> String {
        format!(
            "{}replay:{}:{}",
            self.prefix,
            tag_safe(namespace),
            digest_of(&[namespace.as_bytes(), key.as_bytes()])
        )
    }

    fn answer_tag(&self, tenant: &str, token_digest: &[u8; 32]) -> String {
        format!(
            "{}answer:{{{}:{}}}",
            self.prefix,
            tag_safe(tenant),
            URL_SAFE_NO_PAD.encode(token_digest)
        )
    }

    /// A cached introspection answer.
    pub fn answer(&self, tenant: &str, token_digest: &[u8; 32]) -> String {
        format!("{}:value", self.answer_tag(tenant, token_digest))
    }

    /// The claim of the replica asking the upstream about that token.
    pub fn answer_fill(&self, tenant: &str, token_digest: &[u8; 32]) -> String {
        format!("{}:fill", self.answer_tag(tenant, token_digest))
    }

    fn jwks_tag(&self, key_set: &str) -> String {
        format!("{}jwks:{{{}}}", self.prefix, tag_safe(key_set))
    }

    /// The published key set (a hash: generation, document, metadata, replica, time).
    pub fn jwks(&self, key_set: &str) -> String {
        format!("{}:published", self.jwks_tag(key_set))
    }

    /// The fleet's fetch turn of a key set (expires after the cooldown).
    pub fn jwks_turn(&self, key_set: &str) -> String {
        format!("{}:turn", self.jwks_tag(key_set))
    }

    /// The revocation rules (a sorted set scored by expiry).
    pub fn revocations(&self) -> String {
        format!("{}revocation:{{rules}}:set", self.prefix)
    }

    /// The revocation sequence number (bumped by every new rule).
    pub fn revocation_seq(&self) -> String {
        format!("{}revocation:{{rules}}:seq", self.prefix)
    }

    /// The pub/sub channel every replica listens on.
    pub fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster uses: the first `{...}` with something inside.
    fn hash_tag(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn every_key_starts_with_the_prefix() {
        let l = Layout::new("p:");
        let d = [7u8; 32];
        for k in [
            l.replay("jti", "iss\0jti"),
            l.answer("t", &d),
            l.answer_fill("t", &d),
            l.jwks("t/B2C_1_x"),
            l.jwks_turn("t"),
            l.revocations(),
            l.revocation_seq(),
            l.channel(),
        ] {
            assert!(k.starts_with("p:"), "{k}");
        }
    }

    #[test]
    fn keys_used_together_share_a_slot() {
        let l = Layout::new("p:");
        let d = [7u8; 32];
        assert_eq!(
            hash_tag(&l.answer("t", &d)),
            hash_tag(&l.answer_fill("t", &d))
        );
        assert_eq!(hash_tag(&l.jwks("t/x")), hash_tag(&l.jwks_turn("t/x")));
        assert_eq!(hash_tag(&l.revocations()), hash_tag(&l.revocation_seq()));
        assert_ne!(hash_tag(&l.jwks("a")), hash_tag(&l.jwks("b")));
        assert_ne!(
            hash_tag(&l.answer("t", &d)),
            hash_tag(&l.answer("t", &[8; 32]))
        );
    }

    #[test]
    fn caller_values_are_digested_and_braces_escaped() {
        let l = Layout::new("p:");
        let k = l.replay("jti", "https://evil{x}\0a-very-long-jti");
        assert!(!k.contains("evil"), "{k}");
        assert_eq!(k.len(), "p:replay:jti:".len() + 43);
        assert_ne!(
            digest_of(&[b"a", b"bc"]),
            digest_of(&[b"ab", b"c"]),
            "part boundaries matter"
        );
        assert_eq!(hash_tag(&l.jwks("t/{p}")), "t/%7Bp%7D");
    }
}
