//! Replay detection: remembers `(iss, jti)` of accepted tokens until they expire. Keyed
//! by the claims, never by the token bytes (an ECDSA signature can be re-encoded), and
//! bounded in entries: expired entries leave through an index ordered by expiry and
//! then by arrival (O(log n) per token, integer comparisons only: most entries share
//! their expiry second, and comparing their keys meant comparing long strings), and
//! when the cache is full of live entries new tokens are refused rather than letting
//! memory grow or forgetting a token that could still be replayed.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tracing::warn;

use crate::jwt::claims::now_secs;
pub(super) use crate::shared::ReplayOutcome;

type Key = Arc<(String, String)>;

/// The entries and their expiry index, always changed together under one lock.
#[derive(Debug, Default)]
struct Entries {
    /// `(iss, jti)` -> expiry, whole seconds since the epoch (rounded up).
    seen: HashMap<Key, i64>,
    /// The same entries by (expiry, arrival number), so the expired ones are found
    /// first.
    by_expiry: BTreeMap<(i64, u64), Key>,
    /// The next arrival number.
    arrivals: u64,
}

impl Entries {
    /// Drops every entry whose expiry is not after `now`.
    fn expire(&mut self, now: f64) {
        while let Some(((exp, _), _)) = self.by_expiry.first_key_value()
            && (*exp as f64) <= now
        {
            if let Some((_, key)) = self.by_expiry.pop_first() {
                self.seen.remove(&key);
            }
        }
    }
}

/// A bounded `(iss, jti) -> exp` set with its own size, refusal and warning bookkeeping.
#[derive(Debug)]
pub struct ReplayCache {
    tenant: String,
    entries: Mutex<Entries>,
    capacity: usize,
    refusals: AtomicU64,
    warned: AtomicBool,
}

/// An expiry in whole seconds, rounded up so that an entry never leaves early.
fn whole_seconds(expires: f64) -> i64 {
    // `as` saturates (and maps NaN to 0); claims are range-checked before this anyway.
    expires.ceil() as i64
}

