//! The answer cache of one tenant's introspection endpoint: answers keyed by the SHA-256
//! of the token (the token itself is never stored), each kept for the time the pure
//! [`answer_ttl`] rule gives it, bounded in entries, with hit and miss counters.
//!
//! Expired entries are dropped as new answers arrive (a few per insert, oldest expiry
//! first), so memory follows the answers that are still fresh, not the capacity: random
//! tokens from callers cannot grow it to the cap and leave it there. When full, the entry
//! that expires soonest goes (the least time it could still have been served). Active
//! answers all live `cache_ttl` at most, so that is close to "oldest first".

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aws_lc_rs::digest;
use tokio::time::Instant;

use super::answer::Answer;

/// The key of an entry: SHA-256 of the token.
type Key = [u8; 32];

/// SHA-256 of a token: the key of its cached answer, here and in the fleet's store.
pub fn key_of(token: &str) -> Key {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(d.as_ref());
    key
}

/// How long an upstream answer may be served from the cache: an active one no longer
/// than `cache_ttl` nor past its `exp` (none at all when `exp` has passed), an inactive
/// one `negative_ttl`. `now` is seconds since the epoch.
pub fn answer_ttl(
    answer: &Answer,
    now: f64,
    cache_ttl: Duration,
    negative_ttl: Duration,
) -> Duration {
    if !answer.active {
        return negative_ttl;
    }
    match answer.exp {
        None => cache_ttl,
        Some(exp) => {
            let remaining = exp as f64 - now;
            if remaining.is_nan() || remaining <= 0.0 {
                Duration::ZERO
            } else {
                // `as_secs_f64` of a huge ttl rounds up past `Duration::MAX`.
                Duration::try_from_secs_f64(remaining.min(cache_ttl.as_secs_f64()))
                    .unwrap_or(cache_ttl)
            }
        }
    }
}

struct Entry {
    expires: Instant,
    seq: u64,
    answer: Arc<Answer>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// (expiry, insertion sequence) -> key, to find expired and soonest-expiring entries.
    by_expiry: BTreeMap<(Instant, u64), Key>,
    seq: u64,
}

/// Most expired entries one insert drops: more than the one it adds, so a backlog
/// shrinks, and bounded, so no insert pays for a long backlog at once.
const PURGE_PER_INSERT: usize = 16;

impl Inner {
    /// Drops up to `max` expired entries, the longest expired first.
    fn purge_expired(&mut self, now: Instant, max: usize) {
        for _ in 0..max {
            match self.by_expiry.first_key_value() {
                Some((&(expires, _), &key)) if expires <= now => self.remove(&key),
                _ => return,
            }
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.by_expiry.remove(&(e.expires, e.seq));
        }
    }

    /// Makes room for one entry: expired entries first, then the soonest to expire.
    fn make_room(&mut self, capacity: usize, now: Instant) -> u64 {
        let mut evicted = 0;
        while let Some((&(expires, _), &key)) = self.by_expiry.first_key_value() {
            if expires > now {
                break;
            }
            self.remove(&key);
            evicted += 1;
        }
        while self.entries.len() >= capacity {
            let Some((_, key)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&key);
            evicted += 1;
        }
        evicted
    }
}

/// A bounded cache of introspection answers (one per tenant).
pub struct AnswerCache {
    capacity: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish()
    }
}

