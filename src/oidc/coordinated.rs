//! Key fetches coordinated through the fleet's shared state (FLEET.md 3): before asking
//! the provider, a refresher asks the fleet for the turn; it then fetches and publishes,
//! or takes another replica's publication (checked by the same rules as a fetched
//! document), or keeps its keys. Publications announced between refreshes are taken as
//! they come. Without `shared_state`, or for key sets that are not fetched from a
//! provider (JWKS files), nothing here runs and the refresher fetches as it always did;
//! while the shared state is unavailable it fetches alone (`fallbacks{facet="fetch"}`).

use std::{sync::Arc, time::SystemTime};

use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{fetch_document, ingest, parse_metadata};
use crate::{
    keys::KeySet,
    registry::{KeySetState, RefreshKind, Registry, Source},
    shared::{Facet, Publication, Published, PublishedMetadata, Shared, Turn, TurnRequest},
    upstream::{self as http, FetchError, HttpClient},
};

/// Where a refresh's keys came from.
#[derive(Debug)]
pub enum Obtained {
    /// This replica fetched them from the provider (and published them as
    /// `generation`, when the fleet took the publication).
    Fetched {
        /// The keys.
        set: KeySet,
        /// Keys skipped at ingestion, described.
        skipped: String,
        /// The fleet's generation of the publication.
        generation: Option<u64>,
    },
    /// Another replica fetched them; this one took its publication.
    Adopted {
        /// The keys.
        set: KeySet,
        /// Keys skipped at ingestion, described.
        skipped: String,
        /// Who fetched, when, which generation.
        from: Box<Published>,
    },
    /// The fleet fetched within its cooldown and has nothing newer: the keys stay.
    Unchanged,
}

/// The shared state, when this key set's fetches are coordinated through it.
fn coordination<'a>(registry: &'a Registry, state: &KeySetState) -> Option<&'a Shared> {
    match state.source {
        Source::Discovery { .. } => registry.shared(),
        _ => None,
    }
}

/// Announced generations of `state`'s publications, when coordinated.
pub fn announcements(registry: &Registry, state: &KeySetState) -> Option<watch::Receiver<u64>> {
    coordination(registry, state).and_then(|s| s.fetch.announcements(&state.id.to_string()))
}

/// Resolves when the announced generation changes; never when there is nothing to
/// watch (or the announcer is gone).
pub async fn announced(rx: &mut Option<watch::Receiver<u64>>) {
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    if r.changed().await.is_err() {
        *rx = None;
        std::future::pending::<()>().await;
    }
}

/// Checks and ingests another replica's publication: its metadata by the rules of a
/// discovery document, its JWKS by this key set's hygiene rules.
pub fn adopt(state: &KeySetState, p: &Published) -> Result<(KeySet, String), FetchError> {
    if let Some(m) = &p.metadata {
        let doc = serde_json::to_value(m).map_err(|e| FetchError::Invalid(e.to_string()))?;
        let checked = parse_metadata(
            &doc,
            &state.issuer,
            state.id.policy.as_deref(),
            state.settings.require_https,
        )?;
        state.set_metadata(checked);
    }
    if p.jwks.len() > http::MAX_BODY_BYTES {
        return Err(FetchError::TooLarge);
    }
    let doc: Value = http::parse_json(p.jwks.as_bytes())?;
    ingest(state, &doc)
}

async fn fetch_alone(
    http: &HttpClient,
    state: &KeySetState,
    kind: RefreshKind,
) -> Result<Obtained, FetchError> {
    let doc = fetch_document(http, state, kind).await?;
    let (set, skipped) = ingest(state, &doc)?;
    Ok(Obtained::Fetched {
        set,
        skipped,
        generation: None,
    })
}

/// Fetches with the fleet's turn, and publishes what was fetched (or the failure).
async fn fetch_and_publish(
    shared: &Shared,
    http: &HttpClient,
    state: &KeySetState,
    kind: RefreshKind,
) -> Result<Obtained, FetchError> {
    let name = state.id.to_string();
    let fetched = async {
        let doc = fetch_document(http, state, kind).await?;
        let keys = ingest(state, &doc)?;
        Ok::<_, FetchError>((doc, keys))
    }
    .await;
    match fetched {
        Ok((doc, (set, skipped))) => {
            let metadata = state.metadata().map(|m| PublishedMetadata {
                issuer: m.issuer.clone(),
                jwks_uri: m.jwks_uri.clone(),
                introspection_endpoint: m.introspection_endpoint.clone(),
                token_endpoint: m.token_endpoint.clone(),
            });
            let publication = Publication {
                jwks: doc.to_string(),
                metadata,
            };
            let generation = match shared.fetch.publish(&name, publication).await {
                Ok(g) => Some(g),
                Err(e) => {
                    shared.health.note_fallback(Facet::Fetch);
                    warn!(error = %e, "fetched keys could not be published to the fleet");
                    None
                }
            };
            Ok(Obtained::Fetched {
                set,
                skipped,
                generation,
            })
        }
        Err(err) => {
            if let Err(e) = shared.fetch.publish_failure(&name, &err.category()).await {
                debug!(error = %e, "the failed fetch could not be announced");
            }
            Err(err)
        }
    }
}

