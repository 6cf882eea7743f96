//! Introspection answers shared by a fleet (FLEET.md 2): the fleet's store is read
//! first; on a miss one replica claims the fill and asks the provider while the others
//! wait (bounded) for its answer, so a fleet asks once per token per TTL. While the
//! store is unavailable, this replica's own cache and its own upstream calls answer
//! (counted in `fallbacks{facet="answers"}`). Revocation rules apply to every answer.

use std::{sync::Arc, time::SystemTime};

use tokio::time::Instant;
use tracing::debug;

use super::{Answer, IntrospectError, Introspector, cache::key_of};
use crate::{
    config::OnUnavailable,
    registry::Candidate,
    shared::{AnswerKey, Facet, Shared, TokenDigest, unix_secs},
};

/// While another replica asks the provider, its answer is looked for after this long,
/// then at doubling intervals up to [`FILL_POLL_MAX`].
pub(super) const FILL_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// Longest interval between two looks for another replica's answer.
pub(super) const FILL_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(200);

impl Introspector {
    fn answer_key<'a>(&'a self, digest: &'a TokenDigest) -> AnswerKey<'a> {
        AnswerKey {
            tenant: &self.tenant,
            digest,
        }
    }

    /// An answer from the fleet's store, else from the provider once for the fleet.
    pub(super) async fn introspect_shared(
        &self,
        shared: &Shared,
        token: &str,
        hint: Option<&str>,
    ) -> Result<Answer, IntrospectError> {
        if !shared.health.is_up() {
            shared.health.note_fallback(Facet::Answers);
            return self.introspect_local(token, hint).await;
        }
        let digest = key_of(token);
        match self.stored(shared, &digest).await {
            Ok(Some(a)) => {
                self.cache.count(true);
                return Ok(a);
            }
            Ok(None) => self.cache.count(false),
            Err(()) => return self.introspect_local(token, hint).await,
        }
        let lease = self.timeout;
        match shared
            .answers
            .claim_fill(self.answer_key(&digest), lease)
            .await
        {
            Ok(true) => {
                // Another replica may have stored its answer (and released its claim)
                // between the read above and this claim: look once more before asking.
                if let Ok(Some(a)) = self.stored(shared, &digest).await {
                    let _ = shared.answers.release_fill(self.answer_key(&digest)).await;
                    return Ok(a);
                }
                self.fill(shared, &digest, token, hint).await
            }
            Ok(false) => {
                if let Some(a) = self.wait_for_fill(shared, &digest).await {
                    return Ok(a);
                }
                // The claimant took too long: ask, as anyone would without a fleet.
                self.fill(shared, &digest, token, hint).await
            }
            Err(_) => {
                shared.health.note_fallback(Facet::Answers);
                self.introspect_local(token, hint).await
            }
        }
    }

    /// The stored answer; `Err` when the store failed (counted as a fallback).
    async fn stored(&self, shared: &Shared, digest: &TokenDigest) -> Result<Option<Answer>, ()> {
        match shared.answers.get(self.answer_key(digest)).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<Answer>(&bytes) {
                Ok(a) => Ok(Some(a)),
                Err(e) => {
                    debug!(tenant = %self.tenant, error = %e, "ignoring an unreadable shared answer");
                    Ok(None)
                }
            },
            Ok(None) => Ok(None),
            Err(e) => {
                debug!(tenant = %self.tenant, error = %e, "shared answer store unavailable");
                shared.health.note_fallback(Facet::Answers);
                Err(())
            }
        }
    }

    /// Asks the provider and stores the answer for the fleet (and in this replica's
    /// cache, for an outage later).
    async fn fill(
        &self,
        shared: &Shared,
        digest: &TokenDigest,
        token: &str,
        hint: Option<&str>,
    ) -> Result<Answer, IntrospectError> {
        match self.ask_upstream(token, hint).await {
            Ok((answer, ttl)) => {
                if !ttl.is_zero() {
                    match serde_json::to_vec(&answer) {
                        Ok(bytes) => {
                            if shared
                                .answers
                                .put(self.answer_key(digest), bytes, ttl)
                                .await
                                .is_err()
                            {
                                shared.health.note_fallback(Facet::Answers);
                            }
                        }
                        Err(e) => debug!(error = %e, "answer not stored"),
                    }
                } else {
                    let _ = shared.answers.release_fill(self.answer_key(digest)).await;
                }
                self.cache.insert(token, Arc::new(answer.clone()), ttl);
                Ok(answer)
            }
            Err(e) => {
                let _ = shared.answers.release_fill(self.answer_key(digest)).await;
                Err(e)
            }
        }
    }

    /// Waits, at most the fetch timeout, for the answer another replica is getting.
    async fn wait_for_fill(&self, shared: &Shared, digest: &TokenDigest) -> Option<Answer> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = FILL_POLL;
        while Instant::now() < deadline {
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(FILL_POLL_MAX);
            match self.stored(shared, digest).await {
                Ok(Some(a)) => return Some(a),
                Ok(None) => {}
                Err(()) => return None,
            }
        }
        None
    }

    /// `answer`, unless a revocation rule matches the token or the identifiers the
    /// provider gave for it; then inactive. Under `fail_closed` with the shared state
    /// unavailable, no answer (UNAVAILABLE): a revocation may have been missed.
    pub(super) fn unless_revoked(
        &self,
        token: &str,
        answer: Answer,
    ) -> Result<Answer, IntrospectError> {
        if let Some(shared) = &self.shared
            && !shared.health.is_up()
            && shared.health.on_unavailable() == OnUnavailable::FailClosed
        {
            shared.health.note_refusal(Facet::Revocation);
            return Err(IntrospectError::Unavailable {
                tenant: self.tenant.clone(),
                reason: "the fleet's shared state is unavailable".into(),
            });
        }
        let candidate = Candidate {
            token,
            digest: None,
            iss: answer.iss.as_deref().unwrap_or_default(),
            jti: answer.jti.as_deref(),
            sub: answer.sub.as_deref(),
            iat: answer.iat.map(|i| i as f64),
        };
        if answer.active
            && self
                .revocations
                .is_revoked(&candidate, unix_secs(SystemTime::now()))
        {
            debug!(tenant = %self.tenant, "introspected token is revoked");
            return Ok(Answer::inactive());
        }
        Ok(answer)
    }
}
