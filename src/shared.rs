//! What the replicas of a fleet may share, as small traits the core calls and `fleet`
//! implements on Redis: the replay store, the introspection answer store, the
//! coordination of key fetches (with published key sets), and revocation rules. The
//! in-memory versions a single replica uses live with their users (`registry`,
//! `introspect`, `oidc`); without `shared_state` none of these traits is ever called.
//!
//! Also the replica-side health of the shared state ([`SharedHealth`]): whether it is
//! available now, and how often each facet fell back to per-replica state or refused
//! (`on_unavailable`). Knows no Redis client and no gRPC.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The namespace of `(iss, jti)` records of replay detection.
pub const REPLAY_NAMESPACE_JTI: &str = "jti";

/// Why a shared operation did not complete. Messages never hold a token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// The shared state could not be reached within the operation timeout.
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
    /// The shared state answered something this replica cannot use.
    #[error("shared state returned an unusable value: {0}")]
    Invalid(String),
    /// A bound of the shared state is reached (e.g. the number of revocation rules).
    #[error("{0}")]
    Full(String),
}

pub use crate::config::OnUnavailable;

/// One of the things a fleet shares, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Facet {
    /// Replay detection.
    Replay,
    /// Introspection answers.
    Answers,
    /// Key-fetch coordination.
    Fetch,
    /// Revocation rules.
    Revocation,
}

impl Facet {
    /// Every facet, in label order.
    pub const ALL: [Facet; 4] = [
        Facet::Replay,
        Facet::Answers,
        Facet::Fetch,
        Facet::Revocation,
    ];

    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Facet::Replay => "replay",
            Facet::Answers => "answers",
            Facet::Fetch => "fetch",
            Facet::Revocation => "revocation",
        }
    }

    fn index(self) -> usize {
        match self {
            Facet::Replay => 0,
            Facet::Answers => 1,
            Facet::Fetch => 2,
            Facet::Revocation => 3,
        }
    }
}

/// The replica's view of the shared state: available or not, the policy while it is
/// not, and counters of fallbacks and refusals per facet (read by metrics).
#[derive(Debug)]
pub struct SharedHealth {
    up: AtomicBool,
    on_unavailable: OnUnavailable,
    fallbacks: [AtomicU64; 4],
    refusals: [AtomicU64; 4],
    since: std::sync::Mutex<SystemTime>,
    changes: watch::Sender<bool>,
}

impl SharedHealth {
    /// Health that starts unavailable (nothing is shared until the first contact).
    pub fn new(on_unavailable: OnUnavailable) -> Self {
        Self {
            up: AtomicBool::new(false),
            on_unavailable,
            fallbacks: Default::default(),
            refusals: Default::default(),
            since: std::sync::Mutex::new(SystemTime::now()),
            changes: watch::Sender::new(false),
        }
    }

    /// True while the shared state answers.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records availability; returns true when it changed.
    pub fn set_up(&self, up: bool) -> bool {
        let changed = self.up.swap(up, Ordering::AcqRel) != up;
        if changed {
            *self.since.lock().unwrap_or_else(|p| p.into_inner()) = SystemTime::now();
            self.changes.send_replace(up);
        }
        changed
    }

    /// Availability now and at every change.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }

