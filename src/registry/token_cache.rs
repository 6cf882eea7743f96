//! The verified-token cache: what parsing and signature verification produced for a
//! token (its header, claims, the key that verified it), keyed by the SHA-256 of the
//! token's bytes, so that a token presented again costs a hash and a lookup instead of a
//! parse and a signature. Entries live until the token's `exp` (plus skew), at most
//! `max_ttl`; the cache is bounded in bytes (each entry weighs what it holds) and in
//! entries. A short negative cache remembers tokens whose signature failed, so that a
//! flood of one forged token costs one verification.
//!
//! An entry is only ever a shortcut for steps 2 and 9-10 of Validate: the caller still
//! routes and runs every per-call check on a hit, and an entry is used only while the
//! key that verified it is still in its key set. Entries can be purged by key, by token,
//! by `(iss, jti)`, by `(iss, sub, issued before)`, or all at once.

use std::{
    hash::{BuildHasher, Hash, Hasher},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use aws_lc_rs::digest;
use jsonwebtoken::Algorithm;
use quick_cache::{Lifecycle, Weighter, sync::Cache};
use tokio_util::sync::CancellationToken;

use super::{KeySetId, KeySetState, Registry};
use crate::{
    config::TokenCacheSettings,
    jwt::{ErrorCode, Rejection, claims::Claims, jws::Header},
    keys::{KeySet, MAX_KIDLESS_CANDIDATES, VerifyingKey},
    shared::RevocationRule,
};

/// The SHA-256 of a token's bytes: the cache key, and what a revocation "by token hash"
/// names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The SHA-256 of `token`.
    pub fn of(token: &str) -> Self {
        Self(sha256(token.as_bytes()))
    }
}

