//! What operators ask of the registry (AdminService): the key sets of some tenants, the
//! key set a tenant and B2C policy name, and a forced refresh that reports what changed.
//! The refresh goes through the same single-flight [`super::RefreshControl`] as
//! Validate's, so an operator can never cause more than one fetch in flight per key set,
//! nor more than one forced fetch per `unknown_kid_cooldown`.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tracing::info;

use super::{Forced, KeySetId, KeySetState, Registry, RequestError};
use crate::events::{self, KeyEventKind, KeyInfo};

/// Why a forced refresh did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The request names no key set.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The key set's keys come from the configuration.
    #[error("the keys of `{0}` come from the configuration and are never fetched")]
    NotFetched(KeySetId),
}

/// How a forced refresh ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The fetch succeeded.
    Refreshed,
    /// The fetch failed; the keys before it stay in use.
    Failed(String),
    /// The fetch did not finish within the bound; it continues in the background.
    Unfinished(Duration),
}

impl RefreshOutcome {
    /// Why the refresh did not succeed; `None` when it did.
    pub fn error(&self) -> Option<String> {
        match self {
            Self::Refreshed => None,
            Self::Failed(message) => Some(message.clone()),
            Self::Unfinished(bound) => Some(format!(
                "the refresh did not finish within {}; it continues in the background",
                humantime::format_duration(*bound)
            )),
        }
    }
}

/// What a forced refresh did.
#[derive(Debug, Clone)]
pub struct RefreshReport {
    /// The key set, as it is after the refresh.
    pub key_set: Arc<KeySetState>,
    /// How the refresh ended.
    pub outcome: RefreshOutcome,
    /// Keys it added, by WatchKeys' rule for ADDED.
    pub added: Vec<KeyInfo>,
    /// Keys it removed, by WatchKeys' rule for REMOVED.
    pub removed: Vec<KeyInfo>,
    /// Set when nothing was fetched because the last forced refresh was less than the
    /// cooldown ago: when one may fetch again. The outcome is then the key set's last.
    pub retry_after: Option<SystemTime>,
}

impl Registry {
    /// The key sets of `tenants` (every key set when empty), sorted by id.
    pub fn key_sets_of(&self, tenants: &[String]) -> Result<Vec<Arc<KeySetState>>, RequestError> {
        if let Some(t) = tenants.iter().find(|t| self.tenant(t).is_none()) {
            return Err(RequestError::UnknownTenant(t.clone()));
        }
        Ok(self
            .key_sets()
            .into_iter()
            .filter(|s| tenants.is_empty() || tenants.contains(&s.id.tenant))
            .collect())
    }

    /// The key set of `tenant`, and for a B2C tenant of one of its policies (compared
    /// case-insensitively, as B2C does).
    pub fn find_key_set(
        &self,
        tenant: &str,
        policy: Option<&str>,
    ) -> Result<Arc<KeySetState>, RequestError> {
        let sets = self.key_sets_of(&[tenant.to_string()])?;
        let policies: Vec<&str> = sets.iter().filter_map(|s| s.id.policy.as_deref()).collect();
        let tenant = tenant.to_string();
        match (policies.is_empty(), policy) {
            (true, None) => sets.first().cloned().ok_or(RequestError::NoKeySet(tenant)),
            (true, Some(p)) => Err(RequestError::NotB2c {
                tenant,
                policy: p.to_string(),
            }),
            (false, None) => Err(RequestError::PolicyRequired {
                tenant,
                policies: policies.join(", "),
            }),
            (false, Some(p)) => sets
                .iter()
                .find(|s| {
                    s.id.policy
                        .as_deref()
                        .is_some_and(|q| q.eq_ignore_ascii_case(p))
                })
                .cloned()
                .ok_or_else(|| RequestError::UnknownPolicy {
                    tenant,
                    policy: p.to_string(),
                }),
        }
    }

    /// Forces a full refresh of `id` (joining one in flight), waits for it at most
    /// `bound`, and reports the keys it added and removed. Within `cooldown` of the last
    /// forced refresh of the set nothing is fetched: the report repeats the set's last
    /// outcome and says when a fetch is allowed again.
    pub async fn force_refresh(
        &self,
        id: &KeySetId,
        bound: Duration,
        cooldown: Duration,
    ) -> Result<RefreshReport, RefreshError> {
        let state = self
            .key_set(id)
            .ok_or_else(|| RequestError::UnknownKeySet(id.to_string()))?;
        let before = state.keys();
        let forced = state
            .refresh
            .force(cooldown)
            .ok_or_else(|| RefreshError::NotFetched(id.clone()))?;
        let generation = match forced {
            Forced::Requested(g) => g,
            Forced::Throttled { until } => return Ok(throttled(state, until)),
        };
        info!(key_set = %id, generation, "operator forced a key refresh");
        let finished = state.refresh.wait(generation, bound).await;
        let after = state.keys();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for e in events::diff(&state.origin(), &before, &after, SystemTime::now()) {
            let Some(k) = e.key else { continue };
            match e.kind {
                KeyEventKind::Added => added.push(k),
                _ => removed.push(k),
            }
        }
        let status = state.status();
        let outcome = if !finished {
            RefreshOutcome::Unfinished(bound)
        } else if status.last_failed {
            RefreshOutcome::Failed(status.last_error.map(|(m, _)| m).unwrap_or_default())
        } else {
            RefreshOutcome::Refreshed
        };
        Ok(RefreshReport {
            key_set: state,
            outcome,
            added,
            removed,
            retry_after: None,
        })
    }
}

/// The report of a refresh asked for inside the cooldown: the key set's last outcome.
fn throttled(state: Arc<KeySetState>, until: tokio::time::Instant) -> RefreshReport {
    let status = state.status();
    let outcome = if status.last_failed {
        RefreshOutcome::Failed(status.last_error.map(|(m, _)| m).unwrap_or_default())
    } else {
        RefreshOutcome::Refreshed
    };
    let wait = until.saturating_duration_since(tokio::time::Instant::now());
    RefreshReport {
        key_set: state,
        outcome,
        added: Vec::new(),
        removed: Vec::new(),
        retry_after: SystemTime::now().checked_add(wait),
    }
}
