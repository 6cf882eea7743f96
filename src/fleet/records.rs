//! Replay records and introspection answers on Redis: a replay value is one `SET NX PX`
//! (expiring with the token), an answer one `GET` or one pipelined `SET PX` + release of
//! the fill claim; a fill claim is `SET NX PX` with this replica's name, released only
//! by its owner.

use std::time::{Duration, SystemTime};

use futures::FutureExt as _;
use redis::AsyncCommands as _;

use super::{Fleet, millis, scripts, stats::Op};
use crate::shared::{
    AnswerKey, AnswerStore, ReplayOutcome, ReplayRecord, ReplayStore, SharedError, SharedFuture,
};

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
    fn record<'a>(&'a self, r: ReplayRecord<'a>) -> SharedFuture<'a, ReplayOutcome> {
        async move {
            let k = self.inner.layout.replay(r.namespace, r.key);
            if r.peek {
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
            let ttl = replay_ttl_ms(r.expires, SystemTime::now());
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
    fn get<'a>(&'a self, key: AnswerKey<'a>) -> SharedFuture<'a, Option<Vec<u8>>> {
        async move {
            let k = self.inner.layout.answer(key.tenant, key.digest);
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

    fn put<'a>(&'a self, key: AnswerKey<'a>, data: Vec<u8>, ttl: Duration) -> SharedFuture<'a, ()> {
        async move {
            let answer = self.inner.layout.answer(key.tenant, key.digest);
            let sealed = self.inner.integrity.seal(&answer, &data);
            let fill = self.inner.layout.answer_fill(key.tenant, key.digest);
            let ttl = millis(ttl).max(1);
            self.inner
                .link
                .exec(Op::AnswerPut, |mut c| async move {
                    redis::pipe()
                        .cmd("SET")
                        .arg(answer)
                        .arg(sealed)
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

    fn claim_fill<'a>(&'a self, key: AnswerKey<'a>, lease: Duration) -> SharedFuture<'a, bool> {
        async move {
            let k = self.inner.layout.answer_fill(key.tenant, key.digest);
            let replica = self.inner.replica.clone();
            self.set_new(Op::AnswerClaim, k, replica, millis(lease))
                .await
        }
        .boxed()
    }

    fn release_fill<'a>(&'a self, key: AnswerKey<'a>) -> SharedFuture<'a, ()> {
        async move {
            let k = self.inner.layout.answer_fill(key.tenant, key.digest);
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