impl AnswerCache {
    /// A cache of at most `capacity` answers; 0 turns caching off.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached answer for `token`, if one is still fresh; counts a hit or a miss.
    pub fn get(&self, token: &str) -> Option<Arc<Answer>> {
        let key = key_of(token);
        let now = Instant::now();
        let found = {
            let mut inner = self.lock();
            match inner.entries.get(&key) {
                Some(e) if e.expires > now => Some(e.answer.clone()),
                Some(_) => {
                    inner.remove(&key);
                    None
                }
                None => None,
            }
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches `answer` for `token` for `ttl` (nothing when `ttl` is zero or the cache is
    /// off), evicting per the module's policy when full.
    pub fn insert(&self, token: &str, answer: Arc<Answer>, ttl: Duration) {
        if ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let key = key_of(token);
        let now = Instant::now();
        // A ttl too long to add to an Instant is not cached rather than panicking.
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        let evicted = {
            let mut inner = self.lock();
            inner.remove(&key);
            inner.purge_expired(now, PURGE_PER_INSERT);
            let evicted = if inner.entries.len() >= self.capacity {
                inner.make_room(self.capacity, now)
            } else {
                0
            };
            inner.seq += 1;
            let seq = inner.seq;
            inner.by_expiry.insert((expires, seq), key);
            inner.entries.insert(
                key,
                Entry {
                    expires,
                    seq,
                    answer,
                },
            );
            evicted
        };
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// Counts a lookup answered elsewhere (the fleet's store): a hit or a miss.
    pub fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups the cache could not answer.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Entries removed to make room (expired or not).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Entries held now (expired ones included until new answers or lookups drop them).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(exp: Option<i64>) -> Answer {
        Answer {
            active: true,
            exp,
            ..Answer::default()
        }
    }

    const MIN: Duration = Duration::from_secs(60);
    const NEG: Duration = Duration::from_secs(10);

    #[test]
    fn enormous_ttls_neither_panic_nor_cache_forever() {
        assert_eq!(
            answer_ttl(&active(Some(i64::MAX)), -1e19, Duration::MAX, NEG),
            Duration::MAX,
            "a remaining time past Duration::MAX is capped, not a panic"
        );
        let cache = AnswerCache::new(4);
        cache.insert("t", Arc::new(active(None)), Duration::MAX);
        assert!(cache.get("t").is_none(), "not cached rather than a panic");
    }

    #[test]
    fn ttl_rule() {
        assert_eq!(answer_ttl(&Answer::inactive(), 1000.0, MIN, NEG), NEG);
        assert_eq!(answer_ttl(&active(None), 1000.0, MIN, NEG), MIN);
        assert_eq!(
            answer_ttl(&active(Some(5000)), 1000.0, MIN, NEG),
            MIN,
            "cache_ttl caps"
        );
        assert_eq!(
            answer_ttl(&active(Some(1030)), 1000.0, MIN, NEG),
            Duration::from_secs(30),
            "exp caps"
        );
        assert_eq!(
            answer_ttl(&active(Some(1000)), 1000.0, MIN, NEG),
            Duration::ZERO,
            "expired now"
        );
        assert_eq!(
            answer_ttl(&active(Some(10)), 1000.0, MIN, NEG),
            Duration::ZERO,
            "expired long ago"
        );
        assert_eq!(
            answer_ttl(&active(Some(1001)), 1000.5, MIN, NEG),
            Duration::from_millis(500),
            "fractional now"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hits_misses_and_expiry() {
        let c = AnswerCache::new(10);
        assert!(c.get("t").is_none());
        c.insert("t", Arc::new(active(None)), Duration::from_secs(5));
        assert!(c.get("t").is_some_and(|a| a.active));
        assert_eq!((c.hits(), c.misses()), (1, 1));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(c.get("t").is_none(), "expired exactly at its ttl");
        assert_eq!((c.hits(), c.misses()), (1, 2));
        assert!(c.is_empty(), "an expired entry is dropped when touched");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ttl_and_zero_capacity_store_nothing() {
        let c = AnswerCache::new(10);
        c.insert("t", Arc::new(active(None)), Duration::ZERO);
        assert!(c.is_empty());
        let off = AnswerCache::new(0);
        off.insert("t", Arc::new(active(None)), MIN);
        assert!(off.get("t").is_none());
        assert_eq!(off.misses(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_expired_first_then_soonest_to_expire() {
        let c = AnswerCache::new(3);
        c.insert("short", Arc::new(active(None)), Duration::from_secs(1));
        c.insert("long", Arc::new(active(None)), Duration::from_secs(100));
        c.insert("mid", Arc::new(active(None)), Duration::from_secs(50));
        tokio::time::advance(Duration::from_secs(2)).await;
        c.insert("new1", Arc::new(active(None)), Duration::from_secs(100));
        assert_eq!(c.len(), 3);
        assert_eq!(c.evictions(), 0, "an expired entry is dropped, not evicted");
        assert!(c.get("short").is_none(), "the expired entry went first");
        c.insert("new2", Arc::new(active(None)), Duration::from_secs(100));
        assert_eq!(c.len(), 3);
        assert_eq!(c.evictions(), 1);
        assert!(c.get("mid").is_none(), "then the one expiring soonest");
        for kept in ["long", "new1", "new2"] {
            assert!(c.get(kept).is_some(), "{kept}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expired_answers_do_not_pile_up_below_the_capacity() {
        let c = AnswerCache::new(100_000);
        for round in 0..50 {
            for i in 0..100 {
                c.insert(&format!("t{round}-{i}"), Arc::new(Answer::inactive()), NEG);
            }
            tokio::time::advance(NEG).await;
        }
        assert!(
            c.len() <= 200,
            "memory follows the fresh answers, not the capacity: {} held",
            c.len()
        );
        assert_eq!(c.evictions(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn reinserting_replaces_without_growing() {
        let c = AnswerCache::new(2);
        c.insert("t", Arc::new(Answer::inactive()), NEG);
        c.insert("t", Arc::new(active(None)), MIN);
        assert_eq!(c.len(), 1);
        assert!(c.get("t").is_some_and(|a| a.active));
        tokio::time::advance(NEG).await;
        assert!(c.get("t").is_some(), "the old expiry was replaced");
    }

    #[test]
    fn keys_are_digests_not_tokens() {
        assert_eq!(key_of("abc").len(), 32);
        assert_ne!(key_of("abc"), key_of("abd"));
        assert!(!format!("{:?}", AnswerCache::new(1)).contains("abc"));
    }
}
