//! Key-fetch coordination on Redis: the fleet's turn to fetch a key set is a key set
//! with `NX` that expires after the cooldown; the replica holding it fetches, publishes
//! the document with the next generation and announces it; the others take the
//! publication, wait (bounded) for a fetch in progress, or keep their keys.

use std::time::Duration;

use futures::{FutureExt as _, future::BoxFuture};
use redis::Value;
use tokio::{sync::watch, time::Instant};

use super::{Fleet, integrity::Integrity, millis, scripts, stats::Op};
use crate::shared::{
    FetchCoordination, Publication, Published, PublishedMetadata, SharedError, SharedFuture, Turn,
    TurnRequest,
};

/// How long a publication is kept without being renewed (a fleet republishes at least
/// every `refresh_interval`).
pub const PUBLICATION_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// While waiting for another replica's fetch, the state is re-read at least this often
/// (in case an announcement is lost).
pub(super) const WAIT_POLL: Duration = Duration::from_millis(100);
/// Longest failure message recorded for the others.
const MAX_FAILURE_MESSAGE: usize = 256;

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The fields of a publication, in the order every read asks for them.
pub(super) const PUBLISHED_FIELDS: [&str; 6] =
    ["generation", "jwks", "metadata", "replica", "at_ms", "tag"];

/// Reads `{generation, jwks, metadata, replica, at_ms, tag}` (stored under `context`)
/// into a publication; its tag must check out when integrity is on.
pub(super) fn parse_published(
    fields: &[Value],
    integrity: &Integrity,
    context: &str,
) -> Result<Option<Published>, SharedError> {
    let field = |i: usize| fields.get(i).and_then(text).unwrap_or_default();
    let invalid = |what: &str| SharedError::Invalid(format!("published key set: {what}"));
    let generation: u64 = field(0).parse().unwrap_or(0);
    if generation == 0 {
        return Ok(None);
    }
    let parts = [field(1), field(2), field(3), field(4)];
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    if !integrity.verify(context, &parts, &field(5)) {
        return Err(invalid("integrity check failed"));
    }
    let metadata = match field(2).as_str() {
        "" => None,
        m => Some(serde_json::from_str::<PublishedMetadata>(m).map_err(|_| invalid("metadata"))?),
    };
    let at_ms: u64 = field(4).parse().map_err(|_| invalid("time"))?;
    Ok(Some(Published {
        generation,
        jwks: field(1),
        metadata,
        replica: field(3),
        fetched_at_ms: at_ms,
    }))
}

/// What the turn key says about a turn another replica holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Held {
    /// Its fetch is running.
    Fetching,
    /// Its fetch succeeded (nothing newer than what the caller has, or the caller
    /// would have been given it).
    Done,
    /// Its fetch failed, with this message.
    Failed(String),
}

/// Parses a turn value (`fetching R`, `done G R`, `failed R message`); an expired or
/// missing turn reads as done.
pub(super) fn parse_turn(value: &str) -> Held {
    let mut parts = value.splitn(3, ' ');
    match parts.next() {
        Some("fetching") => Held::Fetching,
        Some("failed") => Held::Failed(parts.nth(1).unwrap_or("the fetch failed").to_string()),
        _ => Held::Done,
    }
}

fn parse_turn_reply(
    reply: &[Value],
    integrity: &Integrity,
    context: &str,
) -> Result<Result<Turn, Held>, SharedError> {
    match reply.first().and_then(text).as_deref() {
        Some("fetch") => Ok(Ok(Turn::Fetch)),
        Some("adopt") => match parse_published(&reply[1..], integrity, context)? {
            Some(p) => Ok(Ok(Turn::Adopt(Box::new(p)))),
            None => Ok(Err(Held::Done)),
        },
        Some("held") => Ok(Err(parse_turn(
            &reply.get(1).and_then(text).unwrap_or_default(),
        ))),
        _ => Err(SharedError::Invalid(
            "unexpected reply to the turn script".into(),
        )),
    }
}

impl Fleet {
    fn announced(&self, set: &str) -> Option<watch::Receiver<u64>> {
        self.inner.announced.get(set).map(watch::Sender::subscribe)
    }

