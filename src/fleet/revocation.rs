//! Revocation rules on Redis: a sorted set of rules scored by expiry plus a sequence
//! number, changed only by one script that also announces the rule. Every replica
//! applies announced rules at once, and re-reads the whole set when the sequence number
//! it last applied differs from the server's (checked by every probe), so a lost
//! announcement costs at most one probe interval.

use std::{sync::atomic::Ordering, time::SystemTime};

use futures::{FutureExt as _, future::BoxFuture};
use tracing::{debug, info, warn};

use super::{Fleet, scripts, stats::Op};
use crate::{
    registry::MAX_REVOCATION_RULES,
    shared::{Revocation, RevocationRule, RevocationStore, SharedError, unix_secs},
};

/// An announced rule: `revoke <seq> <expires_ms> <rule JSON>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Announced {
    /// The sequence number the rule got.
    pub seq: u64,
    /// The rule.
    pub revocation: Revocation,
}

/// Parses the body of a `revoke` announcement (after `revoke `).
pub(super) fn parse_announcement(body: &str) -> Option<Announced> {
    let mut parts = body.splitn(3, ' ');
    let seq = parts.next()?.parse().ok()?;
    let expires_ms: i64 = parts.next()?.parse().ok()?;
    let rule: RevocationRule = serde_json::from_str(parts.next()?).ok()?;
    Some(Announced {
        seq,
        revocation: Revocation {
            rule,
            expires_at: expires_ms / 1000,
        },
    })
}

fn now() -> i64 {
    unix_secs(SystemTime::now())
}

impl Fleet {
    /// Applies an announced rule; a gap in sequence numbers asks for a full re-read.
    pub(super) fn apply_announced(&self, a: &Announced) {
        if let Err(e) = self.inner.revocations.insert(&a.revocation, now()) {
            warn!(error = %e, "an announced revocation rule could not be applied");
        }
        let previous = self.inner.applied_seq.fetch_max(a.seq, Ordering::AcqRel);
        if a.seq > previous.saturating_add(1) {
            debug!(
                previous,
                seq = a.seq,
                "revocation announcements were missed"
            );
            self.request_resync();
        }
    }

    /// Reads every live rule and makes it this replica's whole set. When the shared
    /// state has lost rules this replica applied (a restart without persistence, a
    /// flush: its sequence number went back), this replica's rules are recorded again
    /// first, so one replica that remembers keeps them in force for the fleet.
    pub(super) async fn sync_revocations(&self) -> Result<u64, SharedError> {
        // Read before the server's: the server's number never goes below it unless
        // the server lost state (announcements may raise ours meanwhile).
        let applied = self.inner.applied_seq.load(Ordering::Acquire);
        let (seq, rules) = self.read_revocations().await?;
        if seq >= applied {
            return Ok(self.apply_all(seq, &rules, false));
        }
        let mine = self.inner.revocations.snapshot(now());
        warn!(
            rules = mine.len(),
            "the shared state lost revocation rules; recording this replica's again"
        );
        for r in &mine {
            self.record_rule(r).await?;
        }
        let (seq, rules) = self.read_revocations().await?;
        Ok(self.apply_all(seq, &rules, true))
    }

    /// Makes `rules` this replica's set as of `seq`; `reset` lets the sequence number
    /// go back (after the server lost state).
    fn apply_all(&self, seq: u64, rules: &[Revocation], reset: bool) -> u64 {
        let fresh = self.inner.revocations.replace_all(rules, now());
        if reset {
            self.inner.applied_seq.store(seq, Ordering::Release);
        } else if self.inner.applied_seq.fetch_max(seq, Ordering::AcqRel) > seq {
            // A rule announced while this read was under way may have been replaced
            // away: read again.
            self.request_resync();
        }
        if fresh > 0 {
            info!(
                fresh,
                total = rules.len(),
                "revocation rules re-read from the shared state"
            );
        }
        seq
    }

    async fn read_revocations(&self) -> Result<(u64, Vec<Revocation>), SharedError> {
        let set = self.inner.layout.revocations();
        let seq_key = self.inner.layout.revocation_seq();
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let (seq, members): (Option<u64>, Vec<(String, f64)>) = self
            .inner
            .link
            .exec(Op::RevocationSync, |mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(seq_key)
                    .cmd("ZRANGE")
                    .arg(set)
                    .arg(now_ms.to_string())
                    .arg("+inf")
                    .arg("BYSCORE")
                    .arg("WITHSCORES")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut rules = Vec::with_capacity(members.len());
        for (json, score) in members {
            match serde_json::from_str::<RevocationRule>(&json) {
                Ok(rule) => rules.push(Revocation {
                    rule,
                    expires_at: (score / 1000.0) as i64,
                }),
                Err(_) => warn!("skipping a revocation rule this version cannot read"),
            }
        }
        Ok((seq.unwrap_or(0), rules))
    }

    /// Records one rule and announces it; returns its sequence number.
    async fn record_rule(&self, revocation: &Revocation) -> Result<u64, SharedError> {
        let json = serde_json::to_string(&revocation.rule)
            .map_err(|e| SharedError::Invalid(format!("rule: {e}")))?;
        let expires_ms = revocation.expires_at.saturating_mul(1000);
        let set = self.inner.layout.revocations();
        let seq_key = self.inner.layout.revocation_seq();
        let channel = self.inner.layout.channel();
        let seq: i64 = self
            .inner
            .link
            .exec(Op::Revoke, |mut c| async move {
                scripts::REVOKE
                    .key(set)
                    .key(seq_key)
                    .arg(json)
                    .arg(expires_ms)
                    .arg(MAX_REVOCATION_RULES)
                    .arg(channel)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        u64::try_from(seq).map_err(|_| {
            SharedError::Full(format!(
                "{MAX_REVOCATION_RULES} revocation rules are in force; no more can be added"
            ))
        })
    }
}

impl RevocationStore for Fleet {
    fn add<'a>(&'a self, revocation: &'a Revocation) -> BoxFuture<'a, Result<(), SharedError>> {
        async move {
            let seq = self.record_rule(revocation).await?;
            self.apply_announced(&Announced {
                seq,
                revocation: revocation.clone(),
            });
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse() {
        let a =
            parse_announcement(r#"7 1700000000999 {"kind":"jti","iss":"https://i","jti":"a b"}"#)
                .expect("parses");
        assert_eq!(a.seq, 7);
        assert_eq!(a.revocation.expires_at, 1_700_000_000);
        assert_eq!(
            a.revocation.rule,
            RevocationRule::Jti {
                iss: "https://i".into(),
                jti: "a b".into()
            }
        );
        assert!(parse_announcement("x 1 {}").is_none());
        assert!(parse_announcement("1 2 not-json").is_none());
        assert!(parse_announcement("").is_none());
    }
}
