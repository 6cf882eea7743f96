//! Replay detection: remembers `(iss, jti)` of accepted tokens until they expire. Keyed
//! by the claims, never by the token bytes (an ECDSA signature can be re-encoded), and
//! bounded in entries: when full after dropping expired entries, new tokens are refused
//! rather than letting memory grow.

use dashmap::DashMap;

use crate::jwt::claims::now_secs;
pub(super) use crate::shared::ReplayOutcome;

/// A bounded `(iss, jti) -> exp` map.
#[derive(Debug)]
pub struct ReplayCache {
    seen: DashMap<(String, String), f64>,
    capacity: usize,
}

impl ReplayCache {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: DashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `(iss, jti)` valid until `exp` (plus skew, already added by the caller).
    pub fn check_and_record(&self, iss: &str, jti: &str, expires: f64) -> ReplayOutcome {
        self.check_and_record_at(iss, jti, expires, now_secs())
    }

    /// Whether `(iss, jti)` was seen and has not expired, without recording it.
    pub fn peek(&self, iss: &str, jti: &str) -> ReplayOutcome {
        let now = now_secs();
        match self.seen.get(&(iss.to_string(), jti.to_string())) {
            Some(exp) if *exp > now => ReplayOutcome::Replayed,
            _ => ReplayOutcome::Fresh,
        }
    }

    fn check_and_record_at(&self, iss: &str, jti: &str, expires: f64, now: f64) -> ReplayOutcome {
        if self.seen.len() >= self.capacity {
            self.seen.retain(|_, exp| *exp > now);
            if self.seen.len() >= self.capacity {
                return ReplayOutcome::Full;
            }
        }
        match self.seen.entry((iss.to_string(), jti.to_string())) {
            dashmap::Entry::Occupied(mut e) => {
                if *e.get() > now {
                    ReplayOutcome::Replayed
                } else {
                    e.insert(expires);
                    ReplayOutcome::Fresh
                }
            }
            dashmap::Entry::Vacant(e) => {
                e.insert(expires);
                ReplayOutcome::Fresh
            }
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_sighting_is_a_replay_until_expiry() {
        let c = ReplayCache::new(10);
        assert_eq!(
            c.check_and_record_at("i", "j", 100.0, 10.0),
            ReplayOutcome::Fresh
        );
        assert_eq!(
            c.check_and_record_at("i", "j", 100.0, 20.0),
            ReplayOutcome::Replayed
        );
        assert_eq!(
            c.check_and_record_at("other", "j", 100.0, 20.0),
            ReplayOutcome::Fresh
        );
        assert_eq!(
            c.check_and_record_at("i", "j", 200.0, 101.0),
            ReplayOutcome::Fresh
        );
    }

    #[test]
    fn peek_does_not_record() {
        let c = ReplayCache::new(10);
        assert_eq!(c.peek("i", "j"), ReplayOutcome::Fresh);
        assert_eq!(c.peek("i", "j"), ReplayOutcome::Fresh);
        assert!(c.is_empty());
        c.check_and_record("i", "j", f64::MAX);
        assert_eq!(c.peek("i", "j"), ReplayOutcome::Replayed);
    }

    #[test]
    fn bounded_and_expired_entries_leave() {
        let c = ReplayCache::new(2);
        assert_eq!(
            c.check_and_record_at("i", "a", 50.0, 10.0),
            ReplayOutcome::Fresh
        );
        assert_eq!(
            c.check_and_record_at("i", "b", 100.0, 10.0),
            ReplayOutcome::Fresh
        );
        assert_eq!(
            c.check_and_record_at("i", "c", 100.0, 10.0),
            ReplayOutcome::Full
        );
        assert_eq!(
            c.check_and_record_at("i", "c", 100.0, 60.0),
            ReplayOutcome::Fresh
        );
        assert_eq!(c.len(), 2);
    }
}
