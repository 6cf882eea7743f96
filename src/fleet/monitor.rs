//! The fleet's two background tasks. The monitor connects (retrying with backoff),
//! subscribes to the announcement channel, and probes every second: a probe that
//! answers, with a live subscription and the rules re-read after any gap, makes the
//! shared state available; anything else makes it unavailable. The dispatcher turns
//! pushes into effects: announced key sets wake their refreshers, announced rules apply
//! at once, a lost connection or an overflow asks for a re-read.

use std::{sync::atomic::Ordering, time::Duration};

use redis::{AsyncCommands as _, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Fleet, conn, revocation, scripts, stats::Op};
use crate::shared::SharedError;

/// Period of the probe while the shared state is available.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Period of the probe (and of connection attempts) while it is not.
pub const DOWN_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Longest pause between connection attempts to a cluster that does not answer.
pub(super) const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(5);
/// Pushes queued for the dispatcher; past it they are dropped and a re-read is asked for.
pub(super) const PUSH_QUEUE: usize = 4096;

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A message on the announcement channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Message {
    /// A key set was published with this generation.
    Published {
        /// Generation.
        generation: u64,
        /// Key set name.
        key_set: String,
    },
    /// A key set's fetch failed on the replica holding the turn.
    Failed {
        /// Key set name.
        key_set: String,
    },
    /// A revocation rule.
    Revoked(revocation::Announced),
}

/// Parses an announcement; `None` for anything this version does not know.
pub(super) fn parse_message(payload: &str) -> Option<Message> {
    let (kind, rest) = payload.split_once(' ')?;
    match kind {
        "jwks" | "failed" => {
            let (generation, key_set) = rest.split_once(' ')?;
            let key_set = key_set.to_string();
            if kind == "failed" {
                return Some(Message::Failed { key_set });
            }
            Some(Message::Published {
                generation: generation.parse().ok()?,
                key_set,
            })
        }
        "revoke" => revocation::parse_announcement(rest).map(Message::Revoked),
        _ => None,
    }
}

impl Fleet {
    /// Asks the monitor for a full re-read at its next step (now).
    pub(super) fn request_resync(&self) {
        self.inner.resync.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }

    fn mark_down(&self, why: &SharedError) {
        if self.inner.health.set_up(false) {
            warn!(error = %why, on_unavailable = ?self.inner.health.on_unavailable(),
                "shared state unavailable");
        }
    }

    fn mark_up(&self) {
        if self.inner.health.set_up(true) {
            info!("shared state available");
        }
    }

    async fn ensure_connected(&self) -> Result<(), SharedError> {
        if self.inner.link.is_set() {
            return Ok(());
        }
        // The sink holds no handle on the fleet (the connection it lives in is the
        // fleet's): an overflow only raises the re-read flag and wakes the monitor.
        let queue = self.inner.push_tx.clone();
        let resync = self.inner.resync.clone();
        let wake = self.inner.wake.clone();
        let sink: conn::PushSink = std::sync::Arc::new(move |info: PushInfo| {
            if queue.try_send(info).is_err() {
                resync.store(true, Ordering::Release);
                wake.notify_one();
            }
        });
        let c = conn::connect(&self.inner.settings, self.inner.ca.as_deref(), sink)
            .await
            .map_err(|e| SharedError::Unavailable(format!("connecting: {:?}", e.kind())))?;
        self.inner.link.set(c);
        Ok(())
    }

    async fn ensure_subscribed(&self) -> Result<(), SharedError> {
        if self.inner.subscribed.load(Ordering::Acquire) {
            return Ok(());
        }
        let channel = self.inner.layout.channel();
        self.inner
            .link
            .exec(
                Op::Subscribe,
                |mut c| async move { c.subscribe(&channel).await },
            )
            .await?;
        self.inner.subscribed.store(true, Ordering::Release);
        // Anything announced before the subscription was missed.
        self.inner.resync.store(true, Ordering::Release);
        Ok(())
    }

    /// Loads every script (on every master of a cluster), so that after a restart or a
    /// failover no caller pays the NOSCRIPT round trip and the load within its own
    /// `op_timeout`.
    async fn load_scripts(&self) -> Result<(), SharedError> {
        for script in scripts::all() {
            self.inner
                .link
                .exec(Op::ScriptLoad, |mut c| async move {
                    script.prepare_invoke().load_async(&mut c).await
                })
                .await?;
        }
        Ok(())
    }

    /// Re-reads the published generation of every key set (after a gap in the
    /// subscription), waking the refreshers of those that moved.
    async fn sync_announcements(&self) -> Result<(), SharedError> {
        for (set, tx) in &self.inner.announced {
            let key = self.inner.layout.jwks(set);
            let generation: Option<u64> = self
                .inner
                .link
                .exec(Op::FetchPublished, |mut c| async move {
                    c.hget(key, "generation").await
                })
                .await?;
            let generation = generation.unwrap_or(0);
            tx.send_if_modified(|g| {
                let newer = generation > *g;
                if newer {
                    *g = generation;
                }
                newer
            });
        }
        Ok(())
    }

