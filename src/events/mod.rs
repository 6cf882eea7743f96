//! Key-rotation events: the diff of two key-set snapshots (ADDED before REMOVED), refresh
//! failures, and the broadcast bus that `WatchKeys` subscribes to. Publishing a change
//! and taking a subscriber's snapshot happen under one lock, so a subscriber sees every
//! change exactly once: either in its snapshot or as a live event, never both or neither.

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio::sync::broadcast;

use crate::keys::{KeySet, VerifyingKey};

/// Live events a slow subscriber may fall behind by before it is resynchronised.
pub const BUS_CAPACITY: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEventKind {
    /// A key known when the subscriber joined.
    Existing,
    /// End of the snapshot.
    Synced,
    /// A refresh brought a new key.
    Added,
    /// A refresh dropped a key.
    Removed,
    /// A refresh failed; the last good keys stay in use.
    RefreshFailed,
}

/// The public description of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyInfo {
    /// `kid`.
    pub kid: String,
    /// Algorithm the key is bound to.
    pub algorithm: String,
    /// `kty`.
    pub key_type: String,
    /// RFC 7638 thumbprint.
    pub thumbprint: String,
    /// The public JWK as JSON.
    pub jwk: String,
}

impl KeyInfo {
    /// Describes a key; `None` for symmetric keys, which are never streamed.
    pub fn of(key: &VerifyingKey) -> Option<Self> {
        let jwk = key.public_jwk.as_ref()?;
        Some(Self {
            kid: key.kid.clone().unwrap_or_default(),
            algorithm: key.algorithm_name(),
            key_type: key.kty.as_str().to_string(),
            thumbprint: key.thumbprint.clone(),
            jwk: serde_json::to_string(jwk).unwrap_or_default(),
        })
    }
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// What happened.
    pub kind: KeyEventKind,
    /// Tenant id.
    pub tenant: String,
    /// B2C policy, when the key set belongs to one.
    pub policy: Option<String>,
    /// Issuer of the key set.
    pub issuer: String,
    /// The key, for key events.
    pub key: Option<KeyInfo>,
    /// When it was observed.
    pub observed_at: SystemTime,
    /// For REFRESH_FAILED: why.
    pub message: String,
}

/// Identifies the key set an event is about.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// B2C policy.
    pub policy: Option<&'a str>,
    /// Issuer.
    pub issuer: &'a str,
}

impl Origin<'_> {
    /// An event about `key`.
    pub fn key_event(&self, kind: KeyEventKind, key: KeyInfo, at: SystemTime) -> KeyEvent {
        KeyEvent {
            kind,
            tenant: self.tenant.to_string(),
            policy: self.policy.map(str::to_string),
            issuer: self.issuer.to_string(),
            key: Some(key),
            observed_at: at,
            message: String::new(),
        }
    }

    /// A REFRESH_FAILED event.
    pub fn failure(&self, message: String, at: SystemTime) -> KeyEvent {
        KeyEvent {
            kind: KeyEventKind::RefreshFailed,
            tenant: self.tenant.to_string(),
            policy: self.policy.map(str::to_string),
            issuer: self.issuer.to_string(),
            key: None,
            observed_at: at,
            message,
        }
    }
}

fn identity(k: &VerifyingKey) -> (Option<&str>, &str) {
    (k.kid.as_deref(), k.thumbprint.as_str())
}

/// ADDED events for keys only in `new`, then REMOVED events for keys only in `old`.
pub fn diff(origin: &Origin<'_>, old: &KeySet, new: &KeySet, at: SystemTime) -> Vec<KeyEvent> {
    let mut out = Vec::new();
    for k in new.iter() {
        if !old.iter().any(|o| identity(o) == identity(k))
            && let Some(info) = KeyInfo::of(k)
        {
            out.push(origin.key_event(KeyEventKind::Added, info, at));
        }
    }
    for k in old.iter() {
        if !new.iter().any(|n| identity(n) == identity(k))
            && let Some(info) = KeyInfo::of(k)
        {
            out.push(origin.key_event(KeyEventKind::Removed, info, at));
        }
    }
    out
}

/// The broadcast bus with its publish/snapshot lock.
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<KeyEvent>>,
    lock: Mutex<()>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(BUS_CAPACITY)
    }
}