    /// When availability last changed.
    pub fn since(&self) -> SystemTime {
        *self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configured policy.
    pub fn on_unavailable(&self) -> OnUnavailable {
        self.on_unavailable
    }

    /// Counts one answer given from per-replica state because the shared one failed.
    pub fn note_fallback(&self, facet: Facet) {
        self.fallbacks[facet.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refusal (`fail_closed`) because the shared state failed.
    pub fn note_refusal(&self, facet: Facet) {
        self.refusals[facet.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Fallbacks so far for `facet`.
    pub fn fallbacks(&self, facet: Facet) -> u64 {
        self.fallbacks[facet.index()].load(Ordering::Relaxed)
    }

    /// Refusals so far for `facet`.
    pub fn refusals(&self, facet: Facet) -> u64 {
        self.refusals[facet.index()].load(Ordering::Relaxed)
    }
}

/// Outcome of recording a one-time value (a token's `jti`, a DPoP proof's `jti`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// First sighting; recorded.
    Fresh,
    /// Seen before and not yet expired.
    Replayed,
    /// The store is full of live entries.
    Full,
}

/// One replay record to make, or (with `peek`) to look for.
#[derive(Debug, Clone, Copy)]
pub struct ReplayRecord<'a> {
    /// What kind of value it is (`jti` for tokens; DPoP proofs have their own).
    pub namespace: &'a str,
    /// The value, e.g. `iss` NUL `jti`; only its digest is stored.
    pub key: &'a str,
    /// Until when it must be remembered.
    pub expires: SystemTime,
    /// Only ask whether it was recorded.
    pub peek: bool,
}

/// Replay detection shared by a fleet: a value recorded once per namespace until it
/// expires. Generic over what it records (token `jti`s, DPoP proof `jti`s).
pub trait ReplayStore: Send + Sync + fmt::Debug {
    /// Records a value (first sighting: `Fresh`), or says whether it was recorded.
    fn record<'a>(&'a self, record: ReplayRecord<'a>) -> SharedFuture<'a, ReplayOutcome>;
}

/// What a shared operation returns: a boxed future of its result.
pub type SharedFuture<'a, T> = BoxFuture<'a, Result<T, SharedError>>;

/// SHA-256 of an opaque token: the only form in which a token is ever stored.
pub type TokenDigest = [u8; 32];

/// Which answer: a tenant and the digest of the token it answers for.
#[derive(Debug, Clone, Copy)]
pub struct AnswerKey<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// SHA-256 of the token.
    pub digest: &'a TokenDigest,
}

/// Introspection answers shared by a fleet; values are the encoded answers. A fill claim
/// makes one replica ask the upstream while the others wait for its answer.
pub trait AnswerStore: Send + Sync + fmt::Debug {
    /// The stored answer, if one is live.
    fn get<'a>(&'a self, key: AnswerKey<'a>) -> SharedFuture<'a, Option<Vec<u8>>>;

    /// Stores an answer (`data`) for `ttl` and releases the fill claim.
    fn put<'a>(&'a self, key: AnswerKey<'a>, data: Vec<u8>, ttl: Duration) -> SharedFuture<'a, ()>;

    /// Claims the right to ask the upstream for `lease`; false when another replica
    /// holds it.
    fn claim_fill<'a>(&'a self, key: AnswerKey<'a>, lease: Duration) -> SharedFuture<'a, bool>;

    /// Releases a fill claim without an answer (the upstream failed).
    fn release_fill<'a>(&'a self, key: AnswerKey<'a>) -> SharedFuture<'a, ()>;
}

/// A key set as one replica fetched it and published it for the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Increases with every publication of this key set.
    pub generation: u64,
    /// The JWKS document, as fetched.
    pub jwks: String,
    /// The discovery metadata the keys came from.
    pub metadata: Option<PublishedMetadata>,
    /// The replica that fetched it.
    pub replica: String,
    /// When it was fetched (milliseconds since the epoch, the fetching replica's clock).
    pub fetched_at_ms: u64,
}

/// What a replica publishes after a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The JWKS document, as fetched.
    pub jwks: String,
    /// The discovery metadata the keys came from.
    pub metadata: Option<PublishedMetadata>,
}

/// Discovery metadata in published form (checked again by every replica that takes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedMetadata {
    /// `issuer`.
    pub issuer: String,
    /// `jwks_uri`.
    pub jwks_uri: String,
    /// `introspection_endpoint`.
    pub introspection_endpoint: Option<String>,
    /// `token_endpoint`.
    pub token_endpoint: Option<String>,
}

/// What a replica asks before fetching a key set.
#[derive(Debug, Clone, Copy)]
pub struct TurnRequest {
    /// The generation this replica has ingested (0: none).
    pub known: u64,
    /// A publication younger than this is taken instead of fetching.
    pub max_age: Duration,
    /// How long the fleet's turn lasts: at most one fetch per this period.
    pub cooldown: Duration,
    /// Longest wait for a fetch another replica is doing.
    pub wait: Duration,
}

/// The answer: fetch, take what another replica published, or keep the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// This replica holds the fleet's turn and fetches from the provider.
    Fetch,
    /// Another replica's publication, newer than what this replica has.
    Adopt(Box<Published>),
    /// The fleet fetched within the cooldown and has nothing newer: keep the keys.
    Skip,
    /// The fleet's last fetch within the cooldown failed, with this message.
    Failed(String),
}