/// Gets the keys for one refresh: alone without coordination, else as the fleet's turn
/// decides. `scheduled` refreshes (start-up, schedule, backoff) take a publication
/// younger than half the refresh interval; requested ones (unknown kid, operator) one
/// younger than the cooldown.
pub async fn obtain(
    registry: &Registry,
    http: &HttpClient,
    state: &KeySetState,
    kind: RefreshKind,
    scheduled: bool,
) -> Result<Obtained, FetchError> {
    let Some(shared) = coordination(registry, state) else {
        return fetch_alone(http, state, kind).await;
    };
    let settings = &state.settings;
    let request = TurnRequest {
        known: state.status().shared_generation,
        max_age: if scheduled {
            settings.refresh_interval / 2
        } else {
            settings.unknown_kid_cooldown
        },
        cooldown: settings.unknown_kid_cooldown,
        wait: settings.fetch_timeout,
    };
    let turn = if shared.health.is_up() {
        shared.fetch.turn(&state.id.to_string(), request).await.ok()
    } else {
        None
    };
    let Some(turn) = turn else {
        shared.health.note_fallback(Facet::Fetch);
        return fetch_alone(http, state, kind).await;
    };
    if turn != Turn::Fetch {
        state.update_status(|s| s.avoided = s.avoided.saturating_add(1));
    }
    match turn {
        Turn::Fetch => fetch_and_publish(shared, http, state, kind).await,
        Turn::Adopt(from) if older_than_in_use(state, &from) => Ok(Obtained::Unchanged),
        Turn::Adopt(from) => {
            let (set, skipped) = adopt(state, &from)?;
            Ok(Obtained::Adopted { set, skipped, from })
        }
        Turn::Skip if state.keys().is_empty() && request.known == 0 => Err(FetchError::Fleet(
            "another replica's fetch did not finish in time".into(),
        )),
        Turn::Skip => Ok(Obtained::Unchanged),
        Turn::Failed(message) => Err(FetchError::Fleet(message)),
    }
}

/// Takes a publication another replica announced, if it is newer than what this
/// replica has.
pub async fn take_announced(registry: &Registry, state: &Arc<KeySetState>) -> Option<Obtained> {
    let shared = coordination(registry, state)?;
    let known = state.status().shared_generation;
    let name = state.id.to_string();
    let published = match shared.fetch.published(&name, known).await {
        Ok(p) => p?,
        Err(e) => {
            debug!(error = %e, "an announced publication could not be read");
            return None;
        }
    };
    if older_than_in_use(state, &published) {
        debug!(
            generation = published.generation,
            "an announced publication is older than the keys in use"
        );
        return None;
    }
    match adopt(state, &published) {
        Ok((set, skipped)) => {
            info!(generation = published.generation, fetched_by = %published.replica,
                "took keys another replica fetched");
            Some(Obtained::Adopted {
                set,
                skipped,
                from: Box::new(published),
            })
        }
        Err(e) => {
            warn!(error = %e, fetched_by = %published.replica,
                "a published key set was refused; keeping the keys");
            None
        }
    }
}

/// When a publication's keys were fetched.
pub fn fetched_at(p: &Published) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(p.fetched_at_ms)
}

/// True when `p` was fetched before the keys `state` uses now: taking it would roll the
/// keys back (a replayed old publication, or one that lost a race with this replica's
/// own fetch).
fn older_than_in_use(state: &KeySetState, p: &Published) -> bool {
    state
        .status()
        .fetched_at
        .is_some_and(|in_use| fetched_at(p) < in_use)
}

/// Records in the status where the keys in use came from.
pub fn record_origin(registry: &Registry, state: &KeySetState, obtained: &Obtained) {
    let replica = coordination(registry, state).map(|s| s.fetch.replica().to_string());
    state.update_status(|s| match obtained {
        Obtained::Fetched { generation, .. } => {
            s.fetched_by = replica;
            s.fetched_at = Some(SystemTime::now());
            if let Some(g) = generation {
                s.shared_generation = *g;
            }
        }
        Obtained::Adopted { from, .. } => {
            s.fetched_by = Some(from.replica.clone());
            s.fetched_at = Some(fetched_at(from));
            s.shared_generation = from.generation;
        }
        Obtained::Unchanged => {}
    });
}