impl EventBus {
    /// A bus whose subscribers may lag by `capacity` events.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            lock: Mutex::new(()),
        }
    }

    /// Runs `change` (which swaps a snapshot and returns its events) and publishes the
    /// events, atomically with respect to [`EventBus::subscribe`].
    pub fn publish_with<F: FnOnce() -> Vec<KeyEvent>>(&self, change: F) -> Vec<KeyEvent> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let events = change();
        for e in &events {
            // No subscriber is not an error.
            let _ = self.tx.send(Arc::new(e.clone()));
        }
        events
    }

    /// Subscribes and takes a snapshot (built by `snapshot`) atomically.
    pub fn subscribe<F: FnOnce() -> Vec<KeyEvent>>(
        &self,
        snapshot: F,
    ) -> (broadcast::Receiver<Arc<KeyEvent>>, Vec<KeyEvent>) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        (rx, snapshot())
    }
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use jsonwebtoken::Algorithm;
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::keys::{IngestOptions, testing};

    const PUBLIC_MEMBERS: [&str; 9] = ["kty", "kid", "use", "alg", "crv", "x", "y", "n", "e"];

    /// A public EC JWK with members beyond the public key's, which must not be echoed.
    fn ec_jwk(kid: &str) -> Map<String, Value> {
        let mut v = testing::ec_jwk(kid);
        let m = v.as_object_mut().expect("object");
        m.insert("x5t".into(), "bm90LWEtY2VydA".into());
        m.insert("ext".into(), true.into());
        m.insert("custom".into(), "z".into());
        m.clone()
    }

    fn opts(symmetric: bool) -> IngestOptions<'static> {
        IngestOptions {
            allow_symmetric: symmetric,
            algorithms: &[Algorithm::ES256, Algorithm::HS256],
        }
    }

    #[test]
    fn key_info_carries_only_public_members() {
        let jwk = ec_jwk("k1");
        let key = VerifyingKey::from_jwk(&jwk, &opts(false)).expect("ingest");
        let info = KeyInfo::of(&key).expect("public keys are described");
        let streamed: Map<String, Value> = serde_json::from_str(&info.jwk).expect("json");
        for member in streamed.keys() {
            assert!(
                PUBLIC_MEMBERS.contains(&member.as_str()),
                "`{member}` streamed"
            );
        }
        assert_eq!(streamed["x"], jwk["x"]);
        assert_eq!(
            (
                info.kid.as_str(),
                info.algorithm.as_str(),
                info.key_type.as_str()
            ),
            ("k1", "ES256", "EC")
        );
        assert_eq!(info.thumbprint, key.thumbprint);
        // A JWK holding a private member never becomes a key in the first place.
        let mut private = jwk.clone();
        private.insert("d".into(), "AAAA".into());
        assert!(VerifyingKey::from_jwk(&private, &opts(false)).is_err());
    }

    #[test]
    fn symmetric_keys_are_never_described_nor_diffed() {
        let hmac =
            VerifyingKey::hmac(Some("h".into()), &[1u8; 32], &[Algorithm::HS256]).expect("hmac");
        assert!(KeyInfo::of(&hmac).is_none());
        let oct = json!({"kty": "oct", "kid": "o", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode([2u8; 32])});
        let oct =
            VerifyingKey::from_jwk(oct.as_object().expect("object"), &opts(true)).expect("oct");
        assert!(KeyInfo::of(&oct).is_none());
        let public = VerifyingKey::from_jwk(&ec_jwk("p"), &opts(false)).expect("ec");
        let (with, _) = KeySet::from_keys(vec![hmac, public]);
        let origin = Origin {
            tenant: "t",
            policy: None,
            issuer: "https://i",
        };
        let added = diff(&origin, &KeySet::empty(), &with, SystemTime::now());
        let kids: Vec<&str> = added
            .iter()
            .filter_map(|e| e.key.as_ref())
            .map(|k| k.kid.as_str())
            .collect();
        assert_eq!(kids, vec!["p"]);
        let removed = diff(&origin, &with, &KeySet::empty(), SystemTime::now());
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].kind, KeyEventKind::Removed);
    }

    #[test]
    fn added_come_before_removed() {
        let origin = Origin {
            tenant: "t",
            policy: Some("B2C_1_x"),
            issuer: "https://i",
        };
        let (old, _) = KeySet::from_keys(vec![
            VerifyingKey::from_jwk(&ec_jwk("a"), &opts(false)).expect("a"),
        ]);
        let (new, _) = KeySet::from_keys(vec![
            VerifyingKey::from_jwk(&ec_jwk("b"), &opts(false)).expect("b"),
        ]);
        let events = diff(&origin, &old, &new, SystemTime::now());
        let seq: Vec<(KeyEventKind, &str)> = events
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.key.as_ref().map(|k| k.kid.as_str()).unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            seq,
            vec![(KeyEventKind::Added, "b"), (KeyEventKind::Removed, "a")]
        );
        assert!(
            events
                .iter()
                .all(|e| e.policy.as_deref() == Some("B2C_1_x"))
        );
    }
}