    /// The publication and the turn value of `set`, in one round trip.
    async fn state_of(&self, set: &str) -> Result<(Option<Published>, Held), SharedError> {
        let published = self.inner.layout.jwks(set);
        let context = published.clone();
        let turn = self.inner.layout.jwks_turn(set);
        let (fields, turn): (Vec<Value>, Option<String>) = self
            .inner
            .link
            .exec(Op::FetchPublished, |mut c| async move {
                redis::pipe()
                    .cmd("HMGET")
                    .arg(published)
                    .arg(&PUBLISHED_FIELDS)
                    .cmd("GET")
                    .arg(turn)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok((
            parse_published(&fields, &self.inner.integrity, &context)?,
            parse_turn(turn.as_deref().unwrap_or("")),
        ))
    }

    /// Waits (bounded by `wait`) for the fetch another replica is doing.
    async fn wait_for_fetch(
        &self,
        set: &str,
        known: u64,
        wait: Duration,
    ) -> Result<Turn, SharedError> {
        let start = Instant::now();
        let deadline = start + wait;
        let mut announced = self.announced(set);
        let outcome = loop {
            let now = Instant::now();
            if now >= deadline {
                break Turn::Skip;
            }
            let pause = (deadline - now).min(WAIT_POLL);
            match announced.as_mut() {
                Some(rx) => {
                    let _ = tokio::time::timeout(pause, rx.changed()).await;
                }
                None => tokio::time::sleep(pause).await,
            }
            match self.state_of(set).await? {
                (Some(p), _) if p.generation > known => break Turn::Adopt(Box::new(p)),
                (_, Held::Fetching) => continue,
                (_, Held::Failed(m)) => break Turn::Failed(m),
                (_, Held::Done) => break Turn::Skip,
            }
        };
        self.inner.stats.record_lock_wait(start.elapsed());
        Ok(outcome)
    }
}

impl FetchCoordination for Fleet {
    fn turn<'a>(
        &'a self,
        set: &'a str,
        request: TurnRequest,
    ) -> BoxFuture<'a, Result<Turn, SharedError>> {
        async move {
            let published = self.inner.layout.jwks(set);
            let context = published.clone();
            let turn = self.inner.layout.jwks_turn(set);
            let replica = self.inner.replica.clone();
            let reply: Vec<Value> = self
                .inner
                .link
                .exec(Op::FetchTurn, |mut c| async move {
                    scripts::TURN
                        .key(published)
                        .key(turn)
                        .arg(replica)
                        .arg(request.known)
                        .arg(millis(request.max_age))
                        .arg(millis(request.cooldown).max(1))
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            let decided = match parse_turn_reply(&reply, &self.inner.integrity, &context)? {
                Ok(t) => t,
                Err(Held::Fetching) => {
                    self.wait_for_fetch(set, request.known, request.wait)
                        .await?
                }
                Err(Held::Failed(m)) => Turn::Failed(m),
                Err(Held::Done) => Turn::Skip,
            };
            if decided != Turn::Fetch {
                self.inner.stats.record_avoided(set);
            }
            Ok(decided)
        }
        .boxed()
    }

    fn published<'a>(
        &'a self,
        set: &'a str,
        known: u64,
    ) -> BoxFuture<'a, Result<Option<Published>, SharedError>> {
        async move {
            let (p, _) = self.state_of(set).await?;
            Ok(p.filter(|p| p.generation > known))
        }
        .boxed()
    }

