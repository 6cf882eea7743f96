//! A local mirror of introspectd's signing keys, fed by `WatchKeys`, that verifies
//! tokens without calling Validate. Reusable: the example binary and the integration
//! tests include this file.
//!
//! The stream's contract, as the mirror applies it:
//! - EXISTING events build a fresh key set that SYNCED then installs whole. The same
//!   pair arrives again, without warning, when the server resynchronises a subscriber
//!   that fell behind, so a snapshot always *replaces* the mirror, never adds to it.
//! - ADDED and REMOVED change the installed set one key at a time. A key is identified
//!   by its kid *and* thumbprint: a provider that reuses a kid for new key material
//!   shows up as ADDED (new material) then REMOVED (old material) under the same kid.
//! - REFRESH_FAILED changes nothing: the server keeps its last good keys too.
//!
//! Only what the service streams is trusted: a key verifies only tokens of its own
//! issuer and of the one algorithm the service bound it to (never the token's say-so).
//! Symmetric keys are never streamed, and the mirror refuses one if it ever saw one.

use std::{collections::HashMap, str::FromStr as _};

use introspectd::grpc::pb::{KeyEvent, KeyEventType};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::Jwk};
use serde_json::Value;

/// Names a key: tenant, B2C policy (empty when none), kid.
pub(crate) type KeyId = (String, String, String);

/// What the mirror is keyed by: the name plus the thumbprint.
type Slot = (KeyId, String);

/// One mirrored key.
pub(crate) struct MirroredKey {
    /// The issuer whose tokens it verifies.
    pub issuer: String,
    /// The one algorithm it verifies.
    pub algorithm: Algorithm,
    key: DecodingKey,
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A key joined the snapshot being received.
    Staged(KeyId),
    /// A snapshot was installed; it holds this many keys.
    Synced(usize),
    /// A key was added.
    Added(KeyId),
    /// A key was removed.
    Removed(KeyId),
    /// The server could not refresh an issuer (keys unchanged).
    RefreshFailed(String),
}

/// The mirror.
#[derive(Default)]
pub(crate) struct KeyMirror {
    live: HashMap<Slot, MirroredKey>,
    staging: Option<HashMap<Slot, MirroredKey>>,
    synced: bool,
}

fn id_of(e: &KeyEvent) -> KeyId {
    (e.tenant.clone(), e.policy.clone(), e.key_id.clone())
}

fn slot_of(e: &KeyEvent) -> Slot {
    (id_of(e), e.thumbprint.clone())
}

fn parse_key(e: &KeyEvent) -> Result<MirroredKey, String> {
    if e.key_type == "oct" {
        return Err("a symmetric key was streamed; refusing it".into());
    }
    let jwk: Jwk =
        serde_json::from_str(&e.jwk).map_err(|err| format!("jwk of {}: {err}", e.key_id))?;
    if matches!(
        jwk.algorithm,
        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
    ) {
        return Err("a symmetric key was streamed; refusing it".into());
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|err| format!("jwk of {}: {err}", e.key_id))?;
    let algorithm = Algorithm::from_str(&e.algorithm)
        .map_err(|err| format!("algorithm {}: {err}", e.algorithm))?;
    Ok(MirroredKey {
        issuer: e.issuer.clone(),
        algorithm,
        key,
    })
}

impl KeyMirror {
    /// An empty mirror.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// True once a first snapshot is installed.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced
    }

    /// The installed keys' ids and thumbprints, sorted.
    pub(crate) fn keys(&self) -> Vec<(KeyId, String)> {
        let mut v: Vec<(KeyId, String)> = self.live.keys().cloned().collect();
        v.sort();
        v
    }

    /// Applies one event of the stream.
    pub(crate) fn apply(&mut self, e: &KeyEvent) -> Result<Change, String> {
        let kind = KeyEventType::try_from(e.r#type)
            .map_err(|_| format!("unknown event type {}", e.r#type))?;
        match kind {
            KeyEventType::Existing => {
                let key = parse_key(e)?;
                self.staging
                    .get_or_insert_with(HashMap::new)
                    .insert(slot_of(e), key);
                Ok(Change::Staged(id_of(e)))
            }
            KeyEventType::Synced => {
                self.live = self.staging.take().unwrap_or_default();
                self.synced = true;
                Ok(Change::Synced(self.live.len()))
            }
            KeyEventType::Added => {
                let key = parse_key(e)?;
                self.live.insert(slot_of(e), key);
                Ok(Change::Added(id_of(e)))
            }
            KeyEventType::Removed => {
                self.live.remove(&slot_of(e));
                Ok(Change::Removed(id_of(e)))
            }
            KeyEventType::RefreshFailed => Ok(Change::RefreshFailed(e.message.clone())),
            KeyEventType::Unspecified => Err("event type unspecified".into()),
        }
    }

    /// Verifies `token` locally: a key with the token's kid, bound to the token's
    /// algorithm, of the issuer the token claims; then `exp`, `iss` and, when given,
    /// `audiences` (any one must match).
    pub(crate) fn verify(&self, token: &str, audiences: &[&str]) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        let kid = header.kid.ok_or("the token has no kid")?;
        let mut last = format!("no mirrored key has kid `{kid}` for {:?}", header.alg);
        for (((_, _, k), _), key) in &self.live {
            if *k != kid || key.algorithm != header.alg {
                continue;
            }
            let mut validation = Validation::new(key.algorithm);
            validation.set_issuer(&[&key.issuer]);
            if audiences.is_empty() {
                validation.validate_aud = false;
            } else {
                validation.set_audience(audiences);
            }
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}
