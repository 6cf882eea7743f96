//! The checks after the signature that consult state beyond the token: the revocation
//! rules (held in memory, so no round trip) and replay records (per replica, or shared
//! by a fleet), with `on_unavailable` deciding what happens while the fleet's shared
//! state cannot be reached. A token refused here is never recorded as seen.

use std::time::{Duration, SystemTime};

use super::{Candidate, Registry, ReplayCache, Tenant, replay::ReplayOutcome};
use crate::{
    config::OnUnavailable,
    jwt::{ErrorCode, Rejection, claims::Claims},
    shared::{Facet, REPLAY_NAMESPACE_JTI, ReplayRecord, Shared, unix_secs},
};

fn unavailable(what: &str) -> Rejection {
    Rejection::new(
        ErrorCode::StateUnavailable,
        format!("the fleet's shared state is unavailable, so {what} cannot be checked"),
    )
}

/// The key of an `(iss, jti)` replay record.
pub(super) fn replay_key(iss: &str, jti: &str) -> String {
    format!("{iss}\0{jti}")
}

/// Seconds since the epoch as a time (the epoch for anything negative or not finite).
fn system_time(secs: f64) -> SystemTime {
    if secs.is_finite() && secs > 0.0 {
        Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

impl Registry {
    /// Refuses a revoked token. While the shared state is unavailable, `fail_closed`
    /// refuses every token (a revocation may have been missed); `local` goes on with the
    /// rules this replica holds, and counts it.
    pub(super) fn check_revoked(
        &self,
        token: &str,
        digest: [u8; 32],
        iss: &str,
        claims: &Claims,
    ) -> Result<(), Rejection> {
        if let Some(shared) = self.shared()
            && !shared.health.is_up()
        {
            match shared.health.on_unavailable() {
                OnUnavailable::FailClosed => {
                    shared.health.note_refusal(Facet::Revocation);
                    return Err(unavailable("revocation"));
                }
                OnUnavailable::Local => shared.health.note_fallback(Facet::Revocation),
            }
        }
        let revocations = self.revocations();
        // Nearly always: no rule at all, and nothing to read from the token.
        if revocations.is_empty() {
            return Ok(());
        }
        let candidate = Candidate {
            token,
            digest: Some(digest),
            iss,
            jti: claims.jti(),
            sub: claims.sub(),
            iat: claims.iat,
        };
        if revocations.is_revoked(&candidate, unix_secs(SystemTime::now())) {
            return Err(Rejection::new(ErrorCode::Revoked, "the token is revoked"));
        }
        Ok(())
    }

    /// Replay detection for tenants that want it: records `(iss, jti)` until the token
    /// expires (with `peek`, only asks). With a fleet, the shared record decides; this
    /// replica's own record answers first when it already saw the token, and alone when
    /// the shared state is unavailable under `local`.
    pub(super) async fn check_replay(
        &self,
        tenant: &Tenant,
        iss: &str,
        claims: &Claims,
        peek: bool,
    ) -> Result<(), Rejection> {
        let Some(cache) = tenant.replay_cache() else {
            return Ok(());
        };
        let missing = |name: &str| {
            Rejection::new(
                ErrorCode::MissingClaim,
                format!("claim `{name}` is required for replay detection"),
            )
        };
        let jti = claims.jti().ok_or_else(|| missing("jti"))?;
        let exp = claims.exp.ok_or_else(|| missing("exp"))?;
        let expires = exp + tenant.settings.policy.clock_skew.as_secs_f64();
        let outcome = match self.shared() {
            None if peek => cache.peek(iss, jti),
            None => cache.check_and_record(iss, jti, expires),
            Some(shared) => {
                let key = replay_key(iss, jti);
                let entry = ReplayEntry {
                    local: (iss, jti),
                    namespace: REPLAY_NAMESPACE_JTI,
                    key: &key,
                    expires,
                };
                shared_replay(shared, cache, &entry, peek)
                    .await
                    .map_err(|Unavailable| unavailable("replay"))?
            }
        };
        match outcome {
            ReplayOutcome::Fresh => Ok(()),
            ReplayOutcome::Replayed => {
                Err(Rejection::new(ErrorCode::Replayed, "jti was seen before"))
            }
            ReplayOutcome::Full => Err(Rejection::new(
                ErrorCode::Replayed,
                "replay cache is full; refusing tokens it cannot remember",
            )),
        }
    }
}

/// One replay record: how this replica keeps it (`local`, the pair its [`ReplayCache`] is
/// keyed by) and how the fleet does (`namespace` and `key`), until `expires` (seconds
/// since the epoch).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayEntry<'a> {
    pub(super) local: (&'a str, &'a str),
    pub(super) namespace: &'a str,
    pub(super) key: &'a str,
    pub(super) expires: f64,
}

/// The fleet's shared state could not answer and `on_unavailable: fail_closed` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unavailable;

/// A replay record kept by the fleet: this replica's own record answers first when it
/// already saw the value, the fleet's decides otherwise (and a fresh value is remembered
/// here too, so an outage later still knows it), and while the shared state is
/// unavailable `on_unavailable` decides: this replica's record alone (`local`, counted)
/// or a refusal (`fail_closed`, counted). With `peek`, nothing is recorded. Token `jti`s
/// and DPoP proofs both go through here, each in its namespace.
pub(super) async fn shared_replay(
    shared: &Shared,
    cache: &ReplayCache,
    entry: &ReplayEntry<'_>,
    peek: bool,
) -> Result<ReplayOutcome, Unavailable> {
    let (a, b) = entry.local;
    let local = || {
        if peek {
            cache.peek(a, b)
        } else {
            cache.check_and_record(a, b, entry.expires)
        }
    };
    // Seen here before: no round trip needed.
    if cache.peek(a, b) == ReplayOutcome::Replayed {
        return Ok(ReplayOutcome::Replayed);
    }
    let answer = if shared.health.is_up() {
        let record = ReplayRecord {
            namespace: entry.namespace,
            key: entry.key,
            expires: system_time(entry.expires),
            peek,
        };
        shared.replay.record(record).await.ok()
    } else {
        None
    };
    match answer {
        Some(ReplayOutcome::Fresh) if !peek => {
            local();
            Ok(ReplayOutcome::Fresh)
        }
        Some(outcome) => Ok(outcome),
        None => match shared.health.on_unavailable() {
            OnUnavailable::FailClosed => {
                shared.health.note_refusal(Facet::Replay);
                Err(Unavailable)
            }
            OnUnavailable::Local => {
                shared.health.note_fallback(Facet::Replay);
                Ok(local())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_from_claims() {
        assert_eq!(system_time(-5.0), SystemTime::UNIX_EPOCH);
        assert_eq!(system_time(f64::NAN), SystemTime::UNIX_EPOCH);
        assert_eq!(
            system_time(1.5),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1500)
        );
        assert_eq!(replay_key("i", "j"), "i\0j");
    }
}
