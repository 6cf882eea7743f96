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
pub struct Announced {
    /// The sequence number the rule got.
    pub seq: u64,
    /// The rule.
    pub revocation: Revocation,
}

/// Parses the body of a `revoke` announcement (after `revoke `).
pub fn parse_announcement(body: &str) -> Option<Announced> {
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

    /// Reads every live rule and makes it this replica's whole set.
    pub(super) async fn sync_revocations(&self) -> Result<u64, SharedError> {
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
        let fresh = self.inner.revocations.replace_all(&rules, now());
        let seq = seq.unwrap_or(0);
        self.inner.applied_seq.store(seq, Ordering::Release);
        if fresh > 0 {
            info!(
                fresh,
                total = rules.len(),
                "revocation rules re-read from the shared state"
            );
        }
        Ok(seq)
    }
}

impl RevocationStore for Fleet {
    fn add<'a>(&'a self, revocation: &'a Revocation) -> BoxFuture<'a, Result<(), SharedError>> {
        async move {
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
            let Ok(seq) = u64::try_from(seq) else {
                return Err(SharedError::Full(format!(
                    "{MAX_REVOCATION_RULES} revocation rules are in force; no more can be added"
                )));
            };
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
