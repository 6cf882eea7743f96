//! Integrity of what replicas read back from Redis and trust (`integrity_key_env`): a
//! published key set and an introspection answer carry an HMAC-SHA256 under a key every
//! replica holds and Redis never sees, bound to the Redis key they are stored under. A
//! value whose tag is missing or wrong is refused as if absent, counted, and logged, so
//! that whoever can write to Redis still cannot make a replica trust a key or an answer.
//! Without the key, values are stored and read as they are (Redis is trusted).

use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::{constant_time, hmac};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use tracing::warn;

/// Prefix of a tagged value: `m1:<tag>:<payload>`.
const TAGGED: &[u8] = b"m1:";
/// Seconds between two warnings about refused values.
const WARN_PERIOD_SECS: u64 = 60;

/// Tags and checks values (a no-op without a key).
pub(super) struct Integrity {
    key: Option<hmac::Key>,
    refused: AtomicU64,
    last_warning: AtomicU64,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity")
            .field("enabled", &self.key.is_some())
            .field("refused", &self.refused())
            .finish()
    }
}

/// The bytes a tag covers: the Redis key and every part, each with its length, so no
/// two different lists of parts encode alike.
fn message(context: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Vec::new();
    for p in std::iter::once(context.as_bytes()).chain(parts.iter().copied()) {
        m.extend_from_slice(&(p.len() as u64).to_be_bytes());
        m.extend_from_slice(p);
    }
    m
}

impl Integrity {
    /// Tags with `secret` when given.
    pub(super) fn new(secret: Option<&[u8]>) -> Self {
        Self {
            key: secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s)),
            refused: AtomicU64::new(0),
            last_warning: AtomicU64::new(0),
        }
    }

    /// True when values are tagged.
    pub(super) fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// The tag of `parts` stored under `context` (empty without a key).
    pub(super) fn tag(&self, context: &str, parts: &[&[u8]]) -> String {
        match &self.key {
            Some(k) => URL_SAFE_NO_PAD.encode(hmac::sign(k, &message(context, parts))),
            None => String::new(),
        }
    }

    /// Whether `tag` is right for `parts` under `context` (always, without a key).
    pub(super) fn verify(&self, context: &str, parts: &[&[u8]], tag: &str) -> bool {
        let Some(k) = &self.key else {
            return true;
        };
        let ok = URL_SAFE_NO_PAD.decode(tag).is_ok_and(|t| {
            let want = hmac::sign(k, &message(context, parts));
            constant_time::verify_slices_are_equal(want.as_ref(), &t).is_ok()
        });
        if !ok {
            self.note_refused(context);
        }
        ok
    }

    /// `payload` as stored under `context`: tagged with a key, as it is without.
    pub(super) fn seal(&self, context: &str, payload: &[u8]) -> Vec<u8> {
        if self.key.is_none() {
            return payload.to_vec();
        }
        let mut out = TAGGED.to_vec();
        out.extend_from_slice(self.tag(context, &[payload]).as_bytes());
        out.push(b':');
        out.extend_from_slice(payload);
        out
    }

    /// The payload of a stored value, if its tag checks out (with a key).
    pub(super) fn open(&self, context: &str, stored: Vec<u8>) -> Option<Vec<u8>> {
        if self.key.is_none() {
            return Some(stored);
        }
        let rest = stored.strip_prefix(TAGGED);
        let split = rest.and_then(|r| {
            r.iter()
                .position(|b| *b == b':')
                .map(|i| (&r[..i], &r[i + 1..]))
        });
        let Some((tag, payload)) = split else {
            self.note_refused(context);
            return None;
        };
        let tag = std::str::from_utf8(tag).unwrap_or_default();
        self.verify(context, &[payload], tag)
            .then(|| payload.to_vec())
    }

    /// Values refused so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn note_refused(&self, context: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let now = crate::shared::unix_secs(std::time::SystemTime::now()) as u64;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last.saturating_add(WARN_PERIOD_SECS)
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(key = %context, refused = self.refused(),
                "a value in the shared state failed its integrity check and was ignored; something other than a replica with this integrity key wrote it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_key_and_under_their_own_name() {
        let i = Integrity::new(Some(&[7u8; 32]));
        let sealed = i.seal("p:answer:{t:a}:value", b"{\"active\":true}");
        assert!(sealed.starts_with(b"m1:"));
        assert_eq!(
            i.open("p:answer:{t:a}:value", sealed.clone()),
            Some(b"{\"active\":true}".to_vec())
        );
        assert_eq!(
            i.open("p:answer:{t:b}:value", sealed.clone()),
            None,
            "moved to another key"
        );
        let mut forged = sealed.clone();
        let last = forged.len() - 2;
        forged[last] = b'f';
        assert_eq!(
            i.open("p:answer:{t:a}:value", forged),
            None,
            "payload changed"
        );
        assert_eq!(
            i.open("p:answer:{t:a}:value", b"{\"active\":true}".to_vec()),
            None,
            "untagged"
        );
        let other = Integrity::new(Some(&[8u8; 32]));
        assert_eq!(
            other.open("p:answer:{t:a}:value", sealed),
            None,
            "another key"
        );
        assert_eq!(i.refused(), 3);
    }

    #[test]
    fn tags_cover_every_part_with_its_boundaries() {
        let i = Integrity::new(Some(&[7u8; 32]));
        let t = i.tag("k", &[b"ab", b"c"]);
        assert!(i.verify("k", &[b"ab", b"c"], &t));
        assert!(!i.verify("k", &[b"a", b"bc"], &t));
        assert!(!i.verify("k", &[b"ab", b"c"], "not-base64!"));
    }

    #[test]
    fn without_a_key_nothing_changes() {
        let i = Integrity::new(None);
        assert!(!i.enabled());
        assert_eq!(i.seal("k", b"v"), b"v");
        assert_eq!(i.open("k", b"v".to_vec()), Some(b"v".to_vec()));
        assert!(i.verify("k", &[b"v"], ""));
        assert_eq!(i.tag("k", &[b"v"]), "");
    }
}