impl Hash for TokenHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // A SHA-256 is already uniform and cannot be steered by whoever chose the token,
        // so its first eight bytes are the map hash.
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Hashes a [`TokenHash`] by taking the `u64` it writes as is.
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than `TokenHash`; mix them in so it stays a hash.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01B3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Builds [`DigestHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHash;

impl BuildHasher for DigestHash {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// The 32 bytes a lower-case (or upper-case) hex SHA-256 names; `None` if it is not one.
pub(crate) fn digest_from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    bytes_of(&digest::digest(&digest::SHA256, bytes))
}

/// The 32 bytes of a SHA-256 digest (of a longer digest, its first 32; every caller
/// passes a SHA-256).
pub fn bytes_of(d: &digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(d.as_ref()) {
        *o = *b;
    }
    out
}

/// What parsing and verification produced for one token. Only what a later call needs
/// is kept, each in its smallest form: the header's `alg` as the [`Algorithm`] it parsed
/// as (its name is [`VerifiedToken::alg_name`]), `kid` as a flag (the key it names has
/// it), `typ` as a boxed string.
#[derive(Debug)]
pub struct VerifiedToken {
    /// `typ` from the header.
    pub typ: Option<Box<str>>,
    /// The algorithm its signature was verified with (the header's `alg`).
    pub algorithm: Algorithm,
    /// Whether the header had a `kid`: then it is the kid of [`Self::key`], which was
    /// looked up by it.
    kid_in_header: bool,
    /// Its claims.
    pub claims: Claims,
    /// The key that verified the signature.
    pub key: Arc<VerifyingKey>,
    /// The key set that key was found in.
    pub key_set: Arc<KeySetState>,
    /// SHA-256 of its signed part (`header.payload`): what a revocation rule by token
    /// digest names ([`super::token_digest`]), computed once per verification.
    pub signed_sha256: [u8; 32],
    /// Seconds since the epoch at which the entry stops being used.
    pub(crate) expires: f64,
}

/// Every algorithm jsonwebtoken verifies, with its JOSE name (`Algorithm` is
/// `non_exhaustive` and has no `as_str`).
const ALG_NAMES: [(Algorithm, &str); 12] = [
    (Algorithm::HS256, "HS256"),
    (Algorithm::HS384, "HS384"),
    (Algorithm::HS512, "HS512"),
    (Algorithm::ES256, "ES256"),
    (Algorithm::ES384, "ES384"),
    (Algorithm::RS256, "RS256"),
    (Algorithm::RS384, "RS384"),
    (Algorithm::RS512, "RS512"),
    (Algorithm::PS256, "PS256"),
    (Algorithm::PS384, "PS384"),
    (Algorithm::PS512, "PS512"),
    (Algorithm::EdDSA, "EdDSA"),
];

/// Bytes a cache slot, the `Arc` and the allocator add to each entry beyond what it
/// holds (measured with `cargo bench --bench grpc_load`: RSS growth per entry).
pub const ENTRY_OVERHEAD_BYTES: usize = 160;

impl VerifiedToken {
    /// The entry for a token whose signature `key` (found in `key_set`) verified; the
    /// header's `kid` and `typ` are moved out of `header`, its `alg` is `algorithm`.
    pub fn new(
        header: Header,
        algorithm: Algorithm,
        claims: Claims,
        key: Arc<VerifyingKey>,
        key_set: Arc<KeySetState>,
        signed_sha256: [u8; 32],
        expires: f64,
    ) -> Self {
        debug_assert!(
            header.kid.is_none() || header.kid == key.kid,
            "a key found by kid has that kid"
        );
        Self {
            kid_in_header: header.kid.is_some(),
            typ: header.typ.map(String::into_boxed_str),
            algorithm,
            claims,
            key,
            key_set,
            signed_sha256,
            expires,
        }
    }

    /// What the entry costs in memory, as the cache weighs it.
    pub fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.claims.heap_bytes()
            + self.typ.as_ref().map_or(0, |s| s.len())
            + ENTRY_OVERHEAD_BYTES
    }

    /// `kid` from the header.
    pub fn kid(&self) -> Option<&str> {
        self.key.kid.as_deref().filter(|_| self.kid_in_header)
    }

    /// The header's `alg` as written: the exact name of [`Self::algorithm`] (only a
    /// header whose `alg` parsed as one is ever verified).
    pub fn alg_name(&self) -> &'static str {
        ALG_NAMES
            .iter()
            .find(|(a, _)| *a == self.algorithm)
            .map_or("", |(_, name)| name)
    }

    /// Step 4 on a cached token: its algorithm against the tenant's allow-list (the
    /// header had no unsupported parameter, or it would not have been verified).
    pub fn check_algorithm(&self, allowed: &[Algorithm]) -> Result<Algorithm, Rejection> {
        if allowed.contains(&self.algorithm) {
            Ok(self.algorithm)
        } else {
            Err(Rejection::new(
                ErrorCode::AlgorithmNotAllowed,
                format!("alg {:?} is not allowed for this issuer", self.algorithm),
            ))
        }
    }

    /// Whether the key that verified this token is still in `keys` (the key set's
    /// current snapshot) and would be chosen for it again.
    pub fn key_is_current(&self, keys: &KeySet) -> bool {
        let same = |k: &Arc<VerifyingKey>| Arc::ptr_eq(k, &self.key) || **k == *self.key;
        match self.kid() {
            Some(kid) => keys.get(kid).is_some_and(same),
            None => {
                let candidates = || keys.iter().filter(|k| k.supports(self.algorithm));
                candidates().count() <= MAX_KIDLESS_CANDIDATES && candidates().any(same)
            }
        }
    }
}

/// A token whose signature did not verify against a key-set snapshot.
#[derive(Debug, Clone)]
pub struct Forged {
    /// The snapshot it failed against: the verdict stands only while that snapshot is
    /// current (a `Weak`, so its address cannot be reused by a later one).
    pub snapshot: Weak<KeySet>,
    expires: f64,
}

impl Forged {
    /// Whether `current` is the snapshot the signature failed against.
    pub fn is_current(&self, current: &Arc<KeySet>) -> bool {
        std::ptr::eq(self.snapshot.as_ptr(), Arc::as_ptr(current))
    }
}

/// What the cache knows of a token.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Verified before.
    Verified(Arc<VerifiedToken>),
    /// Its signature failed before.
    Forged(Forged),
    /// Nothing (or only expired entries).
    Miss,
}

/// Approximate weight of a negative entry (key, value, slot).
const FORGED_WEIGHT: u64 = 96;
/// Share of the byte budget the negative cache may use (forged floods cannot evict
/// verified tokens: the two caches are separate).
const NEGATIVE_SHARE: u64 = 16;

#[derive(Debug, Clone)]
struct Weigh {
    floor: u64,
}

impl Weighter<TokenHash, Arc<VerifiedToken>> for Weigh {
    fn weight(&self, _: &TokenHash, v: &Arc<VerifiedToken>) -> u64 {
        // The floor makes `max_bytes / max_entries` the least an entry weighs, which
        // bounds the number of entries as well as their bytes.
        (v.weight() as u64).max(self.floor)
    }
}

#[derive(Debug, Clone)]
struct WeighForged;

impl Weighter<TokenHash, Forged> for WeighForged {
    fn weight(&self, _: &TokenHash, _: &Forged) -> u64 {
        FORGED_WEIGHT
    }
}

/// Counts evictions; evicted values are dropped after the shard lock is released, as
/// quick_cache's default lifecycle does.
#[derive(Debug, Clone)]
struct CountEvictions(Arc<AtomicU64>);

impl<K, V> Lifecycle<K, V> for CountEvictions {
    type RequestState = [Option<(K, V)>; 2];

    fn on_evict(&self, state: &mut Self::RequestState, key: K, val: V) {
        self.0.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = state.iter_mut().find(|s| s.is_none()) {
            *slot = Some((key, val));
        }
    }
}

type Verified = Cache<TokenHash, Arc<VerifiedToken>, Weigh, DigestHash, CountEvictions>;
type ForgedCache = Cache<TokenHash, Forged, WeighForged, DigestHash, CountEvictions>;

/// Counters and sizes of the cache, read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCacheStats {
    /// Lookups that found a verified token.
    pub hits: u64,
    /// Lookups that found a token whose signature failed.
    pub forged_hits: u64,
    /// Lookups that found nothing usable.
    pub misses: u64,
    /// Entries dropped to stay within the bounds.
    pub evictions: u64,
    /// Verified entries held.
    pub entries: u64,
    /// Their weight in bytes.
    pub bytes: u64,
    /// Negative entries held.
    pub forged_entries: u64,
}

/// The verified-token cache of one registry.
#[derive(Debug)]
pub struct TokenCache {
    settings: TokenCacheSettings,
    verified: Verified,
    forged: ForgedCache,
    hits: AtomicU64,
    forged_hits: AtomicU64,
    misses: AtomicU64,
    evictions: Arc<AtomicU64>,
}

impl TokenCache {
    /// An empty cache within `settings`' bounds.
    pub fn new(settings: TokenCacheSettings) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let max_entries = settings.max_entries.max(1);
        let floor = (settings.max_bytes / max_entries).max(1);
        // Sized for what fits, so that the tables do not grow under load; the memory is
        // only touched as entries arrive.
        let estimated = (settings.max_bytes / 1024).max(64).min(max_entries);
        let verified = Cache::with(
            usize::try_from(estimated).unwrap_or(usize::MAX),
            settings.max_bytes.max(1),
            Weigh { floor },
            DigestHash,
            CountEvictions(evictions.clone()),
        );
        let forged_bytes = (settings.max_bytes / NEGATIVE_SHARE).max(FORGED_WEIGHT);
        let forged = Cache::with(
            64,
            forged_bytes,
            WeighForged,
            DigestHash,
            CountEvictions(evictions.clone()),
        );
        Self {
            settings,
            verified,
            forged,
            hits: AtomicU64::new(0),
            forged_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions,
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &TokenCacheSettings {
        &self.settings
    }

    /// What the cache holds for `hash` at `now` (seconds since the epoch). Expired
    /// entries are removed and count as a miss.
    pub fn get(&self, hash: &TokenHash, now: f64) -> Lookup {
        if let Some(v) = self.verified.get(hash) {
            if now < v.expires {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Lookup::Verified(v);
            }
            self.verified.remove(hash);
        } else if let Some(f) = self.forged.get(hash) {
            if now < f.expires {
                self.forged_hits.fetch_add(1, Ordering::Relaxed);
                return Lookup::Forged(f);
            }
            self.forged.remove(hash);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        Lookup::Miss
    }

    /// Until when a token verified at `now` is used: its `exp` plus `clock_skew`, at
    /// most `max_ttl` from now.
    pub fn expiry(&self, claims: &Claims, clock_skew: Duration, now: f64) -> f64 {
        let ceiling = now + self.settings.max_ttl.as_secs_f64();
        match claims.exp {
            Some(exp) => (exp + clock_skew.as_secs_f64()).min(ceiling),
            None => ceiling,
        }
    }

    /// Caches a verified token until `expires`; returns it shared.
    pub fn insert(&self, hash: TokenHash, token: VerifiedToken) -> Arc<VerifiedToken> {
        let token = Arc::new(token);
        if self.settings.enabled {
            self.forged.remove(&hash);
            self.verified.insert(hash, token.clone());
        }
        token
    }

    /// Remembers that `hash`'s signature failed against `snapshot`, for `negative_ttl`.
    pub fn insert_forged(&self, hash: TokenHash, snapshot: &Arc<KeySet>, now: f64) {
        if self.settings.enabled && !self.settings.negative_ttl.is_zero() {
            let forged = Forged {
                snapshot: Arc::downgrade(snapshot),
                expires: now + self.settings.negative_ttl.as_secs_f64(),
            };
            self.forged.insert(hash, forged);
        }
    }

    /// Forgets the token with this hash (verified or forged); true if it was held.
    pub fn purge_token(&self, hash: &TokenHash) -> bool {
        let verified = self.verified.remove(hash).is_some();
        self.forged.remove(hash).is_some() || verified
    }

    /// Forgets every verified token matching `f`; returns how many.
    pub fn purge_where(&self, f: impl Fn(&VerifiedToken) -> bool) -> usize {
        let purged = AtomicUsize::new(0);
        self.verified.retain(|_, v| {
            let drop = f(v);
            if drop {
                purged.fetch_add(1, Ordering::Relaxed);
            }
            !drop
        });
        purged.into_inner()
    }

    /// Forgets the verified tokens a revocation rule matches; returns how many.
    pub fn purge_revoked(&self, rule: &RevocationRule) -> usize {
        match rule {
            RevocationRule::Token { sha256 } => match digest_from_hex(sha256) {
                Some(d) => self.purge_where(|v| v.signed_sha256 == d),
                None => 0,
            },
            RevocationRule::Jti { iss, jti } => self.purge_where(|v| {
                v.claims.iss() == Some(iss.as_str()) && v.claims.jti() == Some(jti.as_str())
            }),
            RevocationRule::Subject {
                iss,
                sub,
                issued_before,
            } => {
                // As the rule matches: tokens without `iat` too, as they may be older.
                let before = *issued_before as f64;
                self.purge_where(|v| {
                    let claims = &v.claims;
                    claims.iss() == Some(iss.as_str())
                        && claims.sub() == Some(sub.as_str())
                        && claims.iat.is_none_or(|iat| iat < before)
                })
            }
        }
    }

    /// Forgets everything.
    pub fn purge_all(&self) {
        self.verified.clear();
        self.forged.clear();
    }

    /// Forgets entries that expired by `now`; returns how many verified ones.
    pub fn purge_expired(&self, now: f64) -> usize {
        self.forged.retain(|_, f| now < f.expires);
        self.purge_where(|v| now >= v.expires)
    }

    /// Counters and sizes now.
    pub fn stats(&self) -> TokenCacheStats {
        TokenCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            forged_hits: self.forged_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: self.verified.len() as u64,
            bytes: self.verified.weight(),
            forged_entries: self.forged.len() as u64,
        }
    }
}

/// Purges: plain methods for what revokes tokens or removes keys (an operator, a
/// revocation rule, a key set shared by a fleet). Each returns how many verified
/// entries it dropped; without a cache there is nothing to drop.
impl Registry {
    /// Drops tokens verified by keys that have left `state`'s current snapshot.
    pub(crate) fn purge_removed_keys(&self, state: &KeySetState) -> usize {
        let Some(cache) = self.token_cache() else {
            return 0;
        };
        let keys = state.keys();
        cache.purge_where(|v| std::ptr::eq(&*v.key_set, state) && !v.key_is_current(&keys))
    }

    /// Drops tokens verified by the key of key set `id` whose RFC 7638 thumbprint or
    /// `kid` is `key`.
    pub fn purge_key(&self, id: &KeySetId, key: &str) -> usize {
        let Some(cache) = self.token_cache() else {
            return 0;
        };
        cache.purge_where(|v| {
            v.key_set.id == *id && (v.key.thumbprint == key || v.key.kid.as_deref() == Some(key))
        })
    }

    /// Drops the token whose SHA-256 is `hash` (verified, or remembered as forged).
    pub fn purge_token(&self, hash: &TokenHash) -> bool {
        self.token_cache().is_some_and(|c| c.purge_token(hash))
    }

    /// Drops tokens with this `(iss, jti)`.
    pub fn purge_jti(&self, iss: &str, jti: &str) -> usize {
        self.token_cache().map_or(0, |c| {
            c.purge_where(|v| v.claims.iss() == Some(iss) && v.claims.jti() == Some(jti))
        })
    }

    /// Drops tokens of `sub` at `iss` issued before `issued_before` (seconds since the
    /// epoch); tokens without `iat` are dropped too, as they may be older.
    pub fn purge_subject(&self, iss: &str, sub: &str, issued_before: f64) -> usize {
        self.token_cache().map_or(0, |c| {
            c.purge_where(|v| {
                let claims = &v.claims;
                claims.iss() == Some(iss)
                    && claims.sub() == Some(sub)
                    && claims.iat.is_none_or(|iat| iat < issued_before)
            })
        })
    }

    /// Drops the tokens a revocation rule matches (what the rules' listener does for
    /// every new rule).
    pub fn purge_revoked(&self, rule: &RevocationRule) -> usize {
        self.token_cache().map_or(0, |c| c.purge_revoked(rule))
    }

    /// Drops every cached token.
    pub fn purge_all(&self) {
        if let Some(c) = self.token_cache() {
            c.purge_all();
        }
    }

    /// Drops entries past their time (the cache also drops them as they are looked up).
    pub fn purge_expired(&self) -> usize {
        self.token_cache()
            .map_or(0, |c| c.purge_expired(crate::jwt::claims::now_secs()))
    }

    /// Drops expired entries every `period` until `cancel`, so that tokens nobody presents
    /// again do not hold their bytes until evicted.
    pub async fn sweep_token_cache(self, period: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let n = self.purge_expired();
                    if n > 0 {
                        tracing::debug!(entries = n, "expired tokens dropped from the cache");
                    }
                }
            }
        }
    }
}

/// How often expired entries are swept out of the cache.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::{
        config,
        jwt::{ErrorCode, claims::now_secs},
        registry::{ValidateError, ValidateInput, Validated},
    };

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn registry(token_cache: &str) -> Registry {
        crate::install_crypto();
        let yaml = format!(
            "tenants:\n  - id: fp\n    issuer: https://fp.example\n    audiences: [api]\n    algorithms: [HS256]\n    hmac_secret_env: S\n{token_cache}"
        );
        let settings = config::load_str(&yaml, &|_| Some(SECRET.to_string()), &[]).expect("config");
        Registry::new(&settings).expect("registry")
    }

    fn token(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    }

    fn claims(sub: &str, jti: &str) -> serde_json::Value {
        let n = now_secs() as i64;
        json!({"iss": "https://fp.example", "aud": "api", "sub": sub, "jti": jti, "iat": n - 10, "exp": n + 600})
    }

    fn validate(r: &Registry, t: &str) -> Result<Validated, ValidateError> {
        let input = ValidateInput {
            token: t,
            ..Default::default()
        };
        futures::executor::block_on(r.validate(&input))
    }

    fn entries(r: &Registry) -> u64 {
        r.token_cache().map_or(0, |c| c.stats().entries)
    }

    /// An entry for tests of the cache alone, `sub` its subject.
    fn entry(r: &Registry, sub: &str, expires: f64) -> (TokenHash, VerifiedToken) {
        let t = token(claims(sub, sub));
        let jws = crate::jwt::jws::parse(&t).expect("jws");
        let state = r.key_sets().remove(0);
        let key = state.keys().iter().next().expect("key").clone();
        let verified = VerifiedToken::new(
            jws.header,
            jsonwebtoken::Algorithm::HS256,
            Claims::parse(&jws.payload).expect("claims"),
            key,
            state,
            sha256(jws.signing_input.as_bytes()),
            expires,
        );
        (TokenHash::of(&t), verified)
    }

    #[test]
    fn a_local_revocation_purges_what_it_matches_and_nothing_else() {
        use crate::registry::{RevokeInput, RevokeTarget, token_digest};
        let r = registry("");
        let iss = "https://fp.example".to_string();
        let t: Vec<String> = (0..5)
            .map(|i| token(claims(&format!("u{i}"), &format!("j{i}"))))
            .collect();
        for x in &t {
            assert!(!validate(&r, x).expect("valid").cached);
            assert!(validate(&r, x).expect("valid").cached);
        }
        assert_eq!(entries(&r), 5);
        let targets = [
            RevokeTarget::Token(t[0].clone()),
            RevokeTarget::TokenDigest(token_digest(&t[1])),
            RevokeTarget::Jti {
                iss: iss.clone(),
                jti: "j2".into(),
            },
            RevokeTarget::Subject {
                iss,
                sub: "u3".into(),
                issued_before: None,
            },
        ];
        for (i, target) in targets.into_iter().enumerate() {
            let input = RevokeInput {
                target,
                expires_at: None,
            };
            let before = entries(&r);
            let done = futures::executor::block_on(r.revoke(&input)).expect("revoke");
            assert!(!done.fleet_wide, "no shared_state: this replica only");
            // Purged at once, by the rule alone (no call of the token needed)...
            assert_eq!(entries(&r), before - 1, "rule {i}");
            // ... and it was this token: its next call is a miss, verified again and
            // refused (its signature is good, so it is cached again, and refused on
            // every hit by the rule).
            let misses = r.token_cache().map_or(0, |c| c.stats().misses);
            let err = validate(&r, &t[i]).expect_err("revoked");
            assert_eq!(err.code(), Some(ErrorCode::Revoked), "rule {i}");
            assert_eq!(r.token_cache().map_or(0, |c| c.stats().misses), misses + 1);
            let err = validate(&r, &t[i]).expect_err("still revoked");
            assert_eq!(err.code(), Some(ErrorCode::Revoked), "rule {i}, cached");
            assert!(validate(&r, &t[4]).expect("untouched").cached);
        }
    }

    #[test]
    fn alg_name_is_the_name_the_header_had() {
        let r = registry("");
        let (_, mut v) = entry(&r, "a", f64::MAX);
        for (alg, name) in ALG_NAMES {
            v.algorithm = alg;
            assert_eq!(v.alg_name(), name);
            assert_eq!(name.parse::<Algorithm>().ok(), Some(alg));
        }
    }

    #[test]
    fn hex_digests_parse_only_when_whole() {
        let d = sha256(b"abc");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest_from_hex(&hex), Some(d));
        assert_eq!(digest_from_hex(&hex.to_uppercase()), Some(d));
        assert_eq!(digest_from_hex(&hex[..62]), None);
        assert_eq!(digest_from_hex(&format!("{}zz", &hex[..62])), None);
        assert_eq!(digest_from_hex(&format!("{}é", &hex[..62])), None);
    }

    #[test]
    fn the_key_is_the_sha256_of_the_token() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.0[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
        assert_eq!(
            DigestHash.hash_one(h),
            u64::from_le_bytes([0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea])
        );
    }

    #[test]
    fn a_second_validation_is_a_hit_with_the_same_entry() {
        let r = registry("");
        let t = token(claims("u", "j"));
        let first = validate(&r, &t).expect("valid");
        let second = validate(&r, &t).expect("valid");
        assert!(!first.cached && second.cached);
        assert!(Arc::ptr_eq(&first.token, &second.token));
        let stats = r.token_cache().expect("on by default").stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
        assert!(stats.bytes >= second.token.weight() as u64);
    }

    #[test]
    fn bounded_in_entries_and_in_bytes() {
        // 64 KiB for at most 8 entries: each weighs at least 8 KiB.
        let r = registry("token_cache:\n  max_bytes: 64KiB\n  max_entries: 8\n");
        for i in 0..40 {
            validate(&r, &token(claims(&format!("u{i}"), &format!("j{i}")))).expect("valid");
        }
        let stats = r.token_cache().expect("cache").stats();
        assert!(stats.entries <= 8, "{stats:?}");
        assert!(stats.bytes <= 64 * 1024, "{stats:?}");
        assert!(stats.evictions >= 32, "{stats:?}");
        // Without the entry bound, the byte bound alone holds more of them.
        let r = registry("token_cache:\n  max_bytes: 64KiB\n");
        for i in 0..200 {
            validate(&r, &token(claims(&format!("u{i}"), &format!("j{i}")))).expect("valid");
        }
        let stats = r.token_cache().expect("cache").stats();
        assert!(stats.entries > 8 && stats.bytes <= 64 * 1024, "{stats:?}");
    }

    #[test]
    fn entries_are_used_until_exp_plus_skew_and_at_most_max_ttl() {
        let r = registry("token_cache:\n  max_ttl: 30s\n");
        let cache = r.token_cache().expect("cache");
        let skew = Duration::from_secs(60);
        let now = 1_000_000.0;
        let c = |exp: Option<f64>| {
            let mut v = json!({"iss": "i"});
            if let Some(e) = exp {
                v["exp"] = json!(e);
            }
            Claims::parse(v.to_string().as_bytes()).expect("claims")
        };
        assert_eq!(cache.expiry(&c(Some(now + 10.0)), skew, now), now + 30.0);
        assert_eq!(cache.expiry(&c(Some(now - 50.0)), skew, now), now + 10.0);
        assert_eq!(cache.expiry(&c(None), skew, now), now + 30.0);
        // Past its time an entry is a miss, and gone.
        let (hash, v) = entry(&r, "u", now_secs() - 1.0);
        cache.insert(hash, v);
        assert!(matches!(cache.get(&hash, now_secs()), Lookup::Miss));
        assert_eq!(cache.stats().entries, 0);
        let (hash, v) = entry(&r, "u", now_secs() + 100.0);
        cache.insert(hash, v);
        assert!(matches!(cache.get(&hash, now_secs()), Lookup::Verified(_)));
        assert_eq!(r.purge_expired(), 0);
    }

    #[test]
    fn a_forged_verdict_holds_only_for_the_snapshot_it_failed_against() {
        let r = registry("");
        let cache = r.token_cache().expect("cache");
        let snapshot = r.key_sets().remove(0).keys();
        let hash = TokenHash::of("forged");
        cache.insert_forged(hash, &snapshot, now_secs());
        let Lookup::Forged(f) = cache.get(&hash, now_secs()) else {
            panic!("remembered");
        };
        assert!(f.is_current(&snapshot));
        assert!(!f.is_current(&Arc::new(KeySet::empty())));
        let stats = cache.stats();
        assert_eq!((stats.forged_hits, stats.forged_entries), (1, 1));
        assert!(r.purge_token(&hash));
        assert!(matches!(cache.get(&hash, now_secs()), Lookup::Miss));
        // negative_ttl: 0s turns the negative cache off.
        let off = registry("token_cache:\n  negative_ttl: 0s\n");
        let c = off.token_cache().expect("cache");
        c.insert_forged(hash, &snapshot, now_secs());
        assert_eq!(c.stats().forged_entries, 0);
    }

    #[test]
    fn keys_stay_current_while_the_same_key_is_in_the_set() {
        let r = registry("");
        let (_, v) = entry(&r, "u", f64::MAX);
        assert!(v.key_is_current(&v.key_set.keys()));
        assert!(!v.key_is_current(&KeySet::empty()));
        // The same secret ingested again (a refresh builds new keys) is the same key.
        let same = VerifyingKey::hmac(None, SECRET.as_bytes(), &[Algorithm::HS256]).expect("key");
        let (set, _) = KeySet::from_keys(vec![same]);
        assert!(v.key_is_current(&set));
        let other = VerifyingKey::hmac(None, &[9u8; 32], &[Algorithm::HS256]).expect("key");
        let (set, _) = KeySet::from_keys(vec![other]);
        assert!(!v.key_is_current(&set));
    }

    #[test]
    fn purges_by_token_jti_subject_key_and_all() {
        let r = registry("");
        let n = now_secs() as i64;
        let t = |sub: &str, jti: &str, iat: i64| {
            let mut c = claims(sub, jti);
            c["iat"] = json!(iat);
            token(c)
        };
        let tokens = [
            t("alice", "a1", n - 100),
            t("alice", "a2", n - 5),
            t("bob", "b1", n),
        ];
        let fill = || {
            r.purge_all();
            for tok in &tokens {
                validate(&r, tok).expect("valid");
            }
            assert_eq!(entries(&r), 3);
        };
        fill();
        assert!(r.purge_token(&TokenHash::of(&tokens[2])));
        assert!(!r.purge_token(&TokenHash::of(&tokens[2])));
        assert_eq!(entries(&r), 2);
        assert!(
            !validate(&r, &tokens[2]).expect("valid").cached,
            "verified again"
        );
        fill();
        assert_eq!(r.purge_jti("https://fp.example", "a2"), 1);
        assert_eq!(r.purge_jti("https://other.example", "a1"), 0);
        fill();
        assert_eq!(
            r.purge_subject("https://fp.example", "alice", (n - 50) as f64),
            1
        );
        assert!(!validate(&r, &tokens[0]).expect("valid").cached);
        assert!(validate(&r, &tokens[1]).expect("valid").cached);
        fill();
        let id = r.key_sets().remove(0).id.clone();
        let thumbprint = r
            .key_sets()
            .remove(0)
            .keys()
            .iter()
            .next()
            .expect("key")
            .thumbprint
            .clone();
        assert_eq!(r.purge_key(&id, "no-such-key"), 0);
        assert_eq!(r.purge_key(&id, &thumbprint), 3);
        fill();
        r.purge_all();
        assert_eq!(entries(&r), 0);
    }

    #[test]
    fn a_disabled_cache_is_never_consulted() {
        let r = registry("token_cache:\n  enabled: false\n");
        assert!(r.token_cache().is_none());
        let t = token(claims("u", "j"));
        assert!(!validate(&r, &t).expect("valid").cached);
        assert!(!validate(&r, &t).expect("valid").cached);
        assert_eq!(r.purge_jti("https://fp.example", "j"), 0);
    }
}