/// Coordination of key fetches across a fleet: one fetch per key set per cooldown,
/// published for the others to take. Key sets are named as `KeySetId` displays them
/// (`tenant`, or `tenant/policy` for B2C).
pub trait FetchCoordination: Send + Sync + fmt::Debug {
    /// Decides whether this replica fetches `set` now (waiting, bounded, for a fetch
    /// another replica is doing).
    fn turn<'a>(&'a self, set: &'a str, request: TurnRequest) -> SharedFuture<'a, Turn>;

    /// The current publication of `set`, if newer than `known`.
    fn published<'a>(&'a self, set: &'a str, known: u64) -> SharedFuture<'a, Option<Published>>;

    /// Publishes what this replica fetched and announces it; returns its generation.
    fn publish<'a>(&'a self, set: &'a str, doc: Publication) -> SharedFuture<'a, u64>;

    /// Records that this replica's fetch failed, so others waiting stop waiting.
    fn publish_failure<'a>(&'a self, set: &'a str, message: &'a str) -> SharedFuture<'a, ()>;

    /// Announced generations of `set` (changes when any replica publishes).
    fn announcements(&self, set: &str) -> Option<watch::Receiver<u64>>;

    /// This replica's name, as shown in `issuers`.
    fn replica(&self) -> &str;
}

/// What a revocation rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RevocationRule {
    /// One token, by the SHA-256 of its signed part (`header.payload` of a JWS, so a
    /// re-encoded signature still matches) or of the whole opaque token; hex.
    Token {
        /// Lower-case hex SHA-256.
        sha256: String,
    },
    /// One token by issuer and `jti`.
    Jti {
        /// `iss`.
        iss: String,
        /// `jti`.
        jti: String,
    },
    /// Every token of a subject issued before a time (tokens without `iat` included).
    Subject {
        /// `iss`.
        iss: String,
        /// `sub`.
        sub: String,
        /// Seconds since the epoch; tokens with `iat` before it match.
        issued_before: i64,
    },
}

/// A rule and when it may be forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// What it matches.
    pub rule: RevocationRule,
    /// Seconds since the epoch after which no matching token can still be valid.
    pub expires_at: i64,
}

/// Revocation rules shared by a fleet. Replicas keep the rules in memory (checked on
/// every call without a round trip); the store records them and tells every replica.
pub trait RevocationStore: Send + Sync + fmt::Debug {
    /// Records a rule and announces it to every replica.
    fn add<'a>(&'a self, revocation: &'a Revocation) -> SharedFuture<'a, ()>;
}

/// Everything a fleet shares, as handed to the core.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Availability and the fallback counters.
    pub health: Arc<SharedHealth>,
    /// Replay records.
    pub replay: Arc<dyn ReplayStore>,
    /// Introspection answers.
    pub answers: Arc<dyn AnswerStore>,
    /// Key-fetch coordination.
    pub fetch: Arc<dyn FetchCoordination>,
    /// Revocation rules.
    pub revocation: Arc<dyn RevocationStore>,
}

/// Seconds since the epoch of `t` (0 before it).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_counts_per_facet_and_tracks_changes() {
        let h = SharedHealth::new(OnUnavailable::FailClosed);
        assert!(!h.is_up(), "nothing is shared before the first contact");
        assert!(h.set_up(true));
        assert!(!h.set_up(true), "no change");
        h.note_fallback(Facet::Replay);
        h.note_fallback(Facet::Replay);
        h.note_refusal(Facet::Revocation);
        assert_eq!(h.fallbacks(Facet::Replay), 2);
        assert_eq!(h.fallbacks(Facet::Answers), 0);
        assert_eq!(h.refusals(Facet::Revocation), 1);
        assert_eq!(h.on_unavailable(), OnUnavailable::FailClosed);
    }

    #[test]
    fn rules_have_a_stable_json_form() {
        let r = Revocation {
            rule: RevocationRule::Subject {
                iss: "https://i".into(),
                sub: "alice".into(),
                issued_before: 100,
            },
            expires_at: 200,
        };
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(
            json,
            r#"{"rule":{"kind":"subject","iss":"https://i","sub":"alice","issued_before":100},"expires_at":200}"#
        );
        let back: Revocation = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
    }
}
