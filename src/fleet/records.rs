//! Replay records and introspection answers on Redis: a replay value is one `SET NX PX`
//! (expiring with the token), an answer one `GET` or one pipelined `SET PX` + release of
//! the fill claim; a fill claim is `SET NX PX` with this replica's name, released only
//! by its owner.

use std::time::{Duration, SystemTime};

use futures::{FutureExt as _, future::BoxFuture};
use redis::AsyncCommands as _;

use super::{Fleet, millis, scripts, stats::Op};
use crate::shared::{AnswerStore, ReplayOutcome, ReplayStore, SharedError, TokenDigest};

/// Shortest life of a replay record: a value that has just expired is still kept this
/// long, so that clocks a little apart never let it through twice.
pub const MIN_REPLAY_TTL: Duration = Duration::from_secs(1);

/// Milliseconds a record must live to last until `expires` (at least
/// [`MIN_REPLAY_TTL`]).
pub(super) fn replay_ttl_ms(expires: SystemTime, now: SystemTime) -> u64 {
    let left = expires.duration_since(now).unwrap_or(Duration::ZERO);
    u64::try_from(left.max(MIN_REPLAY_TTL).as_millis()).unwrap_or(u64::MAX)
}

impl Fleet {
    /// `SET key value NX PX ttl_ms`: true when this call set it.
    async fn set_new(
        &self,
        op: Op,
        key: String,
        value: String,
        ttl_ms: u64,
    ) -> Result<bool, SharedError> {
        let set: Option<String> = self
            .inner
            .link
            .exec(op, |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }
}

impl ReplayStore for Fleet {
    fn record<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        expires: SystemTime,
        peek: bool,
    ) -> BoxFuture<'a, Result<ReplayOutcome, SharedError>> {
        async move {
            let k = self.inner.layout.replay(namespace, key);
            if peek {
                let seen: bool = self
                    .inner
                    .link
                    .exec(Op::ReplayPeek, |mut c| async move { c.exists(k).await })
                    .await?;
                return Ok(if seen {
                    ReplayOutcome::Replayed
                } else {
                    ReplayOutcome::Fresh
                });
            }
            let ttl = replay_ttl_ms(expires, SystemTime::now());
            let fresh = self.set_new(Op::Replay, k, "1".into(), ttl).await?;
            Ok(if fresh {
                ReplayOutcome::Fresh
            } else {
                ReplayOutcome::Replayed
            })
        }
        .boxed()
    }
}

impl AnswerStore for Fleet {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        digest: &'a TokenDigest,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, SharedError>> {
        async move {
            let k = self.inner.layout.answer(tenant, digest);
            let key = k.clone();
            let stored: Option<Vec<u8>> = self
                .inner
                .link
                .exec(Op::AnswerGet, |mut c| async move { c.get(key).await })
                .await?;
            Ok(stored.and_then(|v| self.inner.integrity.open(&k, v)))
        }
        .boxed()
    }

    fn put<'a>(
        &'a self,
        tenant: &'a str,
        digest: &'a TokenDigest,
        answer: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), SharedError>> {
        async move {
            let value = self.inner.layout.answer(tenant, digest);
            let answer = self.inner.integrity.seal(&value, &answer);
            let fill = self.inner.layout.answer_fill(tenant, digest);
            let ttl = millis(ttl).max(1);
            self.inner
                .link
                .exec(Op::AnswerPut, |mut c| async move {
                    redis::pipe()
                        .cmd("SET")
                        .arg(value)
                        .arg(answer)
                        .arg("PX")
                        .arg(ttl)
                        .ignore()
                        .cmd("DEL")
                        .arg(fill)
                        .ignore()
                        .query_async::<()>(&mut c)
                        .await
                })
                .await
        }
        .boxed()
    }

    fn claim_fill<'a>(
        &'a self,
        tenant: &'a str,
        digest: &'a TokenDigest,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, SharedError>> {
        async move {
            let k = self.inner.layout.answer_fill(tenant, digest);
            let replica = self.inner.replica.clone();
            self.set_new(Op::AnswerClaim, k, replica, millis(lease))
                .await
        }
        .boxed()
    }

    fn release_fill<'a>(
        &'a self,
        tenant: &'a str,
        digest: &'a TokenDigest,
    ) -> BoxFuture<'a, Result<(), SharedError>> {
        async move {
            let k = self.inner.layout.answer_fill(tenant, digest);
            let replica = self.inner.replica.clone();
            self.inner
                .link
                .exec(Op::AnswerRelease, |mut c| async move {
                    scripts::RELEASE
                        .key(k)
                        .arg(replica)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await
                .map(|_| ())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_records_live_until_expiry_and_at_least_a_second() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(replay_ttl_ms(now + Duration::from_secs(90), now), 90_000);
        assert_eq!(replay_ttl_ms(now + Duration::from_millis(10), now), 1000);
        assert_eq!(replay_ttl_ms(now - Duration::from_secs(5), now), 1000);
    }
}