impl ReplayCache {
    /// The cache of `tenant` (named in its log line), holding at most `capacity` entries.
    pub fn new(tenant: &str, capacity: usize) -> Self {
        Self {
            tenant: tenant.to_string(),
            entries: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
            refusals: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }

    /// Records `(iss, jti)` valid until `expires` (the token's `exp` plus skew, seconds
    /// since the epoch).
    pub fn check_and_record(&self, iss: &str, jti: &str, expires: f64) -> ReplayOutcome {
        self.check_and_record_at(iss, jti, expires, now_secs())
    }

    /// Whether `(iss, jti)` was seen and has not expired, without recording it.
    pub fn peek(&self, iss: &str, jti: &str) -> ReplayOutcome {
        let now = now_secs();
        let entries = self.lock();
        match entries.seen.get(&(iss.to_string(), jti.to_string())) {
            Some(exp) if (*exp as f64) > now => ReplayOutcome::Replayed,
            _ => ReplayOutcome::Fresh,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_and_record_at(&self, iss: &str, jti: &str, expires: f64, now: f64) -> ReplayOutcome {
        let len = {
            let mut entries = self.lock();
            entries.expire(now);
            let key = (iss.to_string(), jti.to_string());
            if entries.seen.contains_key(&key) {
                return ReplayOutcome::Replayed;
            }
            if entries.seen.len() >= self.capacity {
                drop(entries);
                self.refusals.fetch_add(1, Ordering::Relaxed);
                return ReplayOutcome::Full;
            }
            let key = Arc::new(key);
            let exp = whole_seconds(expires);
            entries.seen.insert(key.clone(), exp);
            let arrival = entries.arrivals;
            entries.arrivals = arrival.wrapping_add(1);
            entries.by_expiry.insert((exp, arrival), key);
            entries.seen.len()
        };
        self.warn_when_nearly_full(len);
        ReplayOutcome::Fresh
    }

    /// Logs once when the cache passes 90 % of its capacity; armed again once it is back
    /// under 80 %, so an operator hears of each episode once, not of every token.
    fn warn_when_nearly_full(&self, len: usize) {
        let high = self.capacity - self.capacity / 10;
        let low = self.capacity - self.capacity / 5;
        if len >= high {
            if !self.warned.swap(true, Ordering::Relaxed) {
                warn!(
                    tenant = %self.tenant,
                    entries = len,
                    capacity = self.capacity,
                    "replay cache is over 90% full; when full, new tokens are refused as REPLAYED (raise replay_cache_entries)"
                );
            }
        } else if len < low {
            self.warned.store(false, Ordering::Relaxed);
        }
    }

    /// Entries held now (expired ones included until the next token clears them).
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens refused because the cache was full of live entries.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_sighting_is_a_replay_until_expiry() {
        let c = ReplayCache::new("t", 10);
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
            c.check_and_record_at("i", "j", 200.0, 100.0),
            ReplayOutcome::Fresh
        );
        assert_eq!(
            c.check_and_record_at("i", "j", 200.0, 150.0),
            ReplayOutcome::Replayed,
            "the new expiry is in force"
        );
    }

    #[test]
    fn fractional_expiry_is_rounded_up_never_down() {
        let c = ReplayCache::new("t", 10);
        c.check_and_record_at("i", "j", 100.2, 10.0);
        assert_eq!(
            c.check_and_record_at("i", "j", 100.2, 100.5),
            ReplayOutcome::Replayed
        );
    }

    #[test]
    fn peek_does_not_record() {
        let c = ReplayCache::new("t", 10);
        assert_eq!(c.peek("i", "j"), ReplayOutcome::Fresh);
        assert_eq!(c.peek("i", "j"), ReplayOutcome::Fresh);
        assert!(c.is_empty());
        c.check_and_record("i", "j", 253_402_300_799.0);
        assert_eq!(c.peek("i", "j"), ReplayOutcome::Replayed);
    }

    #[test]
    fn bounded_refusals_counted_and_expired_entries_leave_in_order() {
        let c = ReplayCache::new("t", 2);
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
        assert_eq!(c.refusals(), 1);
        assert_eq!(
            c.check_and_record_at("i", "b", 100.0, 10.0),
            ReplayOutcome::Replayed,
            "a replay is a replay, full or not"
        );
        assert_eq!(c.refusals(), 1);
        // At 60 only `a` has expired: it leaves, `c` takes its place.
        assert_eq!(
            c.check_and_record_at("i", "c", 100.0, 60.0),
            ReplayOutcome::Fresh
        );
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.check_and_record_at("i", "b", 100.0, 60.0),
            ReplayOutcome::Replayed
        );
        assert_eq!(c.capacity(), 2);
    }

    #[test]
    fn the_index_and_the_map_agree() {
        let c = ReplayCache::new("t", 1000);
        for i in 0..500u32 {
            let exp = f64::from(i % 37) * 10.0;
            c.check_and_record_at("i", &i.to_string(), exp, 0.0);
        }
        c.check_and_record_at("i", "last", 1000.0, 185.0);
        let e = c.lock();
        assert_eq!(e.seen.len(), e.by_expiry.len());
        assert!(e.by_expiry.keys().all(|(exp, _)| *exp > 185));
        assert!(
            e.by_expiry
                .iter()
                .all(|((exp, _), k)| e.seen.get(k.as_ref()) == Some(exp))
        );
    }

    #[test]
    fn the_warning_is_armed_again_only_after_the_cache_drained() {
        let c = ReplayCache::new("t", 10);
        c.warn_when_nearly_full(9);
        assert!(c.warned.load(Ordering::Relaxed));
        c.warn_when_nearly_full(8);
        assert!(c.warned.load(Ordering::Relaxed), "still over 80 %");
        c.warn_when_nearly_full(7);
        assert!(!c.warned.load(Ordering::Relaxed));
    }
}
