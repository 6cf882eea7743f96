//! The soak's traffic: the rotation protocol that makes false rejections impossible by
//! construction, and the mixed load (valid, invalid, kid-miss, Introspect, WatchKeys
//! churn) with its outcome counters.
//!
//! A valid token is only ever signed with a key the service has announced on WatchKeys,
//! and a key is only retired at the provider once no call signed with it is in flight.
//! Provider faults keep the last good keys, so every valid token must be accepted: a
//! single rejection is a bug, never bad luck.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use introspectd::grpc::pb::{self, KeyEventType, token_service_client::TokenServiceClient};
use serde_json::json;
use tonic::{Code, transport::Channel};

use crate::{common::TestKey, provider::Provider};

pub const AUDIENCE: &str = "api://soak";

/// A signing key and the calls in flight with tokens it signed.
pub struct Signer {
    pub key: TestKey,
    in_flight: AtomicUsize,
}

impl Signer {
    pub fn new(kid: &str) -> Arc<Self> {
        Arc::new(Self {
            key: TestKey::ec(kid),
            in_flight: AtomicUsize::new(0),
        })
    }
}

/// Counts one call signed by a signer for as long as it lives.
struct InFlight(Arc<Signer>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Outcome counters, printed by the report.
#[derive(Debug, Default)]
pub struct Stats {
    pub valid_ok: AtomicU64,
    pub false_rejections: AtomicU64,
    pub invalid_ok: AtomicU64,
    pub false_acceptances: AtomicU64,
    pub kid_miss: AtomicU64,
    pub introspect_ok: AtomicU64,
    /// Opaque tokens the provider could not answer (its injected 503s): UNAVAILABLE.
    pub introspect_unavailable: AtomicU64,
    pub watch_cycles: AtomicU64,
    pub rotations: AtomicU64,
    pub refresh_failed_events: AtomicU64,
    /// Any other RPC error (overload, timeouts): must be zero.
    pub unexpected: AtomicU64,
}

/// Everything the traffic shares.
pub struct Soak {
    pub channel: Channel,
    pub provider: Provider,
    pub current: RwLock<Arc<Signer>>,
    /// Kids the service announced on WatchKeys (its key set).
    pub known: Mutex<HashSet<String>>,
    pub stats: Stats,
    pub stop: AtomicBool,
}

fn unexpected(stats: &Stats, what: &str, s: &tonic::Status) {
    stats.unexpected.fetch_add(1, Ordering::Relaxed);
    eprintln!("unexpected error on {what}: {:?} {}", s.code(), s.message());
}

impl Soak {
    fn claims(&self, aud: &str, exp_in: i64) -> serde_json::Value {
        let now = crate::common::now();
        json!({"iss": self.provider.issuer(), "sub": "soak", "aud": aud,
               "iat": now, "nbf": now, "exp": now + exp_in, "jti": fastrand::u64(..).to_string()})
    }

    /// A token signed with the current key, counted in flight until the guard drops.
    fn valid_token(&self) -> (String, InFlight) {
        let signer = {
            let current = self.current.read().expect("lock");
            current.in_flight.fetch_add(1, Ordering::SeqCst);
            current.clone()
        };
        let token = signer.key.token(&self.claims(AUDIENCE, 3600));
        (token, InFlight(signer))
    }

    async fn validate(&self, token: String) -> Result<pb::ValidateResponse, tonic::Status> {
        TokenServiceClient::new(self.channel.clone())
            .validate(pb::ValidateRequest {
                token,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn introspect(&self, token: String) -> Result<pb::IntrospectResponse, tonic::Status> {
        TokenServiceClient::new(self.channel.clone())
            .introspect(pb::IntrospectRequest {
                token,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn one_valid(&self) {
        let (token, _guard) = self.valid_token();
        let counter = match self.validate(token).await {
            Ok(r) if r.valid => &self.stats.valid_ok,
            Ok(r) => {
                eprintln!("FALSE REJECTION: {:?}", r.error);
                &self.stats.false_rejections
            }
            Err(s) => return unexpected(&self.stats, "Validate of a valid token", &s),
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    async fn one_invalid(&self) {
        let stranger = TestKey::ec("stranger");
        let (token, _guard) = self.valid_token();
        let signer_kid = token_kid(&token);
        let token = match fastrand::u8(0..3) {
            0 => self
                .current
                .read()
                .expect("lock")
                .key
                .token(&self.claims(AUDIENCE, -600)),
            1 => self
                .current
                .read()
                .expect("lock")
                .key
                .token(&self.claims("api://other", 3600)),
            _ => stranger.token_with(json!({ "kid": signer_kid }), &self.claims(AUDIENCE, 3600)),
        };
        let counter = match self.validate(token).await {
            Ok(r) if !r.valid => &self.stats.invalid_ok,
            Ok(_) => {
                eprintln!("FALSE ACCEPTANCE of an invalid token");
                &self.stats.false_acceptances
            }
            Err(s) => return unexpected(&self.stats, "Validate of an invalid token", &s),
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    async fn one_kid_miss(&self) {
        let key = TestKey::ec(&format!("unknown-{}", fastrand::u64(..)));
        let counter = match self.validate(key.token(&self.claims(AUDIENCE, 3600))).await {
            Ok(r) if !r.valid => &self.stats.kid_miss,
            Ok(_) => &self.stats.false_acceptances,
            Err(s) => return unexpected(&self.stats, "Validate with an unknown kid", &s),
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    async fn one_introspect(&self) {
        let (token, guard, want_active) = match fastrand::u8(0..3) {
            0 => {
                let (t, g) = self.valid_token();
                (t, Some(g), true)
            }
            1 => (format!("good-{}", fastrand::u64(..)), None, true),
            _ => (format!("bad-{}", fastrand::u64(..)), None, false),
        };
        let jwt = guard.is_some();
        let answer = self.introspect(token).await;
        drop(guard);
        let counter = match answer {
            Ok(r) if r.active == want_active => &self.stats.introspect_ok,
            Ok(_) if want_active => {
                eprintln!("FALSE REJECTION in Introspect (jwt: {jwt})");
                &self.stats.false_rejections
            }
            Ok(_) => {
                eprintln!("FALSE ACCEPTANCE in Introspect");
                &self.stats.false_acceptances
            }
            Err(s) if s.code() == Code::Unavailable && !jwt => &self.stats.introspect_unavailable,
            Err(s) => return unexpected(&self.stats, "Introspect", &s),
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A closed-loop worker with a mixed diet, paced so the machine stays usable.
    pub async fn worker(self: Arc<Self>) {
        while !self.stop.load(Ordering::Relaxed) {
            match fastrand::u8(0..20) {
                0..=9 => self.one_valid().await,
                10..=12 => self.one_invalid().await,
                13..=14 => self.one_kid_miss().await,
                _ => self.one_introspect().await,
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Opens a WatchKeys stream, reads its snapshot, closes it; again and again.
    pub async fn watch_churn(self: Arc<Self>) {
        while !self.stop.load(Ordering::Relaxed) {
            let mut client = TokenServiceClient::new(self.channel.clone());
            match client.watch_keys(pb::WatchKeysRequest::default()).await {
                Ok(s) => {
                    let mut s = s.into_inner();
                    while let Ok(Some(e)) = s.message().await {
                        if e.r#type == KeyEventType::Synced as i32 {
                            self.stats.watch_cycles.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                Err(s) => unexpected(&self.stats, "WatchKeys", &s),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Follows the service's key set on one WatchKeys stream, reconnecting if it ends.
    pub async fn observe(self: Arc<Self>) {
        while !self.stop.load(Ordering::Relaxed) {
            let mut client = TokenServiceClient::new(self.channel.clone());
            let Ok(s) = client.watch_keys(pb::WatchKeysRequest::default()).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut s = s.into_inner();
            let mut staging: Option<HashSet<String>> = None;
            while let Ok(Some(e)) = s.message().await {
                let kind = KeyEventType::try_from(e.r#type).unwrap_or_default();
                let mut known = self.known.lock().expect("lock");
                match kind {
                    KeyEventType::Existing => {
                        staging.get_or_insert_with(HashSet::new).insert(e.key_id);
                    }
                    KeyEventType::Synced => *known = staging.take().unwrap_or_default(),
                    KeyEventType::Added => {
                        known.insert(e.key_id);
                    }
                    KeyEventType::Removed => {
                        known.remove(&e.key_id);
                    }
                    KeyEventType::RefreshFailed => {
                        self.stats
                            .refresh_failed_events
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    KeyEventType::Unspecified => {}
                }
            }
        }
    }

    /// Every `period`: publish a new key beside the current one, wait until the service
    /// announces it (nudging it with a kid-miss probe), sign with it, wait until no call
    /// signed with the old key is in flight, and retire the old key.
    pub async fn rotate(self: Arc<Self>, period: Duration) {
        let mut n = 1u64;
        loop {
            tokio::time::sleep(period).await;
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            n += 1;
            let old = self.current.read().expect("lock").clone();
            let new = Signer::new(&format!("k{n}"));
            self.provider
                .publish(vec![old.key.jwk.clone(), new.key.jwk.clone()]);
            while !self.known.lock().expect("lock").contains(&new.key.kid) {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                // Not counted: under the cooldown this may be answered UNKNOWN_KEY.
                let _ = self
                    .validate(new.key.token(&self.claims(AUDIENCE, 3600)))
                    .await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            *self.current.write().expect("lock") = new.clone();
            while old.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.provider.publish(vec![new.key.jwk.clone()]);
            self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The `kid` of a compact JWS header.
fn token_kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| h["kid"].as_str().map(str::to_owned))
        .unwrap_or_default()
}