    fn publish<'a>(&'a self, set: &'a str, doc: Publication) -> SharedFuture<'a, u64> {
        async move {
            let Publication { jwks, metadata } = doc;
            let metadata = match metadata {
                Some(m) => serde_json::to_string(&m)
                    .map_err(|e| SharedError::Invalid(format!("metadata: {e}")))?,
                None => String::new(),
            };
            let published = self.inner.layout.jwks(set);
            let turn = self.inner.layout.jwks_turn(set);
            let replica = self.inner.replica.clone();
            let channel = self.inner.layout.channel();
            let at_ms = millis(
                std::time::SystemTime::now()
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            )
            .to_string();
            let tag = self.inner.integrity.tag(
                &published,
                &[
                    jwks.as_bytes(),
                    metadata.as_bytes(),
                    replica.as_bytes(),
                    at_ms.as_bytes(),
                ],
            );
            let generation: u64 = self
                .inner
                .link
                .exec(Op::Publish, |mut c| async move {
                    scripts::PUBLISH
                        .key(published)
                        .key(turn)
                        .arg(jwks)
                        .arg(metadata)
                        .arg(replica)
                        .arg(channel)
                        .arg(set)
                        .arg(millis(PUBLICATION_RETENTION))
                        .arg(at_ms)
                        .arg(tag)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            // This replica has it already; its own announcement must not make it re-read.
            if let Some(tx) = self.inner.announced.get(set) {
                tx.send_if_modified(|g| {
                    let newer = generation > *g;
                    if newer {
                        *g = generation;
                    }
                    newer
                });
            }
            Ok(generation)
        }
        .boxed()
    }

    fn publish_failure<'a>(
        &'a self,
        set: &'a str,
        message: &'a str,
    ) -> BoxFuture<'a, Result<(), SharedError>> {
        async move {
            let turn = self.inner.layout.jwks_turn(set);
            let replica = self.inner.replica.clone();
            let channel = self.inner.layout.channel();
            let message: String = message.chars().take(MAX_FAILURE_MESSAGE).collect();
            self.inner
                .link
                .exec(Op::PublishFailure, |mut c| async move {
                    scripts::PUBLISH_FAILURE
                        .key(turn)
                        .arg(replica)
                        .arg(message)
                        .arg(channel)
                        .arg(set)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await
                .map(|_| ())
        }
        .boxed()
    }

    fn announcements(&self, set: &str) -> Option<watch::Receiver<u64>> {
        self.announced(set)
    }

    fn replica(&self) -> &str {
        &self.inner.replica
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn turn_values() {
        assert_eq!(parse_turn("fetching r1"), Held::Fetching);
        assert_eq!(parse_turn("done 4 r1"), Held::Done);
        assert_eq!(parse_turn(""), Held::Done);
        assert_eq!(
            parse_turn("failed r1 HTTP status 503 from upstream"),
            Held::Failed("HTTP status 503 from upstream".into())
        );
    }

    #[test]
    fn turn_replies() {
        let none = Integrity::new(None);
        let parse = |reply: &[Value]| parse_turn_reply(reply, &none, "k");
        assert_eq!(parse(&[bulk("fetch")]), Ok(Ok(Turn::Fetch)));
        assert_eq!(
            parse(&[bulk("held"), bulk("fetching r2")]),
            Ok(Err(Held::Fetching))
        );
        let adopt = parse(&[
            bulk("adopt"),
            bulk("3"),
            bulk("{\"keys\":[]}"),
            bulk(
                "{\"issuer\":\"https://i\",\"jwks_uri\":\"https://i/k\",\"introspection_endpoint\":null,\"token_endpoint\":null}",
            ),
            bulk("r2"),
            bulk("1700000000123"),
            bulk(""),
        ]);
        let Ok(Ok(Turn::Adopt(p))) = adopt else {
            panic!("{adopt:?}");
        };
        assert_eq!(p.generation, 3);
        assert_eq!(p.replica, "r2");
        assert_eq!(p.fetched_at_ms, 1_700_000_000_123);
        assert_eq!(p.metadata.map(|m| m.jwks_uri), Some("https://i/k".into()));
        assert!(parse(&[bulk("what")]).is_err());
        assert_eq!(
            parse_published(&vec![Value::Nil; 6], &none, "k"),
            Ok(None),
            "nothing published yet"
        );
    }

    #[test]
    fn with_integrity_a_publication_must_carry_its_tag() {
        let on = Integrity::new(Some(&[1u8; 32]));
        let parts: [&[u8]; 4] = [b"{\"keys\":[]}", b"", b"r2", b"1700000000123"];
        let tag = on.tag("p:jwks:{x}:published", &parts);
        let fields = |tag: &str, jwks: &str| {
            vec![
                bulk("3"),
                bulk(jwks),
                bulk(""),
                bulk("r2"),
                bulk("1700000000123"),
                bulk(tag),
            ]
        };
        let good = parse_published(&fields(&tag, "{\"keys\":[]}"), &on, "p:jwks:{x}:published");
        assert!(matches!(good, Ok(Some(_))), "{good:?}");
        let planted = fields(&tag, "{\"keys\":[{\"kty\":\"RSA\"}]}");
        assert!(
            parse_published(&planted, &on, "p:jwks:{x}:published").is_err(),
            "keys changed"
        );
        assert!(
            parse_published(&fields("", "{\"keys\":[]}"), &on, "p:jwks:{x}:published").is_err(),
            "no tag"
        );
        assert!(
            parse_published(&fields(&tag, "{\"keys\":[]}"), &on, "p:jwks:{y}:published").is_err(),
            "another key set's"
        );
    }
}