    /// One monitor step: connect, subscribe, probe, re-read if needed.
    async fn step(&self) -> Result<(), SharedError> {
        self.ensure_connected().await?;
        self.ensure_subscribed().await?;
        if self.inner.link.is_cluster() {
            // Every master, not only the one holding the sequence number: available
            // means every slot answers, and a connection a restart broke is remade here
            // rather than on a caller's operation.
            self.inner
                .link
                .exec(Op::Probe, |mut c| async move {
                    redis::cmd("PING").query_async::<()>(&mut c).await
                })
                .await?;
        }
        let key = self.inner.layout.revocation_seq();
        let seq: Option<u64> = self
            .inner
            .link
            .exec(Op::Probe, |mut c| async move { c.get(key).await })
            .await?;
        let behind = seq.unwrap_or(0) != self.inner.applied_seq.load(Ordering::Acquire);
        let wanted = self.inner.resync.swap(false, Ordering::AcqRel);
        if wanted || behind || !self.inner.health.is_up() {
            let synced = async {
                self.load_scripts().await?;
                self.sync_revocations().await?;
                self.sync_announcements().await
            };
            if let Err(e) = synced.await {
                self.inner.resync.store(true, Ordering::Release);
                return Err(e);
            }
        }
        if !self.inner.subscribed.load(Ordering::Acquire) {
            return Err(SharedError::Unavailable("subscription lost".into()));
        }
        Ok(())
    }

    /// The monitor task: steps until `cancel` fires.
    pub(super) async fn run_monitor(self, cancel: CancellationToken) {
        let mut backoff = DOWN_PROBE_INTERVAL;
        loop {
            let delay = match self.step().await {
                Ok(()) => {
                    self.mark_up();
                    backoff = DOWN_PROBE_INTERVAL;
                    PROBE_INTERVAL
                }
                Err(e) => {
                    self.mark_down(&e);
                    let d = if self.inner.link.is_set() {
                        DOWN_PROBE_INTERVAL
                    } else {
                        backoff
                    };
                    backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
                    d
                }
            };
            // A wake-up (a failed operation, a lost connection) steps at once, but not
            // more often than every DOWN_PROBE_INTERVAL, however many operations fail.
            let woken = async {
                tokio::time::sleep(DOWN_PROBE_INTERVAL.min(delay)).await;
                self.inner.wake.notified().await;
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    debug!("shared-state monitor stopped");
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
                _ = woken => {}
            }
        }
    }

    fn handle_push(&self, info: PushInfo) {
        match info.kind {
            PushKind::Disconnection => {
                self.inner.subscribed.store(false, Ordering::Release);
                self.request_resync();
            }
            PushKind::Subscribe => {
                self.inner.subscribed.store(true, Ordering::Release);
                self.request_resync();
            }
            PushKind::Message => {
                let payload = info.data.get(1).and_then(text);
                match payload.and_then(parse_message) {
                    Some(m) => self.handle_message(m),
                    None => debug!("ignoring an announcement this version does not know"),
                }
            }
            _ => {}
        }
    }

    fn handle_message(&self, m: Message) {
        self.inner.stats.record_announcement();
        match m {
            Message::Published {
                generation,
                key_set,
            } => {
                if let Some(tx) = self.inner.announced.get(&key_set) {
                    tx.send_if_modified(|g| {
                        let newer = generation > *g;
                        if newer {
                            *g = generation;
                        }
                        newer
                    });
                }
            }
            Message::Failed { key_set } => {
                // Wakes replicas waiting for that fetch; they read the failure.
                if let Some(tx) = self.inner.announced.get(&key_set) {
                    tx.send_modify(|_| {});
                }
            }
            Message::Revoked(a) => self.apply_announced(&a),
        }
    }

    /// The dispatcher task: handles pushes until `cancel` fires.
    pub(super) async fn run_dispatcher(
        self,
        mut pushes: mpsc::Receiver<PushInfo>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                p = pushes.recv() => match p {
                    Some(info) => self.handle_push(info),
                    None => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            parse_message("jwks 12 okta"),
            Some(Message::Published {
                generation: 12,
                key_set: "okta".into()
            })
        );
        assert_eq!(
            parse_message("jwks 3 b2c/B2C_1 signin"),
            Some(Message::Published {
                generation: 3,
                key_set: "b2c/B2C_1 signin".into()
            }),
            "a key set name may hold spaces"
        );
        assert_eq!(
            parse_message("failed 0 okta"),
            Some(Message::Failed {
                key_set: "okta".into()
            })
        );
        assert!(matches!(
            parse_message(r#"revoke 1 5000 {"kind":"token","sha256":"ab"}"#),
            Some(Message::Revoked(_))
        ));
        assert_eq!(parse_message("jwks x okta"), None);
        assert_eq!(parse_message("hello"), None);
        assert_eq!(parse_message("future 1 2"), None);
    }
}
